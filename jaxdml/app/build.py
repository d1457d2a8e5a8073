"""From a `Config` to the objects of a run: model, objective, optimiser, mesh."""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxdml import objectives
from jaxdml.app.config import Config, build_objective
from jaxdml.train.optim import FROZEN_BN_PATTERNS, OptimizerSpec, make_optimizer
from jaxdml.train.sharding import make_mesh

__all__ = ["build_objective", "build_model", "build_optimizer", "build_mesh", "optimizer_spec",
           "eval_similarity", "default_normalization", "epochs_to_steps"]


def eval_similarity(config: Config) -> dict:
  """Keyword arguments of the retrieval metrics: hyperbolic distance for a hyperbolic head."""
  if config.model.head == "hyperbolic":
    return {"similarity": "poincare", "c": config.model.poincare_c}
  return {}


def optimizer_spec(config: Config, steps_per_epoch: int,
                   objective: objectives.Objective | None = None) -> OptimizerSpec:
  """The optimiser of `config`, with its epoch-based schedule converted to steps.

  The objective's own groups (`objective.lr_mult`, e.g. HIER's proxies at 50x) become groups
  "loss/<key>", and its own decays (`objective.weight_decay`) those groups' weight decay, in
  place of the loss group's; `config.optim.eps` is the Adam / AdamW / RMSprop epsilon. Without
  `objective` it is built from the config.
  """
  opt = config.optim
  if objective is None:
    objective = build_objective(config, num_classes=2)
  total = config.loop.epochs * steps_per_epoch
  lr_mult = {"backbone": opt.backbone_lr_mult, "head": opt.head_lr_mult,
             "loss": opt.loss_lr_mult,
             **{f"loss/{key}": float(v) for key, v in objective.lr_mult.items()}}
  return OptimizerSpec(
      optimizer=opt.optimizer, learning_rate=opt.learning_rate,
      weight_decay=opt.weight_decay, lr_mult=lr_mult,
      loss_weight_decay=opt.loss_weight_decay, schedule=opt.schedule,
      warmup_steps=int(round(opt.warmup_epochs * steps_per_epoch)), total_steps=total,
      decay_steps=tuple(int(e) * steps_per_epoch for e in opt.lr_decay_epochs),
      decay_rate=opt.lr_decay_rate,
      freeze_backbone_steps=opt.freeze_backbone_epochs * steps_per_epoch,
      clip_norm=opt.clip_norm, clip_value=opt.clip_value,
      frozen_patterns=FROZEN_BN_PATTERNS if config.model.frozen_bn else (),
      group_weight_decay={f"loss/{key}": float(v) for key, v in objective.weight_decay.items()},
      eps=float(opt.eps))


def build_optimizer(config: Config, steps_per_epoch: int,
                    objective: objectives.Objective | None = None):
  return make_optimizer(optimizer_spec(config, steps_per_epoch, objective))


def build_mesh(config: Config):
  return make_mesh(config.loop.num_devices)


def default_normalization(config: Config) -> str:
  if config.data.normalization is not None:
    return config.data.normalization
  return "bn_inception" if config.model.name == "bn_inception" else "imagenet"


def build_model(config: Config):
  """The Flax model of `config` (backbone + pooling + embedding head), and its weights loader.

  Returns:
    (model, load_pretrained) where `load_pretrained(variables) -> variables` puts the weights of
    `config.model.pretrained` into the backbone part of freshly initialised variables (identity
    when no file is given).

  Raises:
    FileNotFoundError, ValueError: `config.model.pretrained` does not exist, has an unknown
      suffix or a header of the wrong format (checked here, from the header only); the file's
      contents, or weights that do not fit the backbone, are reported by `load_pretrained`
      (when the run initialises its state, before the first step). Every message names the file.
  """
  m = config.model
  dtype = jnp.bfloat16 if m.compute_dtype == "bfloat16" else jnp.float32
  from jaxdml import models  # noqa: PLC0415
  from jaxdml.models.necks import neck_from_name  # noqa: PLC0415
  small = {"embedding_dim": m.embedding_dim, "normalize": m.normalize_embeddings,
           "conv_impl": m.conv_impl, "hyperbolic": m.head == "hyperbolic",
           "poincare_c": m.poincare_c, "clip_r": m.clip_r}
  if m.name == "small_cnn":
    return models.SmallCNN(**small), (lambda v: v)
  # the res_cnn computes in float32 only; an image backbone's neck follows compute_dtype
  neck = None if m.neck is None else neck_from_name(m.neck, m.neck_kwargs, dtype=(
      jnp.float32 if m.name == "res_cnn" else dtype))
  if m.name == "res_cnn":
    widths = (16, 32, 64) if m.widths is None else tuple(m.widths)
    layout = {"widths": widths, "blocks": (1,) * len(widths) if m.blocks is None else tuple(
        m.blocks)}
    return models.ResCNN(**small, pooling=m.pooling or "avg+max", neck=neck, **layout), (
        lambda v: v)
  from jaxdml.models.weights import check_weight_file  # noqa: PLC0415
  backbone, load = models.backbone_from_name(m.name, frozen_bn=m.frozen_bn, dtype=dtype)
  pooling = m.pooling or ("cls" if "patch16" in m.name else "avg")
  head = {"normalize": m.normalize_embeddings}
  if m.head == "hyperbolic":  # HIER / Hyp-ViT: LayerNorm -> orthogonal linear -> ball
    head = {"pre_layer_norm": True, "head_init": "orthogonal", "normalize": False,
            "poincare_c": m.poincare_c, "clip_r": m.clip_r}
  if not m.embedding_layer:  # the pooled map is the descriptor: its channels are the size
    channels = getattr(neck, "features", None) if neck is not None else None
    if channels is None and (neck is None or m.neck == "glam"):  # GLAM keeps the channels
      channels = getattr(backbone, "out_features", None)
    if channels is not None and channels != m.embedding_dim:
      raise ValueError(f"model.embedding_layer=false makes the pooled {channels}-channel map the "
                       f"descriptor, but model.embedding_dim={m.embedding_dim}; set it to "
                       f"{channels} (or project with model.neck=projection).")
  model = models.EmbeddingModel(backbone=backbone, pooling=pooling,
                                embedding_dim=m.embedding_dim if m.embedding_layer else None,
                                layer_norm=m.layer_norm, neck=neck, **head)

  if m.pretrained:  # a wrong path or a corrupt file is reported now, not when training starts
    check_weight_file(m.pretrained)

  def load_pretrained(variables):
    if not m.pretrained:
      return variables
    try:
      return models.with_backbone_weights(variables, load(m.pretrained))
    except KeyError as e:  # a weight the backbone needs is missing from the file
      raise ValueError(f"model.pretrained={m.pretrained!r} does not fit {m.name}: "
                       f"{e.args[0] if e.args else e}") from None
    except ValueError as e:
      if m.pretrained in str(e):
        raise
      raise ValueError(f"model.pretrained={m.pretrained!r} does not fit {m.name}: {e}") from None

  return model, load_pretrained


def epochs_to_steps(epochs: int | None, steps_per_epoch: int, k: int) -> int | None:
  """Steps for an every-N-epochs setting, rounded up to a multiple of the steps per call."""
  if epochs is None:
    return None
  return int(math.ceil(epochs * steps_per_epoch / k)) * k
