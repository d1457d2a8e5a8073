"""The loop never loses work and never reports a diverged run as a success: non-finite gradients
with a finite loss, Ctrl-C / SIGTERM, time-based checkpoints, damaged checkpoints."""

import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import objectives
from jaxdml.objectives import Objective
from jaxdml.train import NonFiniteLossError, TrainingInterrupted, train
from jaxdml.train.batches import ArrayBatches
from jaxdml.train.checkpoint import UNREADABLE, Checkpointer
from tests.train.test_loop import Linear, blobs, opt

SPE = ArrayBatches(*blobs(), classes_per_batch=3, per_class=4).steps_per_epoch


class SignalAt:
  """A batch stream that sends itself `sig` when it hands out batch number `at`."""

  def __init__(self, inner, at, sig=signal.SIGINT):
    self.inner, self.at, self.sig, self.count = inner, at, sig, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.count += 1
    if self.count == self.at:
      os.kill(os.getpid(), self.sig)
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def run(workdir, epochs, *, obj=None, wrap=None, **kw):
  x, y = blobs()
  batches = ArrayBatches(x, y, classes_per_batch=3, per_class=4, seed=2, stack_epoch=False)
  if wrap is not None:
    batches = wrap(batches)
  obj = obj or objectives.core("multi_similarity", num_classes=6, dim=8)
  return train(model=Linear(), objective=obj, tx=opt(), batches=batches,
               total_steps=epochs * SPE, sample=x[:2], seed=2, workdir=workdir,
               progress=False, tensorboard=False, **kw)


def leaves(state):
  return [np.asarray(a) for a in jax.tree.leaves(state.params)]


def nan_gradient_objective():
  """A finite loss whose gradient is NaN: sqrt(0) has an infinite derivative, times 0."""
  base = objectives.core("multi_similarity", num_classes=6, dim=8)

  def apply(params, state, batch, key):
    loss, state, aux = base.apply(params, state, batch, key)
    hidden = jnp.sum(jnp.sqrt(batch.embeddings - batch.embeddings))  # value 0, gradient NaN
    return loss + hidden, state, aux

  return Objective("nan_gradient", base.init, apply)


def test_finite_loss_with_nan_gradients_stops_the_run(tmp_path):
  with pytest.raises(NonFiniteLossError) as err:
    run(tmp_path, 2, obj=nan_gradient_objective(), checkpoint_every=SPE)
  e = err.value
  assert e.step == 0 and int(e.state.step) == 0
  assert "step 0" in str(e) and "gradient norm nan" in str(e)
  assert all(np.isfinite(a).all() for a in leaves(e.state))
  assert e.checkpoint_step is None and "no checkpoint had been saved yet" in str(e)
  assert not Checkpointer(tmp_path / "checkpoints").all_steps()  # nothing NaN was saved


def test_divergence_names_the_newest_checkpoint_that_exists(tmp_path):
  """A huge learning rate: the message names a checkpoint that is really on disk."""
  x, y = blobs()
  batches = ArrayBatches(x, y, classes_per_batch=3, per_class=4, seed=2, stack_epoch=False)
  obj = objectives.core("contrastive", num_classes=6, dim=8)
  with pytest.raises(NonFiniteLossError) as err:
    train(model=Linear(), objective=obj, tx=opt(lr=1e30), batches=batches,
          total_steps=20 * SPE, sample=x[:2], workdir=tmp_path, checkpoint_every=1,
          log_every=1, progress=False, tensorboard=False)
  e = err.value
  with Checkpointer(tmp_path / "checkpoints") as ckpt:
    steps = ckpt.all_steps()
    assert e.checkpoint_step == max(steps) == e.step  # every step saved; the bad one not
    restored, _ = ckpt.restore(e.state)
  assert f"step {e.checkpoint_step}" in str(e)
  assert all(np.isfinite(a).all() for a in leaves(restored))


