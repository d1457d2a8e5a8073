"""Similarity and distance matrices against NumPy, and their gradients at degenerate points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import similarity as S

FUNCS = ("dot", "cosine", "squared_euclidean", "neg_squared_euclidean", "euclidean")


def numpy_reference(name, q, r, npref):
  q64, r64 = np.asarray(q, np.float64), np.asarray(r, np.float64)
  if name == "dot":
    return q64 @ r64.T
  if name == "cosine":
    return npref.l2n(q64) @ npref.l2n(r64).T
  d = npref.cdist(q64, r64)
  return {"squared_euclidean": d ** 2, "neg_squared_euclidean": -d ** 2, "euclidean": d}[name]


@pytest.mark.parametrize("name", FUNCS)
def test_values_match_numpy(name, batch, npref):
  f = jax.jit(getattr(S, name))
  q, r = batch.emb, batch.ref_emb
  np.testing.assert_allclose(f(q, r), numpy_reference(name, q, r, npref), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(f(q), numpy_reference(name, q, q, npref), rtol=1e-5, atol=2e-5)
  assert f(q, r).shape == (12, 10)


def test_registry():
  assert set(S.SIMILARITIES) == {"cosine", "dot", "neg_squared_euclidean"}
  assert S.get("cosine") is S.cosine
  with pytest.raises(ValueError, match="unknown similarity 'l1'"):
    S.get("l1")


def test_l2_normalize_and_zero_rows():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
  y = jax.jit(S.l2_normalize)(x)
  np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
  g = jax.jit(jax.grad(lambda x: jnp.sum(S.l2_normalize(x) * jnp.array([1.0, 2.0]))))(x)
  assert np.all(np.isfinite(g))
  # the gradient of a unit vector is orthogonal to it
  np.testing.assert_allclose(np.sum(np.asarray(g)[0] * [0.6, 0.8]), 0.0, atol=1e-6)
  # cosine similarity with a zero row is 0, with a finite gradient
  c, gc = jax.jit(jax.value_and_grad(lambda x: jnp.sum(S.cosine(x))))(x)
  assert np.isfinite(float(c)) and np.all(np.isfinite(gc))


def test_euclidean_gradient_at_coincident_points(rng):
  x = rng.normal(size=(4, 3)).astype(np.float32)
  x[1] = x[0]
  f = jax.jit(jax.grad(lambda x: jnp.sum(S.euclidean(x))))
  g = np.asarray(f(jnp.asarray(x)))
  assert np.all(np.isfinite(g))
  # at coincident points the gradient of the distance is taken as 0: the remaining gradient is
  # that of the distances to the other points, sum_j (x_i - x_j) / |x_i - x_j| (twice: d_ij, d_ji)
  expected = np.zeros_like(x, dtype=np.float64)
  for i in range(4):
    for j in range(4):
      diff = x[i].astype(np.float64) - x[j]
      n = np.linalg.norm(diff)
      if n > 0:
        expected[i] += 2 * diff / n
  np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-3)
  # a query against a reference at the same point
  g2 = jax.jit(jax.grad(lambda q, r: jnp.sum(S.euclidean(q, r)), argnums=(0, 1)))(x[:1], x[:1])
  assert all(np.all(np.isfinite(a)) for a in g2)
  np.testing.assert_array_equal(g2[0], 0.0)


def test_safe_sqrt():
  f = jax.jit(jax.vmap(jax.value_and_grad(S.safe_sqrt)))
  v, g = f(jnp.array([0.0, 4.0, 1e-14]))
  np.testing.assert_allclose(v, [0.0, 2.0, 0.0])
  np.testing.assert_allclose(g, [0.0, 0.25, 0.0])


def test_safe_sqrt_propagates_nan_and_keeps_finite_values_and_gradients():
  # NaN used to become 0 (the comparison x > eps is False for NaN).
  f = jax.jit(jax.vmap(jax.value_and_grad(S.safe_sqrt)))
  x = jnp.array([jnp.nan, -jnp.inf, jnp.inf, -1.0, 0.0, 1e-14, 0.25, 9.0])
  v, g = f(x)
  v, g = np.asarray(v), np.asarray(g)
  assert np.isnan(v[:2]).all() and v[2] == np.inf
  np.testing.assert_array_equal(v[3:], [0.0, 0.0, 0.0, 0.5, 3.0])
  assert not np.signbit(v[3])  # +0, not -0, for a negative input
  np.testing.assert_array_equal(g[3:6], 0.0)
  np.testing.assert_allclose(g[6:], [1.0, 1 / 6], rtol=1e-6)
  # the same for the Poincare-ball helper
  from jaxdml.geometry import poincare  # noqa: PLC0415
  vp = np.asarray(jax.jit(poincare._safe_sqrt)(x))
  assert np.isnan(vp[:2]).all()
  np.testing.assert_allclose(vp[3:], [0.0, 0.0, 1e-7, 0.5, 3.0], rtol=1e-6)


def test_a_nan_row_gives_nan_distances_and_similarities():
  x = jnp.array([[1.0, 0.0], [jnp.nan, 0.0], [0.0, 2.0]])
  for name in FUNCS:
    m = np.asarray(getattr(S, name)(x))
    off = ~np.eye(3, dtype=bool)
    assert np.isnan(m[1][off[1]]).all() and np.isnan(m[:, 1][off[:, 1]]).all(), name
    assert np.isfinite(m[np.ix_([0, 2], [0, 2])]).all(), name
  assert np.isnan(np.asarray(S.l2_normalize(x))[1]).all()
  assert np.isnan(np.asarray(S.to_distance(jnp.array([[jnp.nan]]), "cosine"))).all()


def test_squared_euclidean_is_clipped_at_zero():
  x = jnp.array([[1e4, 1e4 + 1e-3], [1e4, 1e4 + 1e-3]])
  assert float(jnp.min(jax.jit(S.squared_euclidean)(x))) >= 0.0


def test_to_distance(batch, npref):
  q = batch.emb
  f = jax.jit(S.to_distance, static_argnames="kind")
  expected = npref.cdist(npref.l2n(q), npref.l2n(q))
  np.testing.assert_allclose(f(S.cosine(q), kind="cosine"), expected, atol=2e-3)
  np.testing.assert_allclose(f(S.neg_squared_euclidean(q), kind="neg_squared_euclidean"),
                             npref.cdist(q, q), rtol=1e-4, atol=2e-3)
  np.testing.assert_allclose(f(jnp.array([[0.5, -2.0]]), kind="negate"), [[-0.5, 2.0]])
  # cosine similarity 1 (coincident unit vectors): distance 0, finite gradient
  g = jax.jit(jax.grad(lambda s: jnp.sum(S.to_distance(s))))(jnp.array([[1.0, 1.0 + 1e-7]]))
  assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match="`kind`"):
    S.to_distance(jnp.zeros((2, 2)), kind="angular")


@pytest.mark.parametrize("name", FUNCS)
def test_errors(name):
  f = jax.jit(getattr(S, name))
  with pytest.raises(ValueError, match="`queries`.*rank 2"):
    f(jnp.zeros(3))
  with pytest.raises(ValueError, match="`references`.*rank 2"):
    f(jnp.zeros((2, 3)), jnp.zeros((1, 2, 3)))
  with pytest.raises(ValueError, match="dimension"):
    f(jnp.zeros((2, 3)), jnp.zeros((4, 2)))
  with pytest.raises(TypeError, match="`queries`.*floating"):
    f(jnp.zeros((2, 3), jnp.int32))
