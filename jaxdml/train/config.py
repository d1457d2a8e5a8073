"""Training configuration: plain values only (configs as code in experiments/ build one of these).

One flat dataclass, so that any field can be overridden from the command line with
`--set field=value` (values parsed as JSON). The defaults are the digit-pairs benchmark's reference
recipe (shared with its PyTorch reference): the small CNN, L2-normalised 128-d output,
multi-similarity loss, AdamW lr 1e-3 and weight decay 1e-4 (proxies/learnable margins at 100x
without decay), 20 epochs of 31 batches of 16 classes x 4 images.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jaxdml.train.objectives import (
    ALIASES,
    METRIX_KINDS,
    PROXY_LOSSES,
    das_settings,
    hier_settings,
    metrix_hparams,
    metrix_settings,
    names,
)

DATASETS = ("digit_pairs", "cub200", "cars196", "sop", "inshop", "image_folder", "dyml_vehicle",
            "dyml_animal", "dyml_product")
HEADS = ("linear", "hyperbolic")
MODELS = ("small_cnn", "resnet18", "resnet34", "resnet50", "resnet101", "bn_inception",
          "vit_small_patch16", "deit_small_patch16")


@dataclasses.dataclass
class TrainConfig:
  """A metric-learning run. See the module docstring; fields are grouped below."""

  name: str = "digits"
  seed: int = 0
  # --- data
  dataset: str = "digit_pairs"
  data_dir: str | None = None  # TFDS data dir, or the root of an image folder (train/, test/)
  manual_dir: str | None = None  # manually downloaded archives (In-shop, DyML)
  image_size: int = 224
  resize_size: int = 256
  normalization: str | None = None  # None: the model's convention ("imagenet"/"bn_inception")
  num_workers: int = 0
  eval_batch_size: int = 128
  # digit pairs (shared/design/digits_benchmark.md)
  data_seed: int = 0
  digits_per_image: int = 2
  train_images_per_class: int = 40
  test_images_per_class: int = 20
  # --- batches
  classes_per_batch: int = 16
  per_class: int = 4
  epochs: int = 20
  # --- model
  model: str = "small_cnn"
  pretrained: str | None = None  # weight file (.pth / .safetensors / .npz) for the backbone
  embedding_dim: int = 128
  pooling: str | None = None  # avg, max, avg+max, gem (CNNs); cls, tokens_avg (ViT); None:
  # avg for CNNs, cls for ViTs
  frozen_bn: bool = False
  layer_norm: bool = False
  normalize_embeddings: bool = True
  compute_dtype: str = "float32"  # or "bfloat16"
  conv_impl: str = "im2col"  # small_cnn only
  head: str = "linear"  # "linear" (L2-normalised) or "hyperbolic" (Poincare ball: HIER, Hyp-ViT)
  poincare_c: float = 0.1  # curvature parameter of the hyperbolic head's ball
  clip_r: float = 2.3  # feature clipping of the hyperbolic head
  # --- objective
  loss: str = "multi_similarity"
  loss_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  miner: str | None = None
  miner_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  # seed methods (jaxdml.train.objectives): None = off, a dict of settings = on ({} = defaults)
  das: dict[str, Any] | None = None  # Densely-Anchored Sampling, e.g. {"recipe": [...]}
  metrix: dict[str, Any] | None = None  # mixup, e.g. {"location": "feature"}
  hier: dict[str, Any] | None = None  # hierarchical proxies; needs head="hyperbolic"
  # --- optimiser (see jaxdml.train.optim)
  optimizer: str = "adamw"
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  backbone_lr_mult: float = 1.0
  head_lr_mult: float = 1.0
  loss_lr_mult: float = 100.0
  loss_weight_decay: float | None = 0.0
  schedule: str = "constant"  # constant, cosine, step
  warmup_epochs: float = 0.0
  lr_decay_epochs: tuple[int, ...] = ()
  lr_decay_rate: float = 0.5
  freeze_backbone_epochs: int = 0
  clip_norm: float | None = None
  clip_value: float | None = None
  # --- run
  num_devices: int | None = None  # data-parallel devices (None: all)
  steps_per_call: int | None = None  # None: a whole epoch for in-memory data, else 1
  workdir: str | None = None
  checkpoint_every_epochs: int | None = None  # None: only at the end
  keep_checkpoints: int = 3
  eval_every_epochs: int | None = None  # None: only at the end
  log_every: int = 50
  tensorboard: bool = True  # also write TensorBoard event files (metrics.jsonl always)
  # --- evaluation
  recall_ks: tuple[int, ...] = (1, 2, 4, 8)
  eval_baselines: bool = True  # digit pairs: also raw pixels and the untrained network

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
      if key in ("recall_ks", "lr_decay_epochs"):
        value = tuple(value)
      changes[key] = value
    return dataclasses.replace(self, **changes)

  @property
  def canonical_loss(self) -> str:
    return ALIASES.get(self.loss, self.loss)

  def validate(self) -> None:
    """Raises ValueError naming the field when a value is out of range or unknown."""
    if self.dataset not in DATASETS:
      raise ValueError(f"config.dataset must be one of {DATASETS}, got {self.dataset!r}.")
    if self.model not in MODELS:
      raise ValueError(f"config.model must be one of {MODELS}, got {self.model!r}.")
    if self.canonical_loss not in names():
      raise ValueError(f"unknown loss {self.loss!r}; choose from {names()} or "
                       f"{sorted(ALIASES)}.")
    for name in ("classes_per_batch", "per_class", "epochs", "embedding_dim", "image_size",
                 "eval_batch_size", "keep_checkpoints", "log_every"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"config.{name} must be >= 1, got {getattr(self, name)}.")
    if self.per_class < 2 and self.canonical_loss not in PROXY_LOSSES:
      raise ValueError("pair losses need per_class >= 2 (a batch without positives learns "
                       "nothing).")
    if not self.learning_rate > 0:
      raise ValueError(f"config.learning_rate must be > 0, got {self.learning_rate}.")
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"config.compute_dtype must be float32 or bfloat16, got "
                       f"{self.compute_dtype!r}.")
    for name in ("checkpoint_every_epochs", "eval_every_epochs", "steps_per_call",
                 "num_devices"):
      value = getattr(self, name)
      if value is not None and int(value) < 1:
        raise ValueError(f"config.{name} must be >= 1 or None, got {value}.")
    if self.head not in HEADS:
      raise ValueError(f"config.head must be one of {HEADS}, got {self.head!r}.")
    if self.head == "hyperbolic" and not self.poincare_c > 0:
      raise ValueError(f"config.poincare_c must be > 0, got {self.poincare_c}.")
    if self.hier is not None and self.head != "hyperbolic":
      raise ValueError("HIER places embeddings and proxies in the Poincare ball: set "
                       "head='hyperbolic' with config.hier.")
    if self.hier is not None and {"c", "clip_r"} & set(self.hier):
      raise ValueError("HIER's ball is the head's: set config.poincare_c and config.clip_r, not "
                       "hier['c'] / hier['clip_r'].")
    if self.head == "hyperbolic" and not self.clip_r > 0:
      raise ValueError(f"config.clip_r must be > 0, got {self.clip_r}.")
    if self.metrix is not None and self.canonical_loss not in METRIX_KINDS:
      raise ValueError(f"Metrix is defined for the losses {sorted(METRIX_KINDS)}, got "
                       f"{self.loss!r}.")
    for name, check in (("das", das_settings), ("metrix", metrix_settings),
                        ("hier", hier_settings)):
      if getattr(self, name) is not None:
        check(getattr(self, name))
    if self.metrix is not None:
      metrix_hparams(self.canonical_loss, self.loss_kwargs)
    if self.freeze_backbone_epochs < 0 or self.warmup_epochs < 0:
      raise ValueError("config.freeze_backbone_epochs and warmup_epochs must be >= 0.")
