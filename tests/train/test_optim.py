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


# ------------------------------------------------------------------------------ eps, own decays


def _adam_steps(grads, lr, eps, b1=0.9, b2=0.999, wd=0.0, p0=1.0):
  """Adam / AdamW by hand (float64), PyTorch's and optax's formulas: the update of every step."""
  m = v = 0.0
  p = np.full_like(np.asarray(grads[0], np.float64), p0)
  out = []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    u = -lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
    out.append(u)
    p = p + u
  return out


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_eps_reaches_adam(optimizer):
  """Gradients of the order of eps: eps 1e-4 halves the first step, eps 1e-8 does not."""
  p = {"model": {"head": {"kernel": jnp.ones((3,))}}, "loss": {}}
  g1 = np.array([1e-4, -2e-4, 5e-5], np.float32)
  g2 = np.array([3e-4, 1e-4, -1e-4], np.float32)
  for eps in (1e-4, 1e-8):
    spec = OptimizerSpec(optimizer=optimizer, learning_rate=0.1, weight_decay=0.0, eps=eps)
    tx = make_optimizer(spec)
    state = tx.init(p)
    expected = _adam_steps([g1, g2], lr=0.1, eps=eps)
    params = p
    for g, want in zip((g1, g2), expected, strict=True):
      u, state = tx.update({"model": {"head": {"kernel": jnp.asarray(g)}}, "loss": {}}, state,
                           params)
      # float32 moments of gradients ~1e-4: ~1e-5 relative; eps 1e-4 vs 1e-8 differ by ~2x
      np.testing.assert_allclose(u["model"]["head"]["kernel"], want, rtol=1e-4)
      params = optax.apply_updates(params, u)
  first = _adam_steps([g1], lr=0.1, eps=1e-4)[0]
  g64 = g1.astype(np.float64)
  np.testing.assert_allclose(first, -0.1 * g64 / (np.abs(g64) + 1e-4), rtol=1e-12)
  assert abs(first[0]) < 0.06  # about half of the eps-free step, lr = 0.1


def test_eps_reaches_rmsprop():
  """optax's rmsprop: `g / sqrt(nu + eps)` with nu = (1 - decay) g^2 at the first step."""
  p = {"model": {"head": {"kernel": jnp.ones((2,))}}, "loss": {}}
  g = np.array([1e-2, -3e-2], np.float32)
  for eps in (1e-4, 1e-8):
    tx = make_optimizer(OptimizerSpec(optimizer="rmsprop", learning_rate=0.1, weight_decay=0.0,
                                      eps=eps))
    u, _ = tx.update({"model": {"head": {"kernel": jnp.asarray(g)}}, "loss": {}}, tx.init(p), p)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(u["model"]["head"]["kernel"],
                               -0.1 * g64 / np.sqrt(0.01 * g64 ** 2 + eps), rtol=1e-5)


def test_group_weight_decay_is_decoupled_and_per_group():
  """AdamW: the "loss/hier" group decays at its own rate (scaled by its learning rate, as
  PyTorch's AdamW); the model and the class proxies, at decay 0, take the plain Adam step."""
  p = {"model": {"head": {"kernel": jnp.full((2,), 2.0)}},
       "loss": {"proxies": jnp.full((2,), 2.0), "hier": jnp.full((2,), 2.0)}}
  g = {"model": {"head": {"kernel": jnp.array([0.5, -1.0])}},
       "loss": {"proxies": jnp.array([0.5, -1.0]), "hier": jnp.array([0.5, -1.0])}}
  spec = OptimizerSpec(optimizer="adamw", learning_rate=1e-3, weight_decay=0.0,
                       loss_weight_decay=0.0, lr_mult={"loss": 10.0, "loss/hier": 50.0},
                       group_weight_decay={"loss/hier": 1e-2}, eps=1e-4)
  tx = make_optimizer(spec)
  state = tx.init(p)
  params = p
  grads = [np.array([0.5, -1.0])] * 2
  want = {"head": _adam_steps(grads, lr=1e-3, eps=1e-4, p0=2.0),
          "proxies": _adam_steps(grads, lr=1e-2, eps=1e-4, p0=2.0),
          "hier": _adam_steps(grads, lr=5e-2, eps=1e-4, wd=1e-2, p0=2.0)}
  for step in range(2):  # rtol: float32 bias correction 1 - 0.999^t; the decay term is 2%
    u, state = tx.update(g, state, params)
    np.testing.assert_allclose(u["model"]["head"]["kernel"], want["head"][step], rtol=1e-4)
    np.testing.assert_allclose(u["loss"]["proxies"], want["proxies"][step], rtol=1e-4)
    np.testing.assert_allclose(u["loss"]["hier"], want["hier"][step], rtol=1e-4)
    params = optax.apply_updates(params, u)
  # Decay alone (zero gradients): only the hier group moves, by lr_hier * wd * p.
  zero = jax.tree.map(jnp.zeros_like, p)
  u, _ = tx.update(zero, tx.init(p), p)
  np.testing.assert_allclose(u["loss"]["hier"], -5e-2 * 1e-2 * 2.0, rtol=1e-6)
  assert float(jnp.abs(u["loss"]["proxies"]).max()) == 0.0
  assert float(jnp.abs(u["model"]["head"]["kernel"]).max()) == 0.0


