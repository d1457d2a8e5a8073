"""The application's config: a typed, nested schema, dotted overrides, and config files.

A `Config` has sections `data`, `model`, `objective` (the core loss and its methods), `optim`,
`loop` and `eval`. Each section is a frozen dataclass whose field types are checked and whose
values are validated when it is built (pydantic dataclasses), and the whole is checked once
more for what involves several sections (the methods against the model's head and the batch
composition, pair losses against the images per class). The defaults are the digit-pairs
benchmark's reference recipe (shared with its PyTorch reference): the small CNN, L2-normalised
128-d output, multi-similarity loss, AdamW lr 1e-3 and weight decay 1e-4 (proxies and learnable
margins at 100x without decay), 20 epochs of 31 batches of 16 classes x 4 images.

The methods of the objective are `objective.methods`, an ordered mapping from a method's name
(`jaxdml.methods.BY_NAME`, or one a config file registered with `register_method`) to its own
`Settings`, innermost first: `{"das": das.Settings(), "metrix": metrix.Settings()}` is Metrix
around DAS around the core loss. A config file may define its own loss (`register_loss`); the run
records the file in `Config.plugins` so that resuming and evaluation import it again.

Overrides address a field by its dotted path and parse the text against the field's type:

    config = apply_overrides(config, ["objective.hier.num_proxies=64", "optim.learning_rate=3e-4",
                                      "objective.methods=das,hier", "eval.recall_ks=[1,10]"])

A misspelled field or a wrong value raises `ConfigError` with one line naming the field, the
value, the expected type and the closest valid names. The pre-sections flat names (`epochs`,
`learning_rate`, `loss`, ...) are accepted for one release as aliases of their new paths.

Values are parsed by pydantic against the field's annotation (JSON syntax, or the plain text for
strings); pydantic also rebuilds a config from the JSON a run saves (`from_dict`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.resources
import importlib.util
import inspect
import json
import os
import pathlib
import sys
import typing
from typing import Any, Callable, Literal

import pydantic
import pydantic.dataclasses

from jaxdml import methods, objectives

DATASETS = ("digit_pairs", "glyphs", "cub200", "cars196", "sop", "inshop", "image_folder",
            "dyml_vehicle", "dyml_animal", "dyml_product")
MODELS = ("small_cnn", "res_cnn", "resnet18", "resnet34", "resnet50", "resnet101", "bn_inception",
          "vit_small_patch16", "deit_small_patch16", "mobilenet_v2", "efficientnet_b3")

_SECTION = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
#: the built-in benchmarks (in memory, generated offline) and the small networks made for them
BUILTIN_DATASETS = ("digit_pairs", "glyphs")
SMALL_MODELS = ("small_cnn", "res_cnn")


class ConfigError(ValueError):
  """A config field is misspelled, has a value of the wrong type, or an invalid value."""


def _at_least(obj, names, low=1, allow_none=False):
  for name in names:
    value = getattr(obj, name)
    if value is None and allow_none:
      continue
    if value is None or value < low:
      raise ValueError(f"{name} must be >= {low}{' or None' if allow_none else ''}, got "
                       f"{value!r}.")


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class GlyphsConfig:
  """The glyphs benchmark (shared/design/glyphs_benchmark.md, `jaxdml.data.make_glyphs`); its
  seed is `data.data_seed`.

  Attributes:
    size: image side in pixels (32; 64 for GPU runs).
    min_faces: a code point is a class when at least this many typefaces draw it.
    images_per_class: images of each class (faces round-robin, each freshly augmented).
    unseen_faces: test images only from typefaces never used for training.
    pool_fraction: share of the classes set aside as the unlabelled pool.
    max_classes: a stratified subset of the classes (None: all), for quick runs.
    eval_images_per_class: the evaluation scores the first this many test images of each class
      (8 distinct typefaces by default; None: all `images_per_class`). MAP@R at the script
      level searches as many neighbours as the largest script holds (7,328 of the 23,584
      default test images): with all 16 images per class the three levels took 97 s on 2 CPU
      cores (73 s of it at the script level; random 128-d embeddings), and the search is
      quadratic in the images, so 8 per class should take about a quarter of that.
    instance_landmarks: also evaluate the instance-retrieval variant
      (`jaxdml.data.make_glyph_instances`) on this many test classes, with the Revisited
      Oxford / Paris protocol (Easy / Medium / Hard mAP, "instances/..." in the metrics); 0: off.
      Its landmarks must be classes the run does not train on (checked).
    instance_views, instance_distractors: database views of each landmark, and distractor
      images (training classes) after them.
  """

  size: int = 32
  min_faces: int = 8
  images_per_class: int = 16
  unseen_faces: bool = False
  pool_fraction: float = 0.0
  max_classes: int | None = None
  eval_images_per_class: int | None = 8
  instance_landmarks: int = 0
  instance_views: int = 20
  instance_distractors: int = 0

  def __post_init__(self):
    _at_least(self, ("size", "min_faces", "images_per_class", "instance_views"))
    _at_least(self, ("instance_landmarks", "instance_distractors"), low=0)
    _at_least(self, ("max_classes",), low=4, allow_none=True)
    _at_least(self, ("eval_images_per_class",), low=2, allow_none=True)
    if not 0.0 <= self.pool_fraction < 1.0:
      raise ValueError(f"pool_fraction must be in [0, 1), got {self.pool_fraction}.")


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class DataConfig:
  """The data set and its batches.

  Attributes:
    dataset: "digit_pairs" or "glyphs" (built in), a TFDS set ("cub200", "cars196", "sop", "inshop",
      "dyml_vehicle", "dyml_animal", "dyml_product") or "image_folder".
    data_dir: TFDS data dir, or the root of an image folder (train/, test/).
    manual_dir: manually downloaded archives (In-shop, DyML).
    image_size, resize_size: training / evaluation crop, and the evaluation resize.
    normalization: "imagenet", "bn_inception" or "half"; None: the model's convention.
    num_workers: grain worker processes.
    classes_per_batch, per_class: P classes x M images per batch.
    sampler: "m_per_class" (P x M batches) or "random" (plain shuffled batches of `batch_size`,
      as Metrix's official CUB / Cars runs use; many anchors then have no positive). The built-in
      benchmarks only.
    batch_size: the random sampler's batch size (None: P x M); not used by "m_per_class".
    data_seed, digits_per_image, train_images_per_class, test_images_per_class: the digit-pairs
      benchmark (shared/design/digits_benchmark.md).
    glyphs: the glyphs benchmark's own settings (`GlyphsConfig`).
    undecodable: image data sets: every image is decoded once when the run starts; an image
      that does not decode is an error listing the files ("error"), or is left out with a note
      of how many ("skip"). With a workdir the result is kept in `workdir/data_check.json`
      (keyed by the files' names, sizes and modification times), so a resumed run does not
      decode everything again.
  """

  dataset: Literal[DATASETS] = "digit_pairs"
  data_dir: str | None = None
  manual_dir: str | None = None
  image_size: int = 224
  resize_size: int = 256
  normalization: Literal["imagenet", "bn_inception", "half"] | None = None
  num_workers: int = 0
  classes_per_batch: int = 16
  per_class: int = 4
  data_seed: int = 0
  digits_per_image: int = 2
  train_images_per_class: int = 40
  test_images_per_class: int = 20
  undecodable: Literal["error", "skip"] = "error"
  sampler: Literal["m_per_class", "random"] = "m_per_class"
  batch_size: int | None = None
  glyphs: GlyphsConfig = dataclasses.field(default_factory=GlyphsConfig)

  def __post_init__(self):
    _at_least(self, ("image_size", "resize_size", "classes_per_batch", "per_class",
                     "digits_per_image", "train_images_per_class", "test_images_per_class"))
    _at_least(self, ("num_workers",), low=0)
    _at_least(self, ("batch_size",), low=2, allow_none=True)
    if self.batch_size is not None and self.sampler != "random":
      raise ValueError("data.batch_size is the random sampler's batch size; with "
                       "sampler='m_per_class' a batch is classes_per_batch x per_class.")

  @property
  def train_batch_size(self) -> int:
    """Images per training batch."""
    if self.sampler == "random" and self.batch_size is not None:
      return self.batch_size
    return self.classes_per_batch * self.per_class


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class ModelConfig:
  """The network: backbone, pooling and embedding head.

  Attributes:
    name: "small_cnn" (digit pairs), "res_cnn" (a small residual CNN with a pooled, nonlinear
      head: glyphs) or an image backbone.
    pretrained: backbone weight file (.pth / .safetensors / .npz); image backbones only.
    embedding_dim: output size.
    pooling: avg, max, avg+max, gem (CNN backbones and res_cnn); also cls, tokens_avg (ViTs);
      None: the model's own (avg for CNN backbones, cls for ViTs, avg+max for res_cnn). Not for
      small_cnn (it embeds its flattened map).
    neck: a module between the backbone's feature map and the pooling (`jaxdml.models.necks`:
      "glam"), or None; CNN backbones and res_cnn.
    neck_kwargs: the neck's settings (its attributes, checked by name), e.g.
      `model.neck_kwargs.global_spatial=false`.
    embedding_layer: the linear layer after the pooling (image backbones); false makes the
      pooled (and normalised) map the descriptor, as cirtorch's GeM networks and AML's
      students (`model.neck=projection`) have it; `embedding_dim` must then be its channels.
    frozen_bn, layer_norm, normalize_embeddings: batch norm frozen (the CNN backbones), a
      layer norm after the embedding layer (image backbones), L2-normalised output (Euclidean
      head).
    compute_dtype: "float32" or "bfloat16" (image backbones).
    conv_impl: the small CNN's convolutions, "im2col" (fast on CPU) or "xla".
    head: "linear" (L2-normalised) or "hyperbolic" (Poincare ball: HIER, Hyp-ViT).
    poincare_c, clip_r: the hyperbolic head's ball and feature clipping.
    widths, blocks: res_cnn's channels and residual blocks per stage (None: its default
      (16, 32, 64), and one block per stage); images must have sides that are multiples of
      2 ** (len(widths) + 1), e.g. two stages for the 8 x 16 digit pairs.

  An option that the chosen model (or head) does not use is an error when it is set to other
  than its default, e.g. `model.frozen_bn=true` with small_cnn or `model.conv_impl=xla` with
  resnet50.
  """

  name: Literal[MODELS] = "small_cnn"
  pretrained: str | None = None
  embedding_dim: int = 128
  pooling: Literal["avg", "max", "avg+max", "gem", "cls", "tokens_avg"] | None = None
  frozen_bn: bool = False
  layer_norm: bool = False
  normalize_embeddings: bool = True
  compute_dtype: Literal["float32", "bfloat16"] = "float32"
  conv_impl: Literal["im2col", "xla"] = "im2col"
  head: Literal["linear", "hyperbolic"] = "linear"
  poincare_c: float = 0.1
  clip_r: float = 2.3
  neck: str | None = None
  neck_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  embedding_layer: bool = True
  widths: tuple[int, ...] | None = None
  blocks: tuple[int, ...] | None = None

  def __post_init__(self):
    _at_least(self, ("embedding_dim",))
    for name in ("widths", "blocks"):
      value = getattr(self, name)
      if value is not None and (not value or any(v < 1 for v in value)):
        raise ValueError(f"model.{name} must be a non-empty list of ints >= 1, got "
                         f"{list(value)}.")
    stages = 3 if self.widths is None else len(self.widths)
    if self.blocks is not None and len(self.blocks) != stages:
      raise ValueError(f"model.blocks needs one entry per stage of model.widths ({stages}), got "
                       f"{list(self.blocks)} (when changing both, set model.widths first).")
    if self.neck is not None:  # unknown names and settings are reported here, by name
      from jaxdml.models.necks import neck_from_name  # noqa: PLC0415
      neck_from_name(self.neck, self.neck_kwargs)
    elif self.neck_kwargs:
      raise ValueError(f"model.neck_kwargs={self.neck_kwargs!r} is set without a neck; set "
                       "model.neck (e.g. glam) first.")
    for name in ("poincare_c", "clip_r"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
    problem = _unused_model_option(self)
    if problem:
      raise ValueError(problem)

  @property
  def ball(self) -> tuple[float, float] | None:
    """(c, clip_r) of a hyperbolic head, None for a Euclidean one."""
    return (self.poincare_c, self.clip_r) if self.head == "hyperbolic" else None


#: Pooling of a CNN backbone's feature map (`jaxdml.models.heads.POOLING_METHODS` less the two
#: that need a ViT's tokens).
CNN_POOLING = ("avg", "max", "avg+max", "gem")
VIT_MODELS = ("vit_small_patch16", "deit_small_patch16")
_ORDER_HINT = " (when changing model.name or model.head too, set those first)"


def _unused_model_option(m: ModelConfig) -> str | None:
  """Why a model option is set (to other than its default) that the chosen model does not use,
  or None; `jaxdml.app.build.build_model` lists which model reads which option."""
  default = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  changed = lambda name: getattr(m, name) != default[name]  # noqa: E731
  if m.name in SMALL_MODELS:
    what = "the small CNN" if m.name == "small_cnn" else "the residual CNN"
    if m.pretrained:
      return f"{what} has no pretrained weights; unset model.pretrained."
    if m.name == "small_cnn" and m.pooling is not None:
      return (f"{what} embeds its flattened feature map (no pooling); unset model.pooling (it "
              f"applies to res_cnn and the image backbones){_ORDER_HINT}.")
    if m.name == "small_cnn" and m.neck is not None:
      return (f"{what} embeds its flattened feature map, so a neck does not apply; unset "
              f"model.neck (it applies to res_cnn and the CNN backbones){_ORDER_HINT}.")
    if m.name == "res_cnn" and m.pooling not in (None, *CNN_POOLING):
      return (f"model.pooling={m.pooling!r} pools a ViT's tokens; res_cnn gives a feature map: "
              f"model.pooling must be one of {', '.join(CNN_POOLING)} (or unset: avg+max).")
    if m.name == "small_cnn" and (m.widths is not None or m.blocks is not None):
      return (f"{what} has fixed widths; model.widths and model.blocks apply to res_cnn"
              f"{_ORDER_HINT}.")
    if not m.embedding_layer:
      return (f"{what}'s head is its own; model.embedding_layer applies to the image "
              f"backbones, unset it{_ORDER_HINT}.")
    why = {"frozen_bn": (f"{what} has no batch norm" if m.name == "small_cnn" else
                         f"{what} is trained from scratch (no pretrained batch norm to freeze)"),
           "layer_norm": f"{what}'s head has no layer norm",
           "compute_dtype": f"{what} computes in float32 only"}
    for name, reason in why.items():
      if changed(name):
        return (f"{reason}, so model.{name} does not apply to {m.name}; unset it"
                f"{_ORDER_HINT}.")
  else:
    if m.widths is not None or m.blocks is not None:
      return (f"model.widths and model.blocks apply to res_cnn; {m.name} has its own layout; "
              f"unset them{_ORDER_HINT}.")
    if changed("conv_impl"):
      return (f"model.conv_impl applies to {' and '.join(SMALL_MODELS)} only, {m.name} does not "
              f"use it; unset it{_ORDER_HINT}.")
    if m.name in VIT_MODELS and changed("frozen_bn"):
      return (f"a ViT has no batch norm, so model.frozen_bn does not apply to {m.name} (it "
              "applies to resnet* and bn_inception); unset it.")
    if m.name in VIT_MODELS and m.neck is not None:
      return (f"a neck acts on a convolutional feature map; {m.name} gives tokens, so model.neck "
              f"does not apply; unset it{_ORDER_HINT}.")
    if m.name not in VIT_MODELS and m.pooling not in (None, *CNN_POOLING):
      return (f"model.pooling={m.pooling!r} pools a ViT's tokens; {m.name} gives a feature map: "
              f"model.pooling must be one of {', '.join(CNN_POOLING)} (or unset: avg).")
  if m.head == "hyperbolic" and not m.embedding_layer:
    return ("the hyperbolic head maps the pooled features through its own linear layer into "
            "the ball, so model.embedding_layer=false does not apply to it; unset it.")
  if m.head != "hyperbolic":
    for name in ("poincare_c", "clip_r"):
      if changed(name):
        return (f"model.{name} applies to the hyperbolic head only (model.head="
                f"'hyperbolic'), the {m.head} head does not use it; unset it{_ORDER_HINT}.")
  return None


# ------------------------------------------------------------------------------------------------
# Losses and methods defined in config files
# ------------------------------------------------------------------------------------------------

_USER_LOSSES: dict[str, Callable[..., objectives.Objective]] = {}
_USER_METHODS: dict[str, Any] = {}
_SOURCE: dict[tuple[str, str], str] = {}  # ("loss" | "method", name) -> the file that registered it
_IMPORTING: str | None = None  # the config file being imported


def register_loss(name: str, build: Callable[..., objectives.Objective]) -> None:
  """Makes a loss defined in a config file usable as `objective.loss = name`.

  Call it at the top level of the config file that defines the loss: the run records the file
  (`Config.plugins`), so resuming, `jaxdml eval` and `jaxdml.load` import it again.

  Args:
    name: the loss's name (not a core loss's name).
    build: `build(setup: jaxdml.objectives.Setup, **loss_kwargs) -> Objective`; its keyword
      arguments are what `objective.loss_kwargs` may hold.
  """
  if name in objectives.names() or name in objectives.ALIASES:
    raise ValueError(f"register_loss: {name!r} is a core loss; choose another name.")
  if not callable(build):
    raise TypeError(f"register_loss({name!r}): build must be callable, got {build!r}.")
  _USER_LOSSES[name] = build
  _remember_source("loss", name)


def _remember_source(kind: str, name: str) -> None:
  if _IMPORTING is not None:
    _SOURCE[(kind, name)] = _IMPORTING
  else:
    _SOURCE.pop((kind, name), None)


def register_method(name: str, method: Any) -> None:
  """Makes a method defined in a config file usable in `objective.methods`.

  Args:
    name: the method's name (its config section, `objective.<name>.<field>`).
    method: any object with `Settings` (a dataclass) and `build(inner, settings, setup) ->
      Objective`, such as a module or a `types.SimpleNamespace`.
  """
  if name in methods.BY_NAME:
    raise ValueError(f"register_method: {name!r} is a built-in method; choose another name.")
  if not (dataclasses.is_dataclass(getattr(method, "Settings", None))
          and callable(getattr(method, "build", None))):
    raise TypeError(f"register_method({name!r}): the method needs a dataclass `Settings` and a "
                    "`build(inner, settings, setup)`.")
  _USER_METHODS[name] = method
  _remember_source("method", name)


def method_registry() -> dict[str, Any]:
  """The built-in methods and those config files registered, by name."""
  return {**methods.BY_NAME, **_USER_METHODS}


def _plugins_of(objective: ObjectiveConfig) -> tuple[str, ...]:
  """The config files that registered the losses and methods `objective` uses."""
  used = [("loss", objective.loss)] + [("method", m) for m in objective.methods]
  return tuple(dict.fromkeys(_SOURCE[u] for u in used if u in _SOURCE))


def _check_user_loss(name: str, loss_kwargs: dict, miner: str | None) -> None:
  if miner is not None:
    raise ValueError(f"objective.miner: the loss {name!r} is defined in a config file; mine "
                     "inside its objective instead.")
  params = inspect.signature(_USER_LOSSES[name]).parameters.values()
  if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
    return
  allowed = {p.name for p in params} - {"setup"}
  unknown = sorted(set(loss_kwargs) - allowed)
  if unknown:
    raise ValueError(f"objective.loss_kwargs: unknown keyword argument(s) {unknown} of the loss "
                     f"{name!r}; it takes {sorted(allowed)}.")


def _method_entry(name: str):
  if name not in method_registry():
    close = difflib.get_close_matches(name, list(method_registry()), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown method {name!r}{hint} Methods: {sorted(method_registry())}.")
  return method_registry()[name]


def method_settings(name: str, value: Any) -> Any:
  """The `Settings` of method `name` from an instance, a dict of its fields, or None (defaults).

  >>> method_settings("hier", {"num_proxies": 64}).num_proxies
  64
  """
  entry = _method_entry(name)
  if isinstance(value, entry.Settings):
    return value
  if value is None:
    return entry.Settings()
  if not isinstance(value, dict):
    raise ValueError(f"objective.methods[{name!r}] must be a {name}.Settings or a dict of its "
                     f"fields, got {type(value).__name__}.")
  fields = [f.name for f in dataclasses.fields(entry.Settings)]
  for key in value:
    if key not in fields:
      raise ValueError(_unknown(f"objective.{name}", key, fields))
  return pydantic.TypeAdapter(entry.Settings).validate_python(value)


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class ObjectiveConfig:
  """The objective: a core loss (`jaxdml.objectives.core`), a miner, and the methods around it.

  Attributes:
    loss: a core loss name or alias (`jaxdml.objectives.names()`); stored canonical.
    loss_kwargs: the loss's keyword arguments (checked against its signature).
    miner, miner_kwargs: a pair miner and its keyword arguments.
    methods: method name -> its `Settings` (or a dict of its fields), innermost first.
  """

  loss: str = "multi_similarity"
  loss_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  miner: str | None = None
  miner_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  methods: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.loss in _USER_LOSSES:
      _check_user_loss(self.loss, self.loss_kwargs, self.miner)
    else:
      name = objectives.check_loss(self.loss, self.loss_kwargs, self.miner, self.miner_kwargs)
      object.__setattr__(self, "loss", name)
    object.__setattr__(self, "methods", {k: method_settings(k, v)
                                         for k, v in self.methods.items()})

  @property
  def name(self) -> str:
    return "+".join([self.loss, *self.methods])


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class OptimConfig:
  """The optimiser (`jaxdml.train.optim`); epochs are converted to steps by the run.

  Attributes:
    optimizer: "adamw", "adam" (L2 penalty), "sgd" (momentum 0.9) or "rmsprop".
    learning_rate, weight_decay: base values.
    backbone_lr_mult, head_lr_mult, loss_lr_mult: group multipliers (the objective adds its own
      groups, e.g. HIER's "loss/hier").
    loss_weight_decay: the loss group's decay; None: `weight_decay`.
    schedule: "constant", "cosine" or "step"; warmup_epochs: linear warm-up;
    lr_decay_epochs, lr_decay_rate: the step schedule.
    freeze_backbone_epochs: the backbone is frozen for these first epochs.
    clip_norm, clip_value: gradient clipping (None: off).
    eps: the denominator's epsilon of Adam / AdamW / RMSprop (1e-8, PyTorch's and optax's
      default; HIER's official mixed-precision scripts use 1e-4).
  """

  optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  backbone_lr_mult: float = 1.0
  head_lr_mult: float = 1.0
  loss_lr_mult: float = 100.0
  loss_weight_decay: float | None = 0.0
  schedule: Literal["constant", "cosine", "step"] = "constant"
  warmup_epochs: float = 0.0
  lr_decay_epochs: tuple[int, ...] = ()
  lr_decay_rate: float = 0.5
  freeze_backbone_epochs: int = 0
  clip_norm: float | None = None
  clip_value: float | None = None
  eps: float = 1e-8

  def __post_init__(self):
    if not self.eps > 0:
      raise ValueError(f"eps must be > 0, got {self.eps}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
    for name in ("weight_decay", "warmup_epochs", "freeze_backbone_epochs"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    for name in ("clip_norm", "clip_value"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value}.")


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class LoopConfig:
  """The training loop.

  Attributes:
    epochs: passes over the training set.
    num_devices: data-parallel devices (None: all).
    steps_per_call: steps per jitted call (None: a whole epoch for in-memory data, else 1).
    workdir: checkpoints, logs and plots (resumed when it holds a checkpoint of the same
      config; a differing config is refused).
    checkpoint_every_epochs: save a checkpoint every this many epochs (None: not by epoch).
    checkpoint_every_minutes: also save when this much wall time has passed since the last
      save, whichever comes first (None: not by time). A checkpoint is always written at the
      end, and on SIGINT / SIGTERM.
    keep_checkpoints: newest checkpoints kept (an older one is used if the newest is damaged).
    eval_every_epochs: periodic evaluation (None: only at the end).
    log_every: steps between loss logs.
    tensorboard: also write TensorBoard event files (metrics.jsonl always).
  """

  epochs: int = 20
  num_devices: int | None = None
  steps_per_call: int | None = None
  workdir: str | None = None
  checkpoint_every_epochs: int | None = 1
  checkpoint_every_minutes: float | None = 10.0
  keep_checkpoints: int = 3
  eval_every_epochs: int | None = None
  log_every: int = 50
  tensorboard: bool = True

  def __post_init__(self):
    _at_least(self, ("epochs", "keep_checkpoints", "log_every"))
    _at_least(self, ("num_devices", "steps_per_call", "checkpoint_every_epochs",
                     "eval_every_epochs"), allow_none=True)
    if self.checkpoint_every_minutes is not None and not self.checkpoint_every_minutes > 0:
      raise ValueError("loop.checkpoint_every_minutes must be > 0 or None, got "
                       f"{self.checkpoint_every_minutes}.")


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class EvalConfig:
  """Evaluation.

  Attributes:
    recall_ks: the k of Recall@k.
    batch_size: embedding batch size.
    baselines: digit pairs: also score raw pixels and the untrained network.
  """

  recall_ks: tuple[int, ...] = (1, 2, 4, 8)
  batch_size: int = 128
  baselines: bool = True

  def __post_init__(self):
    _at_least(self, ("batch_size",))
    if not self.recall_ks or min(self.recall_ks) < 1:
      raise ValueError(f"recall_ks must be positive ints, got {self.recall_ks}.")


@pydantic.dataclasses.dataclass(frozen=True, config=_SECTION)
class Config:
  """A metric-learning run (see the module docstring).

  `plugins` lists the config files that define the run's own losses or methods
  (`register_loss`, `register_method`); it is filled in when a config using them is built, and
  `from_dict` imports them before reading the rest.
  """

  name: str = "digits"
  seed: int = 0
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  plugins: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "plugins", tuple(dict.fromkeys(
        [*self.plugins, *_plugins_of(self.objective)])))
    if (self.data.sampler == "m_per_class" and self.data.per_class < 2
        and self.objective.loss not in objectives.PROXY_LOSSES):
      raise ValueError("pair losses need data.per_class >= 2 (a batch without positives learns "
                       "nothing).")
    if (self.data.dataset in BUILTIN_DATASETS) != (self.model.name in SMALL_MODELS):
      raise ValueError(f"the built-in benchmarks ({', '.join(BUILTIN_DATASETS)}) are defined with "
                       f"a small network (model.name in {SMALL_MODELS}), and image data sets "
                       "need an image backbone (e.g. 'resnet50').")
    if self.data.sampler == "random" and self.data.dataset not in BUILTIN_DATASETS:
      raise ValueError("data.sampler='random' is available for the built-in benchmarks "
                       f"({', '.join(BUILTIN_DATASETS)}); image data sets sample P x M batches.")
    if self.data.glyphs.instance_landmarks and self.model.head == "hyperbolic":
      raise ValueError("data.glyphs.instance_landmarks: the landmark protocol ranks by cosine "
                       "similarity, and a hyperbolic head (model.head) needs the Poincare "
                       "distance; set it to 0 or use the linear head.")
    build_objective(self, num_classes=2)  # the methods against the loss, head and batches

  def setup(self, num_classes: int) -> objectives.Setup:
    """What the objective's methods may read of this run (`jaxdml.objectives.Setup`)."""
    balanced = self.data.sampler == "m_per_class"
    return objectives.Setup(num_classes=num_classes, dim=self.model.embedding_dim,
                            classes_per_batch=self.data.classes_per_batch if balanced else None,
                            per_class=self.data.per_class if balanced else None,
                            ball=self.model.ball, batch_size=self.data.train_batch_size,
                            load_run=load_run)


#: `jaxdml.app.inference.load`, registered by that module when it is imported (it imports this
#: one, so this one cannot import it; the package's __init__ imports it)
_RUN_LOADER: list[Callable[..., Any]] = []


def set_run_loader(load: Callable[..., Any]) -> None:
  """Registers the function that loads a trained run (`jaxdml.app.inference.load`)."""
  _RUN_LOADER[:] = [load]


@functools.lru_cache(maxsize=4)
def _load_run(workdir: str, step: int | None, mtime: float):
  del mtime  # part of the cache key: a retrained run is read again
  if not _RUN_LOADER:  # jaxdml.app's __init__ imports inference, which registers it
    raise RuntimeError("no run loader is registered (jaxdml.app.inference registers "
                       "`jaxdml.load` when it is imported).")
  return _RUN_LOADER[0](workdir, step)


def load_run(workdir: str, step: int | None = None):
  """The trained run in `workdir` (`jaxdml.load`), cached while its checkpoints are unchanged:
  what a method's `build` reads through `Setup.load_run` (AML's teacher)."""
  workdir = os.path.abspath(os.fspath(workdir))
  ckpts = os.path.join(workdir, "checkpoints")
  mtime = os.path.getmtime(ckpts) if os.path.isdir(ckpts) else 0.0
  return _load_run(workdir, step, mtime)


def build_objective(config: Config, num_classes: int) -> objectives.Objective:
  """The objective of `config`: the core loss, then each method around it, in order."""
  obj_cfg = config.objective
  setup = config.setup(num_classes)
  if obj_cfg.loss in _USER_LOSSES:
    obj = _USER_LOSSES[obj_cfg.loss](setup, **obj_cfg.loss_kwargs)
    if not isinstance(obj, objectives.Objective):
      raise TypeError(f"the loss {obj_cfg.loss!r} registered by a config file must build a "
                      f"jaxdml.objectives.Objective, got {type(obj).__name__}.")
  else:
    obj = objectives.core(obj_cfg.loss, num_classes=num_classes,
                          dim=config.model.embedding_dim, miner=obj_cfg.miner,
                          miner_kwargs=obj_cfg.miner_kwargs, **obj_cfg.loss_kwargs)
  for name, settings in obj_cfg.methods.items():
    obj = method_registry()[name].build(obj, settings, setup)
  return obj


# ------------------------------------------------------------------------------------------------
# Dotted overrides
# ------------------------------------------------------------------------------------------------

#: The flat field names of the config before it had sections -> their dotted paths (aliases for
#: one release).
FLAT_ALIASES = {
    **{k: f"data.{k}" for k in ("dataset", "data_dir", "manual_dir", "image_size", "resize_size",
                                "normalization", "num_workers", "classes_per_batch", "per_class",
                                "data_seed", "digits_per_image", "train_images_per_class",
                                "test_images_per_class")},
    "model": "model.name",
    **{k: f"model.{k}" for k in ("pretrained", "embedding_dim", "pooling", "frozen_bn",
                                 "layer_norm", "normalize_embeddings", "compute_dtype",
                                 "conv_impl", "head", "poincare_c", "clip_r")},
    **{k: f"objective.{k}" for k in ("loss", "loss_kwargs", "miner", "miner_kwargs")},
    **{k: f"optim.{k}" for k in ("optimizer", "learning_rate", "weight_decay",
                                 "backbone_lr_mult", "head_lr_mult", "loss_lr_mult",
                                 "loss_weight_decay", "schedule", "warmup_epochs",
                                 "lr_decay_epochs", "lr_decay_rate", "freeze_backbone_epochs",
                                 "clip_norm", "clip_value")},
    **{k: f"loop.{k}" for k in ("epochs", "num_devices", "steps_per_call", "workdir",
                                "checkpoint_every_epochs", "keep_checkpoints",
                                "eval_every_epochs", "log_every", "tensorboard")},
    "recall_ks": "eval.recall_ks", "eval_batch_size": "eval.batch_size",
    "eval_baselines": "eval.baselines",
}


def _unknown(where: str, name: str, valid) -> str:
  close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
  hint = f"; closest: {', '.join(close)}" if close else ""
  return f"{where} has no field {name!r}{hint} (fields: {', '.join(valid)})."


def _type_name(tp) -> str:
  origin = typing.get_origin(tp)
  if origin is Literal:
    return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
  if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  if tp is type(None):
    return "none"
  if origin is not None:
    return str(tp).replace("typing.", "")
  return getattr(tp, "__name__", str(tp))


def _allows_none(tp) -> bool:
  return tp is type(None) or type(None) in typing.get_args(tp) or tp is Any


def parse_value(raw: str, tp: Any, path: str) -> Any:
  """Parses the text `raw` as a value of type `tp` (JSON, or the text itself for strings).

  >>> parse_value("3e-4", float, "optim.learning_rate")
  0.0003
  >>> parse_value("1,10,100", tuple[int, ...], "eval.recall_ks")
  (1, 10, 100)
  >>> parse_value("none", int | None, "loop.num_devices") is None
  True
  """
  if raw.strip().lower() in ("none", "null") and _allows_none(tp):
    return None
  adapter = pydantic.TypeAdapter(tp)
  candidates = [raw]
  if typing.get_origin(tp) in (tuple, list) and not raw.lstrip().startswith("["):
    candidates.append(f"[{raw}]")  # "1,2,4" for a sequence
  error = None
  for text in candidates:
    try:
      return adapter.validate_json(text)
    except pydantic.ValidationError as e:
      error = error or e
  try:
    return adapter.validate_strings(raw)
  except pydantic.ValidationError:
    pass
  detail = error.errors()[0]["msg"] if error is not None else "cannot parse"
  literals = [str(a) for t in (tp, *typing.get_args(tp)) if typing.get_origin(t) is Literal
              for a in typing.get_args(t)]
  if literals:
    close = difflib.get_close_matches(raw, literals, n=1)
    detail = f"; closest: {close[0]!r}" if close else ""
  else:
    detail = "" if detail.startswith("Invalid JSON") else f" ({detail})"
  raise ConfigError(f"{path}={raw!r}: expected {_type_name(tp)}{detail}.")


def _loose(raw: str) -> Any:
  """A value of an untyped field (a loss keyword argument): JSON if it parses, else the text."""
  if raw.strip().lower() in ("none", "null"):
    return None
  try:
    return json.loads(raw)
  except json.JSONDecodeError:
    return raw


def _message(error: Exception) -> str:
  if isinstance(error, pydantic.ValidationError):
    e = error.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    return e["msg"].removeprefix("Value error, ") + (f" ({loc})" if loc else "")
  return str(error)


def _one_line(error: Exception, path: str, raw: Any) -> ConfigError:
  return ConfigError(f"{path}={raw!r}: {_message(error)}")


def _hints(cls) -> dict:
  return typing.get_type_hints(cls)


def _set_methods(node: ObjectiveConfig, raw: str, path: str) -> ObjectiveConfig:
  value = _loose(raw)
  if value is None or value == "":
    names = []
  elif isinstance(value, str):
    names = [v.strip() for v in value.split(",") if v.strip()]
  elif isinstance(value, list) and all(isinstance(v, str) for v in value):
    names = value
  else:
    raise ConfigError(f"{path}={raw!r}: expected method names, innermost first, e.g. das,hier "
                      f"(methods: {', '.join(method_registry())}).")
  for name in names:
    if name not in method_registry():
      raise ConfigError(f"{path}={raw!r}: " + _unknown("jaxdml.methods", name,
                                                       list(method_registry())).replace(
                                                           "has no field", "has no method"))
  return dataclasses.replace(node, methods={n: node.methods.get(n) for n in names})


def _set(node: Any, parts: list[str], raw: str, path: str, where: str) -> Any:
  head, rest = parts[0], parts[1:]
  here = f"{where}.{head}" if where else head
  if isinstance(node, dict):  # loss_kwargs / miner_kwargs entries: untyped
    if rest:
      raise ConfigError(f"{path}={raw!r}: {here} is a value, not a section.")
    return {**node, head: _loose(raw)}
  if not dataclasses.is_dataclass(node):
    raise ConfigError(f"{path}={raw!r}: {where} is a value, not a section.")
  fields = [f.name for f in dataclasses.fields(node)]
  if isinstance(node, ObjectiveConfig) and head not in fields:
    if head not in method_registry():
      raise ConfigError(f"{path}={raw!r}: " + _unknown(where, head, fields + [
          f"{m} (a method)" for m in method_registry()]))
    if head not in node.methods:
      on = ",".join([*node.methods, head])
      raise ConfigError(f"{path}={raw!r}: {here} is off (objective.methods = "
                        f"{list(node.methods)}); turn it on first, e.g. --set "
                        f"objective.methods={on} (innermost first).")
    if not rest:
      raise ConfigError(f"{path}={raw!r}: set a field of {here}, e.g. {here}.<field>=<value>.")
    new = _set(node.methods[head], rest, raw, path, here)
    return dataclasses.replace(node, methods={**node.methods, head: new})
  if head not in fields:
    raise ConfigError(f"{path}={raw!r}: " + _unknown(where or "the config", head, fields))
  if isinstance(node, ObjectiveConfig) and head == "methods" and not rest:
    return _set_methods(node, raw, path)
  tp = _hints(type(node))[head]
  if rest:
    value = _set(getattr(node, head), rest, raw, path, here)
  elif not isinstance(raw, str):  # a Python value (command-line flags, `set_value`)
    value = raw
  else:
    value = _loose(raw) if tp is Any else parse_value(raw, tp, path)
  return _replace(node, head, value, path, raw)


def _replace(node, name, value, path, raw):
  """`node` with `name` set, validated; at the root the checks across sections wait for
  `_validated` (several overrides may change several sections together)."""
  if isinstance(node, Config):
    new = object.__new__(Config)
    for f in dataclasses.fields(Config):
      object.__setattr__(new, f.name, getattr(node, f.name))
    if name in ("name", "seed"):
      try:
        value = pydantic.TypeAdapter(_hints(Config)[name]).validate_python(value)
      except pydantic.ValidationError as e:
        raise _one_line(e, path, raw) from None
    object.__setattr__(new, name, value)
    return new
  try:
    return dataclasses.replace(node, **{name: value})
  except (pydantic.ValidationError, ValueError, TypeError) as e:
    raise _one_line(e, path, raw) from None


def apply_overrides(config: Config, assignments: list[str], *, values: dict | None = None,
                    warn=lambda msg: print(msg, file=sys.stderr)) -> Config:
  """Applies `path=value` assignments (see the module docstring); returns the new config.

  Each value is parsed against its field's type and its section validated as it is set; the
  checks that involve several sections run once, after all of them (so that
  `data.dataset=cub200` and `model.name=resnet50` can be given one after the other).

  Args:
    config: the config to start from.
    assignments: "path=value" strings (`--set`), applied in order.
    values: {path: Python value} applied before them (command-line flags).
    warn: reports the use of a flat alias.

  >>> cfg = apply_overrides(Config(), ["optim.learning_rate=3e-4", "model.embedding_dim=64"])
  >>> cfg.optim.learning_rate, cfg.model.embedding_dim
  (0.0003, 64)
  >>> apply_overrides(Config(), ["optim.learning_rat=3e-4"])
  Traceback (most recent call last):
  ...
  jaxdml.app.config.ConfigError: optim.learning_rat='3e-4': optim has no field 'learning_rat'; ...
  """
  items = [(path, value) for path, value in (values or {}).items()]
  for item in assignments:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form path=value (e.g. "
                        "optim.learning_rate=3e-4).")
    path, raw = item.split("=", 1)
    path = path.strip().replace("-", "_")
    if path in method_registry():
      raise ConfigError(f"{item!r}: methods are now objective.methods, e.g. --set "
                        f"objective.methods={path} and --set objective.{path}.<field>=<value>.")
    if path in FLAT_ALIASES:
      warn(f"note: '{path}' is now '{FLAT_ALIASES[path]}' (the flat name is accepted for one "
           "release).")
      path = FLAT_ALIASES[path]
    items.append((path, raw))
  for path, raw in items:
    config = _set(config, path.split("."), raw, path, "")
  if not items:
    return config
  try:
    return dataclasses.replace(config)
  except (pydantic.ValidationError, ValueError, TypeError) as e:
    given = ", ".join(f"{p}={r!r}" for p, r in items)
    raise ConfigError(f"{_message(e)} (after {given})") from None


def set_value(config: Config, path: str, value: Any) -> Config:
  """`config` with the field at dotted `path` set to a Python value (validated).

  >>> set_value(Config(), "loop.epochs", 5).loop.epochs
  5
  """
  return apply_overrides(config, [], values={path: value})


# ------------------------------------------------------------------------------------------------
# Plain data and config files
# ------------------------------------------------------------------------------------------------


def to_dict(config: Config) -> dict:
  """The config as plain JSON-able data (methods as {name: {field: value}}, in order)."""
  return dataclasses.asdict(config)


def from_dict(raw: dict) -> Config:
  """The `Config` of `to_dict` output (e.g. a run's config.json).

  >>> from_dict(to_dict(Config())) == Config()
  True
  """
  if "data" not in raw and any(key in FLAT_ALIASES for key in raw):
    raw = _from_flat(raw)
  import_plugins(raw.get("plugins") or ())
  try:
    return pydantic.TypeAdapter(Config).validate_python(raw)
  except pydantic.ValidationError as e:
    raise ConfigError(_message(e)) from None


def _from_flat(raw: dict) -> dict:
  """The sectioned form of a config saved before configs had sections (one release back):
  the flat fields go to their paths, the `das` / `metrix` / `hier` dicts become the methods
  in the order those objectives composed them.

  >>> old = {"epochs": 3, "loss": "contrastive", "metrix": None,
  ...        "das": {"recipe": ["table1", "cub200", "multisimilarity"]}}
  >>> config = from_dict(old)
  >>> config.loop.epochs, config.objective.name, config.objective.methods["das"].detach
  (3, 'contrastive+das', True)
  """
  out: dict = {}
  for key, value in raw.items():
    if key in FLAT_ALIASES:
      section, field = FLAT_ALIASES[key].split(".")
      out.setdefault(section, {})[field] = value
    elif key in ("name", "seed"):
      out[key] = value
  method_values = {}
  for name in ("das", "metrix", "hier"):
    value = raw.get(name)
    if value is None:
      continue
    value = dict(value)
    if name == "das" and value.get("recipe"):
      from jaxdml.methods import das  # noqa: PLC0415
      base = dataclasses.asdict(das.recipe(*value.pop("recipe")))
      value = {**base, **value}
    value.pop("recipe", None)
    method_values[name] = value
  if method_values:
    out.setdefault("objective", {})["methods"] = method_values
  return out


def diff(a: Config, b: Config) -> list[str]:
  """The dotted paths whose values differ between two configs.

  >>> diff(Config(), set_value(Config(), "optim.learning_rate", 0.1))
  ['optim.learning_rate']
  """
  out = []

  def rec(x, y, prefix):
    if isinstance(x, dict) and isinstance(y, dict):
      for k in list(dict.fromkeys([*x, *y])):
        rec(x.get(k, "<unset>"), y.get(k, "<unset>"), f"{prefix}.{k}" if prefix else k)
    elif x != y:
      out.append(prefix)

  rec(to_dict(a), to_dict(b), "")
  return out


#: the package of the built-in configs (jaxdml/configs/), found by name in every installation
BUILTIN_CONFIGS = "jaxdml.configs"
_CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
#: a checkout's experiments/ folder (one's own configs); None in an installed package
EXPERIMENTS = _CHECKOUT / "experiments" if (_CHECKOUT / "pyproject.toml").is_file() else None


def _configs_in(folder) -> dict[str, str]:
  """The configs of `folder` (a path or an `importlib.resources` traversable), read from their
  source without running it: name -> the first line of its docstring, for each `<name>.py` that
  binds `get_config` at its top level (defines or imports it)."""
  out = {}
  for entry in sorted(folder.iterdir(), key=lambda e: e.name):
    name = entry.name.removesuffix(".py")
    if name == entry.name or name.startswith("_") or not entry.is_file():
      continue
    try:
      tree = ast.parse(entry.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError) as e:
      out[name] = f"(unreadable: {type(e).__name__})"
      continue
    bound = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    bound |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
              for a in n.names}
    if "get_config" in bound:
      doc = (ast.get_docstring(tree) or "").strip()
      out[name] = doc.splitlines()[0] if doc else ""
  return out


