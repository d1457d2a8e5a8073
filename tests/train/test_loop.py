import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.train import NonFiniteLossError, TrainConfig, fit, make_objective
from jaxdml.train.loop import init_state, make_optimizer
from jaxdml.train.objectives import Objective, names


class Linear(nn.Module):
  dim: int = 8

  @nn.compact
  def __call__(self, x):
    z = nn.Dense(self.dim)(x.reshape(x.shape[0], -1))
    return z / jnp.linalg.norm(z, axis=1, keepdims=True)


def blobs(num_classes=6, per_class=8, dim=10, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((num_classes, dim)) * 2
  x = np.repeat(centers, per_class, 0) + rng.standard_normal((num_classes * per_class, dim))
  return x.astype(np.float32), np.repeat(np.arange(num_classes), per_class).astype(np.int32)


def test_every_objective_trains_to_finite_lower_loss():
  x, y = blobs()
  tx = make_optimizer(1e-2, 1e-4, 1e-1)
  for name in names():
    obj = make_objective(name, num_classes=6, dim=8)
    r = fit(Linear(), obj, x, y, epochs=6, classes_per_batch=3, per_class=4, tx=tx,
            progress=False)
    assert np.isfinite(r.losses).all(), name
    assert r.losses[-4:].mean() <= r.losses[:4].mean() + 1e-6, name


@pytest.mark.parametrize("miner", ["batch_hard", "semihard", "multi_similarity",
                                   "distance_weighted"])
def test_miners_in_objectives(miner):
  x, y = blobs()
  loss = "multi_similarity" if miner == "multi_similarity" else "triplet"
  obj = make_objective(loss, num_classes=6, dim=8, miner=miner)
  r = fit(Linear(), obj, x, y, epochs=2, classes_per_batch=3, per_class=4,
          tx=make_optimizer(1e-2, 1e-4, 1e-1), progress=False)
  assert np.isfinite(r.losses).all()


def test_learnable_margin_beta_is_trained():
  x, y = blobs()
  obj = make_objective("margin", num_classes=6, dim=8, loss_kwargs={"learn_beta": True})
  r = fit(Linear(), obj, x, y, epochs=2, classes_per_batch=3, per_class=4,
          tx=make_optimizer(1e-2, 1e-4, 1e-1), progress=False)
  beta = r.state.params["loss"]["beta"]
  assert beta.shape == (6,) and not np.allclose(beta, 1.2)


def test_proxies_use_their_own_learning_rate():
  x, y = blobs()
  obj = make_objective("proxy_anchor", num_classes=6, dim=8)
  tx0 = make_optimizer(1e-3, 0.0, 1e-1)
  init = init_state(jax.random.PRNGKey(0), Linear(), obj, jnp.asarray(x[:2]), tx0).params["loss"]
  slow = fit(Linear(), obj, x, y, epochs=1, classes_per_batch=3, per_class=4,
             tx=make_optimizer(1e-3, 0.0, 1e-6), progress=False)
  fast = fit(Linear(), obj, x, y, epochs=1, classes_per_batch=3, per_class=4,
             tx=make_optimizer(1e-3, 0.0, 1e-1), progress=False)
  moved = lambda r: float(jnp.abs(r.state.params["loss"]["proxies"] - init["proxies"]).max())
  assert moved(fast) > 100 * moved(slow)


def test_non_finite_loss_stops_with_last_good_state():
  x, y = blobs()
  base = make_objective("multi_similarity", num_classes=6, dim=8)

  def apply(params, z, labels, key):  # NaN as soon as a batch holds class 5
    loss = base.apply(params, z, labels, key)
    return jnp.where(jnp.any(labels == 5), jnp.nan, loss)

  obj = Objective("poisoned", base.init, apply, False)
  tx = make_optimizer(1e-2, 0.0, 1e-1)
  with pytest.raises(NonFiniteLossError, match="step") as err:
    fit(Linear(), obj, x, y, epochs=3, classes_per_batch=3, per_class=4, tx=tx, progress=False)
  e = err.value
  assert int(e.state.step) == e.step  # steps before the bad one were applied, none after
  params = e.state.params["model"]
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


def test_same_seed_same_result():
  x, y = blobs()
  obj = make_objective("contrastive", num_classes=6, dim=8)
  run = lambda: fit(Linear(), obj, x, y, epochs=2, classes_per_batch=3, per_class=4,
                    tx=make_optimizer(1e-2, 0.0, 1e-1), seed=4, progress=False).losses
  np.testing.assert_array_equal(run(), run())


def test_objective_errors():
  with pytest.raises(ValueError, match="unknown loss"):
    make_objective("nope", num_classes=3, dim=4)
  with pytest.raises(ValueError, match="unknown miner"):
    make_objective("triplet", num_classes=3, dim=4, miner="nope")
  with pytest.raises(ValueError, match="does not apply"):
    make_objective("arcface", num_classes=3, dim=4, miner="batch_hard")


def test_config_override_and_validation():
  c = TrainConfig().override(["epochs=3", "loss=contrastive", 'loss_kwargs={"neg_margin": 0.5}',
                              "recall_ks=[1, 5]"])
  assert (c.epochs, c.loss, c.loss_kwargs, c.recall_ks) == (3, "contrastive",
                                                           {"neg_margin": 0.5}, (1, 5))
  with pytest.raises(ValueError, match="unknown config field"):
    TrainConfig().override(["epoch=3"])
  with pytest.raises(ValueError, match="key=value"):
    TrainConfig().override(["epochs"])
  with pytest.raises(ValueError, match="per_class"):
    dataclasses.replace(TrainConfig(), per_class=1).validate()
  with pytest.raises(ValueError, match="learning_rate"):
    dataclasses.replace(TrainConfig(), learning_rate=0.0).validate()
