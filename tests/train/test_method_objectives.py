"""The seed methods inside the trainer: DAS's state, Metrix's three mixing locations through the
train step, HIER's proxies and learning-rate group, and their composition."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdml import losses, similarity
from jaxdml.methods import hier as hier_lib
from jaxdml.train import TrainConfig, builders, make_objective
from jaxdml.train.step import init_state, make_mesh, make_train_step


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
  obj = make_objective("multi_similarity", num_classes=4, dim=6,
                       das={"scale_range": [1.0, 1.0], "shift_scale": 0.0, "num_generated": 3})
  state = obj.init_state()
  assert state["das"].bank.shape == (4, 10, 6)
  loss, new_state, aux = obj.apply(obj.init(jax.random.PRNGKey(0)), state, z, y,
                                   jax.random.PRNGKey(1))
  expected = losses.multi_similarity_loss(jnp.tile(z, (4, 1)), jnp.tile(y, 4))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(aux["base_loss"], expected, rtol=1e-5)
  # the memory recorded the batch: 3 per class -> 6 ordered differences per class
  np.testing.assert_array_equal(new_state["das"].bank_count, [6, 6, 6, 6])
  assert int(new_state["das"].frequency.sum()) == 12 * 4  # K = 4 dims per embedding


def test_das_recipe_and_auxiliary_loss():
  z, y = _batch()
  obj = make_objective("contrastive", num_classes=4, dim=6,
                       das={"recipe": ["table2", "online_products", "triplet_semihard"],
                            "scale_range": [1.0, 1.0], "shift_scale": 0.0})
  loss, _, _ = obj.apply({}, obj.init_state(), z, y, jax.random.PRNGKey(1))
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
    obj = make_objective(loss, num_classes=4, dim=3,
                         metrix={"location": location, "pairing": "pos_neg",
                                 "num_positives": 1, "num_negatives": None, "weight": 0.4})
    assert obj.mixup == location
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


def test_metrix_weight_zero_is_the_clean_loss_and_bad_settings_raise():
  z, y = _batch()
  obj = make_objective("contrastive", num_classes=4, dim=6,
                       loss_kwargs={"neg_margin": 0.7}, metrix={"location": "embedding",
                                                                "weight": 0.0})
  loss, _, aux = obj.apply({}, {}, z, y, jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss, losses.contrastive_loss(z, y, neg_margin=0.7), rtol=1e-6)
  assert np.isfinite(float(aux["mix_loss"]))
  with pytest.raises(ValueError, match="Metrix is defined"):
    make_objective("triplet", num_classes=4, dim=6, metrix={})
  with pytest.raises(ValueError, match="unknown Metrix settings"):
    make_objective("contrastive", num_classes=4, dim=6, metrix={"mode": "feature"})
  with pytest.raises(ValueError, match="location"):
    make_objective("contrastive", num_classes=4, dim=6, metrix={"location": "pixels"})
  obj = make_objective("contrastive", num_classes=4, dim=6, metrix={"location": "feature"})
  with pytest.raises(ValueError, match="embed_mixed"):
    obj.apply({}, {}, z, y, jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------------------- HIER


def test_hier_objective_is_base_plus_half_hier_and_reaches_the_proxies():
  z, y = _batch(dim=4)
  z = 0.3 * similarity.l2_normalize(z)  # points inside the ball of c = 0.1 (radius 3.16)
  obj = make_objective("proxy_anchor", num_classes=4, dim=4, hier={"num_proxies": 8})
  params = obj.init(jax.random.PRNGKey(0))
  assert params["hier"].shape == (8, 4) and params["proxies"].shape == (4, 4)
  key = jax.random.PRNGKey(2)
  (loss, (_, aux)), grads = jax.jit(jax.value_and_grad(
      lambda p: (lambda out: (out[0], out[1:]))(obj.apply(p, {}, z, y, key)), has_aux=True))(
          params)
  np.testing.assert_allclose(loss, aux["base_loss"] + 0.5 * aux["hier_loss"], rtol=1e-6)
  np.testing.assert_allclose(aux["base_loss"],
                             losses.proxy_anchor_loss(z, y, params["proxies"]), rtol=1e-6)
  hier_alone = jax.jit(hier_lib.hier_loss)(params["hier"], z, y, jax.random.split(key)[1])
  np.testing.assert_allclose(aux["hier_loss"], hier_alone, rtol=1e-5)
  assert float(jnp.abs(grads["hier"]).sum()) > 0


def test_hier_config_gives_the_proxy_learning_rates():
  """50x for the hierarchical proxies, `loss_lr_mult` for the class proxies, only those move."""
  config = TrainConfig(loss="proxy_anchor", head="hyperbolic", hier={"num_proxies": 8},
                       loss_lr_mult=1e4, optimizer="sgd", learning_rate=1e-3, weight_decay=0.0)
  config.validate()
  spec = builders.optimizer_spec(config, steps_per_epoch=10)
  assert spec.lr_mult["loss/hier"] == 50.0 and spec.lr_mult["loss"] == 1e4
  tx = builders.build_optimizer(config, steps_per_epoch=10)
  params = {"model": {"w": jnp.ones(2)}, "loss": {"proxies": jnp.ones(2), "hier": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["model"]["w"], -1e-3, rtol=1e-6)
  np.testing.assert_allclose(updates["loss"]["hier"], -1e-3 * 50, rtol=1e-6)
  np.testing.assert_allclose(updates["loss"]["proxies"], -1e-3 * 1e4, rtol=1e-6)
  hier_cfg = builders.hier_config(config)
  assert hier_cfg["c"] == config.poincare_c and hier_cfg["clip_r"] == config.clip_r


def test_config_validation_of_methods():
  with pytest.raises(ValueError, match="hyperbolic"):
    TrainConfig(hier={}).validate()
  with pytest.raises(ValueError, match="unknown DAS settings"):
    TrainConfig(das={"bank": 3}).validate()
  with pytest.raises(ValueError, match="Metrix is defined"):
    TrainConfig(loss="triplet", metrix={}).validate()
  with pytest.raises(ValueError, match="config.head"):
    TrainConfig(head="spherical").validate()
  with pytest.raises(ValueError, match="unknown HIER settings"):
    TrainConfig(head="hyperbolic", hier={"lambda": 1}).validate()
  with pytest.raises(ValueError, match="poincare_c"):
    TrainConfig(head="hyperbolic", hier={"c": 1.0}).validate()
  with pytest.raises(ValueError, match="clip_r"):
    TrainConfig(head="hyperbolic", clip_r=0.0).validate()
  with pytest.raises(ValueError, match="lr_mult"):
    TrainConfig(head="hyperbolic", hier={"lr_mult": -50}).validate()
  with pytest.raises(ValueError, match="weight"):
    TrainConfig(metrix={"weight": -0.4}).validate()
  with pytest.raises(ValueError, match="recipe"):
    TrainConfig(das={"recipe": "table1"}).validate()
  with pytest.raises(ValueError, match="bank_size"):
    TrainConfig(das={"bank_size": 0}).validate()
  with pytest.raises(ValueError, match="cosine"):
    TrainConfig(loss="proxy_nca", loss_kwargs={"normalize_proxies": False},
                metrix={}).validate()
  # input mixup keeps exactly the positive-negative mixes of a P x M batch: no padding images
  cfg = TrainConfig(classes_per_batch=4, per_class=3, metrix={"location": "input"})
  assert builders.metrix_config(cfg)["num_mixed"] == 4 * 3 * 2


# ----------------------------------------------------------------------------------- composition


def test_proxy_anchor_metrix_hier_and_das_in_one_digits_run(tmp_path):
  """Proxy-Anchor + DAS + Metrix feature mixup + HIER on the hyperbolic small CNN: one run trains,
  logs each part of the loss, and evaluates by hyperbolic distance."""
  from jaxdml.train.logging import read_metrics
  from jaxdml.train.run import run
  config = TrainConfig(loss="proxy_anchor", head="hyperbolic", embedding_dim=16, epochs=2,
                       train_images_per_class=4, test_images_per_class=4, classes_per_batch=8,
                       per_class=2, das={"bank_size": 4}, metrix={"num_mixed": 16},
                       hier={"num_proxies": 16}, clip_value=10.0, eval_baselines=False,
                       tensorboard=False, log_every=1, workdir=str(tmp_path))
  out = run(config, progress=False, verbose=False)
  m = out["metrics"]["trained"]
  assert 0 < m["map@r"] <= 1 and "map" not in m  # hyperbolic: no full-ranking mAP
  records = read_metrics(tmp_path / "metrics.jsonl")
  logged = {k for r in records for k in r}
  assert {"loss/base_loss", "loss/mix_loss", "loss/hier_loss"} <= logged
  state = out["state"]
  assert int(state.loss_state["das"].bank_count.min()) > 0
  assert (tmp_path / "retrieval.png").exists()
