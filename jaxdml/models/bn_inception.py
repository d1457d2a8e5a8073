"""BN-Inception (Inception v2, Ioffe & Szegedy 2015), the backbone of much of the DML literature.

The network is the one of the `bninception` ImageNet weights distributed with Cadene's
`pretrainedmodels` package (a port of the Caffe model), which Proxy-Anchor, Multi-Similarity and
most later deep-metric-learning papers fine-tune. Layer names, shapes and the order of the
concatenated branches follow those weights, so `bn_inception_variables_from_torch` is a renaming
plus transposes:

  - stem: conv1_7x7_s2 (7x7/2, pad 3) - BN - ReLU - max-pool 3x3/2 (ceil mode) -
    conv2_3x3_reduce (1x1) - BN - ReLU - conv2_3x3 (3x3, pad 1) - BN - ReLU - max-pool 3x3/2
    (ceil mode);
  - mixed blocks 3a, 3b, 4a-4d, 5a, 5b: concat[1x1, 3x3_reduce -> 3x3,
    double_3x3_reduce -> double_3x3_1 -> double_3x3_2, pool -> pool_proj] along channels, where
    pool is a 3x3/1 average pool with padding 1 that counts the padded zeros (divides by 9,
    PyTorch's `count_include_pad=True`), except in 5b where it is a 3x3/1 max pool with padding 1;
  - grid reductions 3c and 4e: concat[3x3_reduce -> 3x3 (stride 2),
    double_3x3_reduce -> double_3x3_1 -> double_3x3_2 (stride 2), max-pool 3x3/2 (ceil mode)].

Every convolution has a bias and is followed by BatchNorm (eps 1e-5, PyTorch's default, as in
the weights' definition; running averages updated with momentum 0.1 and the unbiased batch
variance, as PyTorch does) and ReLU. "Ceil mode" pooling (PyTorch `ceil_mode=True`) pads the
bottom / right with -inf so that a last, partial window is kept: at 224x224 the stem gives
56x56 after the first pool (55 with floor), and the last feature map is 7x7x1024.

Input convention of the pretrained weights (from Caffe): BGR channel order, values in [0, 255],
per-channel mean (B, G, R) = (104, 117, 128) subtracted, no division by a std.
`bn_inception_preprocess` converts RGB images in [0, 1] to it.

Input sizes: the two grid reductions concatenate a stride-2 padded convolution with an unpadded
ceil-mode max pool; their sizes agree only for an even input size there (true for 224x224; a
multiple of 32 is always safe). Other sizes raise a ValueError, where PyTorch fails in `cat`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.models.layers import BatchNorm
from jaxdml.models.weights import load_state_dict, take

Array = jax.Array

BN_INCEPTION_MEAN_BGR = (104.0, 117.0, 128.0)
"""Per-channel means (B, G, R) on the 0-255 scale subtracted from the inputs of the weights."""

# Mixed blocks: (1x1, 3x3 reduce, 3x3, double-3x3 reduce, double 3x3, pool kind, pool proj).
_MIXED = {
    "3a": (64, 64, 64, 64, 96, "avg", 32),
    "3b": (64, 64, 96, 64, 96, "avg", 64),
    "4a": (224, 64, 96, 96, 128, "avg", 128),
    "4b": (192, 96, 128, 96, 128, "avg", 128),
    "4c": (160, 128, 160, 128, 160, "avg", 128),
    "4d": (96, 128, 192, 160, 192, "avg", 128),
    "5a": (352, 192, 320, 160, 224, "avg", 128),
    "5b": (352, 192, 320, 192, 224, "max", 128),
}
# Grid reductions: (3x3 reduce, 3x3 stride 2, double-3x3 reduce, double 3x3 stride 2).
_REDUCTION = {
    "3c": (128, 160, 64, 96),
    "4e": (128, 192, 192, 256),
}
_ORDER = ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b")


def bn_inception_preprocess(images: Array) -> Array:
  """RGB images in [0, 1] to the input convention of the pretrained BN-Inception weights.

  Args:
    images: [..., 3] RGB values in [0, 1].

  Returns:
    [..., 3] BGR values on the 0-255 scale minus the means (104, 117, 128).
  """
  images = jnp.asarray(images)
  return images[..., ::-1] * 255.0 - jnp.asarray(BN_INCEPTION_MEAN_BGR, images.dtype)


def _ceil_pool_pad(size: int, k: int, s: int, p: int) -> tuple[int, int]:
  """(low, high) padding that makes a VALID pool give PyTorch's ceil-mode output size."""
  out = -(-(size + 2 * p - k) // s) + 1
  if (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
    out -= 1
  return p, max(0, (out - 1) * s + k - size - p)


def max_pool_ceil(x: Array, k: int, s: int, p: int = 0) -> Array:
  """k x k max pool with stride s and padding p as PyTorch's `MaxPool2d(ceil_mode=True)`.

  Args:
    x: [B, H, W, C].
    k: window size.
    s: stride.
    p: implicit -inf padding on each side.

  Returns:
    [B, h, w, C] with h = ceil((H + 2p - k) / s) + 1 (less one if the last window would start
    in the right padding), likewise w.
  """
  pads = ((0, 0), _ceil_pool_pad(x.shape[1], k, s, p), _ceil_pool_pad(x.shape[2], k, s, p),
          (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), pads)


def _torch_uniform(fan_in: int):
  """PyTorch's default Conv2d initialisation of weight and bias: U(-1/sqrt(fan_in), +...).

  Drawn as a flat vector and reshaped (XLA's CPU compiler builds random bits of rank-4 shapes
  slowly).
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)

  return init


class BNInception(nn.Module):
  """BN-Inception backbone; returns the last feature map (before global pooling).

  Variables: `params` {layer name: {"kernel", "bias"} for convolutions, {"scale", "bias"} for
  BatchNorm (names ending in "_bn")} and `batch_stats` {BN name: {"mean", "var"}}, with the layer
  names of the PyTorch weights (`conv1_7x7_s2`, `conv1_7x7_s2_bn`, ..., `inception_5b_pool_proj`).
  The classifier `last_linear` of the weights is not part of the backbone.

  Attributes:
    frozen_bn: BatchNorm always uses its running statistics and its scale / bias get no
      gradient, in training too (the usual fine-tuning recipe of DML papers).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
    bn_epsilon: BatchNorm epsilon (1e-5 for the pretrained weights).
    bn_momentum: PyTorch-style momentum of the running averages in training mode (new =
      (1 - m) * old + m * batch). `pretrainedmodels` leaves PyTorch's 0.1; the copies in the
      Proxy-Anchor and Multi-Similarity code declare 0.9, which matters only when BN is not
      frozen.
  """

  frozen_bn: bool = False
  dtype: Any = jnp.float32
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.1

  def _conv_bn_relu(self, x: Array, name: str, features: int, k: int, *, train: bool,
                    stride: int = 1, pad: int = 0) -> Array:
    fan_in = k * k * x.shape[-1]
    x = nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in),
                name=name)(x)
    # bn_momentum is PyTorch's convention; BatchNorm takes Flax's (1 - it)
    x = BatchNorm(frozen=self.frozen_bn, momentum=1.0 - self.bn_momentum,
                  epsilon=self.bn_epsilon, dtype=self.dtype, name=f"{name}_bn")(x, train=train)
    return nn.relu(x)

  def _mixed(self, x: Array, block: str, *, train: bool) -> Array:
    c1, r3, c3, rd, cd, pool, cp = _MIXED[block]
    p = f"inception_{block}_"
    b1 = self._conv_bn_relu(x, p + "1x1", c1, 1, train=train)
    b2 = self._conv_bn_relu(x, p + "3x3_reduce", r3, 1, train=train)
    b2 = self._conv_bn_relu(b2, p + "3x3", c3, 3, train=train, pad=1)
    b3 = self._conv_bn_relu(x, p + "double_3x3_reduce", rd, 1, train=train)
    b3 = self._conv_bn_relu(b3, p + "double_3x3_1", cd, 3, train=train, pad=1)
    b3 = self._conv_bn_relu(b3, p + "double_3x3_2", cd, 3, train=train, pad=1)
    if pool == "avg":
      b4 = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=True)
    else:
      b4 = max_pool_ceil(x, 3, 1, 1)
    b4 = self._conv_bn_relu(b4, p + "pool_proj", cp, 1, train=train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)

  def _reduction(self, x: Array, block: str, *, train: bool) -> Array:
    r3, c3, rd, cd = _REDUCTION[block]
    p = f"inception_{block}_"
    b1 = self._conv_bn_relu(x, p + "3x3_reduce", r3, 1, train=train)
    b1 = self._conv_bn_relu(b1, p + "3x3", c3, 3, train=train, stride=2, pad=1)
    b2 = self._conv_bn_relu(x, p + "double_3x3_reduce", rd, 1, train=train)
    b2 = self._conv_bn_relu(b2, p + "double_3x3_1", cd, 3, train=train, pad=1)
    b2 = self._conv_bn_relu(b2, p + "double_3x3_2", cd, 3, train=train, stride=2, pad=1)
    b3 = max_pool_ceil(x, 3, 2)
    if b1.shape[1:3] != b3.shape[1:3]:
      raise ValueError(
          f"BN-Inception block {block} got a {x.shape[1]}x{x.shape[2]} map; its stride-2 "
          "convolution and ceil-mode max pool agree in size only for even sizes (use input sizes "
          "that are multiples of 32, e.g. 224).")
    return jnp.concatenate([b1, b2, b3.astype(b1.dtype)], axis=-1)

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """Last feature map of BN-Inception.

    Args:
      x: [B, H, W, 3] images in the weights' convention (BGR, 0-255, mean-subtracted; see
        `bn_inception_preprocess`).
      train: BatchNorm with batch statistics (and `batch_stats` updates, which must then be
        mutable) unless `frozen_bn`.

    Returns:
      [B, h, w, 1024] in `dtype`; h = w = 7 for 224x224 inputs (H / 32 for multiples of 32).
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected NHWC images [B, H, W, 3], got shape {x.shape}.")
    x = x.astype(self.dtype)
    x = self._conv_bn_relu(x, "conv1_7x7_s2", 64, 7, train=train, stride=2, pad=3)
    x = max_pool_ceil(x, 3, 2)
    x = self._conv_bn_relu(x, "conv2_3x3_reduce", 64, 1, train=train)
    x = self._conv_bn_relu(x, "conv2_3x3", 192, 3, train=train, pad=1)
    x = max_pool_ceil(x, 3, 2)
    for block in _ORDER:
      if block in _REDUCTION:
        x = self._reduction(x, block, train=train)
      else:
        x = self._mixed(x, block, train=train)
    return x


def bn_inception(**kwargs) -> BNInception:
  """BN-Inception with the layout of the pretrained `bninception` weights (kwargs: fields)."""
  return BNInception(**kwargs)


def bn_inception_variables_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Flax variables of `BNInception` from a PyTorch `bninception` state dict.

  Convolution weights [O, I, kh, kw] become HWIO kernels; BatchNorm weight / bias / running_mean /
  running_var become params scale / bias and batch_stats mean / var. `last_linear.*`,
  `num_batches_tracked` and any other extra names are ignored.

  Args:
    state_dict: `{name: array}` with the names of Cadene's `pretrainedmodels.bninception`
      (torch tensors or numpy arrays; e.g. from `jaxdml.models.weights.load_state_dict`).

  Returns:
    {"params": ..., "batch_stats": ...} of float32 arrays for `BNInception().apply`.

  Raises:
    KeyError: a weight is missing. ValueError: a weight has the wrong shape.
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  shapes = jax.eval_shape(lambda: BNInception().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  params, stats = {}, {}
  for name, leaves in shapes["params"].items():
    if "scale" in leaves:  # BatchNorm
      c = leaves["scale"].shape
      params[name] = {"scale": take(sd, f"{name}.weight", c), "bias": take(sd, f"{name}.bias", c)}
      stats[name] = {"mean": take(sd, f"{name}.running_mean", c),
                     "var": take(sd, f"{name}.running_var", c)}
    else:
      kh, kw, i, o = leaves["kernel"].shape
      params[name] = {"kernel": take(sd, f"{name}.weight", (o, i, kh, kw)).transpose(2, 3, 1, 0),
                      "bias": take(sd, f"{name}.bias", (o,))}
  # copies: the result must not alias buffers of the caller's (possibly torch-shared) arrays
  to_jax = lambda t: jax.tree.map(lambda a: jnp.asarray(np.array(a, np.float32, copy=True)), t)
  return {"params": to_jax(params), "batch_stats": to_jax(stats)}


def load_bn_inception(path: str | os.PathLike, *, strip_prefix: str | None = None,
                      **kwargs) -> tuple[BNInception, dict[str, Any]]:
  """Builds `BNInception(**kwargs)` and its variables from a weight file.

  Args:
    path: `.pth` / `.pt` / `.bin` (PyTorch state dict, e.g. `bn_inception-52deb4733.pth` of
      `pretrainedmodels`), `.safetensors` or `.npz` with the same names.
    strip_prefix: removed from the start of names that have it (e.g. "module.", "model.").
    **kwargs: fields of `BNInception` (frozen_bn, dtype, ...).

  Returns:
    (module, {"params", "batch_stats"}).
  """
  sd = load_state_dict(path, strip_prefix=strip_prefix)
  return BNInception(**kwargs), bn_inception_variables_from_torch(sd)


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor
    v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
  return np.asarray(v)
