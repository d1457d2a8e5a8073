"""GLAM: shapes, the hand cases of zeroed weights, normalised attention, fusion and switches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models.glam import GLAM

X = jax.random.normal(jax.random.key(0), (2, 5, 6, 16))


def _zeroed(params):
  return jax.tree.map(jnp.zeros_like, params)


@pytest.mark.parametrize("kwargs", [{}, dict(kernel_size=5, reduced_channels=3),
                                    dict(local_channel_layer="dense", softmax_axis="flat"),
                                    dict(local_spatial_activation="sigmoid", dilations=(1, 2))])
def test_shape_is_preserved_and_jit_grad_work(kwargs):
  m = GLAM(**kwargs)
  params = m.init(jax.random.key(1), X)
  y = jax.jit(m.apply)(params, X)
  assert y.shape == X.shape and y.dtype == X.dtype
  g = jax.grad(lambda p: jnp.sum(m.apply(p, X) ** 2))(params)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))


def test_zeroed_weights_hand_cases():
  """All convolutions zero: a_lc = sigmoid(0) = 1/2, a_ls = 0, so F_l = 1.5 F; the channel
  attention is uniform 1 / c, so G_c is each position's channel mean and F_gc = F * mean_c(F);
  G_s = 0 (zero output conv), so F_g = F_gc; fusion weights 1/3 each."""
  m = GLAM()
  params = _zeroed(m.init(jax.random.key(1), X))
  y, maps = m.apply(params, X, return_maps=True)
  f = np.asarray(X, np.float64)
  f_l = 1.5 * f
  f_g = f * f.mean(axis=-1, keepdims=True)
  np.testing.assert_allclose(y, (f_l + f + f_g) / 3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps["fusion"], [1 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(maps["local_channel"], 0.5)
  np.testing.assert_allclose(maps["local_spatial"], 0.0)
  # local stream alone: 1.5 F fused with F
  ml = GLAM(global_channel=False, global_spatial=False)
  y = ml.apply(_zeroed(ml.init(jax.random.key(1), X)), X)
  np.testing.assert_allclose(y, (1.5 * f + f) / 2, rtol=1e-5, atol=1e-6)


def test_attention_is_normalised_over_the_summed_axis():
  m = GLAM()
  params = m.init(jax.random.key(2), X)
  _, maps = m.apply(params, X, return_maps=True)
  c, hw = X.shape[-1], X.shape[1] * X.shape[2]
  assert maps["global_channel"].shape == (2, c, c)
  assert maps["global_spatial"].shape == (2, hw, hw)
  for name in ("global_channel", "global_spatial"):
    np.testing.assert_allclose(maps[name].sum(axis=1), 1.0, rtol=1e-5)
  flat = GLAM(softmax_axis="flat")
  _, maps = flat.apply(flat.init(jax.random.key(2), X), X, return_maps=True)
  np.testing.assert_allclose(maps["global_spatial"].sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_switches():
  off = GLAM(local_channel=False, local_spatial=False, global_channel=False,
             global_spatial=False)
  params = off.init(jax.random.key(0), X)
  assert not jax.tree.leaves(params)
  np.testing.assert_array_equal(off.apply(params, X), X)  # the baseline: identity
  for branch in ("local_channel", "local_spatial", "global_channel", "global_spatial"):
    others = {b: b == branch for b in ("local_channel", "local_spatial", "global_channel",
                                       "global_spatial")}
    m = GLAM(**others)
    params = m.init(jax.random.key(0), X)
    _, maps = m.apply(params, X, return_maps=True)
    assert set(maps) == {branch, "fusion"} and maps["fusion"].shape == (2,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=4), "odd"), (dict(softmax_axis="row"), "softmax_axis"),
    (dict(local_channel_layer="conv"), "local_channel_layer"),
    (dict(dilations=()), "dilations"), (dict(reduced_channels=0), "reduced_channels"),
])
def test_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    GLAM(**kwargs).init(jax.random.key(0), X)
  with pytest.raises(ValueError, match="feature map"):
    GLAM().init(jax.random.key(0), X[0])
