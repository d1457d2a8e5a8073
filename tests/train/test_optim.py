import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdml.train.optim import (
  FROZEN_BN_PATTERNS,
  OptimizerSpec,
  frozen_for,
  make_optimizer,
  make_schedule,
  param_labels,
)


def params():
  return {"model": {"backbone": {"conv": {"kernel": jnp.ones((2, 2))}},
                    "head": {"kernel": jnp.ones((2,))}},
          "loss": {"proxies": jnp.ones((3, 2))}}


def test_param_labels():
  labels = param_labels(params())
  assert labels == {"model": {"backbone": {"conv": {"kernel": "backbone"}},
                              "head": {"kernel": "head"}},
                    "loss": {"proxies": "loss"}}


def one_update(spec, grads=None, steps=1):
  p = params()
  tx = make_optimizer(spec)
  state = tx.init(p)
  g = grads or jax.tree.map(jnp.ones_like, p)
  ups = []
  for _ in range(steps):
    u, state = tx.update(g, state, p)
    ups.append(u)
  return ups


def test_group_learning_rates_sgd():
  spec = OptimizerSpec(optimizer="sgd", learning_rate=0.1, weight_decay=0.0,
                       lr_mult={"backbone": 1.0, "head": 10.0, "loss": 100.0})
  u = one_update(spec)[0]
  # first SGD-momentum step: -lr * g
  np.testing.assert_allclose(u["model"]["backbone"]["conv"]["kernel"], -0.1)
  np.testing.assert_allclose(u["model"]["head"]["kernel"], -1.0)
  np.testing.assert_allclose(u["loss"]["proxies"], -10.0)


def test_weight_decay_per_group():
  spec = OptimizerSpec(optimizer="sgd", learning_rate=1.0, weight_decay=0.5,
                       loss_weight_decay=0.0, lr_mult={"loss": 1.0})
  zero = jax.tree.map(jnp.zeros_like, params())
  u = one_update(spec, grads=zero)[0]
  np.testing.assert_allclose(u["model"]["head"]["kernel"], -0.5)  # L2 term 0.5 * w
  np.testing.assert_allclose(u["loss"]["proxies"], 0.0)


def test_frozen_backbone_then_trains_with_fresh_state():
  spec = OptimizerSpec(optimizer="adam", learning_rate=0.1, weight_decay=0.0,
                       freeze_backbone_steps=2, lr_mult={"loss": 1.0})
  ups = one_update(spec, steps=3)
  for u in ups[:2]:
    np.testing.assert_array_equal(u["model"]["backbone"]["conv"]["kernel"], 0.0)
    assert float(jnp.abs(u["model"]["head"]["kernel"]).min()) > 0
  # the third update is Adam's *first* step for the backbone: exactly -lr (bias-corrected)
  np.testing.assert_allclose(ups[2]["model"]["backbone"]["conv"]["kernel"], -0.1, rtol=1e-5)
  # while the head is at its third step (same value for constant gradients, different count)
  np.testing.assert_allclose(ups[2]["model"]["head"]["kernel"], -0.1, rtol=1e-5)


def test_frozen_for_keeps_inner_state():
  inner = optax.adam(0.1)
  tx = frozen_for(inner, 1)
  p = {"w": jnp.ones(2)}
  s = tx.init(p)
  _, s = tx.update({"w": jnp.ones(2)}, s, p)
  np.testing.assert_array_equal(s.inner[0].count, 0)
  _, s = tx.update({"w": jnp.ones(2)}, s, p)
  np.testing.assert_array_equal(s.inner[0].count, 1)


