"""What a run needs of a data set: its training batches and its evaluation protocol.

A task is built from a config by `digit_pairs.make_task` or `image_datasets.make_task`; the run
(`jaxdml.app.experiment`) trains on `batches` and calls `evaluate` and `save_retrieval`, so the
two kinds of data set share one training, checkpointing and reporting path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxdml.train.evaluate import Embedder
from jaxdml.train.state import TrainState


@dataclasses.dataclass
class Task:
  """A data set as a run sees it.

  Attributes:
    summary: one line describing the data.
    num_classes: training classes (labels in [0, C)).
    batches: the training batch stream (with `get_state` / `set_state`).
    steps_per_epoch: training steps in one epoch.
    sample: a small input batch (parameter shapes).
    evaluate: `(embedder, state) -> {metric: value}` on the test protocol.
    rows: the final metrics -> the rows of the report table (`{row name: metrics}`).
    baselines: `(embedder, model) -> rows` scored before training (raw pixels, the untrained
      network), or None.
    save_retrieval: `(path, embedder, state) -> path` drawing queries and their neighbours, or
      None.
  """

  summary: str
  num_classes: int
  batches: Any
  steps_per_epoch: int
  sample: np.ndarray
  evaluate: Callable[[Embedder, TrainState], dict[str, float]]
  rows: Callable[[dict[str, float]], dict[str, dict[str, float]]]
  baselines: Callable[[Embedder, Any], dict[str, dict[str, float]]] | None = None
  save_retrieval: Callable[[str, Embedder, TrainState], str] | None = None


#: The built-in benchmarks: data set name -> the module defining it. Each such module has
#: `make_task(config, mesh) -> Task`, `input_shape(config)` (one model input's shape) and
#: `split(config, name) -> (images, labels, ids)` (its generated images, for `jaxdml.load`).
BUILTIN = {"digit_pairs": "jaxdml.app.digit_pairs", "glyphs": "jaxdml.app.glyphs"}


def builtin(dataset: str):
  """The module of built-in benchmark `dataset`, or None for an image data set."""
  if dataset not in BUILTIN:
    return None
  import importlib  # noqa: PLC0415
  return importlib.import_module(BUILTIN[dataset])


def grey_inputs(images: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
  """Model inputs of a grey-image benchmark: float32 [N, *shape] in [0, 1].

  Args:
    images: [N, *shape] (or with a channel axis of 1, 3 or 4: averaged to grey), uint8 0..255 or
      float 0..1.
    shape: one input's [H, W].
    what: the images' name in error messages.
  """
  x = np.asarray(images)
  if x.ndim == len(shape) + 2 and x.shape[-1] in (1, 3, 4):  # a channel axis
    x = x[..., :3]
    x = x[..., 0] if x.shape[-1] == 1 else x.astype(np.float32).mean(-1)
    x = np.rint(x).astype(np.uint8) if np.asarray(images).dtype == np.uint8 else x
  if x.ndim != len(shape) + 1 or x.shape[1:] != tuple(shape):
    raise ValueError(f"`images` must be {what} images [N, {shape[0]}, {shape[1]}] (or with "
                     f"a channel axis), got shape {np.shape(images)}.")
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255.0)
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"`images` must be uint8 (0..255) or float (0..1), got dtype {x.dtype}.")
  if x.size and (np.nanmax(x) > 1.0 or np.nanmin(x) < 0.0):
    raise ValueError(f"float {what} images hold values in [0, 1]; got values in "
                     f"[{np.nanmin(x):g}, {np.nanmax(x):g}] (pass uint8 for 0..255).")
  return x.astype(np.float32)
