"""Optimisers for metric learning: parameter groups, schedules, a frozen-backbone warm-up, clipping.

Parameters are grouped by where they live in the train state's `params` pytree:
  - "backbone": model parameters under a module named `backbone` (the pretrained network);
  - "head": every other model parameter (embedding layer, GeM's p, a small network's layers);
  - "loss": loss parameters (proxies, learnable margins).
Each group runs the same optimiser kind with its own learning rate (a multiple of the base rate,
as in Proxy-Anchor's recipe: proxies at 100x) and its own weight decay. Parameters whose path
matches one of `frozen_patterns` (e.g. the scale/bias of frozen batch norm) form a fourth group,
"frozen", that is never updated: no gradient step and no weight decay (a coupled L2 penalty
would otherwise move them under Adam). A loss-parameter entry can get a group of its own, named
"loss/<key>" after its key in the loss parameters (HIER: hierarchical proxies at 50x while the
class proxies of its base loss run at another rate): `lr_mult={"loss": 1e4, "loss/hier": 50}`,
and its own weight decay: `group_weight_decay={"loss/hier": 1e-2}`.
The backbone group can be frozen for the first steps (Proxy-Anchor's warm-up epochs train only
the head and the proxies): frozen means no update *and* no optimiser-state change, as with
`requires_grad=False`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

GROUPS = ("backbone", "head", "loss")
FROZEN_BN_PATTERNS = (r"(^|/)(bn\d*|\w+_bn|downsample_1)/(scale|bias)$",)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Plain values describing the optimiser (the application builds it from a config's `optim`).

  Attributes:
    optimizer: "adamw" (decoupled weight decay), "adam" (L2 penalty added to the gradient, as
      PyTorch's Adam with weight_decay), "sgd" (momentum 0.9, L2 penalty) or "rmsprop".
    learning_rate: base learning rate.
    weight_decay: weight decay of the model groups.
    lr_mult: learning-rate multiplier per group ("backbone", "head", "loss").
    loss_weight_decay: weight decay of the loss group (and of its "loss/<key>" groups); None =
      `weight_decay`.
    group_weight_decay: weight decay per group, overriding the above: "backbone", "head",
      "loss" or "loss/<key>" (a "loss/<key>" group named only here is created, at the loss
      group's learning rate), e.g. {"loss/hier": 1e-2}.
    eps: the epsilon added to the denominator by "adamw", "adam" and "rmsprop" (1e-8, optax's
      and PyTorch's default; ignored by "sgd").
    schedule: "constant", "cosine" (to 0 at `total_steps`) or "step" (x `decay_rate` at each
      step of `decay_steps`).
    warmup_steps: linear learning-rate warm-up from 0 over this many steps.
    total_steps: steps of the whole run (for the cosine schedule).
    decay_steps: step boundaries of the "step" schedule.
    decay_rate: factor of the "step" schedule.
    freeze_backbone_steps: the backbone group is frozen for this many steps.
    clip_norm: clip the global gradient norm to this value (None: no clipping).
    clip_value: clip each gradient element to [-v, v] (None: no clipping).
    frozen_patterns: regular expressions (searched in the "/"-joined parameter path, e.g.
      "model/backbone/layer1_0/bn1/scale") of parameters that are never updated.
  """

  optimizer: str = "adamw"
  learning_rate: float = 1e-4
  weight_decay: float = 1e-4
  lr_mult: dict[str, float] = dataclasses.field(
      default_factory=lambda: {"backbone": 1.0, "head": 1.0, "loss": 100.0})
  loss_weight_decay: float | None = None
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 0
  decay_steps: tuple[int, ...] = ()
  decay_rate: float = 0.5
  freeze_backbone_steps: int = 0
  clip_norm: float | None = None
  clip_value: float | None = None
  frozen_patterns: tuple[str, ...] = ()
  group_weight_decay: dict[str, float] = dataclasses.field(default_factory=dict)
  eps: float = 1e-8

  def validate(self) -> None:
    if self.optimizer not in ("adamw", "adam", "sgd", "rmsprop"):
      raise ValueError(f"optimizer must be adamw, adam, sgd or rmsprop, got {self.optimizer!r}.")
    if self.schedule not in ("constant", "cosine", "step"):
      raise ValueError(f"schedule must be constant, cosine or step, got {self.schedule!r}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
    for field in ("lr_mult", "group_weight_decay"):
      unknown = {g for g in getattr(self, field) if g not in GROUPS and not _is_loss_group(g)}
      if unknown:
        raise ValueError(f"{field} has unknown groups {sorted(unknown)}; groups are {GROUPS} "
                         "and 'loss/<key>'.")
    for group, value in self.group_weight_decay.items():
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"group_weight_decay[{group!r}] must be a number >= 0, got {value!r}.")
    if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
      raise ValueError(f"eps must be a number > 0, got {self.eps!r}.")
    if self.schedule == "cosine" and self.total_steps <= 0:
      raise ValueError("the cosine schedule needs total_steps > 0.")
    for name in ("warmup_steps", "freeze_backbone_steps"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")


def _is_loss_group(group: str) -> bool:
  return group.startswith("loss/") and len(group) > len("loss/")


def make_schedule(spec: OptimizerSpec, scale: float = 1.0) -> optax.Schedule:
  """The learning-rate schedule of one group (base rate x `scale`)."""
  lr = spec.learning_rate * scale
  if spec.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif spec.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(spec.total_steps - spec.warmup_steps, 1))
  else:
    main = optax.piecewise_constant_schedule(
        lr, {int(b) - spec.warmup_steps: spec.decay_rate for b in spec.decay_steps
             if int(b) > spec.warmup_steps})
  if spec.warmup_steps:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, spec.warmup_steps), main], [spec.warmup_steps])
  return main


