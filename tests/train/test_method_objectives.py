"""The seed methods inside the trainer: DAS's state, Metrix's three mixing locations through the
train step, HIER's proxies and learning-rate group, and their composition."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdml import losses, objectives, similarity
from jaxdml.app import build
from jaxdml.app.config import (
    Config,
    DataConfig,
    LoopConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    apply_overrides,
)
from jaxdml.methods import das, hier, metrix
from jaxdml.train.sharding import make_mesh
from jaxdml.train.state import init_state
from jaxdml.train.step import make_train_step


def _batch(classes=4, per_class=3, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(classes * per_class, dim)).astype(np.float32)
  y = np.repeat(np.arange(classes), per_class).astype(np.int32)
  return jnp.asarray(z), jnp.asarray(y)


# ------------------------------------------------------------------------------------------ DAS


def test_das_degenerate_settings_give_the_loss_of_the_batch_repeated():
  """Scale range [1, 1] and no shift: the generated embeddings are the real ones (methods_spec
  3.5.3), so the objective is the base loss of the batch repeated 1 + R times."""
  z, y = _batch()
  z = similarity.l2_normalize(z)
  obj = das.wrap(objectives.core("multi_similarity"),
                 das.Settings(scale_range=(1.0, 1.0), shift_scale=0.0, num_generated=3),
                 num_classes=4, dim=6)
  state = obj.init_state()
  assert state["das"].bank.shape == (4, 10, 6)
  loss, new_state, aux = obj.apply(obj.init(jax.random.PRNGKey(0)), state,
                                   objectives.Batch(z, y), jax.random.PRNGKey(1))
  expected = losses.multi_similarity_loss(jnp.tile(z, (4, 1)), jnp.tile(y, 4))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(aux["base_loss"], expected, rtol=1e-5)
  # the memory recorded the batch: 3 per class -> 6 ordered differences per class
  np.testing.assert_array_equal(new_state["das"].bank_count, [6, 6, 6, 6])
  assert int(new_state["das"].frequency.sum()) == 12 * 4  # K = 4 dims per embedding


def test_das_recipe_and_auxiliary_loss():
  z, y = _batch()
  settings = dataclasses.replace(das.recipe("table2", "online_products", "triplet_semihard"),
                                 scale_range=(1.0, 1.0), shift_scale=0.0)
  obj = das.wrap(objectives.core("contrastive"), settings, num_classes=4, dim=6)
  loss, _, _ = obj.apply({}, obj.init_state(), objectives.Batch(z, y), jax.random.PRNGKey(1))
  zn = similarity.l2_normalize(z)
  # the recipe's aux_weight 1: loss(real) + loss(real + generated)
  expected = (losses.contrastive_loss(z, y)
              + losses.contrastive_loss(jnp.tile(zn, (4, 1)).at[:12].set(z), jnp.tile(y, 4)))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


# --------------------------------------------------------------------------------------- Metrix


class TwoLayer(nn.Module):
  """Linear features -> linear embedding (no normalisation), with explicit parameters."""

  def setup(self):
    self.w1 = self.param("w1", nn.initializers.normal(1.0), (4, 5))
    self.w2 = self.param("w2", nn.initializers.normal(1.0), (5, 3))
    self.b = self.param("b", nn.initializers.normal(1.0), (3,))

  def features(self, x, *, train=False):
    return x @ self.w1

  def embed_features(self, f, *, train=False):
    return f @ self.w2 + self.b

  def __call__(self, x, *, train=False):
    return self.embed_features(self.features(x))


def test_metrix_locations_agree_on_a_linear_network(loss="proxy_anchor"):
  """Through the train step: input, feature and embedding mixup of a linear network give the same
  mixed embeddings, hence the same loss, mixed-loss term and update."""
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
  y = jnp.repeat(jnp.arange(4), 3).astype(jnp.int32)
  mesh = make_mesh(1)
  tx = optax.sgd(0.1)
  results = {}
  for location in ("input", "feature", "embedding"):
    obj = metrix.wrap(objectives.core(loss, num_classes=4, dim=3),
                      metrix.Settings(location=location, pairing="pos_neg", num_positives=1,
                                      num_negatives=None, weight=0.4))
    state = init_state(jax.random.PRNGKey(3), TwoLayer(), obj, x[:2], tx, mesh)
    step = make_train_step(TwoLayer(), obj, tx, mesh=mesh, donate=False)
    new, metrics = step(state, {"image": x, "label": y})
    results[location] = (metrics, new.params)
  ref_metrics, ref_params = results["embedding"]
  assert float(ref_metrics["mix_loss"]) > 0
  np.testing.assert_allclose(ref_metrics["loss"],
                             ref_metrics["base_loss"] + 0.4 * ref_metrics["mix_loss"], rtol=1e-6)
  for location in ("input", "feature"):
    metrics, params = results[location]
    for k in ("loss", "mix_loss", "base_loss"):
      np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, err_msg=location)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=location)


def test_metrix_weight_zero_is_the_clean_loss():
  z, y = _batch()
  obj = metrix.wrap(objectives.core("contrastive", neg_margin=0.7),
                    metrix.Settings(location="embedding", weight=0.0))
  loss, _, aux = obj.apply({}, {}, objectives.Batch(z, y), jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss, losses.contrastive_loss(z, y, neg_margin=0.7), rtol=1e-6)
  assert np.isfinite(float(aux["mix_loss"]))


# ----------------------------------------------------------------------------------------- HIER


def test_hier_config_gives_the_proxy_learning_rates():
  """50x for the hierarchical proxies, `loss_lr_mult` for the class proxies, only those move;
  the objective asks for its group, the optimiser builder knows nothing of HIER."""
  config = Config(model=ModelConfig(head="hyperbolic", poincare_c=0.2, clip_r=1.5),
                  objective=ObjectiveConfig(loss="proxy_anchor",
                                            methods={"hier": hier.Settings(num_proxies=8)}),
                  optim=OptimConfig(loss_lr_mult=1e4, optimizer="sgd", learning_rate=1e-3,
                                    weight_decay=0.0))
  obj = build.build_objective(config, num_classes=4)
  assert dict(obj.lr_mult) == {"hier": 50.0}
  spec = build.optimizer_spec(config, steps_per_epoch=10, objective=obj)
  assert spec.lr_mult["loss/hier"] == 50.0 and spec.lr_mult["loss"] == 1e4
  tx = build.build_optimizer(config, steps_per_epoch=10, objective=obj)
  params = {"model": {"w": jnp.ones(2)}, "loss": {"proxies": jnp.ones(2), "hier": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["model"]["w"], -1e-3, rtol=1e-6)
  np.testing.assert_allclose(updates["loss"]["hier"], -1e-3 * 50, rtol=1e-6)
  np.testing.assert_allclose(updates["loss"]["proxies"], -1e-3 * 1e4, rtol=1e-6)
  # HIER's ball is the head's
  z = 0.3 * similarity.l2_normalize(_batch(dim=128)[0])
  params = obj.init(jax.random.PRNGKey(0))
  _, _, aux = obj.apply(params, {}, objectives.Batch(z, _batch()[1]), jax.random.PRNGKey(1))
  k_own = jax.random.split(jax.random.PRNGKey(1))[1]
  want = hier.loss(params["hier"], z, _batch()[1], k_own, c=0.2, clip_r=1.5)
  np.testing.assert_allclose(aux["hier_loss"], want, rtol=1e-5)


def test_config_validation_of_methods():
  hyperbolic = ["model.head=hyperbolic", "objective.loss=proxy_anchor"]
  with pytest.raises(ValueError, match="hyperbolic"):
    apply_overrides(Config(), ["objective.methods=hier"])
  with pytest.raises(ValueError, match="closest: scale_range"):
    apply_overrides(Config(), ["objective.methods=das", "objective.das.scale_rang=[1,1]"])
  with pytest.raises(ValueError, match="soft targets"):
    apply_overrides(Config(), ["objective.loss=n_pairs", "objective.methods=metrix"])
  with pytest.raises(ValueError, match="model.head"):
    apply_overrides(Config(), ["model.head=spherical"])
  with pytest.raises(ValueError, match="closest: lambda2, lambda1"):
    apply_overrides(Config(), hyperbolic + ["objective.methods=hier", "objective.hier.lambda=1"])
  with pytest.raises(ValueError, match="differs from the head"):
    apply_overrides(Config(), hyperbolic + ["objective.methods=hier", "objective.hier.c=1.0"])
  with pytest.raises(ValueError, match="clip_r"):
    apply_overrides(Config(), ["model.clip_r=0"])
  with pytest.raises(ValueError, match="lr_mult"):
    apply_overrides(Config(), hyperbolic + ["objective.methods=hier",
                                            "objective.hier.lr_mult=-50"])
  with pytest.raises(ValueError, match="weight"):
    apply_overrides(Config(), ["objective.methods=metrix", "objective.metrix.weight=-0.4"])
  with pytest.raises(ValueError, match="bank_size"):
    apply_overrides(Config(), ["objective.methods=das", "objective.das.bank_size=0"])
  with pytest.raises(ValueError, match="num_scaled_dims"):
    apply_overrides(Config(), ["model.embedding_dim=4", "objective.methods=das",
                               "objective.das.num_scaled_dims=8"])


# ----------------------------------------------------------------------------------- composition


def test_proxy_anchor_metrix_hier_and_das_in_one_digits_run(tmp_path):
  """Proxy-Anchor + DAS + Metrix feature mixup + HIER on the hyperbolic small CNN: one run trains,
  logs each part of the loss, and evaluates by hyperbolic distance."""
  from jaxdml.app.experiment import run
  from jaxdml.train.metric_writers import read_metrics
  config = Config(
      data=DataConfig(train_images_per_class=4, test_images_per_class=4, classes_per_batch=8,
                      per_class=2),
      model=ModelConfig(head="hyperbolic", embedding_dim=16),
      objective=ObjectiveConfig(loss="proxy_anchor", methods={
          "das": das.Settings(bank_size=4), "metrix": metrix.Settings(num_mixed=16),
          "hier": hier.Settings(num_proxies=16)}),
      optim=OptimConfig(clip_value=10.0),
      loop=LoopConfig(epochs=2, tensorboard=False, log_every=1, workdir=str(tmp_path)))
  config = apply_overrides(config, ["eval.baselines=false"])
  out = run(config, progress=False, verbose=False)
  m = out["metrics"]["trained"]
  assert 0 < m["map@r"] <= 1 and "map" not in m  # hyperbolic: no full-ranking mAP
  records = read_metrics(tmp_path / "metrics.jsonl")
  logged = {k for r in records for k in r}
  assert {"loss/base_loss", "loss/mix_loss", "loss/hier_loss"} <= logged
  state = out["state"]
  assert int(state.loss_state["das"].bank_count.min()) > 0
  assert (tmp_path / "retrieval.png").exists()