def _builtin_configs() -> dict[str, str]:
  return _configs_in(importlib.resources.files(BUILTIN_CONFIGS))


def available_configs() -> dict[str, str]:
  """The configs `load` finds by name, each with the first line of its docstring: the built-in
  ones (`jaxdml.configs`), then those of a checkout's experiments/ that no built-in one shadows.

  >>> available_configs()["digits"]
  "Digit pairs, small CNN, multi-similarity loss: the README's main run."
  """
  found = _builtin_configs()
  if EXPERIMENTS is not None and EXPERIMENTS.is_dir():
    for name, description in _configs_in(EXPERIMENTS).items():
      found.setdefault(name, description)
  return found


def _is_path(spec: str) -> bool:
  return bool(pathlib.PurePath(spec).suffix) or len(pathlib.PurePath(spec).parts) > 1


def load(spec: str | None = None) -> Config:
  """The `Config` of `spec`'s `get_config()`: a config name ("digits") or a config file's path.

  A name is looked up among the built-in configs (`jaxdml.configs`, imported as modules of the
  installed package), then in a checkout's experiments/; `available_configs()` lists them. A
  spec with a suffix or a folder ("experiments/mine.py") is a path. An unknown name raises
  `FileNotFoundError` naming the closest names and listing them all.

  A config file in a folder with an `__init__.py` (experiments/) is imported as a module of that
  package, so it can import its neighbours (`from experiments import common`).
  """
  if spec is None:
    return Config()
  if _is_path(spec):
    path = pathlib.Path(spec).expanduser()
    if not path.is_file():
      hint = ""
      if path.stem in _builtin_configs():
        hint = f"; {path.stem!r} is a built-in config: give its name, without a path"
      raise FileNotFoundError(f"config file {spec!r} not found{hint}.")
    return _load_file(path)
  if spec in _builtin_configs():
    module = importlib.import_module(f"{BUILTIN_CONFIGS}.{spec}")
    return _config_of(module, f"{BUILTIN_CONFIGS}.{spec}")
  if EXPERIMENTS is not None and spec in _configs_in(EXPERIMENTS):
    return _load_file(EXPERIMENTS / f"{spec}.py")
  names = list(available_configs())
  close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
  hint = f"; closest: {', '.join(close)}" if close else ""
  raise FileNotFoundError(f"config {spec!r} not found{hint} (configs: {', '.join(names)}; "
                          "or the path of a .py file defining get_config()).")


