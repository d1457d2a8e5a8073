"""Scalar metrics logs: one JSON object per line in `metrics.jsonl`, plus TensorBoard events.

    with MetricsLogger(workdir) as logger:
      logger.log(step, loss=loss)
      logger.log(step, {"recall@1": r1, "map@r": mapr}, epoch=epoch)
    records = read_metrics(workdir)  # [{"step": ..., "time": ..., "loss": ...}, ...]

Each call appends `{"step": int, "time": unix seconds, <name>: float, ...}` and flushes it, so a
killed run keeps everything logged before it died; `read_metrics` skips the line it may have
left half-written. In a multi-process run only process 0 writes; the others' loggers do nothing.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from typing import Any, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "time")

_warned_no_tensorboard = False


def _warn_no_tensorboard() -> None:
  global _warned_no_tensorboard
  if not _warned_no_tensorboard:
    _warned_no_tensorboard = True
    warnings.warn("tensorboardX is not installed: metrics are logged to metrics.jsonl only "
                  "(pip install tensorboardX for TensorBoard event files).", stacklevel=3)


def tensorboard_tag(name: str) -> str:
  """The TensorBoard tag of a metric name, e.g. "recall@1" -> "recall_at_1".

  "@" becomes "_at_" and any other character outside [A-Za-z0-9_./-] becomes "_" (tensorboardX
  would replace those itself, with a warning each time).
  """
  return re.sub(r"[^A-Za-z0-9_./-]", "_", name.replace("@", "_at_"))


def _to_float(name: str, value: Any) -> float:
  arr = np.asarray(value)
  if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    raise ValueError(f"metric {name!r} must be a real scalar, got {value!r}.")
  return float(arr.reshape(()))


class MetricsLogger:
  """Appends scalar metrics to `workdir/metrics.jsonl` and TensorBoard event files.

  Attributes:
    path: the JSONL file.
    tensorboard_dir: where the event files go (`workdir/tensorboard`), or None when none are
      written (`tensorboard=False`, tensorboardX missing, or not the main process).
    active: whether this process writes (process 0 only).
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True):
    """Opens (appends to) the logs in `workdir`, which is created if needed.

    Args:
      workdir: the run's directory.
      tensorboard: also write TensorBoard scalars through tensorboardX (imported here, only when
        asked for), under the tags of `tensorboard_tag`. If it is not installed the logger warns
        once per process and writes the JSONL file only.
    """
    self.active = jax.process_index() == 0
    self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
    self.tensorboard_dir = None
    self._file = None
    self._writer = None
    if not self.active:
      return
    os.makedirs(os.fspath(workdir), exist_ok=True)
    partial = False  # a killed run may have left a partial last line: end it
    if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
      with open(self.path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        partial = f.read(1) != b"\n"
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
    if partial:
      self._file.write("\n")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional dependency
      except ImportError:
        _warn_no_tensorboard()
      else:
        self.tensorboard_dir = os.path.join(os.fspath(workdir), TENSORBOARD_DIR)
        self._writer = SummaryWriter(logdir=self.tensorboard_dir)

  def log(self, step: int, scalars: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict:
    """Records scalars at a training step.

    Args:
      step: the global training step (an integer).
      scalars: a mapping of metric names to values, for names that are not Python identifiers
        ("recall@1", "test/map@r").
      **kwargs: more metrics by keyword. Values are Python, NumPy or JAX scalars (or size-1
        arrays), converted to float; NaN and infinities are kept (JSON `NaN`, `Infinity`).

    Returns:
      The record written: `{"step": step, "time": wall-clock seconds, **metrics}` (also on
      processes that do not write).

    Raises:
      ValueError: a non-scalar value, or a metric named "step" or "time".
      RuntimeError: the logger is closed.
    """
    values = dict(scalars or {})
    values.update(kwargs)
    record = {"step": int(step), "time": time.time()}
    for name, value in values.items():
      if name in _RESERVED:
        raise ValueError(f"metric name {name!r} is reserved.")
      record[str(name)] = _to_float(name, value)
    if not self.active:
      return record
    if self._file is None:
      raise RuntimeError("the MetricsLogger is closed.")
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._writer is not None:
      for name, value in record.items():
        if name not in _RESERVED:
          self._writer.add_scalar(tensorboard_tag(name), value, global_step=record["step"],
                                  walltime=record["time"])
      self._writer.flush()
    return record

  def close(self) -> None:
    """Flushes and closes the files; further `log` calls raise. Closing twice is harmless."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> MetricsLogger:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """Reads the records of a metrics log back, in the order they were written.

  A line that is not a complete JSON object (the last one of a run killed while writing) is
  skipped; one in the middle of the file, which only a crash followed by a resumed run can leave,
  is skipped with a warning.

  Args:
    path: the `metrics.jsonl` file or the directory holding it.

  Returns:
    A list of dicts with "step" (int), "time" (float) and the metrics (floats). A missing file
    gives an empty list.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    if not isinstance(record, dict):
      if i < len(lines) - 1 and any(rest.strip() for rest in lines[i + 1:]):
        warnings.warn(f"{path}:{i + 1}: skipping a malformed line.", stacklevel=2)
      continue
    records.append(record)
  return records