def test_group_weight_decay_alone_makes_the_group_and_overrides():
  p = {"model": {"head": {"kernel": jnp.ones((2,))}},
       "loss": {"proxies": jnp.ones((2,)), "hier": jnp.ones((2,))}}
  zero = jax.tree.map(jnp.zeros_like, p)
  # "loss/hier" named only by its decay: the loss group's learning rate, its own decay.
  spec = OptimizerSpec(optimizer="adamw", learning_rate=0.1, weight_decay=0.5,
                       loss_weight_decay=0.0, lr_mult={"loss": 2.0},
                       group_weight_decay={"loss/hier": 0.25})
  tx = make_optimizer(spec)
  u, _ = tx.update(zero, tx.init(p), p)
  np.testing.assert_allclose(u["loss"]["hier"], -0.2 * 0.25, rtol=1e-6)
  np.testing.assert_allclose(u["loss"]["proxies"], 0.0)
  np.testing.assert_allclose(u["model"]["head"]["kernel"], -0.1 * 0.5, rtol=1e-6)
  # A base group's decay is overridden too, and its "loss/<key>" groups follow it.
  spec = OptimizerSpec(optimizer="sgd", learning_rate=1.0, weight_decay=0.0,
                       lr_mult={"loss": 1.0, "loss/hier": 1.0},
                       group_weight_decay={"loss": 0.5, "head": 0.125})
  tx = make_optimizer(spec)
  u, _ = tx.update(zero, tx.init(p), p)
  np.testing.assert_allclose(u["loss"]["proxies"], -0.5)
  np.testing.assert_allclose(u["loss"]["hier"], -0.5)
  np.testing.assert_allclose(u["model"]["head"]["kernel"], -0.125)


@pytest.mark.parametrize("kw,match", [
    ({"group_weight_decay": {"proxy": 0.1}}, "group_weight_decay has unknown groups"),
    ({"group_weight_decay": {"loss/": 0.1}}, "unknown groups"),
    ({"group_weight_decay": {"loss/hier": -0.1}}, r"group_weight_decay\['loss/hier'\]"),
    ({"eps": 0.0}, "eps"), ({"eps": -1e-8}, "eps")])
def test_eps_and_group_decay_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    make_optimizer(OptimizerSpec(**kw))


def test_defaults_are_unchanged():
  """The new fields at their defaults give the optimiser of before: eps 1e-8, no own decays."""
  spec = OptimizerSpec()
  assert spec.eps == 1e-8 and spec.group_weight_decay == {}
  p = params()
  g = jax.tree.map(lambda x: 0.3 * jnp.ones_like(x), p)
  for name in ("adamw", "adam", "rmsprop"):
    ours = make_optimizer(OptimizerSpec(optimizer=name, learning_rate=0.1, weight_decay=0.01,
                                        lr_mult={"loss": 1.0}))
    ref = {"adamw": optax.adamw(0.1, weight_decay=0.01),
           "adam": optax.chain(optax.add_decayed_weights(0.01), optax.adam(0.1)),
           "rmsprop": optax.chain(optax.add_decayed_weights(0.01),
                                  optax.rmsprop(0.1, decay=0.99, eps=1e-8))}[name]
    u, _ = ours.update(g, ours.init(p), p)
    u_ref, _ = ref.update(g, ref.init(p), p)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref), strict=True):
      np.testing.assert_array_equal(a, b)


def test_optimizer_spec_passes_eps_and_the_objective_decays():
  from jaxdml import objectives  # noqa: PLC0415
  from jaxdml.app import build  # noqa: PLC0415
  from jaxdml.app.config import Config, ObjectiveConfig, OptimConfig  # noqa: PLC0415

  config = Config(objective=ObjectiveConfig(loss="contrastive"),
                  optim=OptimConfig(optimizer="adamw", eps=1e-4, loss_weight_decay=0.0))
  base = objectives.core("contrastive")
  obj = objectives.Objective("mine", base.init, base.apply, lr_mult={"extra": 50.0},
                             weight_decay={"extra": 1e-2, "other": 0.5})
  spec = build.optimizer_spec(config, steps_per_epoch=4, objective=obj)
  assert spec.eps == 1e-4
  assert spec.group_weight_decay == {"loss/extra": 1e-2, "loss/other": 0.5}
  assert spec.lr_mult["loss/extra"] == 50.0 and "loss/other" not in spec.lr_mult
  plain = build.optimizer_spec(config, steps_per_epoch=4, objective=base)
  assert plain.group_weight_decay == {} and plain.eps == 1e-4
  default = build.optimizer_spec(Config(), steps_per_epoch=4)
  assert default.eps == 1e-8 and default.group_weight_decay == {}