def _load_file(path: pathlib.Path) -> Config:
  path = path.resolve()
  return _config_of(_import_file(path), str(path))


def _import_file(path: pathlib.Path):
  """Imports a config file as a module; losses and methods it registers remember the file."""
  global _IMPORTING
  path = path.resolve()
  package = path.parent.name if (path.parent / "__init__.py").exists() else None
  if package and package.isidentifier():
    if package not in sys.modules:
      pkg_spec = importlib.util.spec_from_file_location(
          package, path.parent / "__init__.py", submodule_search_locations=[str(path.parent)])
      pkg = importlib.util.module_from_spec(pkg_spec)
      sys.modules[package] = pkg
      pkg_spec.loader.exec_module(pkg)
    module_name = f"{package}.{path.stem}"
  else:
    module_name = f"jaxdml_config_{path.stem}"
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_name] = module
  outer, _IMPORTING = _IMPORTING, str(path)
  try:
    module_spec.loader.exec_module(module)
  finally:
    _IMPORTING = outer
  return module


def import_plugins(paths) -> None:
  """Imports the config files that defined a run's own losses or methods (`Config.plugins`)."""
  for path in paths:
    if not pathlib.Path(path).is_file():
      raise ConfigError(f"plugins: {path} defined this run's own loss or method and no longer "
                        "exists; restore it (or pass the moved file with --config).")
    _import_file(pathlib.Path(path))


def _config_of(module, where: str) -> Config:
  if not hasattr(module, "get_config"):
    raise ValueError(f"{where} defines no get_config().")
  config = module.get_config()
  if not isinstance(config, Config):
    raise ValueError(f"{where}: get_config() must return a jaxdml.app.config.Config, got "
                     f"{type(config).__name__}.")
  return config
