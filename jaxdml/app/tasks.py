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