def test_schedules():
  cos = make_schedule(OptimizerSpec(learning_rate=1.0, schedule="cosine", total_steps=110,
                                    warmup_steps=10))
  np.testing.assert_allclose([cos(0), cos(5), cos(10), cos(60), cos(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  step = make_schedule(OptimizerSpec(learning_rate=1.0, schedule="step", decay_steps=(10, 20),
                                     decay_rate=0.5))
  np.testing.assert_allclose([step(9), step(10), step(19), step(20), step(100)],
                             [1.0, 0.5, 0.5, 0.25, 0.25])
  scaled = make_schedule(OptimizerSpec(learning_rate=2.0), scale=100.0)
  assert float(scaled(7)) == 200.0


def test_clipping():
  spec = OptimizerSpec(optimizer="sgd", learning_rate=1.0, weight_decay=0.0, clip_value=0.5,
                       lr_mult={"loss": 1.0})
  g = jax.tree.map(lambda x: 3.0 * jnp.ones_like(x), params())
  u = one_update(spec, grads=g)[0]
  assert float(jnp.max(jnp.abs(jnp.concatenate([x.ravel() for x in jax.tree.leaves(u)])))) == 0.5
  spec = OptimizerSpec(optimizer="sgd", learning_rate=1.0, weight_decay=0.0, clip_norm=1.0,
                       lr_mult={"loss": 1.0})
  u = one_update(spec, grads=g)[0]
  np.testing.assert_allclose(optax.tree.norm(u), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"optimizer": "lamb"}, "optimizer"), ({"schedule": "poly"}, "schedule"),
    ({"learning_rate": 0.0}, "learning_rate"), ({"lr_mult": {"proxy": 2.0}}, "unknown groups"),
    ({"schedule": "cosine"}, "total_steps"), ({"warmup_steps": -1}, "warmup_steps")])
def test_spec_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    make_optimizer(OptimizerSpec(**kw))


def test_frozen_patterns_never_move():
  p = {"model": {"backbone": {"layer1_0": {"bn1": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
                                           "conv1": {"kernel": jnp.ones(2)}},
                              "inception_3a_1x1_bn": {"scale": jnp.ones(2)},
                              "layer2_0": {"downsample_1": {"bias": jnp.zeros(2)}}}},
       "loss": {}}
  spec = OptimizerSpec(optimizer="adam", learning_rate=0.1, weight_decay=0.5,
                       frozen_patterns=FROZEN_BN_PATTERNS)
  labels = param_labels(p, FROZEN_BN_PATTERNS)
  assert labels["model"]["backbone"]["layer1_0"]["bn1"] == {"scale": "frozen", "bias": "frozen"}
  assert labels["model"]["backbone"]["inception_3a_1x1_bn"]["scale"] == "frozen"
  assert labels["model"]["backbone"]["layer2_0"]["downsample_1"]["bias"] == "frozen"
  assert labels["model"]["backbone"]["layer1_0"]["conv1"]["kernel"] == "backbone"
  tx = make_optimizer(spec)
  state = tx.init(p)
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), state, p)  # weight decay alone
  assert float(jnp.abs(u["model"]["backbone"]["layer1_0"]["bn1"]["scale"]).max()) == 0.0
  assert float(jnp.abs(u["model"]["backbone"]["layer1_0"]["conv1"]["kernel"]).max()) > 0.0


def test_loss_sub_groups():
  p = {"model": {"head": {"kernel": jnp.ones((2,))}},
       "loss": {"proxies": jnp.ones((3, 2)), "hier": jnp.ones((4, 2))}}
  spec = OptimizerSpec(optimizer="sgd", learning_rate=0.1, weight_decay=0.0,
                       lr_mult={"loss": 1e4, "loss/hier": 50.0})
  assert param_labels(p, loss_groups=("loss/hier",))["loss"] == {"proxies": "loss",
                                                                  "hier": "loss/hier"}
  tx = make_optimizer(spec)
  u, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
  np.testing.assert_allclose(u["loss"]["proxies"], -1e3, rtol=1e-6)
  np.testing.assert_allclose(u["loss"]["hier"], -5.0, rtol=1e-6)
  np.testing.assert_allclose(u["model"]["head"]["kernel"], -0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown groups"):
    make_optimizer(OptimizerSpec(lr_mult={"proxy/hier": 2.0}))
