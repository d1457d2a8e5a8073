"""Learned (Lw) and PCA whitening against a NumPy port of the authors' code, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import evaluation


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _naive_cholesky(s):
  alpha = 0.0
  while True:
    try:
      return np.linalg.cholesky(s + alpha * np.eye(*s.shape))
    except np.linalg.LinAlgError:
      alpha = 1e-10 if alpha == 0 else alpha * 10


def _naive_lw(x_cols, qidxs, pidxs):
  """The published whitenlearn, columns are descriptors."""
  m = x_cols[:, qidxs].mean(axis=1, keepdims=True)
  df = x_cols[:, qidxs] - x_cols[:, pidxs]
  s = df @ df.T / df.shape[1]
  p = np.linalg.inv(_naive_cholesky(s))
  df = p @ (x_cols - m)
  d = df @ df.T
  eigval, eigvec = np.linalg.eig(d)
  order = eigval.argsort()[::-1]
  return m, eigvec[:, order].real.T @ p


def _naive_apply(x_cols, m, p, dims=None):
  dims = dims or p.shape[0]
  y = p[:dims] @ (x_cols - m)
  return y / (np.linalg.norm(y, axis=0, keepdims=True) + 1e-6)


def _descriptors(rng, n, d):
  x = np.abs(rng.standard_normal((n, d)))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("num_pairs", [40, 5])  # 5 < d: a singular covariance, with jitter
def test_learned_whitening_matches_the_published_code(num_pairs):
  rng = np.random.default_rng(num_pairs)
  n, d = 60, 8
  x = _descriptors(rng, n, d)
  q = rng.integers(0, n, num_pairs)
  p = (q + 1 + rng.integers(0, n - 1, num_pairs)) % n
  w = evaluation.learn_whitening(jnp.asarray(x), q, p)
  m, proj = _naive_lw(x.T, q, p)
  np.testing.assert_allclose(w.mean, m[:, 0], rtol=0, atol=1e-12)
  # rows agree up to sign (eigenvectors); similarities of whitened descriptors exactly
  signs = np.sign(np.sum(np.asarray(w.projection) * proj, axis=1))
  np.testing.assert_allclose(np.asarray(w.projection) * signs[:, None], proj, rtol=1e-6,
                             atol=1e-6 * np.abs(proj).max())
  z = rng.standard_normal((7, d))
  for dims in (None, 3):
    ours = np.asarray(evaluation.apply_whitening(jnp.asarray(z), w, dims))
    ref = _naive_apply(z.T, m, proj, dims).T
    # with jitter the factor is ill-conditioned (1e10): rounding grows accordingly
    np.testing.assert_allclose(ours @ ours.T, ref @ ref.T, rtol=0,
                               atol=1e-10 if num_pairs > d else 1e-6)


def test_whitening_whitens():
  # after Lw the matching-pair differences have identity covariance
  rng = np.random.default_rng(1)
  x = _descriptors(rng, 200, 5)
  q = np.arange(100)
  p = q + 100
  w = evaluation.learn_whitening(jnp.asarray(x), q, p)
  diff = (x[q] - x[p]) @ np.asarray(w.projection).T
  np.testing.assert_allclose(diff.T @ diff / len(q), np.eye(5), atol=1e-10)
  # PCA whitening: unit covariance of all descriptors
  w = evaluation.learn_pca_whitening(jnp.asarray(x))
  y = (x - np.asarray(w.mean)) @ np.asarray(w.projection).T
  np.testing.assert_allclose(y.T @ y / len(x), np.eye(5), atol=1e-10)


def test_whitening_errors():
  x = jnp.asarray(_descriptors(np.random.default_rng(2), 10, 3))
  with pytest.raises(ValueError, match="index the 10 rows"):
    evaluation.learn_whitening(x, [0, 11], [1, 2])
  with pytest.raises(ValueError, match="one length"):
    evaluation.learn_whitening(x, [0, 1], [2])
  with pytest.raises(TypeError, match="integer"):
    evaluation.learn_whitening(x, [0.0], [1.0])
  with pytest.raises(ValueError, match="NaN"):
    evaluation.learn_whitening(x.at[3, 0].set(jnp.nan), [0], [1])
  w = evaluation.learn_whitening(x, [0, 1, 2, 3], [4, 5, 6, 7])
  with pytest.raises(ValueError, match="dimension 4"):
    evaluation.apply_whitening(jnp.ones((2, 4)), w)
  with pytest.raises(ValueError, match="dims"):
    evaluation.apply_whitening(x, w, dims=4)
  with pytest.raises(TypeError, match="Whitening"):
    evaluation.apply_whitening(x, {"m": 0})
