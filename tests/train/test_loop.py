import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import objectives
from jaxdml.methods import das
from jaxdml.objectives import Objective, names
from jaxdml.train import NonFiniteLossError, OptimizerSpec, make_optimizer, train
from jaxdml.train.batches import ArrayBatches, Stacked
from jaxdml.train.checkpoint import Checkpointer
from jaxdml.train.state import init_state


class Linear(nn.Module):
  """Dense + batch norm + dense: has params and batch statistics."""
  dim: int = 8

  @nn.compact
  def __call__(self, x, *, train=False):
    h = nn.Dense(16)(x.reshape(x.shape[0], -1))
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    z = nn.Dense(self.dim)(nn.relu(h))
    return z / jnp.linalg.norm(z, axis=1, keepdims=True)


def blobs(num_classes=6, per_class=8, dim=10, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((num_classes, dim)) * 2
  x = np.repeat(centers, per_class, 0) + rng.standard_normal((num_classes * per_class, dim))
  return x.astype(np.float32), np.repeat(np.arange(num_classes), per_class).astype(np.int32)


def opt(lr=1e-2, loss_mult=10.0, **kw):
  return make_optimizer(OptimizerSpec(learning_rate=lr, weight_decay=0.0,
                                      lr_mult={"loss": loss_mult}, **kw))


class Plain(nn.Module):
  """A dense layer: the cheapest model to compile."""

  @nn.compact
  def __call__(self, x, *, train=False):
    z = nn.Dense(8)(x.reshape(x.shape[0], -1))
    return z / jnp.linalg.norm(z, axis=1, keepdims=True)


def fit(obj, epochs=2, *, tx=None, seed=0, stack=True, k=None, workdir=None, model=None, **kw):
  x, y = blobs()
  batches = ArrayBatches(x, y, classes_per_batch=3, per_class=4, seed=seed, stack_epoch=stack)
  if k:
    batches = Stacked(batches, k)
  steps = epochs * ArrayBatches(x, y, classes_per_batch=3, per_class=4).steps_per_epoch
  return train(model=model or Linear(), objective=obj, tx=tx or opt(), batches=batches,
               total_steps=steps, sample=x[:2], seed=seed, workdir=workdir, progress=False,
               tensorboard=False, **kw)


def params_of(result):
  return jax.tree.map(np.asarray, result.state.params)


@pytest.mark.parametrize("name", names())
def test_every_objective_trains_to_finite_lower_loss(name):
  obj = objectives.core(name, num_classes=6, dim=8)
  r = fit(obj, epochs=6, model=Plain())
  assert np.isfinite(r.losses).all(), name
  assert r.losses[-4:].mean() <= r.losses[:4].mean() + 1e-6, name


@pytest.mark.parametrize("miner", ["batch_hard", "semihard", "multi_similarity",
                                   "distance_weighted"])
def test_miners_in_objectives(miner):
  loss = "multi_similarity" if miner == "multi_similarity" else "triplet"
  r = fit(objectives.core(loss, num_classes=6, dim=8, miner=miner), model=Plain())
  assert np.isfinite(r.losses).all()


def test_learnable_margin_beta_is_trained():
  obj = objectives.core("margin", num_classes=6, dim=8, learn_beta=True)
  beta = fit(obj).state.params["loss"]["beta"]
  assert beta.shape == (6,) and not np.allclose(beta, 1.2)


def test_batch_stats_are_updated_and_used():
  x, _ = blobs()
  obj = objectives.core("multi_similarity", num_classes=6, dim=8)
  init = init_state(jax.random.PRNGKey(0), Linear(), obj, jnp.asarray(x[:2]), opt())
  r = fit(obj)
  before = init.model_state["batch_stats"]["BatchNorm_0"]["mean"]
  after = r.state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
  assert not np.allclose(before, after)


def test_proxies_use_their_group_learning_rate():
  x, _ = blobs()
  obj = objectives.core("proxy_anchor", num_classes=6, dim=8)
  init = init_state(jax.random.PRNGKey(0), Linear(), obj, jnp.asarray(x[:2]), opt())
  moved = lambda r: float(jnp.abs(r.state.params["loss"]["proxies"]
                                  - init.params["loss"]["proxies"]).max())
  slow = fit(obj, epochs=1, tx=opt(1e-3, loss_mult=1e-3))
  fast = fit(obj, epochs=1, tx=opt(1e-3, loss_mult=100.0))
  assert moved(fast) > 100 * moved(slow)


def test_same_seed_same_result_and_stacking_does_not_change_training():
  obj = objectives.core("contrastive", num_classes=6, dim=8)
  a = fit(obj, seed=4)
  b = fit(obj, seed=4)
  np.testing.assert_array_equal(a.losses, b.losses)
  # one batch per call, or 2 per call, or a whole epoch per call: the same training
  one = fit(obj, seed=4, stack=False)
  two = fit(obj, seed=4, stack=False, k=2) if one.losses.size % 2 == 0 else one
  np.testing.assert_allclose(one.losses, a.losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(two.losses, a.losses, rtol=1e-5, atol=1e-6)


def poisoned(bad_class=5):
  base = objectives.core("multi_similarity", num_classes=6, dim=8)

  def apply(params, state, batch, key):  # NaN once a batch holds `bad_class`
    loss, state, aux = base.apply(params, state, batch, key)
    return jnp.where(jnp.any(batch.labels == bad_class), jnp.nan, loss), state, aux

  return Objective("poisoned", base.init, apply)


def test_non_finite_loss_stops_with_last_good_state(tmp_path):
  with pytest.raises(NonFiniteLossError, match="step") as err:
    fit(poisoned(), epochs=3, stack=False, log_every=1, workdir=tmp_path,
        checkpoint_every=1)
  e = err.value
  assert int(e.state.step) == e.step  # steps before the bad one were applied, none after
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(e.state.params))
  # the newest checkpoint is the last good state; nothing was saved after the bad step
  ckpt = Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() == e.step
  restored, _ = ckpt.restore(e.state)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(e.state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_detected_between_logs():
  # log_every far beyond the run: the check at the end still catches the bad step
  with pytest.raises(NonFiniteLossError) as err:
    fit(poisoned(), epochs=2, stack=False, log_every=10_000)
  assert int(err.value.state.step) == err.value.step


@pytest.mark.parametrize("stack", [False, True])
def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path, stack):
  # loss parameters (proxies) and loss state (the DAS memory) must both come back
  obj = das.wrap(objectives.core("proxy_anchor", num_classes=6, dim=8), das.Settings(bank_size=4),
                 num_classes=6, dim=8)
  x, y = blobs()
  spe = ArrayBatches(x, y, classes_per_batch=3, per_class=4).steps_per_epoch

  def run(epochs, workdir):
    batches = ArrayBatches(x, y, classes_per_batch=3, per_class=4, seed=3, stack_epoch=stack)
    return train(model=Linear(), objective=obj, tx=opt(), batches=batches,
                 total_steps=epochs * spe, sample=x[:2], seed=3, workdir=workdir,
                 checkpoint_every=spe, progress=False, tensorboard=False)

  full = run(4, tmp_path / "full")
  first = run(2, tmp_path / "split")   # "killed" after 2 epochs: its last checkpoint is step 2N
  assert first.resumed_from is None
  second = run(4, tmp_path / "split")  # the same command again resumes and finishes
  assert second.resumed_from == 2 * spe
  np.testing.assert_allclose(np.concatenate([first.losses, second.losses]), full.losses,
                             rtol=1e-6, atol=1e-7)
  for a, b in zip(jax.tree.leaves(params_of(second)), jax.tree.leaves(params_of(full)),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(second.state.key), np.asarray(full.state.key))
  assert int(full.state.loss_state["das"].bank_count.min()) > 0
  for a, b in zip(jax.tree.leaves(second.state.loss_state), jax.tree.leaves(full.state.loss_state),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  ckpt = Checkpointer(tmp_path / "split" / "checkpoints", max_to_keep=3)
  assert ckpt.all_steps() == [2 * spe, 3 * spe, 4 * spe]  # the newest 3 kept
  ckpt.close()


def test_workdir_outputs(tmp_path):
  obj = objectives.core("multi_similarity", num_classes=6, dim=8)
  x, y = blobs()
  r = fit(obj, epochs=2, workdir=tmp_path, eval_fn=lambda s: {"recall@1": 0.5},
          log_every=1)
  assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "curves.png").exists()
  assert r.evals and r.evals[-1][0] == int(r.state.step)


def test_train_argument_errors():
  obj = objectives.core("contrastive", num_classes=6, dim=8)
  with pytest.raises(ValueError, match="multiple"):
    fit(obj, epochs=1, stack=False, k=2, checkpoint_every=3)


def test_resume_restores_the_grain_pipeline_position(tmp_path):
  """Through the real input pipeline: the loader's state travels with the checkpoint."""
  from jaxdml.data import ArraySource, make_train_loader
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (24, 10, 10, 3)).astype(np.uint8)
  labels = np.repeat(np.arange(6), 4)
  obj = objectives.core("multi_similarity", num_classes=6, dim=8)

  def run(steps, workdir):
    loader = make_train_loader(ArraySource(images, labels), classes_per_batch=3, per_class=2,
                               image_size=8, seed=5)
    return train(model=Plain(), objective=obj, tx=opt(), batches=loader, total_steps=steps,
                 sample=np.zeros((2, 8, 8, 3), np.float32), seed=1, workdir=workdir,
                 checkpoint_every=3, progress=False, tensorboard=False)

  full = run(6, tmp_path / "full")
  run(3, tmp_path / "split")
  second = run(6, tmp_path / "split")
  assert second.resumed_from == 3
  np.testing.assert_allclose(second.losses, full.losses[3:], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(params_of(second)), jax.tree.leaves(params_of(full)),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
