"""Tests for the proxy losses in jaxdml.losses._proxy.

Every loss is checked against a naive float64 numpy implementation written here with explicit loops,
and, when torch and pytorch-metric-learning are importable, against PML with the same weights.
To keep the suite fast all float32 checks of one loss share one jitted function (loss, gradients
and the matrix form together) and one set of shapes; hyperparameters are traced arguments.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import similarity
from jaxdml.losses import _proxy as P

B, D, C, K = 6, 4, 5, 3

# ------------------------------------------------------------------------------------------------
# Naive float64 references (plain loops over samples and proxies).
# ------------------------------------------------------------------------------------------------


def _unit(v):
  return v / math.sqrt(sum(float(t) * float(t) for t in v))


def _naive_cos(x, p):
  return np.array([[float(np.dot(_unit(x[i]), _unit(p[c]))) for c in range(len(p))]
                   for i in range(len(x))])


def _naive_neg_sq_dist(x, p):
  out = np.zeros((len(x), len(p)))
  for i in range(len(x)):
    for c in range(len(p)):
      diff = _unit(x[i]) - _unit(p[c])
      out[i, c] = -float(np.dot(diff, diff))
  return out


def _naive_proxy_anchor(x, t, p, hp):
  s = _naive_cos(x, p)
  alpha, margin = hp["alpha"], hp["margin"]
  pos_terms, neg_total = [], 0.0
  for c in range(len(p)):
    if any(t[i, c] > 0 for i in range(len(x))):
      pos_terms.append(math.log1p(sum(t[i, c] * math.exp(-alpha * (s[i, c] - margin))
                                      for i in range(len(x)))))
    neg_total += math.log1p(sum((1 - t[i, c]) * math.exp(alpha * (s[i, c] + margin))
                                for i in range(len(x))))
  pos = sum(pos_terms) / len(pos_terms) if pos_terms else 0.0
  return pos + neg_total / len(p)


def _naive_softmax_family(z, t):
  """Mean over rows with a positive of -log(sum_c t e^z / sum_c e^z)."""
  losses = []
  for i in range(z.shape[0]):
    if not any(t[i, c] > 0 for c in range(z.shape[1])):
      continue
    num = sum(t[i, c] * math.exp(z[i, c]) for c in range(z.shape[1]))
    den = sum(math.exp(z[i, c]) for c in range(z.shape[1]))
    losses.append(-math.log(num / den))
  return sum(losses) / len(losses) if losses else 0.0


def _naive_logits(name, x, t, p, hp):
  if name == "proxy_nca":
    return _naive_neg_sq_dist(x, p) / hp["temperature"]
  if name == "normalized_softmax":
    return _naive_cos(x, p) / hp["temperature"]
  s = _naive_cos(x, p)
  z = np.zeros_like(s)
  for i in range(s.shape[0]):
    for c in range(s.shape[1]):
      if name == "cosface":
        z[i, c] = hp["scale"] * (s[i, c] - hp["margin"] * t[i, c])
      else:  # arcface
        m = hp["margin"]
        theta = math.acos(s[i, c])
        psi = math.cos(theta + m) if theta <= math.pi - m else s[i, c] - m * math.sin(m)
        z[i, c] = hp["scale"] * ((1 - t[i, c]) * s[i, c] + t[i, c] * psi)
  return z


def _naive_soft_triple(x, t, centers, hp):
  nc, nk, _ = centers.shape
  z = np.zeros((len(x), nc))
  for i in range(len(x)):
    for c in range(nc):
      sims = [float(np.dot(_unit(x[i]), _unit(centers[c, k]))) for k in range(nk)]
      w = [math.exp(s / hp["gamma"]) for s in sims]
      class_sim = sum(wk * s for wk, s in zip(w, sims, strict=True)) / sum(w)
      z[i, c] = hp["la"] * (class_sim - hp["margin"] * t[i, c])
  reg = 0.0
  for c in range(nc):
    for k in range(nk):
      for k2 in range(k + 1, nk):
        g = float(np.dot(_unit(centers[c, k]), _unit(centers[c, k2])))
        reg += math.sqrt(2.0 + 1e-5 - 2.0 * g)
  reg /= nc * nk * (nk - 1)
  return _naive_softmax_family(z, t) + hp["tau"] * reg


def naive(name, x, t, p, hp):
  x, t, p = (np.asarray(a, np.float64) for a in (x, t, p))
  if name == "proxy_anchor":
    return _naive_proxy_anchor(x, t, p, hp)
  if name == "soft_triple":
    return _naive_soft_triple(x, t, p, hp)
  return _naive_softmax_family(_naive_logits(name, x, t, p, hp), t)


# ------------------------------------------------------------------------------------------------
# The losses under test, their matrix forms and default hyperparameters.
# ------------------------------------------------------------------------------------------------


def _cos_sim(x, p):
  return similarity.cosine(x, p)


def _nca_sim(x, p):
  return similarity.neg_squared_euclidean(similarity.l2_normalize(x), similarity.l2_normalize(p))


def _centre_sim(x, c):
  nc, nk, d = c.shape
  return similarity.cosine(x, c.reshape(nc * nk, d)).reshape(x.shape[0], nc, nk)


SPECS = {
    "proxy_anchor": (P.proxy_anchor_loss, P.proxy_anchor_from_sim, _cos_sim,
                     dict(margin=0.1, alpha=32.0)),
    "proxy_nca": (P.proxy_nca_loss, P.proxy_nca_from_sim, _nca_sim, dict(temperature=1.0 / 9)),
    "normalized_softmax": (P.normalized_softmax_loss, P.normalized_softmax_from_sim, _cos_sim,
                           dict(temperature=0.05)),
    "arcface": (P.arcface_loss, P.arcface_from_sim, _cos_sim,
                dict(margin=math.radians(28.6), scale=64.0)),
    "cosface": (P.cosface_loss, P.cosface_from_sim, _cos_sim, dict(margin=0.35, scale=64.0)),
    "soft_triple": (P.soft_triple_loss, P.soft_triple_from_sim, _centre_sim,
                    dict(la=20.0, gamma=0.1, margin=0.01, tau=0.2)),
}
NAMES = list(SPECS)


@functools.lru_cache(maxsize=None)
def _compiled(name):
  """One jitted function per loss: wrapper loss, its gradients, and the matrix form."""
  loss_fn, from_sim, sim_fn, _ = SPECS[name]

  def run(x, y, p, target, hp):
    value, (gx, gp) = jax.value_and_grad(
        lambda a, b: loss_fn(a, y, b, **hp), argnums=(0, 1))(x, p)
    if name == "soft_triple":
      hp_sim = {k: v for k, v in hp.items() if k != "tau"}
      matrix = from_sim(sim_fn(x, p), target, **hp_sim) + hp["tau"] * P.soft_triple_regularizer(p)
    else:
      matrix = from_sim(sim_fn(x, p), target, **hp)
    return value, gx, gp, matrix

  return jax.jit(run)


def _inputs(seed=0, labels=None):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, D)).astype(np.float32)
  if labels is None:
    return x, rng.integers(0, C, size=B).astype(np.int32)
  return x, np.asarray(labels, np.int32)


def _proxies(name, seed=1):
  rng = np.random.default_rng(seed)
  shape = (C, K, D) if name == "soft_triple" else (C, D)
  return rng.normal(size=shape).astype(np.float32)


def _one_hot(y):
  t = np.zeros((len(y), C), np.float32)
  for i, label in enumerate(y):
    if 0 <= label < C:
      t[i, label] = 1.0
  return t


def _call(name, x, y, p, target=None, hp=None):
  hp = dict(SPECS[name][3] if hp is None else hp)
  target = _one_hot(y) if target is None else target
  out = _compiled(name)(jnp.asarray(x), jnp.asarray(y), jnp.asarray(p), jnp.asarray(target), hp)
  return [np.asarray(o) for o in out]


# ------------------------------------------------------------------------------------------------
# Values: naive reference, matrix form, soft targets, labels out of range.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_matches_naive_and_matrix_form(name):
  x, y = _inputs()
  p = _proxies(name)
  hp = SPECS[name][3]
  value, gx, gp, matrix = _call(name, x, y, p)
  expected = naive(name, x, _one_hot(y), p, hp)
  np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-5)
  # One-hot target through the matrix form equals the wrapper.
  np.testing.assert_allclose(matrix, value, rtol=1e-6, atol=1e-6)
  # Gradients reach the embeddings and the proxies, and are finite.
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))
  assert np.abs(gp).max() > 0 and np.abs(gx).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_soft_targets_match_naive(name):
  x, y = _inputs(seed=2)
  p = _proxies(name)
  rng = np.random.default_rng(3)
  lam = rng.uniform(0.2, 0.8, size=B).astype(np.float32)
  partner = (y + 1 + rng.integers(0, C - 1, size=B)) % C
  t = lam[:, None] * _one_hot(y) + (1 - lam[:, None]) * _one_hot(partner)
  hp = SPECS[name][3]
  *_, matrix = _call(name, x, y, p, target=t)
  np.testing.assert_allclose(matrix, naive(name, x, t, p, hp), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_labels_are_ignored(name):
  x, _ = _inputs(seed=4)
  y = np.array([0, -1, 2, 0, C, 3], np.int32)
  p = _proxies(name)
  value, gx, gp, _ = _call(name, x, y, p)
  valid = (y >= 0) & (y < C)
  expected = naive(name, x[valid], _one_hot(y[valid]), p, SPECS[name][3])
  np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-5)
  # The ignored examples get no gradient.
  np.testing.assert_array_equal(gx[~valid], 0.0)
  assert np.all(np.isfinite(gp))


@pytest.mark.parametrize("name", NAMES)
def test_batch_permutation_invariance(name):
  x, y = _inputs(seed=5)
  p = _proxies(name)
  perm = np.random.default_rng(6).permutation(B)
  value, gx, gp, _ = _call(name, x, y, p)
  value_p, gx_p, gp_p, _ = _call(name, x[perm], y[perm], p)
  np.testing.assert_allclose(value_p, value, rtol=1e-5)
  np.testing.assert_allclose(gx_p, gx[perm], rtol=1e-4, atol=1e-5 * np.abs(gx).max())
  np.testing.assert_allclose(gp_p, gp, rtol=1e-4, atol=1e-5 * np.abs(gp).max())


def test_hyperparameters_change_the_value():
  x, y = _inputs()
  p = _proxies("proxy_nca")
  v1 = _call("proxy_nca", x, y, p, hp=dict(temperature=1.0))[0]
  v2 = _call("proxy_nca", x, y, p, hp=dict(temperature=1.0 / 9))[0]
  np.testing.assert_allclose(v1, naive("proxy_nca", x, _one_hot(y), p, dict(temperature=1.0)),
                             rtol=2e-5)
  assert abs(float(v1) - float(v2)) > 1e-3


# ------------------------------------------------------------------------------------------------
# Edge cases.
# ------------------------------------------------------------------------------------------------


def test_proxy_anchor_single_class_batch_is_finite():
  x, y = _inputs(seed=7, labels=[2] * B)
  p = _proxies("proxy_anchor")
  value, gx, gp, _ = _call("proxy_anchor", x, y, p)
  assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))
  hp = SPECS["proxy_anchor"][3]
  np.testing.assert_allclose(value, naive("proxy_anchor", x, _one_hot(y), p, hp), rtol=2e-5)


def test_proxy_anchor_empty_batch_is_zero():
  x, _ = _inputs(seed=8)
  y = np.full(B, -1, np.int32)
  value, gx, gp, _ = _call("proxy_anchor", x, y, _proxies("proxy_anchor"))
  assert value == 0.0 and np.all(gx == 0) and np.all(gp == 0)


@pytest.mark.parametrize("name", ["arcface", "cosface", "normalized_softmax", "proxy_nca"])
def test_embedding_equal_to_proxy_has_finite_gradient(name):
  x, y = _inputs(seed=9)
  p = _proxies(name)
  x[0] = p[y[0]]
  x[1] = 3.0 * p[y[1]]
  x[2] = -p[y[2]]  # cos = -1 as well
  value, gx, gp, _ = _call(name, x, y, p)
  assert np.isfinite(value)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))


# ------------------------------------------------------------------------------------------------
# Gradients against finite differences (float64).
# ------------------------------------------------------------------------------------------------


def _x64():
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True), True
  try:
    from jax.experimental import enable_x64
    return enable_x64(), True
  except ImportError:
    return contextlib.nullcontext(), False


@pytest.mark.parametrize("name", ["proxy_anchor", "arcface", "soft_triple"])
def test_gradients_match_finite_differences(name):
  loss_fn, _, _, hp = SPECS[name]
  ctx, is_x64 = _x64()
  with ctx:
    dtype = jnp.float64 if is_x64 else jnp.float32
    h = 1e-6 if is_x64 else 1e-3
    x, y = _inputs(seed=10)
    p = _proxies(name, seed=11)
    rng = np.random.default_rng(12)
    vx = jnp.asarray(rng.normal(size=(4,) + x.shape), dtype)
    vp = jnp.asarray(rng.normal(size=(4,) + p.shape), dtype)

    @jax.jit
    def run(x, y, p, vx, vp):
      f = lambda a, b: loss_fn(a, y, b, **hp)
      gx, gp = jax.grad(f, argnums=(0, 1))(x, p)
      analytic = (jnp.sum(gx[None] * vx, axis=(1, 2))
                  + jnp.sum(gp[None] * vp, axis=tuple(range(1, vp.ndim))))
      central = lambda a, b: (f(x + h * a, p + h * b) - f(x - h * a, p - h * b)) / (2 * h)
      numeric = jax.vmap(central)(vx, vp)
      return analytic, numeric

    analytic, numeric = run(jnp.asarray(x, dtype), jnp.asarray(y), jnp.asarray(p, dtype), vx, vp)
    tol = 1e-6 if is_x64 else 5e-2
    scale = float(jnp.abs(numeric).max())
    np.testing.assert_allclose(analytic, numeric, rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------------------------------------
# Against pytorch-metric-learning, with the same weights.
# ------------------------------------------------------------------------------------------------


def _pml(name, x, y, p, hp):
  torch = pytest.importorskip("torch")
  losses = pytest.importorskip("pytorch_metric_learning.losses")
  t64 = lambda a: torch.tensor(np.asarray(a, np.float64))
  nc, d = p.shape[0], p.shape[-1]
  if name == "proxy_anchor":
    fn = losses.ProxyAnchorLoss(nc, d, margin=hp["margin"], alpha=hp["alpha"])
    fn.proxies.data = t64(p)
    param, to_ours = fn.proxies, lambda g: g
  elif name == "proxy_nca":
    fn = losses.ProxyNCALoss(nc, d, softmax_scale=1.0 / hp["temperature"])
    fn.proxies.data = t64(p)
    param, to_ours = fn.proxies, lambda g: g
  elif name == "soft_triple":
    regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")
    nk = p.shape[1]
    fn = losses.SoftTripleLoss(
        nc, d, centers_per_class=nk, la=hp["la"], gamma=hp["gamma"], margin=hp["margin"],
        weight_regularizer=regularizers.SparseCentersRegularizer(nc, nk),
        weight_reg_weight=hp["tau"])
    fn.fc.data = t64(p.reshape(nc * nk, d).T)
    param, to_ours = fn.fc, lambda g: g.T.reshape(nc, nk, d)
  else:
    if name == "normalized_softmax":
      fn = losses.NormalizedSoftmaxLoss(nc, d, temperature=hp["temperature"])
    elif name == "arcface":
      fn = losses.ArcFaceLoss(nc, d, margin=math.degrees(hp["margin"]), scale=hp["scale"])
    else:
      fn = losses.CosFaceLoss(nc, d, margin=hp["margin"], scale=hp["scale"])
    fn.W.data = t64(p.T)
    param, to_ours = fn.W, lambda g: g.T
  xt = t64(x).requires_grad_(True)
  loss = fn(xt, torch.tensor(np.asarray(y, np.int64)))
  loss.backward()
  return loss.item(), xt.grad.numpy(), to_ours(param.grad.numpy())


@pytest.mark.parametrize("name", NAMES)
def test_matches_pytorch_metric_learning(name):
  x, y = _inputs(seed=13)
  p = _proxies(name, seed=14)
  hp = SPECS[name][3]
  value, gx, gp, _ = _call(name, x, y, p)
  ref_value, ref_gx, ref_gp = _pml(name, x, y, p, hp)
  np.testing.assert_allclose(value, ref_value, rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-3, atol=1e-4 * np.abs(ref_gx).max())
  np.testing.assert_allclose(gp, ref_gp, rtol=1e-3, atol=1e-4 * np.abs(ref_gp).max())


def test_soft_triple_without_regularizer_matches_pml_default():
  x, y = _inputs(seed=15)
  p = _proxies("soft_triple", seed=16)
  hp = dict(SPECS["soft_triple"][3], tau=0.0)
  value = _call("soft_triple", x, y, p, hp=hp)[0]
  torch = pytest.importorskip("torch")
  losses = pytest.importorskip("pytorch_metric_learning.losses")
  fn = losses.SoftTripleLoss(C, D, centers_per_class=K)  # no regulariser: tau = 0 in effect
  fn.fc.data = torch.tensor(np.asarray(p, np.float64).reshape(C * K, D).T)
  ref = fn(torch.tensor(np.asarray(x, np.float64)), torch.tensor(y.astype(np.int64))).item()
  np.testing.assert_allclose(value, ref, rtol=2e-5)


# ------------------------------------------------------------------------------------------------
# Initialisation.
# ------------------------------------------------------------------------------------------------


def test_init_proxies():
  key = jax.random.PRNGKey(0)
  n, d = 64, 48
  normal = P.init_proxies(key, n, d)
  assert normal.shape == (n, d) and normal.dtype == jnp.float32
  assert abs(float(jnp.std(normal)) - 1.0) < 0.05
  kn = P.init_proxies(key, n, d, method="proxy_anchor")
  assert abs(float(jnp.std(kn)) / math.sqrt(2.0 / n) - 1.0) < 0.05
  st = P.init_proxies(key, n, d, method="soft_triple")
  assert st.shape == (n, 10, d)
  bound = 1.0 / math.sqrt(n * 10)
  assert float(jnp.max(jnp.abs(st))) <= bound and float(jnp.max(st)) > 0.9 * bound
  assert P.init_proxies(key, 3, 2, method="kaiming_uniform", centers_per_class=4).shape == (3, 4, 2)
  with pytest.raises(ValueError, match="method"):
    P.init_proxies(key, 3, 2, method="xavier")


# ------------------------------------------------------------------------------------------------
# Argument validation (raised while tracing, under jit).
# ------------------------------------------------------------------------------------------------

_X = np.zeros((B, D), np.float32)
_Y = np.zeros((B,), np.int32)
_P = np.ones((C, D), np.float32)
_CENTERS = np.ones((C, K, D), np.float32)


@pytest.mark.parametrize(
    "fn, args, kwargs, error, message",
    [
        (P.proxy_anchor_loss, (_X[0], _Y, _P), {}, ValueError, "`embeddings` must have rank 2"),
        (P.arcface_loss, (_X.astype(np.int32), _Y, _P), {}, TypeError, "`embeddings` must be a"),
        (P.cosface_loss, (_X, _Y.astype(np.float32), _P), {}, TypeError, "`labels` must hold"),
        (P.proxy_nca_loss, (_X, _Y[:3], _P), {}, ValueError, "`labels` has 3 entries"),
        (P.normalized_softmax_loss, (_X, _Y, _P[0]), {}, ValueError, "`proxies` must have rank 2"),
        (P.proxy_anchor_loss, (_X, _Y, _P.astype(np.int32)), {}, TypeError, "`proxies` must be"),
        (P.arcface_loss, (_X, _Y, _P[:, :3]), {}, ValueError, "`proxies` have dimension 3"),
        (P.soft_triple_loss, (_X, _Y, _P), {}, ValueError, "`centers` must have rank 3"),
        (P.soft_triple_loss, (_X, _Y, _CENTERS[..., :2]), {}, ValueError,
         "`centers` have dimension 2"),
        (P.proxy_nca_loss, (_X, _Y, _P), {"temperature": 0.0}, ValueError, "`temperature`"),
        (P.proxy_anchor_from_sim, (_X[:, :3], np.zeros((B, C), np.float32)), {}, ValueError,
         "same shape"),
        (P.soft_triple_from_sim, (np.zeros((B, C, K), np.float32), np.zeros((B, C + 1))), {},
         ValueError, "`target` must have shape"),
        (P.arcface_from_sim, (np.zeros((B, C), np.int32), np.zeros((B, C))), {}, TypeError,
         "`sim` must be a floating"),
    ],
)
def test_argument_errors(fn, args, kwargs, error, message):
  with pytest.raises(error, match=message):
    jax.jit(functools.partial(fn, **kwargs))(*args)
