"""jaxdml.objectives: the core losses as objectives, users' own losses, and composition as a value.

The composition test defines a new method here, in the test file, and composes it with two
built-in methods (DAS and Metrix) around a user-defined loss, with no change to the library:
the loss is checked against an independent recomputation of each part, and the composed
objective trains through the train step (the model seam for Metrix's feature mixup, the new
method's parameter in its own optimiser group, both methods' state carried)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses, objectives, similarity, targets
from jaxdml.methods import das, metrix
from jaxdml.train.optim import OptimizerSpec, make_optimizer
from jaxdml.train.sharding import make_mesh
from jaxdml.train.state import init_state
from jaxdml.train.step import make_train_step


def _batch(classes=4, per_class=3, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(classes * per_class, dim)).astype(np.float32)
  y = np.repeat(np.arange(classes), per_class).astype(np.int32)
  return jnp.asarray(z), jnp.asarray(y)


# ------------------------------------------------------------------------------------- core losses

# loss -> keyword arguments, the wrapper call that must give the same value
WRAPPERS = {
    "contrastive": ({"neg_margin": 0.7}, lambda z, y, p: losses.contrastive_loss(
        z, y, neg_margin=0.7)),
    "triplet": ({"margin": 0.3}, lambda z, y, p: losses.triplet_margin_loss(z, y, margin=0.3)),
    "multi_similarity": ({"beta": 40.0}, lambda z, y, p: losses.multi_similarity_loss(
        z, y, beta=40.0)),
    "margin": ({}, lambda z, y, p: losses.margin_loss(z, y)),
    "lifted_structure": ({}, lambda z, y, p: losses.lifted_structure_loss(z, y)),
    "circle": ({}, lambda z, y, p: losses.circle_loss(z, y)),
    "supcon": ({}, lambda z, y, p: losses.supcon_loss(z, y)),
    "ntxent": ({}, lambda z, y, p: losses.ntxent_loss(z, y)),
    "n_pairs": ({}, lambda z, y, p: losses.n_pairs_loss(z, y)),
    "proxy_anchor": ({"margin": 0.2}, lambda z, y, p: losses.proxy_anchor_loss(
        z, y, p["proxies"], margin=0.2)),
    "proxy_nca": ({"temperature": 1 / 9}, lambda z, y, p: losses.proxy_nca_loss(
        z, y, p["proxies"], temperature=1 / 9)),
    "normalized_softmax": ({}, lambda z, y, p: losses.normalized_softmax_loss(
        z, y, p["proxies"])),
    "arcface": ({}, lambda z, y, p: losses.arcface_loss(z, y, p["proxies"])),
    "cosface": ({}, lambda z, y, p: losses.cosface_loss(z, y, p["proxies"])),
    "soft_triple": ({"centers_per_class": 2}, lambda z, y, p: losses.soft_triple_loss(
        z, y, p["proxies"])),
}


def test_every_core_loss_is_listed():
  assert sorted(WRAPPERS) == sorted(objectives.names())


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_core_objective_is_the_wrapper_and_its_soft_loss_agrees(name):
  """The objective's loss is the wrapper's; its soft loss with the batch's own hard targets is
  the wrapper's loss again (pairs: the batch against itself, self-pairs masked; proxies: one-hot
  targets)."""
  kw, wrapper = WRAPPERS[name]
  z, y = _batch()
  obj = objectives.core(name, num_classes=4, dim=6, **kw)
  params = obj.init(jax.random.PRNGKey(0))
  loss, state, aux = obj.apply(params, {}, objectives.Batch(z, y), jax.random.PRNGKey(1))
  np.testing.assert_allclose(loss, wrapper(z, y, params), rtol=1e-6)
  assert state == {} and aux == {}
  if obj.soft is None:
    assert name in ("lifted_structure", "n_pairs")
    return
  if obj.soft.kind == "pairs":
    target, mask = targets.from_labels(y)
    soft = obj.soft.apply(params, z, target, mask, references=z)
  else:
    target = targets.one_hot(y, 4)
    soft = obj.soft.apply(params, z, target, jnp.ones_like(target, bool))
  # the distance losses' soft form computes distances from cosines: float32 rounding
  rtol = 1e-4 if name in ("contrastive", "triplet", "margin") else 1e-6
  want = wrapper(z, y, params)
  if name == "soft_triple":  # the centre regulariser is a parameter penalty of the clean loss
    want = want - 0.2 * losses.soft_triple_regularizer(params["proxies"])
  np.testing.assert_allclose(soft, want, rtol=rtol, atol=1e-6)


def test_core_with_a_miner_masks_the_pairs():
  z, y = _batch()
  obj = objectives.core("contrastive", miner="batch_hard")
  loss = obj.apply({}, {}, objectives.Batch(z, y), jax.random.PRNGKey(0))[0]
  from jaxdml import miners, pairs  # noqa: PLC0415
  d, t, m = pairs.dist_inputs(z, y)
  want = losses.contrastive_loss(z, y, mask=miners.batch_hard_miner(d, t, m))
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_learned_margin_beta_is_a_parameter_per_class():
  z, y = _batch()
  obj = objectives.core("margin", num_classes=4, learn_beta=True, beta=1.0)
  params = obj.init(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(params["beta"], np.ones(4))
  g = jax.grad(lambda p: obj.apply(p, {}, objectives.Batch(z, y), jax.random.PRNGKey(0))[0])(
      params)
  assert g["beta"].shape == (4,) and obj.soft is None


def test_core_errors_name_the_argument():
  with pytest.raises(ValueError, match="did you mean 'contrastive'"):
    objectives.core("contrastiv")
  with pytest.raises(ValueError, match="did you mean 'neg_margin'"):
    objectives.core("contrastive", neg_margn=0.5)
  with pytest.raises(ValueError, match="needs num_classes and dim"):
    objectives.core("proxy_anchor")
  with pytest.raises(ValueError, match="does not apply to the proxy loss"):
    objectives.core("proxy_anchor", num_classes=2, dim=3, miner="batch_hard")
  with pytest.raises(ValueError, match="unknown miner"):
    objectives.core("contrastive", miner="hardest")
  with pytest.raises(ValueError, match="forms its own pairs"):
    objectives.core("n_pairs", miner="batch_hard")
  with pytest.raises(ValueError, match="epsilon"):
    objectives.core("contrastive", miner="multi_similarity", miner_kwargs={"epsilonn": 0.1})
  with pytest.raises(ValueError, match="num_classes"):
    objectives.core("proxy_anchor", num_classes=0, dim=3)
  assert objectives.canonical_name("ms") == "multi_similarity"


# ----------------------------------------------------------------------------------- user losses


def my_from_sim(sim, target, mask):
  """A user's own pair loss: (1 - s) over positives plus [s - 0.2]_+ over negatives."""
  pos_w, neg_w = targets.pair_weights(target, mask)
  pos = jnp.sum(pos_w * (1.0 - sim)) / jnp.maximum(jnp.sum(pos_w), 1.0)
  neg = jnp.sum(neg_w * jax.nn.relu(sim - 0.2)) / jnp.maximum(jnp.sum(neg_w), 1.0)
  return pos + neg


