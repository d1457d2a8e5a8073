"""generic_loss, softmax_generic_loss and the shared numerics, on hand-computed cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L
from jaxdml.losses import _generic

relu = lambda x: max(x, 0.0)
softplus = lambda x: math.log1p(math.exp(x))


def contrastive_like(reduction="mean"):
  """rho_plus = [d - 0.1]_+, rho_minus = [1 - d]_+, sigma = identity: sums over pairs."""
  return jax.jit(lambda d, t, m=None: L.generic_loss(
      d, t, m, rho_pos=lambda x: jax.nn.relu(x - 0.1), rho_neg=lambda x: jax.nn.relu(1.0 - x),
      reduction=reduction))


def ms_generic(alpha=2.0, beta=50.0, base=0.5):
  """Multi-similarity written directly as the log-domain generic loss."""
  return jax.jit(lambda s, t, m=None: L.generic_loss(
      s, t, m, rho_pos=lambda x: -alpha * (x - base), rho_neg=lambda x: beta * (x - base),
      sigma_pos=lambda p: jax.nn.softplus(p) / alpha,
      sigma_neg=lambda q: jax.nn.softplus(q) / beta, log_domain=True))


# --------------------------------------------------------------------------- hand cases


def test_contrastive_like_one_anchor_two_references():
  d = jnp.array([[0.2, 0.6]])
  t = jnp.array([[1.0, 0.0]])
  # positive: [0.2 - 0.1]_+ = 0.1; negative: [1 - 0.6]_+ = 0.4
  np.testing.assert_allclose(contrastive_like()(d, t), 0.1 + 0.4, rtol=1e-6)


def test_contrastive_like_reductions():
  d = jnp.array([[0.2, 0.6, 0.05], [0.3, 1.5, 0.9]])
  t = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  per_anchor = [relu(0.2 - 0.1) + relu(1 - 0.6) + relu(1 - 0.05),
                relu(1 - 0.3) + relu(1 - 1.5) + relu(1 - 0.9)]
  np.testing.assert_allclose(contrastive_like("none")(d, t), per_anchor, rtol=1e-6)
  np.testing.assert_allclose(contrastive_like("sum")(d, t), sum(per_anchor), rtol=1e-6)
  np.testing.assert_allclose(contrastive_like("mean")(d, t), sum(per_anchor) / 2, rtol=1e-6)
  # "mean_nonempty" averages each term over anchors that have it: the positive term over
  # anchor 0 only, the negative term over both.
  expected = relu(0.2 - 0.1) + (relu(1 - 0.6) + relu(1 - 0.05) + relu(1 - 0.3) + relu(1 - 0.9)) / 2
  np.testing.assert_allclose(contrastive_like("mean_nonempty")(d, t), expected, rtol=1e-6)
  # a (positive, negative) pair of reductions, Proxy-Anchor style
  f = contrastive_like(("mean_nonempty", "sum"))
  expected = relu(0.2 - 0.1) + (relu(1 - 0.6) + relu(1 - 0.05) + relu(1 - 0.3) + relu(1 - 0.9))
  np.testing.assert_allclose(f(d, t), expected, rtol=1e-6)


def test_multi_similarity_one_anchor():
  s = jnp.array([[0.8, 0.3, 0.6]])
  t = jnp.array([[1.0, 0.0, 0.0]])
  expected = (0.5 * math.log1p(math.exp(-2 * (0.8 - 0.5)))
              + math.log1p(math.exp(50 * (0.3 - 0.5)) + math.exp(50 * (0.6 - 0.5))) / 50)
  np.testing.assert_allclose(ms_generic()(s, t), expected, rtol=1e-6)
  f = jax.jit(L.multi_similarity_from_sim)
  np.testing.assert_allclose(f(s, t), expected, rtol=1e-6)


def test_log_domain_is_stable_for_large_scales():
  s = jnp.array([[0.99, -0.99, 0.98]])
  t = jnp.array([[0.0, 1.0, 0.0]])
  value = ms_generic(alpha=200.0, beta=400.0)(s, t)
  lse_n = 400 * (0.99 - 0.5) + math.log1p(math.exp(400 * (0.98 - 0.99)))
  lse_p = -200 * (-0.99 - 0.5)
  expected = lse_p / 200 + lse_n / 400  # softplus(x) = x for these huge exponents
  np.testing.assert_allclose(value, expected, rtol=1e-6)


# --------------------------------------------------------------------------- soft targets


def test_target_one_and_zero_columns_are_the_clean_terms():
  d = jnp.array([[0.2, 0.6, 0.7]])
  # a y = 1 column adds only to the positive sum, a y = 0 column only to the negative sum
  t = jnp.array([[1.0, 0.0, 1.0]])
  expected = relu(0.2 - 0.1) + relu(0.7 - 0.1) + relu(1 - 0.6)
  np.testing.assert_allclose(contrastive_like()(d, t), expected, rtol=1e-6)
  s = jnp.array([[0.8, 0.3, 0.6]])
  expected = (0.5 * math.log1p(math.exp(-2 * 0.3) + math.exp(-2 * 0.1))
              + math.log1p(math.exp(50 * -0.2)) / 50)
  np.testing.assert_allclose(ms_generic()(s, t), expected, rtol=1e-6)


@pytest.mark.parametrize("y", [0.0, 0.3, 1.0])
def test_soft_target_weights_both_sums(y):
  s = jnp.array([[0.8, 0.3, 0.6]])
  t = jnp.array([[1.0, 0.0, y]])  # the last reference is a mixed example
  pos = math.exp(-2 * 0.3) + y * math.exp(-2 * 0.1)
  neg = math.exp(50 * -0.2) + (1 - y) * math.exp(50 * 0.1)
  expected = 0.5 * math.log1p(pos) + math.log1p(neg) / 50
  np.testing.assert_allclose(ms_generic()(s, jnp.asarray(t)), expected, rtol=1e-6)
  d = jnp.array([[0.2, 0.6, 0.7]])
  expected = relu(0.2 - 0.1) + y * relu(0.7 - 0.1) + relu(1 - 0.6) + (1 - y) * relu(1 - 0.7)
  np.testing.assert_allclose(contrastive_like()(d, t), expected, rtol=1e-6)


def test_soft_target_matches_interpolated_labels_in_pair_losses():
  """A soft target column equals the y-weighted mix of a clean positive and clean negative in
  the linear (non log-domain) contrastive-like loss, reduced with "sum"."""
  d = jnp.array([[0.2, 0.6, 0.7]])
  f = contrastive_like("sum")
  as_pos = f(d, jnp.array([[1.0, 0.0, 1.0]]))
  as_neg = f(d, jnp.array([[1.0, 0.0, 0.0]]))
  np.testing.assert_allclose(f(d, jnp.array([[1.0, 0.0, 0.25]])), 0.25 * as_pos + 0.75 * as_neg,
                             rtol=1e-6)


# --------------------------------------------------------------------------- empty sets


def test_empty_sets_give_zero_whatever_sigma():
  s = jnp.array([[0.8, 0.3], [0.1, 0.2]])
  t = jnp.array([[0.0, 0.0], [1.0, 1.0]])  # anchor 0: no positive, anchor 1: no negative
  f = jax.jit(lambda s, t: L.generic_loss(
      s, t, rho_pos=lambda x: x, rho_neg=lambda x: x,
      sigma_pos=lambda p: p + 5.0, sigma_neg=lambda q: q + 7.0, reduction="none"))
  np.testing.assert_allclose(f(s, t), [0.8 + 0.3 + 7.0, 0.1 + 0.2 + 5.0], rtol=1e-6)
  all_masked = jnp.zeros((2, 2), bool)
  g = jax.jit(jax.value_and_grad(lambda s: ms_generic()(s, t, all_masked)))
  value, grad = g(s)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_tau_coupling_and_empty_anchors():
  s = jnp.array([[0.9, 0.2, 0.4], [0.5, 0.1, 0.3], [0.7, 0.6, 0.2]])
  t = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  f = jax.jit(lambda s, t, red: L.generic_loss(
      s, t, rho_pos=lambda x: -x, rho_neg=lambda x: x, tau=lambda p, q: jax.nn.softplus(p + q),
      log_domain=True, reduction=red), static_argnums=2)
  lse = lambda v: math.log(sum(math.exp(x) for x in v))
  a0 = softplus(-0.9 + lse([0.2, 0.4]))
  a2 = softplus(lse([-0.7, -0.6]) + 0.2)
  np.testing.assert_allclose(f(s, t, "none"), [a0, 0.0, a2], rtol=1e-6)
  np.testing.assert_allclose(f(s, t, "mean"), (a0 + a2) / 3, rtol=1e-6)
  np.testing.assert_allclose(f(s, t, "mean_nonempty"), (a0 + a2) / 2, rtol=1e-6)


# --------------------------------------------------------------------------- masked_logsumexp


def test_masked_logsumexp_values():
  x = np.array([[1.0, 2.0, 3.0], [1000.0, 999.0, -5.0], [0.5, 0.5, 0.5]], np.float32)
  w = np.array([[1.0, 0.5, 0.0], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
  value, nonempty = jax.jit(L.masked_logsumexp)(x, w)
  expected0 = math.log(math.exp(1.0) + 0.5 * math.exp(2.0))
  expected1 = 1000.0 + math.log1p(math.exp(-1.0) + 2 * math.exp(-1005.0))
  np.testing.assert_allclose(value, [expected0, expected1, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(nonempty, [True, True, False])


def test_masked_logsumexp_all_masked_rows_zero_gradient():
  x = jnp.array([[1.0, -jnp.inf, 3.0], [2.0, 1.0, 0.0]])
  w = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(L.masked_logsumexp(x, w)[0]), argnums=(0, 1)))
  gx, gw = f(jnp.where(jnp.isfinite(x), x, -1e30), w)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
  np.testing.assert_array_equal(gx[0], 0.0)
  np.testing.assert_array_equal(gw[0], 0.0)
  # the live row: softmax weights over its active entries
  p = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
  np.testing.assert_allclose(gx[1], [p[0], 0.0, p[1]], rtol=1e-6)
  value, nonempty = jax.jit(L.masked_logsumexp)(jnp.zeros((2, 0)), jnp.zeros((2, 0)))
  np.testing.assert_array_equal(value, 0.0)
  np.testing.assert_array_equal(nonempty, False)


# --------------------------------------------------------------------------- reducers


def test_avg_nonzero_and_reduce():
  f = jax.jit(L.avg_nonzero)
  np.testing.assert_allclose(f(jnp.array([0.0, 2.0, 4.0, 0.0]), jnp.ones(4)), 3.0)
  np.testing.assert_allclose(f(jnp.array([1.0, 2.0, 4.0]), jnp.array([1.0, 0.0, 0.5])), 1.5)
  assert float(f(jnp.zeros(3), jnp.ones(3))) == 0.0
  r = jax.jit(_generic.reduce, static_argnums=2)
  v, ne = jnp.array([1.0, 2.0, 6.0]), jnp.array([True, False, True])
  np.testing.assert_allclose(r(v, ne, "mean"), 3.0)
  np.testing.assert_allclose(r(v, ne, "mean_nonempty"), 3.5)
  np.testing.assert_allclose(r(v, ne, "sum"), 9.0)
  np.testing.assert_allclose(r(v, ne, "none"), v)
  assert float(r(v, jnp.zeros(3, bool), "mean_nonempty")) == 0.0


# --------------------------------------------------------------------------- softmax form


def test_softmax_generic_loss():
  logits = jnp.array([[2.0, 1.0, 0.0], [0.5, 0.2, 0.1], [1.0, 3.0, 0.0], [1.0, 0.0, 2.0]])
  t = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  f = jax.jit(L.softmax_generic_loss, static_argnames="reduction")
  row0 = math.log(math.exp(2) + math.exp(1) + 1) - 2
  row2 = math.log(math.exp(1) + math.exp(3) + 1) - math.log(math.exp(1) + math.exp(3))
  # row 1 has no positive (left out of the mean), row 3 no negative (loss 0, counted)
  np.testing.assert_allclose(f(logits, t, reduction="none"), [row0, 0.0, row2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(f(logits, t), (row0 + row2) / 3, rtol=1e-6)
  soft = jnp.array([[0.5, 0.0, 0.0]])
  # positive mass 0.5 e^2; negative mass 0.5 e^2 + e + 1
  expected = math.log(math.exp(2) + math.exp(1) + 1) - math.log(0.5 * math.exp(2))
  np.testing.assert_allclose(f(logits[:1], soft), expected, rtol=1e-6)


# --------------------------------------------------------------------------- errors


def test_errors():
  s, t = jnp.zeros((2, 3)), jnp.zeros((2, 3))
  kw = dict(rho_pos=lambda x: x, rho_neg=lambda x: x)
  with pytest.raises(ValueError, match="`target`"):
    jax.jit(lambda s, t: L.generic_loss(s, t, **kw))(s, t[:, :2])
  with pytest.raises(ValueError, match="`mask`"):
    jax.jit(lambda s, t, m: L.generic_loss(s, t, m, **kw))(s, t, jnp.ones((3, 2), bool))
  with pytest.raises(ValueError, match="`sim`.*rank 2"):
    jax.jit(lambda s, t: L.generic_loss(s, t, **kw))(s[0], t[0])
  with pytest.raises(TypeError, match="`sim`"):
    jax.jit(lambda s, t: L.generic_loss(s, t, **kw))(s.astype(jnp.int32), t)
  with pytest.raises(ValueError, match="`reduction`"):
    jax.jit(lambda s, t: L.generic_loss(s, t, reduction="avg", **kw))(s, t)
  with pytest.raises(ValueError, match="none"):
    jax.jit(lambda s, t: L.generic_loss(s, t, reduction=("none", "sum"), **kw))(s, t)
  with pytest.raises(ValueError, match="`logits`"):
    jax.jit(L.softmax_generic_loss)(s, t.T)