def _base(spec: OptimizerSpec, lr: optax.Schedule, weight_decay: float
          ) -> optax.GradientTransformation:
  if spec.optimizer == "adamw":
    return optax.adamw(lr, eps=spec.eps, weight_decay=weight_decay)
  if spec.optimizer == "adam":
    opt = optax.adam(lr, eps=spec.eps)
  elif spec.optimizer == "sgd":
    opt = optax.sgd(lr, momentum=0.9)
  else:
    opt = optax.rmsprop(lr, decay=0.99, eps=spec.eps)  # PyTorch RMSprop's alpha
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), opt)
  return opt


class FrozenState(NamedTuple):
  count: jax.Array
  inner: Any


def frozen_for(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """`inner`, except that its first `steps` updates are zero and leave its state untouched."""
  if steps <= 0:
    return inner

  def init(params):
    return FrozenState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    def frozen(_):
      return jax.tree.map(jnp.zeros_like, updates), state.inner

    def active(_):
      return inner.update(updates, state.inner, params)

    new_updates, new_inner = jax.lax.cond(state.count < steps, frozen, active, None)
    return new_updates, FrozenState(jnp.minimum(state.count + 1, steps), new_inner)

  return optax.GradientTransformation(init, update)


def param_labels(params: Any, frozen_patterns: tuple[str, ...] = (),
                 loss_groups: tuple[str, ...] = ()) -> Any:
  """Group label of every leaf of `{"model": ..., "loss": ...}` (see the module docstring).

  `loss_groups`: "loss/<key>" groups; loss parameters under `<key>` get that label.
  """
  frozen = [re.compile(p) for p in frozen_patterns]

  def label(path, _):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if any(f.search("/".join(keys)) for f in frozen):
      return "frozen"
    if keys and keys[0] == "loss":
      own = f"loss/{keys[1]}" if len(keys) > 1 else None
      return own if own in loss_groups else "loss"
    return "backbone" if "backbone" in keys else "head"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
  """The optimiser over `{"model": ..., "loss": ...}` described by `spec`."""
  spec.validate()
  mult = {"backbone": 1.0, "head": 1.0, "loss": 1.0, **spec.lr_mult}
  wd = {"backbone": spec.weight_decay, "head": spec.weight_decay,
        "loss": spec.weight_decay if spec.loss_weight_decay is None else spec.loss_weight_decay}
  own_wd = {g: float(v) for g, v in spec.group_weight_decay.items()}
  wd.update({g: v for g, v in own_wd.items() if g in GROUPS})
  loss_groups = tuple(dict.fromkeys(
      g for g in (*spec.lr_mult, *spec.group_weight_decay) if _is_loss_group(g)))
  for g in loss_groups:
    mult.setdefault(g, mult["loss"])
    wd[g] = own_wd.get(g, wd["loss"])
  transforms = {g: _base(spec, make_schedule(spec, mult[g]), wd[g])
                for g in (*GROUPS, *loss_groups)}
  transforms["backbone"] = frozen_for(transforms["backbone"], spec.freeze_backbone_steps)
  transforms["frozen"] = optax.set_to_zero()
  chain = []
  if spec.clip_value is not None:
    chain.append(optax.clip(spec.clip_value))
  if spec.clip_norm is not None:
    chain.append(optax.clip_by_global_norm(spec.clip_norm))
  chain.append(optax.partition(
      transforms, functools.partial(param_labels, frozen_patterns=spec.frozen_patterns,
                                    loss_groups=loss_groups)))
  return optax.chain(*chain)
