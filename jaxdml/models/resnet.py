"""ResNet backbones (He et al., CVPR 2016) returning the last feature map, and torchvision import.

The layout is torchvision's ("v1.5"): the stem is a 7x7 stride-2 convolution (padding 3), batch
norm, ReLU and a 3x3 stride-2 max-pool (padding 1, padded with -inf); a bottleneck block strides
on its 3x3 convolution; a projection shortcut (1x1 convolution + batch norm) is used where the
stride or the channel count changes. Inputs are NHWC [B, H, W, 3]; `ResNet.__call__` returns the
last feature map [B, H/32, W/32, C] (C = 512 for ResNet-18/34, 2048 for ResNet-50/101), without
pooling or classifier, so that a pooling head or feature-level mixing can act on it.

Variables are `{"params", "batch_stats"}`; the names mirror torchvision's state-dict keys with "_"
for "." (`layer1_0/downsample_0/kernel` <-> `layer1.0.downsample.0.weight`), which is what
`resnet_variables_from_torch` relies on.

Batch norm follows PyTorch exactly: normalisation by the biased batch variance in training, running
averages updated with momentum 0.9 in the Flax convention (0.1 in PyTorch's) from the unbiased
batch variance, eps 1e-5. With `frozen_bn=True` (the convention of Proxy-Anchor / multi-similarity
training recipes), batch norm always uses the running statistics, never updates them, and its
scale and bias receive no gradient.

Convolutions (`conv_impl`): "xla" uses `lax.conv_general_dilated` (the right choice on GPU/TPU);
"matmul" writes 1x1 convolutions as matrix products and 3x3 ones as one product over the nine
shifted copies (im2col), and the stem's max-pool as a maximum of nine strided slices. Both compute
the same function. On a 2-core CPU (jax 0.10.2, batch 8 at 224 x 224) the "matmul" form made a
ResNet-50 forward + backward 2.1x faster (3.4 s against 7.2 s): XLA's CPU backward passes of
convolutions and of `reduce_window` are slow. "auto" (default) picks "matmul" on CPU and "xla"
elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.models import weights
from jaxdml.models.layers import BatchNorm

Array = jax.Array

# torchvision's initialisation of convolutions: kaiming-normal, fan_out, ReLU gain.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGE_SIZES: dict[int, tuple[tuple[int, ...], str]] = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}


def _resolve_impl(impl: str) -> str:
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("xla", "matmul"):
    raise ValueError(f"conv_impl must be 'auto', 'xla' or 'matmul', got {impl!r}.")
  return impl


class Conv(nn.Module):
  """k x k convolution without bias, stride s, PyTorch's zero padding k // 2 (kernel HWIO).

  Attributes:
    features: output channels.
    k: kernel size (odd).
    stride: stride.
    dtype: computation dtype (the kernel is stored in float32).
    impl: "xla", "matmul" or "auto" (see the module docstring).
  """

  features: int
  k: int
  stride: int = 1
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, s, p = self.k, self.stride, self.k // 2
    kernel = self.param("kernel", _conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    # matmul form: 1x1 always; 3x3 as im2col; larger kernels (the 7x7 stem, 3 input channels)
    # stay with XLA's convolution, which is the faster of the two there
    if _resolve_impl(self.impl) == "xla" or k > 3:
      return jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if k == 1:
      x = x[:, ::s, ::s, :] if s > 1 else x
      return jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0])
    b, h, w, c = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
                            for i in range(k) for j in range(k)], axis=-1)
    return jnp.einsum("bhwk,kf->bhwf", cols, kernel.reshape(k * k * c, self.features))


def _conv(features: int, k: int, stride: int, dtype: Any, name: str, impl: str = "auto"
          ) -> Conv:
  return Conv(features, k, stride, dtype=dtype, impl=impl, name=name)


class _Block(nn.Module):
  """Shared fields of the residual blocks."""

  planes: int
  stride: int = 1
  frozen_bn: bool = False
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv_impl: str = "auto"

  def _norm(self, name: str, last: bool = False) -> BatchNorm:
    zero = last and self.zero_init_residual
    return BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, axis_name=self.axis_name,
                     scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
                     name=name)

  def _shortcut(self, x: Array, out: int, train: bool) -> Array:
    if self.stride == 1 and x.shape[-1] == out:
      return x
    x = _conv(out, 1, self.stride, self.dtype, "downsample_0", self.conv_impl)(x)
    return self._norm("downsample_1")(x, train=train)


class BasicBlock(_Block):
  """Two 3x3 convolutions (the first with the stride) and an identity / projection shortcut."""

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, C] -> [B, H/stride, W/stride, planes]."""
    y = _conv(self.planes, 3, self.stride, self.dtype, "conv1", self.conv_impl)(x)
    y = nn.relu(self._norm("bn1")(y, train=train))
    y = _conv(self.planes, 3, 1, self.dtype, "conv2", self.conv_impl)(y)
    y = self._norm("bn2", last=True)(y, train=train)
    return nn.relu(y + self._shortcut(x, self.planes, train))


