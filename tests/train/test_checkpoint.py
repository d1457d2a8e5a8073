import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdml.train.checkpoint import Checkpointer, _own_process_state
from jaxdml.train.state import TrainState


def state(value=1.0, step=0):
  p = {"model": {"w": jnp.full((3,), value)}, "loss": {}}
  tx = optax.adam(1e-3)
  return TrainState(p, {}, {}, tx.init(p), jnp.int32(step), jax.random.PRNGKey(0), jnp.int32(-1))


@pytest.mark.parametrize("data", [None, {"position": 7}, b'{"grain": [1, 2]}'])
def test_round_trip_with_each_kind_of_input_state(tmp_path, data):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, state(2.0, 5), data)
    restored, back = ckpt.restore(state())
  assert back == data
  np.testing.assert_array_equal(restored.params["model"]["w"], 2.0)
  assert isinstance(restored, TrainState) and int(restored.step) == 5


def test_keeps_the_newest_and_never_overwrites(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state(float(step), step), {"position": step})
    ckpt.save(3, state(99.0, 3), {"position": 99})  # an existing step is left as it is
    assert ckpt.all_steps() == [2, 3]
    restored, data = ckpt.restore(state())
  assert data == {"position": 3} and float(restored.params["model"]["w"][0]) == 3.0


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with Checkpointer(tmp_path) as ckpt, pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(state())


def test_each_process_takes_its_own_input_state():
  stored = {"kind": "per_process", "value": [{"kind": "json", "value": {"position": 0}}]}
  assert _own_process_state(stored) == {"kind": "json", "value": {"position": 0}}
  with pytest.raises(ValueError, match="2 processes"):
    _own_process_state({"kind": "per_process", "value": [{}, {}]})


def test_restoring_into_another_structure_is_a_clear_error(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state(1.0, 1), None)
    other = state()._replace(loss_state={"das": jnp.zeros(3)})  # a state with another field
    with pytest.raises(ValueError, match="does not fit"):
      ckpt.restore(other)