def test_pair_loss_and_proxy_loss_of_a_matrix_form():
  z, y = _batch()
  obj = objectives.pair_loss(my_from_sim, name="mine")
  loss = obj.apply({}, {}, objectives.Batch(z, y), jax.random.PRNGKey(0))[0]
  s = np.asarray(similarity.cosine(z), np.float64)
  same = np.asarray(y)[:, None] == np.asarray(y)[None, :]
  eye = np.eye(12, dtype=bool)
  want = np.mean(1 - s[same & ~eye]) + np.mean(np.maximum(s[~same] - 0.2, 0))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  pa = objectives.proxy_loss(losses.proxy_anchor_from_sim, name="pa", num_classes=4, dim=6,
                             init="proxy_anchor")
  params = pa.init(jax.random.PRNGKey(0))
  np.testing.assert_allclose(
      pa.apply(params, {}, objectives.Batch(z, y), jax.random.PRNGKey(0))[0],
      losses.proxy_anchor_loss(z, y, params["proxies"]), rtol=1e-6)
  with pytest.raises(ValueError, match="kind"):
    objectives.SoftLoss("triplets", lambda *a: 0, lambda *a: 0)


# ------------------------------------------------------------------ a new method, in this file


@dataclasses.dataclass(frozen=True)
class NormSettings:
  """A new method's own typed settings."""

  weight: float = 0.1
  lr_mult: float = 10.0

  def __post_init__(self):
    if not self.weight >= 0:
      raise ValueError(f"norm weight must be >= 0, got {self.weight}.")