# SIGTERM here; SIGINT through the command line in tests/app/test_run_reliability.py
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_the_run_resumes_to_the_same_result(tmp_path, sig):
  full = run(tmp_path / "full", 3)
  with pytest.raises(TrainingInterrupted) as err:
    run(tmp_path / "cut", 3, wrap=lambda b: SignalAt(b, at=SPE + 2, sig=sig))
  e = err.value
  assert e.signal_name == signal.Signals(sig).name
  assert e.step == e.checkpoint_step == SPE + 2  # the step in progress was finished, then saved
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
  messages = []
  second = run(tmp_path / "cut", 3, say=messages.append)
  assert second.resumed_from == SPE + 2 and messages == [
      f"resumed from step {SPE + 2} ({tmp_path / 'cut' / 'checkpoints'})"]
  for a, b in zip(leaves(second.state), leaves(full.state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class TwoSignalsAt(SignalAt):
  """Sends SIGINT twice while handing out batch number `at` (an impatient second Ctrl-C)."""

  def __next__(self):
    if self.count + 1 == self.at:
      os.kill(os.getpid(), signal.SIGINT)
    return super().__next__()


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
  with pytest.raises(KeyboardInterrupt) as err:
    run(tmp_path, 3, checkpoint_every=None, checkpoint_every_seconds=None,
        wrap=lambda b: TwoSignalsAt(b, at=SPE + 2))
  assert not isinstance(err.value, TrainingInterrupted)
  assert not Checkpointer(tmp_path / "checkpoints").all_steps()  # nothing saved on the way out
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_time_based_checkpoints(tmp_path):
  run(tmp_path, 2, checkpoint_every=None, checkpoint_every_seconds=1e-9, log_every=2,
      keep_checkpoints=100)
  with Checkpointer(tmp_path / "checkpoints") as ckpt:
    assert ckpt.all_steps() == list(range(2, 2 * SPE + 1, 2))  # at every log, and the end
  run(tmp_path / "none", 2, checkpoint_every=None, checkpoint_every_seconds=None)
  with Checkpointer(tmp_path / "none" / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [2 * SPE]  # only the end


def _damage(step_dir: pathlib.Path, how: str) -> None:
  files = [p for p in step_dir.rglob("*") if p.is_file()]
  assert files
  for p in files:
    if how == "garbage":
      p.write_bytes(b"\x00not a checkpoint\xff" * 3)
    elif how == "empty_metadata" and "metadata" in p.name.lower():
      p.write_text("")
  if how == "delete_state":
    for p in (step_dir / "state").rglob("*"):
      if p.is_file():
        p.unlink()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  return run(tmp_path_factory.mktemp("full"), 3, checkpoint_every=SPE)


@pytest.mark.parametrize("how", ["garbage", "empty_metadata", "delete_state"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, how, uninterrupted):
  full = uninterrupted
  run(tmp_path / "run", 2, checkpoint_every=SPE)
  _damage(tmp_path / "run" / "checkpoints" / str(2 * SPE), how)
  messages = []
  with pytest.warns(UserWarning, match=f"checkpoint {2 * SPE} .* cannot be read"):
    second = run(tmp_path / "run", 3, checkpoint_every=SPE, say=messages.append)
  assert second.resumed_from == SPE and messages[-1].startswith(f"resumed from step {SPE}")
  assert (tmp_path / "run" / "checkpoints" / UNREADABLE / str(2 * SPE)).is_dir()
  for a, b in zip(leaves(second.state), leaves(full.state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  with Checkpointer(tmp_path / "run" / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [SPE, 2 * SPE, 3 * SPE]  # the damaged step was written again


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
  run(tmp_path, 1, checkpoint_every=SPE)
  _damage(tmp_path / "checkpoints" / str(SPE), "garbage")
  with pytest.raises(ValueError, match=f"no checkpoint in .* can be restored.*step {SPE}"):
    run(tmp_path, 2, checkpoint_every=SPE)
