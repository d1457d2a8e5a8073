"""The JSONL + TensorBoard metrics logger."""

from __future__ import annotations

import glob
import json
import os
import struct
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.train import metric_writers as logging_lib
from jaxdml.train.metric_writers import METRICS_FILE, MetricsLogger, read_metrics


def test_round_trip_with_values_of_every_kind(tmp_path):
  with MetricsLogger(tmp_path, tensorboard=False) as logger:
    first = logger.log(0, loss=jnp.float32(2.5), lr=1e-3)
    logger.log(np.int64(10), {"recall@1": np.array([0.75]), "test/map@r": 0.5}, epoch=1)
    logger.log(20, loss=float("nan"), ok=True)
  assert first["step"] == 0 and first["loss"] == 2.5
  records = read_metrics(tmp_path)
  assert records == read_metrics(tmp_path / METRICS_FILE)
  assert [r["step"] for r in records] == [0, 10, 20]
  assert records[0] == {"step": 0, "time": records[0]["time"], "loss": 2.5, "lr": 1e-3}
  assert records[1]["recall@1"] == 0.75 and records[1]["test/map@r"] == 0.5
  assert records[1]["epoch"] == 1.0 and isinstance(records[1]["epoch"], float)
  assert np.isnan(records[2]["loss"]) and records[2]["ok"] == 1.0
  times = [r["time"] for r in records]
  assert times == sorted(times) and abs(times[0] - first["time"]) < 1e-6
  assert read_metrics(tmp_path / "missing") == []


def test_truncated_last_line_is_skipped_and_appending_resumes(tmp_path):
  with MetricsLogger(tmp_path, tensorboard=False) as logger:
    logger.log(1, loss=1.0)
    logger.log(2, loss=0.5)
  path = tmp_path / METRICS_FILE
  path.write_text(path.read_text()[:-9])  # a run killed halfway through writing step 2
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert [r["step"] for r in read_metrics(path)] == [1]
  with MetricsLogger(tmp_path, tensorboard=False) as logger:  # resumed run
    logger.log(2, loss=0.25)
  with pytest.warns(UserWarning, match="malformed"):  # the partial line is now in the middle
    records = read_metrics(path)
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.25)]
  assert all(json.loads(line) for line in path.read_text().splitlines()[-1:])


def test_bad_values_and_closed_logger(tmp_path):
  logger = MetricsLogger(tmp_path, tensorboard=False)
  with pytest.raises(ValueError, match="scalar"):
    logger.log(0, loss=np.ones(3))
  with pytest.raises(ValueError, match="scalar"):
    logger.log(0, name="x")
  with pytest.raises(ValueError, match="reserved"):
    logger.log(0, time=1.0)
  logger.close()
  logger.close()
  with pytest.raises(RuntimeError, match="closed"):
    logger.log(1, loss=1.0)
  assert read_metrics(tmp_path) == []


def _records(path):
  """Payloads of a TFRecord file: [length u64][crc u32][payload][crc u32] each."""
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    yield data[pos + 12:pos + 12 + length]
    pos += 16 + length


def test_tensorboard_event_file(tmp_path):
  pytest.importorskip("tensorboardX")
  with MetricsLogger(tmp_path) as logger:
    logger.log(3, loss=1.5, **{"recall@1": 0.25})
    assert logger.tensorboard_dir == os.path.join(str(tmp_path), "tensorboard")
  events = glob.glob(os.path.join(str(tmp_path), "tensorboard", "events.out.tfevents.*"))
  assert len(events) == 1 and os.path.getsize(events[0]) > 0
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  tags = {}
  for raw in _records(events[0]):
    event = event_pb2.Event.FromString(raw)
    for value in event.summary.value:
      tags[value.tag] = (event.step, value.simple_value)
  assert tags == {"loss": (3, 1.5), "recall_at_1": (3, 0.25)}
  assert logging_lib.tensorboard_tag("test/map@r (k=5)") == "test/map_at_r__k_5_"


def test_missing_tensorboardx_warns_once(tmp_path, monkeypatch):
  import builtins  # noqa: PLC0415

  real_import = builtins.__import__

  def no_tensorboardx(name, *args, **kwargs):
    if name.startswith("tensorboardX"):
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
  monkeypatch.setattr(logging_lib, "_warned_no_tensorboard", False)
  with pytest.warns(UserWarning, match="tensorboardX"):
    first = MetricsLogger(tmp_path / "a")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    second = MetricsLogger(tmp_path / "b")
    quiet = MetricsLogger(tmp_path / "c", tensorboard=False)
  for logger in (first, second, quiet):
    assert logger.tensorboard_dir is None
    logger.log(0, loss=1.0)
    logger.close()
  assert read_metrics(tmp_path / "a")[0]["loss"] == 1.0
  assert not os.path.exists(tmp_path / "a" / "tensorboard")


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(logging_lib.jax, "process_index", lambda: 1)
  with MetricsLogger(tmp_path / "run") as logger:
    record = logger.log(5, loss=2.0)
  assert not logger.active and record["loss"] == 2.0
  assert not os.path.exists(tmp_path / "run")
