"""EfficientNet (Tan & Le, ICML 2019) with timm's `tf_efficientnet_*` layout, and its import.

The TF-ported weights that AML's EfficientNet-B3 students start from (timm's
`tf_efficientnet_b3`) were trained with TensorFlow's conventions, which this network keeps:
"SAME" padding (at stride 2 on an even input TF pads (0, 1), not PyTorch's symmetric 1; XLA's
"SAME" is TF's), batch norm with eps 1e-3, SiLU activations, and squeeze-and-excitation whose
reduced width is a quarter of the block's input channels. The network ends after timm's
`conv_head` / `bn2` / activation (1,536 channels for B3): the features AML truncates at.

Parameters mirror timm's names with "_" for ".": `blocks.2.1.conv_dw.weight` is
`params["blocks_2_1"]["conv_dw"]["kernel"]`, so the import is a transpose per convolution.
Only module names that contain no "_" of their own are mapped so; timm's names that do
(`conv_stem`, `conv_dw`, `se.conv_reduce`, ...) are listed in `_TIMM_NAMES`. The tests check
it against a PyTorch network written with timm's names and, where timm is installed, against
timm's own `tf_efficientnet_b3` (both within 1e-4 in float32, eval mode with non-trivial batch
norm statistics).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.models import weights
from jaxdml.models.layers import BatchNorm
from jaxdml.models.mobilenet import make_divisible

Array = jax.Array

#: EfficientNet-B0's stages: block type, repeats, kernel, stride, expansion, channels (SE 0.25)
B0_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40),
             ("ir", 3, 3, 2, 6, 80), ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192),
             ("ir", 1, 3, 1, 6, 320))
#: (width, depth) multipliers of the variants (the tests check B0 and B3)
SCALING = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4),
           "b4": (1.4, 1.8), "b5": (1.6, 2.2)}
SE_RATIO = 0.25
BN_EPS = 1e-3  # TensorFlow's

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def stage_settings(width: float, depth: float) -> list[tuple[str, int, int, int, int, int]]:
  """The stages of a variant: repeats `ceil(r * depth)`, channels `make_divisible(c * width)`.

  >>> [s[1] for s in stage_settings(1.2, 1.4)], [s[5] for s in stage_settings(1.2, 1.4)]
  ([2, 3, 3, 5, 5, 6, 2], [24, 32, 48, 96, 136, 232, 384])
  """
  return [(kind, int(math.ceil(r * depth)), k, s, e, make_divisible(c * width))
          for kind, r, k, s, e, c in B0_STAGES]


class _Conv(nn.Module):
  """k x k convolution, TF "SAME" padding, optional groups and bias."""

  features: int
  k: int = 1
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", _conv_init,
                        (self.k, self.k, x.shape[-1] // self.groups, self.features), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y


class _SqueezeExcite(nn.Module):
  """x * sigmoid(expand(silu(reduce(mean_hw(x))))), timm's `se.conv_reduce` / `se.conv_expand`."""

  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    s = nn.silu(_Conv(self.reduced, use_bias=True, name="convreduce")(s))
    s = _Conv(x.shape[-1], use_bias=True, name="convexpand")(s)
    return x * jax.nn.sigmoid(s).astype(x.dtype)


class _Block(nn.Module):
  """timm's DepthwiseSeparableConv ("ds": dw, bn1, act, se, pw, bn2) or InvertedResidual ("ir":
  pw, bn1, act, dw, bn2, act, se, pwl, bn3); a residual when the stride is 1 and the width
  is kept (no drop path: inference and training alike)."""

  kind: str
  features: int
  k: int
  stride: int
  expand: int
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    cin = x.shape[-1]
    bn = lambda name: BatchNorm(frozen=self.frozen_bn, epsilon=BN_EPS, dtype=self.dtype,  # noqa: E731
                                name=name)
    mid = make_divisible(cin * self.expand) if self.kind == "ir" else cin
    reduced = max(1, round(mid * SE_RATIO / self.expand))  # timm: a quarter of the input width
    y = x
    if self.kind == "ir":
      y = nn.silu(bn("bn1")(_Conv(mid, dtype=self.dtype, name="convpw")(y), train=train))
      y = _Conv(mid, self.k, self.stride, groups=mid, dtype=self.dtype, name="convdw")(y)
      y = nn.silu(bn("bn2")(y, train=train))
      y = _SqueezeExcite(reduced, self.dtype, name="se")(y)
      y = bn("bn3")(_Conv(self.features, dtype=self.dtype, name="convpwl")(y), train=train)
    else:
      y = _Conv(cin, self.k, self.stride, groups=cin, dtype=self.dtype, name="convdw")(y)
      y = nn.silu(bn("bn1")(y, train=train))
      y = _SqueezeExcite(reduced, self.dtype, name="se")(y)
      y = bn("bn2")(_Conv(self.features, dtype=self.dtype, name="convpw")(y), train=train)
    return x + y if self.stride == 1 and cin == self.features else y