class Bottleneck(_Block):
  """1x1 (planes) - 3x3 (planes, with the stride) - 1x1 (4 * planes) and a shortcut."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, C] -> [B, H/stride, W/stride, 4 * planes]."""
    out = self.planes * self.expansion
    y = _conv(self.planes, 1, 1, self.dtype, "conv1", self.conv_impl)(x)
    y = nn.relu(self._norm("bn1")(y, train=train))
    y = _conv(self.planes, 3, self.stride, self.dtype, "conv2", self.conv_impl)(y)
    y = nn.relu(self._norm("bn2")(y, train=train))
    y = _conv(out, 1, 1, self.dtype, "conv3", self.conv_impl)(y)
    y = self._norm("bn3", last=True)(y, train=train)
    return nn.relu(y + self._shortcut(x, out, train))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def max_pool_3x3_s2(x: Array, impl: str = "xla") -> Array:
  """3x3 stride-2 max-pool with padding 1 filled with -inf (PyTorch's `MaxPool2d(3, 2, 1)`).

  impl "xla": `reduce_window`; "matmul" (CPU): the maximum of the nine strided slices (the same
  values; at exact ties the gradient is shared between the tied inputs instead of going to one).
  """
  if _resolve_impl(impl) == "xla":
    # A concrete -inf init lets JAX use its differentiable max-pool primitive.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1], x.shape[2]
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      piece = xp[:, i:i + 2 * (ho - 1) + 1:2, j:j + 2 * (wo - 1) + 1:2, :]
      out = piece if out is None else jnp.maximum(out, piece)
  return out


class ResNet(nn.Module):
  """A ResNet trunk: stem, then stages of residual blocks; returns the last feature map.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3); stage i > 0 starts with stride 2.
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101/152).
    width: channels of the stem and planes of the first stage (doubled per stage); 64 in
      torchvision.
    frozen_bn: batch norm always uses running statistics and its scale/bias get no gradient.
    zero_init_residual: initialise the last batch-norm scale of every block to zero.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and batch statistics stay float32.
    axis_name: mapped axis for synchronised batch statistics (None: per device).
    conv_impl: "auto", "xla" or "matmul" (see the module docstring); the same function and
      parameters either way.
  """

  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  block: str = "bottleneck"
  width: int = 64
  frozen_bn: bool = False
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv_impl: str = "auto"

  @property
  def out_features(self) -> int:
    """Channels of the returned feature map."""
    block = _BLOCKS[self.block]
    return self.width * 2 ** (len(self.stage_sizes) - 1) * block.expansion

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """Feature map of images.

    Args:
      x: [B, H, W, 3] float images (NHWC).
      train: use batch statistics in batch norm and update the running averages (needs
        `mutable=["batch_stats"]` in `apply`); ignored for batch norm when `frozen_bn`.

    Returns:
      [B, ceil(H/32), ceil(W/32), out_features] in `dtype` (after the last block's ReLU).
    """
    if self.block not in _BLOCKS:
      raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {self.block!r}.")
    if x.ndim != 4:
      raise ValueError(f"expected NHWC images [B, H, W, C], got shape {x.shape}.")
    block = _BLOCKS[self.block]
    x = _conv(self.width, 7, 2, self.dtype, "conv1", self.conv_impl)(x.astype(self.dtype))
    x = BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, axis_name=self.axis_name,
                  name="bn1")(x, train=train)
    x = max_pool_3x3_s2(nn.relu(x), self.conv_impl)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = block(planes=self.width * 2 ** i, stride=2 if i > 0 and j == 0 else 1,
                  frozen_bn=self.frozen_bn, zero_init_residual=self.zero_init_residual,
                  dtype=self.dtype, axis_name=self.axis_name, conv_impl=self.conv_impl,
                  name=f"layer{i + 1}_{j}"
                  )(x, train=train)
    return x


