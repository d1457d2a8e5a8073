"""Descriptor whitening: learned from matching pairs (Lw) or by PCA, then applied with L2.

Learned whitening (Lw, Radenovic et al., "Fine-tuning CNN image retrieval with no human
annotation", TPAMI 2018) is learned from descriptors `x` [N, d] and index pairs (q_i, p_i) of
matching images, as the authors' code learns it:
1. the mean `m` of the query descriptors `x[q]`;
2. the intra-class covariance `S = (1/P) sum_i (x[q_i] - x[p_i]) (x[q_i] - x[p_i])^T` and its
   Cholesky factor `L` (`S + a I` with a = 0, 1e-10, 1e-9, ... until the factor exists);
3. the inter-class scatter of every descriptor after `L^-1`: `D = sum_n y_n y_n^T` with
   `y_n = L^-1 (x_n - m)`, and its eigenvectors `E` by decreasing eigenvalue;
4. the projection `P = E^T L^-1`.
Applying it maps `x` to `P[:k] (x - m)`, divided by its L2 norm plus 1e-6 (the code's).

PCA whitening (no labels) is `P = diag(lambda)^(-1/2) E^T` from the covariance of all `x`.

Choices: the code takes eigenvectors with a general eigen-solver; `D` and the covariance are
symmetric, so `eigh` gives the same vectors up to sign, which changes no similarity between two
descriptors whitened by the same `P`. Everything runs in the input's precision (pass float64 to
learn as the code does, in NumPy's float64).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdml import _checks

Array = jax.Array


class Whitening(NamedTuple):
  """A whitening: `x -> normalize(projection @ (x - mean))`.

  Attributes:
    mean: [d] the centre.
    projection: [k, d] the rows by decreasing eigenvalue (k = d when learned).
  """

  mean: Array
  projection: Array


def _dtype(x) -> jnp.dtype:
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


@jax.jit
def _cholesky_with_jitter(s: Array) -> Array:
  """The Cholesky factor of `s + a I`, with a = 0, then 1e-10, 1e-9, ... until it exists."""
  eye = jnp.eye(s.shape[0], dtype=s.dtype)

  def factor(a):
    return jnp.linalg.cholesky(s + a * eye)

  def failed(state):
    a, lower = state
    return ~jnp.all(jnp.isfinite(lower)) & (a < 1e30)

  def step(state):
    a, _ = state
    a = jnp.where(a == 0, jnp.asarray(1e-10, s.dtype), a * 10)
    return a, factor(a)

  _, lower = lax.while_loop(failed, step, (jnp.zeros((), s.dtype), factor(jnp.zeros((), s.dtype))))
  return lower


@jax.jit
def _learn(x: Array, q: Array, p: Array) -> Whitening:
  mean = jnp.mean(x[q], axis=0)
  diff = x[q] - x[p]  # [P, d]
  s = diff.T @ diff / diff.shape[0]
  lower = _cholesky_with_jitter(s)
  inv_lower = jax.scipy.linalg.solve_triangular(lower, jnp.eye(s.shape[0], dtype=s.dtype),
                                                lower=True)
  y = (x - mean) @ inv_lower.T  # [N, d]: rows L^-1 (x_n - m)
  scatter = y.T @ y
  _, vecs = jnp.linalg.eigh(scatter)  # increasing eigenvalues
  return Whitening(mean, vecs[:, ::-1].T @ inv_lower)


def learn_whitening(x, query_idx, positive_idx) -> Whitening:
  """Learned whitening (Lw) from descriptors and matching pairs (see the module docstring).

  Args:
    x: [N, d] descriptors (L2-normalised, as the retrieval network gives them).
    query_idx, positive_idx: [P] int indices into `x` of matching pairs (P >= 1).

  Returns:
    `Whitening` with a [d, d] projection.

  Raises:
    ValueError: mismatched or out-of-range indices, non-finite descriptors, or a pair
      covariance that no jitter up to 1e30 makes positive definite.
  """
  _checks.embeddings(x, "x")
  _checks.all_finite(x, "x")
  n = x.shape[0]
  q = np.asarray(query_idx).reshape(-1)
  p = np.asarray(positive_idx).reshape(-1)
  for name, idx in (("query_idx", q), ("positive_idx", p)):
    if idx.dtype.kind not in "iu":
      raise TypeError(f"`{name}` must hold integer indices, got dtype {idx.dtype}.")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(f"`{name}` must index the {n} rows of `x`, got values in "
                       f"[{idx.min()}, {idx.max()}].")
  if q.size == 0 or q.shape != p.shape:
    raise ValueError(f"`query_idx` and `positive_idx` must be non-empty and of one length, got "
                     f"{q.size} and {p.size}.")
  x = jnp.asarray(x, _dtype(x))
  w = _learn(x, jnp.asarray(q), jnp.asarray(p))
  if not bool(jnp.all(jnp.isfinite(w.projection))):
    raise ValueError("the pair covariance stays singular with a jitter up to 1e30: check that "
                     "`x` holds descriptors and the pairs are not all identical.")
  return w


@jax.jit
def _pca(x: Array) -> Whitening:
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  cov = xc.T @ xc
  cov = (cov + cov.T) / (2 * x.shape[0])
  vals, vecs = jnp.linalg.eigh(cov)
  vals, vecs = vals[::-1], vecs[:, ::-1]
  return Whitening(mean, vecs.T / jnp.sqrt(vals)[:, None])


def learn_pca_whitening(x) -> Whitening:
  """PCA whitening of `x` [N, d] (no labels): `P = diag(lambda)^(-1/2) E^T`, decreasing lambda.
  Directions of zero variance give infinite rows: keep `dims` below the rank when applying."""
  _checks.embeddings(x, "x")
  _checks.all_finite(x, "x")
  return _pca(jnp.asarray(x, _dtype(x)))


@jax.jit
def _apply(x, mean, projection):
  y = (x - mean) @ projection.T
  return y / (jnp.linalg.norm(y, axis=1, keepdims=True) + 1e-6)


def apply_whitening(x, whitening: Whitening, dims: int | None = None) -> Array:
  """`normalize(P[:dims] (x - m))` for rows of `x` [N, d]; L2 with +1e-6 as the code does.

  >>> w = Whitening(jnp.zeros(2), jnp.eye(2))
  >>> [round(float(v), 4) for v in apply_whitening(jnp.array([[3.0, 4.0]]), w)[0]]
  [0.6, 0.8]
  """
  if not isinstance(whitening, Whitening):
    raise TypeError(f"`whitening` must be a Whitening, got {type(whitening).__name__}.")
  _checks.embeddings(x, "x")
  d = whitening.mean.shape[0]
  if x.shape[1] != d:
    raise ValueError(f"`x` has dimension {x.shape[1]} but the whitening was learned on {d}.")
  k = whitening.projection.shape[0] if dims is None else dims
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= (
      whitening.projection.shape[0]):
    raise ValueError(f"`dims` must be an int in [1, {whitening.projection.shape[0]}], got "
                     f"{dims!r}.")
  dtype = jnp.promote_types(_dtype(x), whitening.projection.dtype)
  return _apply(jnp.asarray(x, dtype), jnp.asarray(whitening.mean, dtype),
                jnp.asarray(whitening.projection[:k], dtype))
