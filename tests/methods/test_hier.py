"""Tests for jaxdml.methods.hier: LCA selection and reciprocal mining by hand, the full loss
against a naive loop over the same triplets, gradient plumbing, composition with Proxy-Anchor, and
the Hyperbolic-ViT pairwise cross-entropy against a naive float64 implementation."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses, objectives
from jaxdml.geometry import poincare
from jaxdml.methods import hier

C = 0.1


def _np_dist(x, y, c=C):
  x, y = -np.asarray(x, np.float64), np.asarray(y, np.float64)
  xy, x2, y2 = x @ y, x @ x, y @ y
  m = ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2 + 1e-5)
  v = min(math.sqrt(c) * np.linalg.norm(m), 1 - 1e-5)
  return 2 / math.sqrt(c) * math.atanh(v)


def _np_dist_matrix(x, y, c=C):
  return np.array([[_np_dist(a, b, c) for b in y] for a in x])


# ------------------------------------------------------------------------------------------------
# Parameters and recipe.
# ------------------------------------------------------------------------------------------------


def test_init_proxies():
  p = hier.init_proxies(jax.random.key(0), 64, 256)
  assert p.shape == (64, 256) and p.dtype == jnp.float32
  norms = np.linalg.norm(p, axis=1)
  assert abs(norms.mean() - 0.9 * 2.3) < 0.05
  assert hier.init_proxies(jax.random.key(0), 3, 4, dtype=jnp.bfloat16).dtype == jnp.bfloat16
  with pytest.raises(ValueError):
    hier.init_proxies(jax.random.key(0), 0, 4)


def test_lr_multipliers():
  assert hier.lr_multipliers() == {"backbone": 1.0, "head": 1.0, "hier_proxies": 50.0,
                                        "class_proxies": 1e4}
  assert hier.lr_multipliers(fc_lr_scale=100)["head"] == 100.0


# ------------------------------------------------------------------------------------------------
# LCA selection (methods_spec 1.8.2).
# ------------------------------------------------------------------------------------------------


def _triplets(rows, weights):
  a, p, n = (jnp.array(v, jnp.int32) for v in zip(*rows, strict=True))
  return hier.Triplets(a, p, n, jnp.array(weights, jnp.float32))


@functools.partial(jax.jit, static_argnames=("noise",))
def _triplet_loss_and_grad(dist, trip, key, noise=False):
  f = lambda d: hier.triplet_loss(d, trip, key if noise else None, margin=0.1, tau=0.1)
  (loss, aux), g = jax.value_and_grad(f, has_aux=True)(dist)
  return loss, aux, g


def test_lca_same_ancestor_gives_zero():
  dist = jnp.array([[1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [5.0, 5.0, 4.0]])
  m_ij = jnp.maximum(dist[0], dist[1])
  _, idx = hier.select_lca(m_ij[None], None, tau=0.1)
  assert int(idx[0]) == 2  # m_ij = [3, 3, 2]
  _, idx = hier.select_lca(jnp.maximum(m_ij, dist[2])[None], None, tau=0.1)
  assert int(idx[0]) == 2  # m_ijk = [5, 5, 4]
  loss, aux, g = _triplet_loss_and_grad(dist, _triplets([(0, 1, 2)], [1.0]), jax.random.key(0))
  assert float(loss) == 0.0 and float(aux["active_fraction"]) == 0.0
  np.testing.assert_array_equal(g, 0.0)


def test_lca_by_hand():
  dist = jnp.array([[1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [1.0, 9.0, 9.0]])
  # m_ij = [3, 3, 2] -> LCA_ij = 2; m_ijk = [3, 9, 9] -> LCA_ijk = 0.
  # i: [2 - 1 + 0.1]_+ = 1.1; j: [2 - 3 + 0.1]_+ = 0; k: [1 - 9 + 0.1]_+ = 0.
  loss, aux, g = _triplet_loss_and_grad(dist, _triplets([(0, 1, 2)], [1.0]), jax.random.key(0))
  assert float(loss) == pytest.approx(1.1, abs=1e-6)
  assert float(aux["active_fraction"]) == 1.0
  # Straight-through: the forward one-hot weights give d loss / d dist_i = e_2 - e_0 (the soft
  # part adds terms of order exp(-10) here).
  np.testing.assert_allclose(g[0], [-1.0, 0.0, 1.0], atol=1e-3)
  np.testing.assert_allclose(g[1:], 0.0, atol=1e-3)
  # A triplet with coinciding LCAs still counts in the mean; a zero-weight slot does not.
  trip = _triplets([(0, 1, 2), (0, 1, 0), (1, 0, 2)], [1.0, 1.0, 0.0])
  loss, aux, _ = _triplet_loss_and_grad(dist, trip, jax.random.key(0))
  assert float(loss) == pytest.approx(0.55, abs=1e-6)
  assert float(aux["num_triplets"]) == 2.0 and float(aux["active_fraction"]) == 0.5
  loss, _, _ = _triplet_loss_and_grad(dist, _triplets([(0, 1, 2)], [0.0]), jax.random.key(0))
  assert float(loss) == 0.0


def test_select_lca_gumbel():
  m = jax.random.uniform(jax.random.key(1), (50, 7)) * 3
  v = jax.random.normal(jax.random.key(3), (50, 7))
  key = jax.random.key(2)

  @jax.jit
  def run(m, v, key):
    g = jax.random.gumbel(key, m.shape)
    (w, idx), vjp = jax.vjp(lambda m: hier.select_lca(m, key, tau=0.1), m)
    grad = vjp((v, jnp.zeros(idx.shape, jax.dtypes.float0)))[0]
    grad_soft = jax.grad(lambda m: jnp.sum(v * jax.nn.softmax(-m / 0.1 + g, axis=-1)))(m)
    return w, idx, jnp.argmax(-m / 0.1 + g, axis=-1), grad, grad_soft

  w, idx, expected, g, g_soft = run(m, v, key)
  np.testing.assert_array_equal(idx, expected)
  np.testing.assert_allclose(w, jax.nn.one_hot(expected, 7), atol=1e-6)
  assert np.any(idx != jnp.argmin(m, axis=-1))  # the noise changes some choices
  # The backward pass is the softmax's.
  np.testing.assert_allclose(g, g_soft, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Reciprocal mining by hand (methods_spec 1.8.3).
# ------------------------------------------------------------------------------------------------

# Four points on a line through the origin: class 0 at -2.0, -1.9, class 1 at 1.9, 2.0. a2 and b1
# are the closest points of the two classes.
_LINE = np.array([[-2.0, 0.0], [-1.9, 0.0], [1.9, 0.0], [2.0, 0.0]], np.float32)
_LINE_Y = np.array([0, 0, 1, 1], np.int32)


def _data_sim(z, y):
  d = poincare.dist_matrix(z, c=C)
  return jnp.exp(-d) + (y[:, None] == y[None, :])


@functools.partial(jax.jit, static_argnames=("topk", "t", "incl"))
def _mine(z, y, key, topk, t, incl=True):
  s = _data_sim(z, y)
  return hier.reciprocal_relevance(s, topk), hier.reciprocal_triplets(
      s, key, topk=topk, triplets_per_anchor=t, negatives_include_anchor=incl)


def test_reciprocal_mining_topk2_skips_every_anchor():
  m, trip = _mine(_LINE, _LINE_Y, jax.random.key(0), 2, 5)
  expected = np.array([[-1, 1, 0, 0], [1, -1, 0, 0], [0, 0, -1, 1], [0, 0, 1, -1]])
  np.testing.assert_array_equal(m, expected)
  np.testing.assert_array_equal(trip.weight, 0.0)
  assert trip.anchor.shape == (20,)


def test_reciprocal_mining_topk3_by_hand():
  # top-3 rows: a1 {a1, a2, b1}, a2 {a2, a1, b1}, b1 {b1, b2, a2}, b2 {b2, b1, a2}.
  m, trip = _mine(_LINE, _LINE_Y, jax.random.key(0), 3, 400)
  expected = np.array([[-1, 1, 0.5, 0], [1, -1, 1, 0.5], [0.5, 1, -1, 1], [0, 0.5, 1, -1]])
  np.testing.assert_array_equal(m, expected)
  a, p, n, w = (np.asarray(v) for v in trip)
  np.testing.assert_array_equal(a, np.repeat(np.arange(4), 400))
  # a1 and b2 have one mutual neighbour each and are skipped; a2 and b1 have two.
  np.testing.assert_array_equal(w, np.repeat([0.0, 1.0, 1.0, 0.0], 400))
  # a2 (index 1): partners {a1, b1}; third nodes {a2 itself (authors' quirk), b2}.
  assert set(p[a == 1]) == {0, 2} and set(n[a == 1]) == {1, 3}
  # b1 (index 2): partners {a2, b2}; third nodes {a1, b1 itself}.
  assert set(p[a == 2]) == {1, 3} and set(n[a == 2]) == {0, 2}
  # Uniform with replacement.
  assert 0.4 < np.mean(p[a == 1] == 0) < 0.6 and 0.4 < np.mean(n[a == 2] == 0) < 0.6

  _, trip = _mine(_LINE, _LINE_Y, jax.random.key(0), 3, 400, incl=False)
  a, _, n, w = (np.asarray(v) for v in trip)
  assert set(n[a == 1]) == {3} and set(n[a == 2]) == {0}
  np.testing.assert_array_equal(w, np.repeat([0.0, 1.0, 1.0, 0.0], 400))


def test_topk_is_clipped_to_the_number_of_nodes():
  m = hier.reciprocal_relevance(jnp.eye(3), 20)
  np.testing.assert_array_equal(m, np.where(np.eye(3), -1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# The full loss.
# ------------------------------------------------------------------------------------------------

B, P, D, TOPK, T = 8, 6, 4, 4, 10


def _setup(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (B, D)) * 1.5  # Euclidean head outputs
  y = jnp.repeat(jnp.arange(B // 2), 2).astype(jnp.int32)
  proxies = hier.init_proxies(keys[1], P, D)
  return x, y, proxies, keys[2]


@functools.partial(jax.jit, static_argnames=("noise",))
def _hier_value_and_grads(proxies, x, y, key, noise=True):
  def f(proxies, x):
    z = poincare.to_poincare(x, c=C)
    return hier.loss_and_aux(proxies, z, y, key, topk=TOPK, triplets_per_anchor=T,
                                  lca_noise=noise)
  return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(proxies, x)


def _naive_ghhc(dist, a, p, n, w, margin=0.1):
  num, den = 0.0, 0.0
  for t in range(len(a)):
    if w[t] == 0:
      continue
    di, dj, dk = dist[a[t]], dist[p[t]], dist[n[t]]
    m_ij = np.maximum(di, dj)
    l_ij, l_ijk = int(np.argmin(m_ij)), int(np.argmin(np.maximum(m_ij, dk)))
    den += 1
    if l_ij != l_ijk:
      num += (max(di[l_ij] - di[l_ijk] + margin, 0) + max(dj[l_ij] - dj[l_ijk] + margin, 0)
              + max(dk[l_ijk] - dk[l_ij] + margin, 0))
  return num / den if den else 0.0


def _naive_relevance(s, k):
  n = len(s)
  nn = np.zeros((n, n))
  for i in range(n):
    nn[i, np.argsort(-s[i], kind="stable")[:k]] = 1
  m = (nn + nn.T) / 2
  np.fill_diagonal(m, -1)
  return m


@jax.jit
def _mining_parts(x, proxies, y, key):
  z = poincare.to_poincare(x, c=C)
  rho = poincare.to_poincare(proxies, c=C)
  u_data, u_proxy, _, _ = hier._randomness(key, B, P, T, False)  # the loss's own draws
  d_zz, d_zp, d_pp = (poincare.dist_matrix(z, c=C), poincare.dist_matrix(z, rho, c=C),
                      poincare.dist_matrix(rho, c=C))
  s_data = jnp.exp(-d_zz) + (y[:, None] == y[None, :])
  s_prox = jnp.exp(-d_pp)
  out = {"z": z, "rho": rho, "d_zp": d_zp, "d_pp": d_pp, "s_data": s_data, "s_proxy": s_prox}
  for name, sim, u in (("data", s_data, u_data), ("proxy", s_prox, u_proxy)):
    out[f"m_{name}"] = hier.reciprocal_relevance(sim, TOPK)
    out[f"t_{name}"] = hier._reciprocal_triplets(sim, u, TOPK, True)
  return out


def test_hier_loss_matches_naive_loop_on_the_same_triplets():
  x, y, proxies, key = _setup()
  (loss, aux), _ = _hier_value_and_grads(proxies, x, y, key, noise=False)
  parts = jax.tree_util.tree_map(np.asarray, _mining_parts(x, proxies, y, key))
  z, rho = parts["z"].astype(np.float64), parts["rho"].astype(np.float64)
  # The distances agree with the naive ones; the naive loss below reuses the float32 matrices so
  # that exact LCA ties (a proxy pair and its two members, see `hier.loss_and_aux`) are broken
  # identically.
  np.testing.assert_allclose(parts["d_zp"], _np_dist_matrix(z, rho), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(parts["d_pp"], _np_dist_matrix(rho, rho), rtol=1e-4, atol=1e-3)
  expected = 0.0
  for name, d in (("data", parts["d_zp"]), ("proxy", parts["d_pp"])):
    m = _naive_relevance(parts[f"s_{name}"], TOPK)
    np.testing.assert_array_equal(parts[f"m_{name}"], m)
    a, p, n, w = parts[f"t_{name}"]
    valid = (m == 1).sum(1) > 1
    np.testing.assert_array_equal(w, np.repeat(valid, T))
    assert np.all(m[a, p][w > 0] == 1) and np.all(m[a, n] < 1)
    part = _naive_ghhc(d, a, p, n, w)
    assert float(aux[f"{name}_loss"]) == pytest.approx(part, rel=1e-4, abs=1e-5)
    assert float(aux[f"{name}_triplets"]) == w.sum()
    expected += part
  assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-5)
  assert expected > 0


def test_hier_loss_gradients_reach_proxies_and_embeddings():
  x, y, proxies, key = _setup()
  (loss, aux), (g_prox, g_x) = _hier_value_and_grads(proxies, x, y, key)
  assert np.isfinite(float(loss)) and float(loss) > 0
  for g in (g_prox, g_x):
    assert np.all(np.isfinite(g)) and np.any(g != 0)
  assert float(aux["data_triplets"]) > 0 and float(aux["proxy_triplets"]) > 0
  # Same key, same value; another key samples other triplets and noise.
  (again, _), _ = _hier_value_and_grads(proxies, x, y, key)
  assert float(again) == float(loss)
  (other, _), _ = _hier_value_and_grads(proxies, x, y, jax.random.key(99))
  assert float(other) != float(loss)


def test_hier_loss_is_zero_without_valid_anchors():
  x, y, proxies, key = _setup()
  z = poincare.to_poincare(x, c=C)
  f = lambda p: hier.loss_and_aux(p, z, y, key, topk=1, triplets_per_anchor=3)
  (loss, aux), g = jax.jit(jax.value_and_grad(f, has_aux=True))(proxies)
  assert float(loss) == 0.0 and float(aux["data_triplets"]) == 0.0
  np.testing.assert_array_equal(g, 0.0)


def test_wrap_composes_with_proxy_anchor_in_one_jitted_value_and_grad():
  x, y, proxies, key = _setup()
  settings = hier.Settings(num_proxies=proxies.shape[0], topk=TOPK, triplets_per_anchor=T)
  obj = hier.wrap(objectives.core("proxy_anchor", num_classes=B // 2, dim=D), settings, dim=D)
  params = obj.init(jax.random.key(5))
  params = {**params, "hier": proxies}
  k_inner, k_own = jax.random.split(key)

  @jax.jit
  def step(params, x):
    def total(params, x):
      z = poincare.to_poincare(x, c=C)  # the head's output: both losses see the same embeddings
      loss, _, aux = obj.apply(params, {}, objectives.Batch(z, y), key)
      return loss, aux
    z = poincare.to_poincare(x, c=C)
    separate = (losses.proxy_anchor_loss(z, y, params["proxies"]),
                hier.loss(params["hier"], z, y, k_own, topk=TOPK, triplets_per_anchor=T),
                losses.proxy_anchor_loss(x, y, params["proxies"]))
    return jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(params, x), separate

  ((loss, aux), grads), (base, h, base_euclidean) = step(params, x)
  assert float(loss) == pytest.approx(float(base) + 0.5 * float(h), rel=1e-5)
  assert float(aux["base_loss"]) == pytest.approx(float(base), rel=1e-5)
  assert float(aux["hier_loss"]) == pytest.approx(float(h), rel=1e-5)
  assert float(hier.combine_losses(base, h)) == pytest.approx(float(loss), rel=1e-5)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0)
  # The direction seen by the cosine base loss is the Euclidean head's.
  np.testing.assert_allclose(base_euclidean, base, rtol=1e-5)
  assert dict(obj.lr_mult) == {"hier": 50.0}


def test_settings_and_build_check_their_values():
  with pytest.raises(ValueError, match="num_proxies"):
    hier.Settings(num_proxies=0)
  with pytest.raises(ValueError, match="tau"):
    hier.Settings(tau=0.0)
  inner = objectives.core("proxy_anchor", num_classes=4, dim=D)
  with pytest.raises(ValueError, match="hyperbolic head"):
    hier.build(inner, hier.Settings(), objectives.Setup(num_classes=4, dim=D))
  with pytest.raises(ValueError, match="differs from the head"):
    hier.build(inner, hier.Settings(c=0.5), objectives.Setup(4, D, ball=(0.1, 2.3)))
  built = hier.build(inner, hier.Settings(), objectives.Setup(4, D, ball=(0.2, 1.0)))
  assert built.name == "proxy_anchor+hier"
  with pytest.raises(ValueError, match="already has parameters"):
    hier.wrap(hier.wrap(inner, dim=D), dim=D).init(key_of(0))


def key_of(seed):
  return jax.random.key(seed)


def test_input_checks():
  x, y, proxies, key = _setup()
  with pytest.raises(ValueError, match="dimension"):
    hier.loss(proxies[:, :3], x, y, key)
  with pytest.raises(ValueError):
    hier.loss(proxies, x, y[:3], key)


# ------------------------------------------------------------------------------------------------
# Hyperbolic ViT's pairwise cross-entropy (methods_spec section 2).
# ------------------------------------------------------------------------------------------------


def _naive_pairwise_ce(z, c, tau, reduction):
  z = np.asarray(z, np.float64)
  n, m, _ = z.shape
  sim = (lambda a, b: float(a @ b)) if c == 0 else (lambda a, b: -_np_dist(a, b, c))
  total = 0.0
  for i in range(m):
    for j in range(m):
      if i == j:
        continue
      pair = 0.0
      for r in range(n):
        row = [sim(z[r, i], z[s, j]) / tau for s in range(n)]
        row += [sim(z[r, i], z[s, i]) / tau - (1e9 if s == r else 0.0) for s in range(n)]
        mx = max(row)
        pair += -(row[r] - mx) + math.log(sum(math.exp(v - mx) for v in row))
      total += pair / n
  return {"sum": total, "mean": total / (m * (m - 1)), "hier": total / (m * m)}[reduction]


_ce = jax.jit(hier.hyp_pairwise_ce_loss, static_argnames=("c", "tau", "reduction"))


@pytest.mark.parametrize("c,reduction", [(0.1, "sum"), (0.1, "hier"), (0.0, "mean")])
def test_pairwise_ce_matches_naive(c, reduction):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3, 5)).astype(np.float32)
  if c == 0:
    z = x / np.linalg.norm(x, axis=-1, keepdims=True)
  else:
    z = np.asarray(poincare.to_poincare(jnp.asarray(x), c=c, riemannian=False))
  got = _ce(jnp.asarray(z), c=c, tau=0.2, reduction=reduction)
  assert float(got) == pytest.approx(_naive_pairwise_ce(z, c, 0.2, reduction), rel=1e-4)


def test_pairwise_ce_properties():
  n, m = 3, 2
  # Collapsed embeddings: every logit equal except the masked one -> log(2n - 1) per pair.
  z = jnp.full((n, m, 4), 0.05)
  assert float(_ce(z, c=C, tau=0.2)) == pytest.approx(m * (m - 1) * math.log(2 * n - 1), abs=1e-3)
  # Well separated classes, identical views: the loss vanishes as the separation grows.
  dirs = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
  vals = [float(_ce(jnp.repeat(poincare.to_poincare(dirs * s, c=C)[:, None], 2, axis=1), c=C,
                    tau=0.2)) for s in (0.1, 0.3, 0.6)]
  assert vals[0] > vals[1] > vals[2] and vals[2] < 1e-4
  # Permuting the classes consistently across views does not change it.
  zr = poincare.to_poincare(jax.random.normal(jax.random.key(0), (5, 3, 4)), c=C)
  perm = jnp.array([3, 0, 4, 1, 2])
  assert float(_ce(zr[perm], c=C, tau=0.2)) == pytest.approx(float(_ce(zr, c=C, tau=0.2)),
                                                              rel=1e-5)
  g = jax.jit(jax.grad(lambda z: hier.hyp_pairwise_ce_loss(z, c=C)))(zr)
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  with pytest.raises(ValueError, match="views"):
    hier.hyp_pairwise_ce_loss(jnp.ones((3, 1, 4)))


def test_lowest_common_ancestors_by_hand():
  """Proxies on a line through the origin: the LCA of two points is the proxy that minimises the
  larger of the two distances; its depth is its distance to the origin,
  2/sqrt(c) artanh(sqrt(c) r)."""
  from jaxdml.methods.hier import lowest_common_ancestors
  c = 1.0
  proxies = jnp.array([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.8, 0.0]])
  x = jnp.array([[0.85, 0.0], [0.85, 0.0], [0.45, 0.0]])
  y = jnp.array([[0.75, 0.0], [-0.75, 0.0], [0.55, 0.0]])
  idx, depth = lowest_common_ancestors(x, y, proxies, c=c)
  # both near 0.8 -> proxy 3; opposite sides -> the origin; both near 0.5 -> proxy 1
  np.testing.assert_array_equal(idx, [3, 0, 1])
  np.testing.assert_allclose(depth, [2 * np.arctanh(0.8), 0.0, 2 * np.arctanh(0.5)], atol=1e-5)


def test_weight_decay_setting_asks_for_the_groups_decay():
  inner = objectives.core("proxy_anchor", num_classes=4, dim=D)
  assert hier.Settings().weight_decay is None
  assert dict(hier.wrap(inner, hier.Settings(num_proxies=8), dim=D).weight_decay) == {}
  obj = hier.wrap(inner, hier.Settings(num_proxies=8, weight_decay=1e-2), dim=D)
  assert dict(obj.weight_decay) == {"hier": 1e-2} and dict(obj.lr_mult) == {"hier": 50.0}
  # Two HIERs: each its own group, the inner one's kept.
  outer = hier.wrap(obj, hier.Settings(num_proxies=8, weight_decay=0.0, lr_mult=5.0), dim=D,
                    name="hier2")
  assert dict(outer.weight_decay) == {"hier": 1e-2, "hier2": 0.0}
  assert dict(outer.lr_mult) == {"hier": 50.0, "hier2": 5.0}
  with pytest.raises(ValueError, match="hier weight_decay"):
    hier.Settings(weight_decay=-1e-2)