class EfficientNet(nn.Module):
  """timm's `tf_efficientnet_<variant>` up to its head: [B, H, W, 3] -> [B, H/32, W/32, C].

  Attributes:
    variant: "b0" ... "b5" (`SCALING`).
    frozen_bn: batch norm in inference mode with fixed affine parameters.
    dtype: computation dtype (parameters stay float32).
  """

  variant: str = "b3"
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @property
  def out_features(self) -> int:
    """Channels of the head (1,536 for B3)."""
    return make_divisible(1280 * SCALING[self.variant][0])

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.variant not in SCALING:
      raise ValueError(f"variant must be one of {tuple(SCALING)}, got {self.variant!r}.")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"EfficientNet takes RGB images [B, H, W, 3], got shape {x.shape}.")
    width, depth = SCALING[self.variant]
    bn = lambda name: BatchNorm(frozen=self.frozen_bn, epsilon=BN_EPS, dtype=self.dtype,  # noqa: E731
                                name=name)
    x = _Conv(make_divisible(32 * width), 3, 2, dtype=self.dtype, name="convstem")(x)
    x = nn.silu(bn("bn1")(x, train=train))
    for i, (kind, repeats, k, s, e, c) in enumerate(stage_settings(width, depth)):
      for j in range(repeats):
        x = _Block(kind, c, k, s if j == 0 else 1, e, self.frozen_bn, self.dtype,
                   name=f"blocks_{i}_{j}")(x, train=train)
    x = _Conv(self.out_features, dtype=self.dtype, name="convhead")(x)
    return nn.silu(bn("bn2")(x, train=train))


def efficientnet_b3(**kwargs: Any) -> EfficientNet:
  """timm's `tf_efficientnet_b3` features (1,536 channels)."""
  return EfficientNet(variant="b3", **kwargs)


#: Flax module names that stand for timm names with an "_" of their own
_TIMM_NAMES = {"convstem": "conv_stem", "convhead": "conv_head", "convdw": "conv_dw",
               "convpw": "conv_pw", "convpwl": "conv_pwl", "convreduce": "conv_reduce",
               "convexpand": "conv_expand"}


def _timm_key(path: tuple[str, ...]) -> str:
  parts = [_TIMM_NAMES.get(p, p.replace("_", ".")) for p in path[:-1]]
  return ".".join(parts + [weights.LEAF_TO_TORCH[path[-1]]])


def _ignored(key: str) -> bool:
  return key.startswith("classifier.") or key.endswith("num_batches_tracked")


def efficientnet_variables_from_timm(state_dict: Mapping[str, Any],
                                     model: EfficientNet | None = None, *, strict: bool = True
                                     ) -> dict[str, Any]:
  """Flax variables of an `EfficientNet` from a timm `tf_efficientnet_*` state dict.

  Convolutions go from OIHW to HWIO (depthwise [C, 1, k, k] to [k, k, 1, C]); batch norm
  weight / bias / running_mean / running_var become scale / bias / mean / var; the SE biases
  are kept; `classifier.*` and `num_batches_tracked` are skipped.

  Raises:
    KeyError: a weight the model needs is missing, or (strict) a name is unused.
    ValueError: a weight has the wrong shape (e.g. another variant's file).
  """
  model = EfficientNet() if model is None else model
  if not isinstance(model, EfficientNet):
    raise TypeError(f"model must be an EfficientNet, got {type(model).__name__}.")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  return weights.conv_variables_from_torch(
      shapes, state_dict, ignored=_ignored, strict=strict, key_of=_timm_key,
      what=f"the EfficientNet-{model.variant.upper()}", hint="another variant or prefix?")


def load_efficientnet(path: str | os.PathLike, variant: str = "b3", *,
                      strip_prefix: str | None = None, strict: bool = True, **model_kwargs: Any
                      ) -> tuple[EfficientNet, dict[str, Any]]:
  """An `EfficientNet` and its variables from a timm weight file (`.safetensors`, as the
  Hugging Face `timm/tf_efficientnet_b3.*` repositories ship it, needs no torch)."""
  model = EfficientNet(variant=variant, **model_kwargs)
  sd = weights.load_state_dict(path, strip_prefix=strip_prefix)
  return model, efficientnet_variables_from_timm(sd, model, strict=strict)
