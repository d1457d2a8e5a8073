"""From a `TrainConfig` (plain values) to the parts of a run: model, objective, optimiser, mesh."""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxdml.train.config import TrainConfig
from jaxdml.train.objectives import Objective, hier_settings, make_objective
from jaxdml.train.optim import FROZEN_BN_PATTERNS, OptimizerSpec, make_optimizer
from jaxdml.train.step import make_mesh


def hier_config(config: TrainConfig) -> dict | None:
  """The HIER settings of `config`, with the ball of its hyperbolic head (c, clip_r)."""
  if config.hier is None:
    return None
  return {"c": config.poincare_c, "clip_r": config.clip_r, **config.hier}


def metrix_config(config: TrainConfig) -> dict | None:
  """The Metrix settings of `config`; input mixup keeps the P M (M - 1) positive-negative mixes
  of a batch (`num_mixed`), so that no padding image goes through the network."""
  if config.metrix is None:
    return None
  settings = dict(config.metrix)
  if settings.get("location", "feature") == "input":
    settings.setdefault("num_mixed", max(1, config.classes_per_batch * config.per_class
                                         * (config.per_class - 1)))
  return settings


def build_objective(config: TrainConfig, num_classes: int) -> Objective:
  return make_objective(config.canonical_loss, num_classes=num_classes,
                        dim=config.embedding_dim, loss_kwargs=config.loss_kwargs,
                        miner=config.miner, miner_kwargs=config.miner_kwargs, das=config.das,
                        metrix=metrix_config(config), hier=hier_config(config))


def eval_similarity(config: TrainConfig) -> dict:
  """Keyword arguments of the retrieval metrics: hyperbolic distance for a hyperbolic head."""
  if config.head == "hyperbolic":
    return {"similarity": "poincare", "c": config.poincare_c}
  return {}


def optimizer_spec(config: TrainConfig, steps_per_epoch: int) -> OptimizerSpec:
  """The optimiser of `config`, with its epoch-based schedule converted to steps."""
  total = config.epochs * steps_per_epoch
  lr_mult = {"backbone": config.backbone_lr_mult, "head": config.head_lr_mult,
             "loss": config.loss_lr_mult}
  if config.hier is not None:
    lr_mult["loss/hier"] = float(hier_settings(config.hier)["lr_mult"])
  return OptimizerSpec(
      optimizer=config.optimizer, learning_rate=config.learning_rate,
      weight_decay=config.weight_decay,
      lr_mult=lr_mult,
      loss_weight_decay=config.loss_weight_decay, schedule=config.schedule,
      warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)), total_steps=total,
      decay_steps=tuple(int(e) * steps_per_epoch for e in config.lr_decay_epochs),
      decay_rate=config.lr_decay_rate,
      freeze_backbone_steps=config.freeze_backbone_epochs * steps_per_epoch,
      clip_norm=config.clip_norm, clip_value=config.clip_value,
      frozen_patterns=FROZEN_BN_PATTERNS if config.frozen_bn else ())


def build_optimizer(config: TrainConfig, steps_per_epoch: int):
  return make_optimizer(optimizer_spec(config, steps_per_epoch))


def build_mesh(config: TrainConfig):
  return make_mesh(config.num_devices)


def default_normalization(config: TrainConfig) -> str:
  if config.normalization is not None:
    return config.normalization
  return "bn_inception" if config.model == "bn_inception" else "imagenet"


def build_model(config: TrainConfig):
  """The Flax model of `config` (backbone + pooling + embedding head), and its weights loader.

  Returns:
    (model, load_pretrained) where `load_pretrained(variables) -> variables` puts the weights of
    `config.pretrained` into the backbone part of freshly initialised variables (identity when
    no file is given).
  """
  dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
  if config.model == "small_cnn":
    from jaxdml.models import SmallCNN  # noqa: PLC0415
    if config.pretrained:
      raise ValueError("the small CNN has no pretrained weights; unset config.pretrained.")
    return SmallCNN(embedding_dim=config.embedding_dim, normalize=config.normalize_embeddings,
                    conv_impl=config.conv_impl, hyperbolic=config.head == "hyperbolic",
                    poincare_c=config.poincare_c, clip_r=config.clip_r), (lambda v: v)
  from jaxdml import models  # noqa: PLC0415
  backbone, load = models.backbone_from_name(config.model, frozen_bn=config.frozen_bn,
                                             dtype=dtype)
  pooling = config.pooling or ("cls" if "patch16" in config.model else "avg")
  head = {"normalize": config.normalize_embeddings}
  if config.head == "hyperbolic":  # HIER / Hyp-ViT: LayerNorm -> orthogonal linear -> ball
    head = {"pre_layer_norm": True, "head_init": "orthogonal", "normalize": False,
            "poincare_c": config.poincare_c, "clip_r": config.clip_r}
  model = models.EmbeddingModel(backbone=backbone, pooling=pooling,
                                embedding_dim=config.embedding_dim, layer_norm=config.layer_norm,
                                **head)

  def load_pretrained(variables):
    if not config.pretrained:
      return variables
    return models.with_backbone_weights(variables, load(config.pretrained))

  return model, load_pretrained


def epochs_to_steps(epochs: int | None, steps_per_epoch: int, k: int) -> int | None:
  """Steps for an every-N-epochs setting, rounded up to a multiple of the steps per call."""
  if epochs is None:
    return None
  return int(math.ceil(epochs * steps_per_epoch / k)) * k
