"""Training configuration: plain values only (configs as code build one of these)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass
class TrainConfig:
  """A metric-learning run on the digit-pairs benchmark (shared/design/digits_benchmark.md).

  Defaults are the benchmark's reference recipe: the small CNN, L2-normalised 128-d output,
  multi-similarity loss, AdamW lr 1e-3 and weight decay 1e-4, 20 epochs of 31 batches of
  16 classes x 4 images.
  """

  # data
  seed: int = 0
  data_seed: int = 0
  digits_per_image: int = 2
  train_images_per_class: int = 40
  test_images_per_class: int = 20
  # batches
  classes_per_batch: int = 16
  per_class: int = 4
  epochs: int = 20
  # model
  embedding_dim: int = 128
  conv_impl: str = "im2col"
  # objective
  loss: str = "multi_similarity"
  loss_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  miner: str | None = None
  miner_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  # optimiser
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  loss_param_lr: float = 1e-1  # learning rate of proxies / learnable margins
  # evaluation
  recall_ks: tuple[int, ...] = (1, 2, 4, 8)
  eval_baselines: bool = True

  def override(self, assignments: list[str]) -> "TrainConfig":
    """Applies `key=value` strings; values are parsed as JSON when they can be."""
    fields = {f.name: f for f in dataclasses.fields(self)}
    changes = {}
    for item in assignments:
      if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value.")
      key, raw = item.split("=", 1)
      key = key.strip().replace("-", "_")
      if key not in fields:
        raise ValueError(f"unknown config field {key!r}; fields: {sorted(fields)}.")
      try:
        value = json.loads(raw)
      except json.JSONDecodeError:
        value = raw
      if key == "recall_ks":
        value = tuple(value)
      changes[key] = value
    return dataclasses.replace(self, **changes)

  def validate(self) -> None:
    for name in ("classes_per_batch", "per_class", "epochs", "embedding_dim"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"config.{name} must be >= 1, got {getattr(self, name)}.")
    if self.per_class < 2 and self.loss not in ("proxy_anchor", "proxy_nca", "normalized_softmax",
                                                "arcface", "cosface", "soft_triple"):
      raise ValueError("pair losses need per_class >= 2 (a batch without positives learns "
                       "nothing).")
    for name in ("learning_rate", "loss_param_lr"):
      if not getattr(self, name) > 0:
        raise ValueError(f"config.{name} must be > 0, got {getattr(self, name)}.")
