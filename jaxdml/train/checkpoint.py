"""Checkpoints of a run with orbax: the train state and the data iterator's position together.

Each checkpoint is one step directory holding two items:
  - "state": the `TrainState` pytree (params, model state such as batch-norm statistics, optimiser
    state, loss parameters, step, PRNG key);
  - "data": the JSON state of the input iterator (a grain iterator's `get_state()`, or the batch
    counter of an in-memory sampler),
so that a resumed run draws exactly the batches an uninterrupted run would have drawn. With
several processes every process's iterator state is gathered into the one JSON item (each
process reads its own share of the data), and each process restores its own. Orbax
writes each step to a temporary directory and renames it when complete, so a run killed during
a save leaves the previous checkpoint as the latest one. The newest `max_to_keep` are kept; one
damaged afterwards is moved aside by `restore_newest_readable`, which resumes from the next older.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

#: where `restore_newest_readable` moves checkpoints it cannot read
UNREADABLE = "unreadable"


def _first_line(e: Exception, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  line = text[0] if text else type(e).__name__
  return (line[:limit] + "...") if len(line) > limit else line


def _encode_data_state(data_state: Any) -> dict:
  if data_state is None:
    return {"kind": "none"}
  if isinstance(data_state, bytes):  # grain DataLoader iterators return JSON bytes
    return {"kind": "bytes", "value": data_state.decode("utf-8")}
  return {"kind": "json", "value": json.loads(json.dumps(data_state))}


def _decode_data_state(stored: dict) -> Any:
  kind = stored.get("kind", "json")
  if kind == "none":
    return None
  if kind == "bytes":
    return stored["value"].encode("utf-8")
  return stored["value"]


def _gather_process_states(encoded: dict) -> dict:
  """All processes' encoded data states as one JSON-able dict (identity for one process)."""
  if jax.process_count() == 1:
    return encoded
  from jax.experimental import multihost_utils  # noqa: PLC0415

  raw = np.frombuffer(json.dumps(encoded).encode("utf-8"), np.uint8)
  size = int(np.max(multihost_utils.process_allgather(np.array([raw.size], np.int64))))
  padded = np.zeros((size,), np.uint8)
  padded[:raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), size)
  states = [json.loads(bytes(row).rstrip(b"\0").decode("utf-8")) for row in rows]
  return {"kind": "per_process", "value": states}


def _own_process_state(stored: dict) -> dict:
  if stored.get("kind") == "per_process":
    states = stored["value"]
    if len(states) != jax.process_count():
      raise ValueError(f"the checkpoint holds input states of {len(states)} processes; this run "
                       f"has {jax.process_count()}.")
    return states[jax.process_index()]
  return stored


class Checkpointer:
  """Saves and restores (train state, data-iterator state) pairs under `directory`.

  Args:
    directory: checkpoint root (created if missing); one sub-directory per saved step.
    max_to_keep: number of newest checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.fspath(directory))
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=self._options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None) -> None:
    """Writes checkpoint `step` (replacing nothing: an existing step is left as it is)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(_gather_process_states(_encode_data_state(data_state)))),
        force=True)
    self._manager.wait_until_finished()

  def _saved_layout(self, step: int) -> Any:
    """The saved state's arrays as abstract arrays on this process's first device.

    Restoring with the saved shardings fails on another device topology (a run trained on 8
    devices, loaded on 1), so a target-less restore places everything on one device.
    """
    from etils import epath  # noqa: PLC0415 - orbax's path type

    meta = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory) / str(step) /
                                                    "state")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        meta.tree)

  def restore(self, target: Any = None, step: int | None = None) -> tuple[Any, Any]:
    """Restores checkpoint `step` (default: the latest) into the structure of `target`.

    Args:
      target: a train state (or its `jax.eval_shape`) giving the tree structure, shapes, dtypes
        and shardings to restore into; None restores the arrays as saved, in plain containers
        (dicts and lists), each on this process's first device (whatever devices wrote them),
        e.g. to inspect a checkpoint or use its model without building the train state.
      step: which checkpoint; None = the latest.

    Returns:
      (state, data_state).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    abstract = self._saved_layout(step) if target is None else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        target)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      if target is None:
        raise
      raise ValueError(
          f"checkpoint {step} in {self.directory} does not fit this run's train state (another "
          "model, loss, method settings, or a checkpoint written by an older jaxdml whose train "
          f"state had other fields); start a new workdir. Restoring said: {e}") from e
    return restored["state"], _decode_data_state(_own_process_state(restored["data"]))

  def restore_newest_readable(self, target: Any, *, warn: Callable[[str], None] | None = None
                              ) -> tuple[int, Any, Any]:
    """Restores the newest checkpoint that can be read, moving unreadable newer ones aside.

    A checkpoint whose files are damaged (a disk filled up mid-write, a partial copy, edited
    metadata) is moved to `<directory>/unreadable/<step>` with a warning and the next older kept
    checkpoint is tried, so the run continues from the last good state and later saves are not
    blocked by the damaged step.

    Args:
      target: the train state to restore into (as in `restore`).
      warn: called with a one-line message for each checkpoint moved aside (default:
        `warnings.warn`).

    Returns:
      (step, state, data_state).

    Raises:
      ValueError: no kept checkpoint could be restored; the message gives each one's error.
    """
    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    errors = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(target, step)
      except Exception as e:  # noqa: BLE001 - any failure to read means: try the older one
        errors.append((step, e))
        continue
      for bad, e in errors:
        self._move_aside(bad)
        warn(f"checkpoint {bad} in {self.directory} cannot be read ({_first_line(e)}); moved "
             f"it to {os.path.join(self.directory, UNREADABLE, str(bad))} and resumed from "
             f"checkpoint {step}.")
      if errors:
        self._reopen()
      return step, state, data_state
    lines = "; ".join(f"step {step}: {_first_line(e)}" for step, e in errors)
    raise ValueError(f"no checkpoint in {self.directory} can be restored into this run ({lines}). "
                     "If the run's model or objective changed, use a new workdir.")

  def _move_aside(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.directory, UNREADABLE, str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(source, target)

  def _reopen(self) -> None:
    self._manager.close()
    self._manager = ocp.CheckpointManager(self.directory, options=self._options,
                                          item_names=("state", "data"))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