def norm_wrap(inner: objectives.Objective, settings: NormSettings = NormSettings(), *,
              name: str = "norm") -> objectives.Objective:
  """Adds `weight * mean((|z| - r)^2)` with a learnable radius r (a parameter at `lr_mult`) and
  counts the steps it has seen (state), following the conventions of jaxdml.objectives."""

  def init(key):
    k_inner, _ = jax.random.split(key)
    return {**inner.init(k_inner), name: jnp.ones((), jnp.float32)}

  def init_state():
    return {**inner.init_state(), name: jnp.zeros((), jnp.int32)}

  def apply(params, state, batch, key):
    k_inner, _ = jax.random.split(key)
    inner_params = {k: v for k, v in params.items() if k != name}
    inner_state = {k: v for k, v in state.items() if k != name}
    loss, inner_state, aux = inner.apply(inner_params, inner_state, batch, k_inner)
    norms = jnp.linalg.norm(batch.embeddings, axis=1)
    reg = jnp.mean((norms - params[name]) ** 2)
    aux = {**aux, f"{name}_loss": reg}
    aux.setdefault("base_loss", loss)
    return (loss + settings.weight * reg, {**inner_state, name: state[name] + 1}, aux)

  return objectives.Objective(f"{inner.name}+{name}", init, apply, init_state, soft=inner.soft,
                              lr_mult={**inner.lr_mult, name: settings.lr_mult})


DAS = das.Settings(num_generated=2, scale_range=(0.9, 1.1), shift_scale=0.1)


def composed(location="embedding"):
  """Metrix around the new method around DAS around a user's own loss."""
  obj = objectives.pair_loss(my_from_sim, name="mine")
  obj = das.wrap(obj, DAS, num_classes=4, dim=6)
  obj = norm_wrap(obj, NormSettings(weight=0.1))
  return metrix.wrap(obj, metrix.Settings(location=location, pairing="pos_neg"))