def resnet(depth: int, **kwargs: Any) -> ResNet:
  """The ResNet of a given depth (18, 34, 50, 101, 152); kwargs go to `ResNet`."""
  if depth not in STAGE_SIZES:
    raise ValueError(f"depth must be one of {sorted(STAGE_SIZES)}, got {depth!r}.")
  stages, block = STAGE_SIZES[depth]
  return ResNet(stage_sizes=stages, block=block, **kwargs)


def resnet18(**kwargs: Any) -> ResNet:
  """ResNet-18 (basic blocks 2-2-2-2; 512-channel feature map)."""
  return resnet(18, **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
  """ResNet-34 (basic blocks 3-4-6-3; 512-channel feature map)."""
  return resnet(34, **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
  """ResNet-50 (bottleneck blocks 3-4-6-3; 2048-channel feature map)."""
  return resnet(50, **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
  """ResNet-101 (bottleneck blocks 3-4-23-3; 2048-channel feature map)."""
  return resnet(101, **kwargs)


# ------------------------------------------------------------------------------- torchvision import

def _ignored(key: str) -> bool:
  return key.startswith("fc.") or key.endswith("num_batches_tracked")


def resnet_variables_from_torch(state_dict: Mapping[str, Any], depth_or_model: int | ResNet,
                                *, strict: bool = True) -> dict[str, Any]:
  """Flax variables of a ResNet from a torchvision-style ResNet state dict.

  Convolution weights are transposed from OIHW to HWIO; batch-norm weight / bias / running_mean /
  running_var become scale / bias / mean / var. `fc.*` and `num_batches_tracked` are skipped.

  Args:
    state_dict: `{name: array}` with torchvision's names (numpy arrays or CPU tensors), e.g. from
      `weights.load_state_dict` or `torchvision.models.resnet50(...).state_dict()`.
    depth_or_model: 18/34/50/101/152 or the `ResNet` whose variables to build (any config).
    strict: raise on names that the model does not use (other than `fc.*` and
      `num_batches_tracked`), e.g. a deeper network's extra blocks.

  Returns:
    `{"params": ..., "batch_stats": ...}` with float32 leaves and exactly the structure of
    `model.init(...)`.

  Raises:
    KeyError: a weight the model needs is missing, or (strict) a name is unused.
    ValueError: a weight has the wrong shape.
  """
  model = resnet(depth_or_model) if isinstance(depth_or_model, int) else depth_or_model
  if not isinstance(model, ResNet):
    raise TypeError(f"depth_or_model must be an int or a ResNet, got {type(model).__name__}.")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  return weights.conv_variables_from_torch(shapes, state_dict, ignored=_ignored, strict=strict,
                                           hint="wrong depth or prefix?")


def load_resnet(path: str | os.PathLike, depth: int | ResNet = 50, *,
                strip_prefix: str | None = None, strict: bool = True, **model_kwargs: Any
                ) -> tuple[ResNet, dict[str, Any]]:
  """A ResNet and its variables from a torchvision-style weight file.

  Args:
    path: `.pth` / `.pt` / `.bin` (needs torch), `.safetensors` or `.npz`, keyed like torchvision.
    depth: 18/34/50/101/152, or a `ResNet` to load into (then no `model_kwargs`).
    strip_prefix: removed from the start of names (e.g. "module.", "model.").
    strict: see `resnet_variables_from_torch`.
    **model_kwargs: further `ResNet` fields (frozen_bn, dtype, ...).

  Returns:
    (model, {"params": ..., "batch_stats": ...}).
  """
  if isinstance(depth, ResNet):
    if model_kwargs:
      raise ValueError("model_kwargs are only for a depth, not with a ResNet instance.")
    model = depth
  else:
    model = resnet(depth, **model_kwargs)
  sd = weights.load_state_dict(path, strip_prefix=strip_prefix)
  return model, resnet_variables_from_torch(sd, model, strict=strict)
