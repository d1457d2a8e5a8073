"""Tests for jaxdml.geometry.poincare: identities, hand values, naive float64 references, gradients
against finite differences, and safety at the boundary of the ball in float32 and bfloat16."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.geometry import poincare as P

C = 0.1

# ------------------------------------------------------------------------------------------------
# Naive float64 references (the hyptorch formulas, one pair at a time).
# ------------------------------------------------------------------------------------------------


def _np_mobius(x, y, c=C):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xy, x2, y2 = float(x @ y), float(x @ x), float(y @ y)
  num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
  return num / (1 + 2 * c * xy + c * c * x2 * y2 + 1e-5)


def _np_artanh(v):
  v = min(max(v, -1 + 1e-5), 1 - 1e-5)
  return 0.5 * (math.log(1 + v) - math.log(1 - v))


def _np_dist(x, y, c=C):
  return 2 / math.sqrt(c) * _np_artanh(math.sqrt(c) * np.linalg.norm(_np_mobius(-np.asarray(x), y,
                                                                               c)))


def _np_dist_matrix(x, y, c=C):
  return np.array([[_np_dist(x[i], y[j], c) for j in range(len(y))] for i in range(len(x))])


def _np_expmap0(u, c=C):
  u = np.asarray(u, np.float64)
  n = max(np.linalg.norm(u), 1e-5)
  return math.tanh(min(math.sqrt(c) * n, 15.0)) * u / (math.sqrt(c) * n)


def _np_to_poincare(x, c=C, r=2.3):
  x = np.asarray(x, np.float64)
  x = x * min(1.0, r / (np.linalg.norm(x) + 1e-5))
  y = _np_expmap0(x, c)
  n = max(np.linalg.norm(y), 1e-5)
  maxnorm = (1 - 1e-3) / math.sqrt(c)
  return y / n * maxnorm if n > maxnorm else y


def _numeric_grad(f, x, h=1e-6):
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (f(x + e) - f(x - e)) / (2 * h)
  return g


def _ball_points(rng, n, d, max_norm=1.9):
  v = rng.normal(size=(n, d))
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  return (v * rng.uniform(0.05, max_norm, size=(n, 1))).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Hand values (methods_spec 1.8.1) and closed forms.
# ------------------------------------------------------------------------------------------------


def test_hand_values():
  e = jax.jit(lambda u: P.to_poincare(u, c=C, clip_r=2.3))(
      jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [10.0, 0.0]]))
  d = jax.jit(lambda a, b: P.distance(a, b, c=C))
  assert float(d(e[0], e[2])) == pytest.approx(4.0, abs=1e-3)
  assert float(d(e[0], e[1])) == pytest.approx(2.9163, abs=1e-3)
  assert float(jnp.linalg.norm(e[3])) == pytest.approx(
      math.tanh(math.sqrt(0.1) * 2.3) / math.sqrt(0.1), abs=1e-4)
  assert float(jnp.linalg.norm(e[3])) == pytest.approx(1.9651, abs=1e-4)
  assert P.ball_radius(0.1) == pytest.approx(3.16228, abs=1e-5)
  assert P.projection_radius(0.1) == pytest.approx(0.999 * 3.16228, abs=1e-5)


def test_distance_to_origin_is_twice_the_tangent_norm(rng):
  u = rng.normal(size=(20, 6))
  u *= (rng.uniform(0.01, 2.3, size=(20, 1)) / np.linalg.norm(u, axis=1, keepdims=True))
  u = u.astype(np.float32)

  @jax.jit
  def f(u):
    z = P.to_poincare(u, c=C, clip_r=2.3)
    return P.distance(jnp.zeros_like(z), z, c=C), P.dist0(z, c=C)

  d, d0 = f(u)
  two_u = 2 * np.linalg.norm(u, axis=1)
  np.testing.assert_allclose(d0, two_u, atol=1e-4, rtol=1e-5)
  # Through the Mobius sum the 1e-5 denominator term shrinks the result by a factor 1/(1 + 1e-5).
  np.testing.assert_allclose(d, two_u, atol=1e-4, rtol=2e-5)


def test_expmap0_logmap0_inverse(rng):
  u = rng.normal(size=(16, 5)).astype(np.float32)  # norms up to ~4: tanh(0.32 * 4) < 1 - 1e-5
  y = _ball_points(rng, 16, 5, max_norm=3.0)
  f = jax.jit(lambda u, y: (P.logmap0(P.expmap0(u, c=C), c=C),
                            P.expmap0(P.logmap0(y, c=C), c=C)))
  back_u, back_y = f(u, y)
  np.testing.assert_allclose(back_u, u, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(back_y, y, rtol=1e-5, atol=1e-6)
  # The direction is kept, the norm squashed; the values match the formula.
  np.testing.assert_allclose(P.expmap0(u, c=C), np.stack([_np_expmap0(v) for v in u]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(P.expmap0(jnp.zeros((1, 5)), c=C), np.zeros((1, 5)))


def test_mobius_add_identity_and_inverse(rng):
  x, y = _ball_points(rng, 8, 4), _ball_points(rng, 8, 4)
  f = jax.jit(lambda x, y: (P.mobius_add(jnp.zeros_like(x), x, c=C), P.mobius_add(x, 0 * x, c=C),
                            P.mobius_add(-x, x, c=C), P.mobius_add(-x, P.mobius_add(x, y, c=C),
                                                                   c=C),
                            P.mobius_add(x, y, c=C)))
  zero_x, x_zero, minus_x_x, cancel, xy = f(x, y)
  np.testing.assert_allclose(zero_x, x / (1 + 1e-5), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(x_zero, x / (1 + 1e-5), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(minus_x_x, 0.0, atol=1e-6)
  np.testing.assert_allclose(cancel, y, rtol=1e-4, atol=1e-4)  # left cancellation, up to 1e-5 terms
  ref = np.stack([_np_mobius(x[i], y[i]) for i in range(len(x))])
  np.testing.assert_allclose(xy, ref, rtol=1e-5, atol=1e-6)


def test_distance_symmetric_and_matches_reference(rng):
  x, y = _ball_points(rng, 6, 5), _ball_points(rng, 6, 5)
  d = jax.jit(lambda a, b: P.distance(a, b, c=C))
  np.testing.assert_allclose(d(x, y), d(y, x), rtol=1e-5)
  np.testing.assert_allclose(d(x, y), [_np_dist(x[i], y[i]) for i in range(len(x))], rtol=1e-5)
  np.testing.assert_allclose(d(x, x), 0.0, atol=1e-5)


def test_dist_matrix_matches_double_loop(rng):
  x, y = _ball_points(rng, 7, 5), _ball_points(rng, 9, 5, max_norm=3.1)
  f = jax.jit(lambda a, b: (P.dist_matrix(a, b, c=C), P.dist_matrix(a, c=C),
                            P.distance(a[:, None], b[None], c=C)))
  dxy, dxx, brd = f(x, y)
  assert dxy.shape == (7, 9) and dxy.dtype == jnp.float32
  np.testing.assert_allclose(dxy, _np_dist_matrix(x, y), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dxy, brd, rtol=1e-4, atol=1e-4)
  ref = _np_dist_matrix(x, x)
  np.testing.assert_allclose(dxx, ref, rtol=1e-4, atol=2e-3)  # diagonal exact 0 vs tiny in ref
  np.testing.assert_array_equal(np.diag(dxx), 0.0)
  np.testing.assert_allclose(dxx, dxx.T, rtol=1e-5, atol=1e-5)


def test_other_curvature(rng):
  x, y = _ball_points(rng, 4, 3, max_norm=0.9), _ball_points(rng, 5, 3, max_norm=0.9)
  np.testing.assert_allclose(jax.jit(lambda a, b: P.dist_matrix(a, b, c=1.0))(x, y),
                             _np_dist_matrix(x, y, c=1.0), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Gradients.
# ------------------------------------------------------------------------------------------------


def test_gradients_match_finite_differences(rng):
  x = _ball_points(rng, 3, 4)
  y = _ball_points(rng, 4, 4)
  w = rng.normal(size=(3, 4))
  u = (rng.normal(size=(3, 4)) * 0.8).astype(np.float32)  # some rows clipped, some not
  u[0] *= 3.0

  gx, gy = jax.jit(jax.grad(lambda a, b: jnp.sum(w * P.dist_matrix(a, b, c=C)), argnums=(0, 1)))(
      x, y)
  np.testing.assert_allclose(gx, _numeric_grad(lambda a: np.sum(w * _np_dist_matrix(a, y)), x),
                             rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(gy, _numeric_grad(lambda b: np.sum(w * _np_dist_matrix(x, b)), y),
                             rtol=2e-3, atol=2e-4)

  def np_chain(v):
    z = np.stack([_np_to_poincare(r) for r in v])
    return np.sum(w * _np_dist_matrix(z, y))

  gu = jax.jit(jax.grad(lambda v: jnp.sum(
      w * P.dist_matrix(P.to_poincare(v, c=C, riemannian=False), y, c=C))))(u)
  np.testing.assert_allclose(gu, _numeric_grad(np_chain, u), rtol=2e-3, atol=2e-4)

  gl = jax.jit(jax.grad(lambda a: jnp.sum(w[:, :1] * P.logmap0(a, c=C))))(x)
  np_log = lambda a: sum(float(w[i, 0]) * np.sum(
      a[i] / np.linalg.norm(a[i]) / math.sqrt(C) * _np_artanh(math.sqrt(C) * np.linalg.norm(a[i])))
                         for i in range(len(a)))
  np.testing.assert_allclose(gl, _numeric_grad(np_log, x), rtol=2e-3, atol=2e-4)


def test_riemannian_gradient_scales_backward_only(rng):
  x = _ball_points(rng, 5, 3, max_norm=3.0)
  w = rng.normal(size=(5, 3)).astype(np.float32)
  f = jax.jit(lambda a: P.riemannian_gradient(a, c=C))
  np.testing.assert_array_equal(f(x), x)
  g = jax.jit(jax.grad(lambda a: jnp.sum(w * P.riemannian_gradient(a, c=C))))(x)
  scale = (1 - C * np.sum(x.astype(np.float64) ** 2, axis=1, keepdims=True)) ** 2 / 4
  np.testing.assert_allclose(g, w * scale, rtol=1e-5, atol=1e-7)
  # to_poincare applies it on top of the chain rule.
  u = rng.normal(size=(5, 3)).astype(np.float32)

  @jax.jit
  def grads(v):
    to_ball = lambda v, r: P.to_poincare(v, c=C, riemannian=r)
    return (jax.grad(lambda v: jnp.sum(w * to_ball(v, True)))(v),
            jax.grad(lambda v: jnp.sum(w * to_ball(v, False)))(v),
            to_ball(v, False), jax.vmap(jax.jacobian(lambda v: to_ball(v, False)))(v))

  g_r, g_e, z, jac = grads(u)
  s = (1 - C * np.sum(np.asarray(z, np.float64) ** 2, axis=1, keepdims=True)) ** 2 / 4
  np.testing.assert_allclose(g_r, np.einsum("bi,bij->bj", w * s, jac), rtol=1e-5, atol=1e-7)
  assert not np.allclose(g_r, g_e)


# ------------------------------------------------------------------------------------------------
# Boundary safety.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_boundary_values_and_gradients_are_finite(dtype):
  radius = P.projection_radius(C, dtype)
  d = 4
  dirs = np.eye(d, dtype=np.float32)
  # At the projection radius: along axes, antipodal pairs, a repeated point, and huge inputs.
  at_r = np.concatenate([dirs, -dirs, dirs[:1]]) * radius
  pts = jnp.asarray(at_r, dtype)
  huge = jnp.asarray(np.concatenate([dirs * 1e4, -dirs * 30.0, dirs[:1] * 1e6]), dtype)

  def everything(p, h):
    q = P.project(p, c=C)
    e = P.to_poincare(h, c=C, clip_r=None)  # no clipping: expmap0 saturates at the boundary
    out = (jnp.sum(P.dist_matrix(q, c=C)) + jnp.sum(P.dist_matrix(q, e, c=C))
           + jnp.sum(P.distance(q, q[::-1], c=C)) + jnp.sum(P.dist0(e, c=C))
           + jnp.sum(P.logmap0(q, c=C)) + jnp.sum(P.mobius_add(q, e, c=C))
           + jnp.sum(P.to_poincare(h, c=C)))
    return out.astype(jnp.float32)

  val, (gp, gh) = jax.jit(jax.value_and_grad(everything, argnums=(0, 1)))(pts, huge)
  assert np.isfinite(float(val))
  assert gp.dtype == dtype and gh.dtype == dtype
  assert np.all(np.isfinite(np.asarray(gp, np.float32)))
  assert np.all(np.isfinite(np.asarray(gh, np.float32)))
  # Projected points stay strictly inside the ball after rounding to the dtype.
  for arr in (P.project(pts * 2, c=C), P.to_poincare(huge, c=C, clip_r=None)):
    norms = np.linalg.norm(np.asarray(arr, np.float64), axis=1)
    assert norms.max() < P.ball_radius(C)
  dm = np.asarray(P.dist_matrix(P.project(pts, c=C), c=C), np.float32)
  assert np.all(np.isfinite(dm)) and dm.max() > 20  # antipodal boundary points are far apart


def test_project():
  x = jnp.array([[10.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
  p = jax.jit(lambda v: P.project(v, c=C))(x)
  np.testing.assert_allclose(p[0], [P.projection_radius(C), 0.0], rtol=1e-6)
  np.testing.assert_array_equal(p[1:], x[1:])
  g = jax.grad(lambda v: jnp.sum(P.project(v, c=C)))(x)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g[0], [0.0, P.projection_radius(C) / 10.0], rtol=1e-5, atol=1e-6)


def test_clip_features():
  x = jnp.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
  y = P.clip_features(x, 2.3)
  np.testing.assert_allclose(np.linalg.norm(y[0]), 2.3 * 5 / (5 + 1e-5), rtol=1e-6)
  np.testing.assert_array_equal(y[1:], x[1:])
  assert P.clip_features(x, None) is x
  assert np.all(np.isfinite(jax.grad(lambda v: jnp.sum(P.clip_features(v)))(x)))


def test_invalid_curvature():
  with pytest.raises(ValueError, match="> 0"):
    P.expmap0(jnp.ones((2, 2)), c=0.0)
  with pytest.raises(ValueError, match="dist_matrix"):
    P.dist_matrix(jnp.ones((2, 2)), jnp.ones((2, 3)))


# ------------------------------------------------------------------------------------------------
# Retrieval.
# ------------------------------------------------------------------------------------------------


def _naive_knn(q, r, k, exclude_self):
  scores, idx = [], []
  for i in range(len(q)):
    s = np.array([-_np_dist(q[i], r[j]) for j in range(len(r))])
    if exclude_self:
      s[i] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    scores.append(s[order])
    idx.append(order)
  return np.array(scores), np.array(idx)


def test_hyperbolic_knn_matches_naive_loop(rng):
  q, r = _ball_points(rng, 11, 4), _ball_points(rng, 13, 4)
  scores, idx = P.hyperbolic_knn(q, r, 5, c=C, chunk_size=4)  # 3 chunks, the last one padded
  ref_s, ref_i = _naive_knn(q, r, 5, False)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_allclose(scores, ref_s, rtol=1e-4, atol=1e-4)
  assert idx.dtype == jnp.int32

  scores, idx = P.hyperbolic_knn(q, k=3, c=C, chunk_size=5)  # leave-one-out
  ref_s, ref_i = _naive_knn(q, q, 3, True)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_allclose(scores, ref_s, rtol=1e-4, atol=1e-4)

  sim = jax.jit(lambda a, b: P.hyperbolic_similarity(a, b, c=C))(q, r)
  np.testing.assert_allclose(sim, -_np_dist_matrix(q, r), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="k"):
    P.hyperbolic_knn(q, k=11)


# ------------------------------------------------------------------------------------------------
# Precision of the Riemannian-gradient scale.
# ------------------------------------------------------------------------------------------------


def test_riemannian_gradient_is_exact_in_float64():
  """The backward scale `(1 - c |x|^2)^2 / 4` in float64 for float64 points, `c` included (a
  float32 `c` is off by ~1e-5 relative near the rim, where `1 - c |x|^2` is small)."""
  rng = np.random.default_rng(3)
  dirs = rng.normal(size=(6, 4))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  radius = 1.0 / math.sqrt(C)
  x = dirs * radius * np.array([0.999, 0.99, 0.95, 0.9, 0.5, 0.1])[:, None]
  w = rng.normal(size=x.shape)
  expected = w * (1.0 - C * np.sum(x * x, axis=1, keepdims=True)) ** 2 / 4.0
  with jax.enable_x64(True):
    grad = jax.jit(jax.grad(lambda a: jnp.sum(jnp.asarray(w) * P.riemannian_gradient(a, c=C))))
    g = grad(jnp.asarray(x, jnp.float64))
    assert g.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-12, atol=0)
    # A traced float64 curvature gives the same.
    g_traced = jax.jit(jax.grad(lambda a, c: jnp.sum(
        jnp.asarray(w) * P.riemannian_gradient(a, c=c))))(jnp.asarray(x), jnp.float64(C))
    np.testing.assert_allclose(np.asarray(g_traced), expected, rtol=1e-12, atol=0)
  # float32 points keep float32 arithmetic, and calls with other values of c reuse the trace.
  traces = []

  def f(a, c):
    traces.append(None)
    return jnp.sum(P.riemannian_gradient(a, c=c))

  grad32 = jax.jit(jax.grad(f))
  x32 = jnp.asarray(x, jnp.float32)
  for c in (C, 0.2):
    g32 = grad32(x32, jnp.float32(c))
    assert g32.dtype == jnp.float32
    scale = (1.0 - c * np.sum(np.asarray(x32, np.float64) ** 2, axis=1, keepdims=True)) ** 2 / 4
    np.testing.assert_allclose(g32, np.broadcast_to(scale, x.shape), rtol=2e-3, atol=1e-7)
  assert len(traces) == 1
