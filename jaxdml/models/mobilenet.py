"""MobileNetV2 (Sandler et al., CVPR 2018) with torchvision's layout, and its weight import.

The network is torchvision's `mobilenet_v2` up to its `features` (the last 1 x 1 convolution to
1,280 channels, batch norm and ReLU6): the AML students' backbone. The parameter tree mirrors
torchvision's names, so `features.3.conv.1.0.weight` is `params["features_3"]["conv_1_0"]
["kernel"]` and the import is a transpose (OIHW to HWIO) per convolution. Convolutions pad
symmetrically by k // 2, as PyTorch does; TF's "SAME" would pad (0, 1) at stride 2 on an even
input and shift every later map by one pixel. Batch norm has PyTorch's semantics (eps 1e-5,
momentum 0.1, the unbiased running variance; `jaxdml.models.layers.BatchNorm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.models import weights
from jaxdml.models.layers import BatchNorm

Array = jax.Array

#: torchvision's inverted-residual settings: expansion t, channels c, repeats n, first stride s
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# kaiming-normal, fan_out (torchvision's initialisation of MobileNetV2's convolutions)
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """torchvision's `_make_divisible`: the nearest multiple of `divisor`, never 10% below `value`.

  >>> make_divisible(32 * 0.75), make_divisible(1280 * 1.0), make_divisible(20.0)
  (24, 1280, 24)
  """
  min_value = divisor if min_value is None else min_value
  new = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


class _Conv(nn.Module):
  """k x k convolution without bias, PyTorch's symmetric padding k // 2, optional groups."""

  features: int
  k: int = 1
  stride: int = 1
  groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin = x.shape[-1]
    kernel = self.param("kernel", _conv_init, (self.k, self.k, cin // self.groups, self.features),
                        jnp.float32)
    p = self.k // 2
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (self.stride, self.stride),
        ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=self.groups)


def _relu6(x: Array) -> Array:
  return jnp.clip(x, 0.0, 6.0)


class _InvertedResidual(nn.Module):
  """Expansion 1 x 1 (if t > 1), depthwise 3 x 3 at the stride, linear 1 x 1; a residual when the
  stride is 1 and the width is kept. Submodule names are torchvision's `conv.<i>[.<j>]`."""

  features: int
  stride: int
  expand: int
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    cin = x.shape[-1]
    hidden = int(round(cin * self.expand))
    bn = lambda name: BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, name=name)  # noqa: E731
    y, i = x, 0
    if self.expand != 1:
      y = _Conv(hidden, 1, dtype=self.dtype, name="conv_0_0")(y)
      y = _relu6(bn("conv_0_1")(y, train=train))
      i = 1
    y = _Conv(hidden, 3, self.stride, groups=hidden, dtype=self.dtype, name=f"conv_{i}_0")(y)
    y = _relu6(bn(f"conv_{i}_1")(y, train=train))
    y = _Conv(self.features, 1, dtype=self.dtype, name=f"conv_{i + 1}")(y)
    y = bn(f"conv_{i + 2}")(y, train=train)
    return x + y if self.stride == 1 and cin == self.features else y


class MobileNetV2(nn.Module):
  """torchvision's MobileNetV2 `features`: [B, H, W, 3] -> [B, H / 32, W / 32, last_channels].

  Attributes:
    width_mult: channel multiplier (1.0 for the ImageNet weights).
    round_nearest: channels are rounded to multiples of this (8).
    frozen_bn: batch norm in inference mode with fixed affine parameters.
    dtype: computation dtype (parameters stay float32).
  """

  width_mult: float = 1.0
  round_nearest: int = 8
  frozen_bn: bool = False
  dtype: Any = jnp.float32

  @property
  def out_features(self) -> int:
    """Channels of the last feature map (1,280 at width 1)."""
    return make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"MobileNetV2 takes RGB images [B, H, W, 3], got shape {x.shape}.")
    bn = lambda name: BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, name=name)  # noqa: E731
    width = make_divisible(32 * self.width_mult, self.round_nearest)
    x = _Conv(width, 3, 2, dtype=self.dtype, name="features_0_0")(x)
    x = _relu6(bn("features_0_1")(x, train=train))
    index = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
      out = make_divisible(c * self.width_mult, self.round_nearest)
      for r in range(n):
        x = _InvertedResidual(out, s if r == 0 else 1, t, self.frozen_bn, self.dtype,
                              name=f"features_{index}")(x, train=train)
        index += 1
    x = _Conv(self.out_features, 1, dtype=self.dtype, name=f"features_{index}_0")(x)
    return _relu6(bn(f"features_{index}_1")(x, train=train))


def mobilenet_v2(**kwargs: Any) -> MobileNetV2:
  """A `MobileNetV2` (torchvision's `mobilenet_v2` without the classifier)."""
  return MobileNetV2(**kwargs)


def _ignored(key: str) -> bool:
  return key.startswith("classifier.") or key.endswith("num_batches_tracked")


def mobilenet_v2_variables_from_torch(state_dict: Mapping[str, Any],
                                      model: MobileNetV2 | None = None, *, strict: bool = True
                                      ) -> dict[str, Any]:
  """Flax variables of a `MobileNetV2` from a torchvision `mobilenet_v2` state dict.

  Convolution weights go from OIHW to HWIO (a depthwise [C, 1, 3, 3] becomes [3, 3, 1, C]);
  batch-norm weight / bias / running_mean / running_var become scale / bias / mean / var;
  `classifier.*` and `num_batches_tracked` are skipped.

  Args:
    state_dict: `{name: array}` with torchvision's names (numpy arrays or CPU tensors).
    model: the network to load into (default: width 1).
    strict: raise on names the model does not use (other than the skipped ones).

  Returns:
    `{"params": ..., "batch_stats": ...}` with float32 leaves, the structure of `model.init`.

  Raises:
    KeyError: a weight the model needs is missing, or (strict) a name is unused.
    ValueError: a weight has the wrong shape.
  """
  model = MobileNetV2() if model is None else model
  if not isinstance(model, MobileNetV2):
    raise TypeError(f"model must be a MobileNetV2, got {type(model).__name__}.")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  return weights.conv_variables_from_torch(shapes, state_dict, ignored=_ignored, strict=strict,
                                           what="the MobileNetV2", hint="another width or prefix?")


def load_mobilenet_v2(path: str | os.PathLike, *, strip_prefix: str | None = None,
                      strict: bool = True, **model_kwargs: Any
                      ) -> tuple[MobileNetV2, dict[str, Any]]:
  """A `MobileNetV2` and its variables from a torchvision-style weight file (`.pth` needs
  torch; `.safetensors` and `.npz` do not)."""
  model = MobileNetV2(**model_kwargs)
  sd = weights.load_state_dict(path, strip_prefix=strip_prefix)
  return model, mobilenet_v2_variables_from_torch(sd, model, strict=strict)