def test_a_new_method_composes_with_two_built_in_ones_and_a_users_loss():
  obj = composed()
  assert obj.name == "mine+das+norm+metrix"
  assert dict(obj.lr_mult) == {"norm": 10.0}
  params, state = obj.init(jax.random.PRNGKey(0)), obj.init_state()
  assert sorted(params) == ["norm"] and sorted(state) == ["das", "norm"]
  z, y = _batch()
  z = z + 1.0  # norms away from 1: the regulariser acts
  key = jax.random.PRNGKey(7)
  loss, new_state, aux = jax.jit(obj.apply)(params, state, objectives.Batch(z, y), key)
  assert int(new_state["norm"]) == 1 and int(new_state["das"].bank_count.sum()) == 24

  # every part recomputed independently, with the keys each method splits off
  k1, k_mix = jax.random.split(key)           # Metrix
  k2, _ = jax.random.split(k1)                # the new method
  _, k_das = jax.random.split(k2)             # DAS; the user's loss draws nothing
  memory = das.update(state["das"], z, y)
  z_gen, y_gen = das.generate(memory, z, y, k_das, **DAS.generate_kwargs())
  z_all, y_all = jnp.concatenate([z, z_gen]), jnp.concatenate([y, y_gen])
  t_all, m_all = targets.from_labels(y_all)
  base = my_from_sim(similarity.cosine(z_all), t_all, m_all)
  reg = jnp.mean((jnp.linalg.norm(z, axis=1) - 1.0) ** 2)
  k_pairs, k_lam = jax.random.split(k_mix)
  pairs = metrix.select_pairs(y, 0.0, pairing="pos_neg", sim=similarity.cosine(z, z),
                              key=k_pairs, num_positives=1, num_negatives=None)
  pairs = pairs._replace(lam=metrix.sample_lambda(k_lam, 2.0))
  mixed = metrix.mix_pairs(z, pairs)
  target, mask = metrix.mixed_targets(y, pairs)
  mix = my_from_sim(similarity.cosine(z, mixed), target, mask)
  np.testing.assert_allclose(aux["base_loss"], base, rtol=1e-5)
  np.testing.assert_allclose(aux["norm_loss"], reg, rtol=1e-5)
  np.testing.assert_allclose(aux["mix_loss"], mix, rtol=1e-5)
  np.testing.assert_allclose(loss, base + 0.1 * reg + 0.4 * mix, rtol=1e-5)
  assert float(reg) > 0 and float(mix) > 0

  # the caller chooses the order: DAS outermost mixes nothing of the feature maps it lacks, so
  # embedding mixup inside it sees the combined batch
  other = das.wrap(metrix.wrap(norm_wrap(objectives.pair_loss(my_from_sim, name="mine")),
                               metrix.Settings(location="embedding")), DAS, num_classes=4, dim=6)
  assert other.name == "mine+norm+metrix+das"
  out = other.apply(other.init(jax.random.PRNGKey(0)), other.init_state(),
                    objectives.Batch(z, y), key)
  assert np.isfinite(float(out[0]))


class TwoLayer(nn.Module):
  """Linear features -> linear embedding, split at the feature map."""

  def setup(self):
    self.f = nn.Dense(5)
    self.e = nn.Dense(6)

  def features(self, x, *, train=False):
    return jnp.tanh(self.f(x))

  def embed_features(self, f, *, train=False):
    return self.e(f)

  def __call__(self, x, *, train=False):
    return self.embed_features(self.features(x))


def test_the_composition_trains_through_the_step_with_the_model_seam():
  """Feature mixup reaches the network through the step; the new method's radius moves at its
  own learning rate (group "loss/norm"); the state of DAS and of the new method is carried."""
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
  y = jnp.repeat(jnp.arange(4), 3).astype(jnp.int32)
  obj = composed("feature")
  lr = 0.05
  spec = OptimizerSpec(optimizer="sgd", learning_rate=lr, weight_decay=0.0,
                       lr_mult={"backbone": 1.0, "head": 1.0, "loss": 1.0,
                                **{f"loss/{k}": v for k, v in obj.lr_mult.items()}})
  tx = make_optimizer(spec)
  mesh = make_mesh(1)
  model = TwoLayer()
  state = init_state(jax.random.PRNGKey(3), model, obj, x[:2], tx, mesh)
  step = make_train_step(model, obj, tx, mesh=mesh, donate=False)
  new, metrics = step(state, {"image": x, "label": y})
  assert float(metrics["mix_loss"]) > 0 and int(new.loss_state["norm"]) == 1
  assert int(new.loss_state["das"].bank_count.sum()) > 0

  # the radius's update is -lr * 10 * its gradient (SGD with momentum 0.9: first step plain)
  def loss_of_radius(r):
    params = {**state.params, "loss": {"norm": r}}
    from jaxdml.train.step import forward_with_seam  # noqa: PLC0415
    k_drop, k_loss = jax.random.split(jax.random.split(state.key)[1])
    batch, _ = forward_with_seam(model, params, state.model_state, x, y, k_drop)
    return obj.apply({"norm": r}, state.loss_state, batch, k_loss)[0]

  g = jax.grad(loss_of_radius)(state.params["loss"]["norm"])
  np.testing.assert_allclose(new.params["loss"]["norm"] - state.params["loss"]["norm"],
                             -lr * 10.0 * g, rtol=1e-4)
  with pytest.raises(ValueError, match="norm weight"):
    NormSettings(weight=-1.0)


