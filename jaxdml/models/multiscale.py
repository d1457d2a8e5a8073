"""Multi-scale global descriptors, as landmark retrieval computes them.

An image is embedded at several scales (1, 1/sqrt 2 and 1/2 by default), the L2-normalised
descriptors are combined by a generalised mean with exponent p (the network's GeM exponent for a
GeM network, else 1: the plain mean), and the result is L2-normalised again:

    v = normalize((mean_s f(resize(x, s))^p)^(1/p))

as in the retrieval code of Radenovic et al. (cirtorch `extract_ms`), which the landmark papers
(AML, GLAM) evaluate with. Resizing is bilinear with PyTorch's `interpolate(scale_factor=s,
mode="bilinear", align_corners=False)` semantics (output size floor(s H) x floor(s W), source
coordinate (i + 0.5) / s - 0.5 clamped at 0, no antialiasing), so descriptors match networks
ported from PyTorch (tested against `torch.nn.functional.interpolate` to 1e-5).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DEFAULT_SCALES = (1.0, 1.0 / math.sqrt(2.0), 0.5)


def _taps(size_in: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Per output index: the two source indices and their weights, in PyTorch's float32 order."""
  size_out = int(math.floor(size_in * scale))
  if size_out < 1:
    raise ValueError(f"scale {scale} maps a side of {size_in} pixels to {size_out}.")
  dst = np.arange(size_out, dtype=np.float32)
  inv = np.float32(1.0 / scale)
  src = np.maximum(inv * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int32), size_in - 1)
  i1 = np.minimum(i0 + 1, size_in - 1).astype(np.int32)
  w1 = np.clip(src - i0, 0, 1).astype(np.float32)
  return i0, i1, np.float32(1.0) - w1, w1


def resize_bilinear(images: Array, scale: float) -> Array:
  """Bilinear resizing of [B, H, W, C] images by `scale`, as PyTorch's
  `interpolate(scale_factor=scale, mode="bilinear", align_corners=False)` (see the module
  docstring): two taps per axis, O(output pixels). `scale == 1` returns the images unchanged.

  >>> resize_bilinear(jnp.arange(16.0).reshape(1, 4, 4, 1), 0.5)[0, :, :, 0].tolist()
  [[2.5, 4.5], [10.5, 12.5]]
  """
  if images.ndim != 4:
    raise ValueError(f"`images` must be [batch, height, width, channels], got shape "
                     f"{images.shape}.")
  if not isinstance(scale, (int, float, np.floating)) or not scale > 0:
    raise ValueError(f"`scale` must be a positive number, got {scale!r}.")
  if scale == 1:
    return images
  h0, h1, wh0, wh1 = _taps(images.shape[1], float(scale))
  c0, c1, wc0, wc1 = _taps(images.shape[2], float(scale))
  dt = images.dtype
  wc0, wc1 = jnp.asarray(wc0, dt)[None, None, :, None], jnp.asarray(wc1, dt)[None, None, :, None]
  wh0, wh1 = jnp.asarray(wh0, dt)[None, :, None, None], jnp.asarray(wh1, dt)[None, :, None, None]

  def cols(rows):
    return wc0 * rows[:, :, c0] + wc1 * rows[:, :, c1]

  return wh0 * cols(images[:, h0]) + wh1 * cols(images[:, h1])


def multiscale_descriptor(embed: Callable[[Array], Array], images: Array,
                          scales: Sequence[float] = DEFAULT_SCALES, p: float = 1.0) -> Array:
  """The multi-scale descriptor of each image (see the module docstring).

  Args:
    embed: images [B, h, w, C] -> L2-normalised descriptors [B, d] (non-negative when p != 1,
      as GeM descriptors are); called once per scale, so a jitted `embed` compiles per shape.
    images: [B, H, W, C] preprocessed images of one size (landmark images differ in size: call
      this per image or per group of equal size).
    scales: the scales, each > 0.
    p: the generalised-mean exponent (cirtorch: the network's GeM p with several scales).

  Returns:
    [B, d] L2-normalised descriptors.

  >>> emb = lambda x: x.mean(axis=(1, 2))  # a toy "network"
  >>> [round(float(v), 4) for v in multiscale_descriptor(emb, jnp.ones((1, 8, 8, 2)), p=3.0)[0]]
  [0.7071, 0.7071]
  """
  scales = tuple(float(s) for s in scales)
  if not scales or not all(s > 0 for s in scales):
    raise ValueError(f"`scales` must be positive numbers, got {scales!r}.")
  if not p > 0:
    raise ValueError(f"`p` must be > 0, got {p!r}.")
  total = None
  for s in scales:
    v = jnp.asarray(embed(resize_bilinear(images, s)))
    v = v if p == 1 else v ** p
    total = v if total is None else total + v
  mean = total / len(scales)
  v = mean if p == 1 else mean ** (1.0 / p)
  return v / jnp.linalg.norm(v, axis=-1, keepdims=True)