def test_parameters_and_state_clash_by_name():
  inner = das.wrap(objectives.core("contrastive"), num_classes=2, dim=4)
  with pytest.raises(ValueError, match="already has state 'das'"):
    das.wrap(inner, num_classes=2, dim=4).init_state()
  assert sorted(das.wrap(inner, num_classes=2, dim=4, name="das2").init_state()) == [
      "das", "das2"]


def test_model_fns_outside_the_trainer():
  """Any functions of arrays serve as the model seam: input mixup through a linear map."""
  w = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  x = jax.random.normal(jax.random.PRNGKey(1), (12, 4))
  y = jnp.repeat(jnp.arange(4), 3)
  fns = objectives.ModelFns(embed=lambda v: v @ w)
  obj = metrix.wrap(objectives.core("multi_similarity"),
                    metrix.Settings(location="input", pairing="pos_neg", num_mixed=24))
  batch = objectives.Batch(x @ w, y, inputs=x, model=fns)
  loss, _, aux = obj.apply({}, {}, batch, jax.random.PRNGKey(2))
  # linear network: input mixup = embedding mixup
  emb = metrix.wrap(objectives.core("multi_similarity"),
                    metrix.Settings(location="embedding", pairing="pos_neg", num_positives=None,
                                    num_negatives=1, num_mixed=24))
  loss2, _, aux2 = emb.apply({}, {}, objectives.Batch(x @ w, y), jax.random.PRNGKey(2))
  np.testing.assert_allclose(aux["mix_loss"], aux2["mix_loss"], rtol=1e-5)
  np.testing.assert_allclose(loss, loss2, rtol=1e-5)


def test_weight_decay_survives_every_wrapping():
  """An inner method's own groups (lr multiplier and weight decay) pass through DAS and Metrix
  wrapped around it, in either order, and reach the optimiser's spec."""
  from jaxdml.methods import hier  # noqa: PLC0415
  from jaxdml.train.optim import param_labels  # noqa: PLC0415

  inner = objectives.core("proxy_anchor", num_classes=4, dim=6)
  obj = hier.wrap(inner, hier.Settings(num_proxies=8, weight_decay=1e-2), dim=6)
  for wrapped in (
      metrix.wrap(das.wrap(obj, DAS, num_classes=4, dim=6), metrix.Settings(
          location="embedding")),
      das.wrap(metrix.wrap(obj, metrix.Settings(location="embedding")), DAS, num_classes=4,
               dim=6)):
    assert dict(wrapped.weight_decay) == {"hier": 1e-2}
    assert dict(wrapped.lr_mult) == {"hier": 50.0}
  assert dict(das.wrap(inner, DAS, num_classes=4, dim=6).weight_decay) == {}
  with pytest.raises(ValueError, match="weight_decay"):
    objectives.Objective("x", inner.init, inner.apply, weight_decay={"hier": -1.0})
  # The optimiser decays the hier group alone (AdamW, zero gradients: the decay step only).
  spec = OptimizerSpec(optimizer="adamw", learning_rate=0.1, weight_decay=0.0,
                       loss_weight_decay=0.0,
                       lr_mult={"loss": 1.0, **{f"loss/{k}": v for k, v in obj.lr_mult.items()}},
                       group_weight_decay={f"loss/{k}": v for k, v in obj.weight_decay.items()})
  params = {"model": {"w": jnp.ones(3)}, "loss": obj.init(jax.random.PRNGKey(0))}
  assert param_labels(params, loss_groups=("loss/hier",))["loss"] == {"proxies": "loss",
                                                                      "hier": "loss/hier"}
  tx = make_optimizer(spec)
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(u["loss"]["hier"], -0.1 * 50.0 * 1e-2 * params["loss"]["hier"],
                             rtol=1e-6)
  assert float(jnp.abs(u["loss"]["proxies"]).max()) == 0.0
