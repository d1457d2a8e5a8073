"""GLAM: global-local attention over a convolutional feature map (Song, Han, Avrithis, WACV 2022).

Four attention branches act on a feature map F [B, h, w, c] (NHWC here), in two streams that are
fused with F itself:

* local stream:  F_lc = F * a_lc + F, with a_lc [c] = sigmoid(conv1d_k(GAP(F))) (local channel);
  F_l = F_lc * a_ls + F_lc, with a_ls [h, w] from a 1x1 reduction of F_lc to c' channels, three
  dilated convolutions of it, their concatenation with it and a 1x1 convolution to one channel
  (local spatial);
* global stream: F_gc = F * G_c (multiplied, no residual), G_c = V_c A_c with V_c = F as
  [hw, c] and A_c [c, c] = softmax(k_c^T q_c), q_c and k_c [c] from two separate
  sigmoid(conv1d_k(GAP(F))) (global channel); F_g = F_gc * G_s + F_gc, with
  G_s = conv1x1_c(V_s A_s), A_s [hw, hw] = softmax(K_s^T Q_s) and Q_s, K_s, V_s 1x1 projections
  of F_gc to c' channels (global spatial);
* fusion: F_gl = w_l F_l + w F + w_g F_g with (w_l, w, w_g) = softmax of a learnable 3-vector,
  initialised equal.

The order of the branches is the paper's figure (local channel then local spatial; global channel
then global spatial). Each branch can be switched off (`local_channel`, ...) to rerun the paper's
ablation rows: a stream whose two branches are both off is left out of the fusion, and with all
four off the module is the identity.

Choices where the paper leaves details open (each is a setting; the defaults and why):
* `kernel_size=3` for the channel convolutions (ECA's 1-D convolution over the pooled channels,
  as both public re-implementations use); `local_channel_layer="eca"`, or "dense" for a c x c
  linear layer, which one re-implementation uses.
* `dilations=(1, 3, 5)` with `spatial_kernel=3`: the paper's dilation rates with 3 x 3 kernels
  (one re-implementation uses 1 / 2 / 3, another 3 / 5 / 7 kernels).
* `reduced_channels=None`: c' = c / 8 (at least 1); the re-implementations use 128 to 512 for
  c = 2048.
* `local_spatial_activation=None`: the attention map is used as computed (both
  re-implementations); "sigmoid" bounds it to (0, 1).
* `softmax_axis="key"`: each attention matrix is normalised over the axis it sums over, so every
  output is a convex combination of values; "flat" normalises over the whole matrix, as one
  re-implementation does.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

SOFTMAX_AXES = ("key", "flat")
LOCAL_CHANNEL_LAYERS = ("eca", "dense")
SPATIAL_ACTIVATIONS = (None, "sigmoid")


class _ChannelConv(nn.Module):
  """sigmoid(layer(GAP(x))) -> [B, c]: ECA's 1-D convolution over channels, or a dense layer."""

  kernel_size: int
  layer: str = "eca"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, c]
    if self.layer == "dense":
      return jax.nn.sigmoid(nn.Dense(x.shape[-1], use_bias=False, name="dense")(pooled))
    y = nn.Conv(1, (self.kernel_size,), padding=[((self.kernel_size - 1) // 2,) * 2],
                use_bias=False, name="conv")(pooled[:, :, None])  # channels as a sequence
    return jax.nn.sigmoid(y[:, :, 0])


def _softmax(logits: Array, axis: int, mode: str) -> Array:
  """Softmax over `axis` ("key") or over the last two axes together ("flat")."""
  if mode == "flat":
    b = logits.shape[0]
    return jax.nn.softmax(logits.reshape(b, -1), axis=-1).reshape(logits.shape)
  return jax.nn.softmax(logits, axis=axis)


class GLAM(nn.Module):
  """Global-local attention (see the module docstring): [B, h, w, c] -> [B, h, w, c].

  Attributes:
    local_channel, local_spatial, global_channel, global_spatial: the four branches.
    kernel_size: the channel convolutions' kernel (odd).
    reduced_channels: c' of the spatial branches (None: max(1, c // 8)).
    dilations, spatial_kernel: the local spatial branch's dilated convolutions.
    local_channel_layer: "eca" or "dense".
    local_spatial_activation: None or "sigmoid".
    softmax_axis: "key" or "flat".
    dtype: computation dtype of the convolutions (attention maths is float32).
  """

  local_channel: bool = True
  local_spatial: bool = True
  global_channel: bool = True
  global_spatial: bool = True
  kernel_size: int = 3
  reduced_channels: int | None = None
  dilations: tuple[int, ...] = (1, 3, 5)
  spatial_kernel: int = 3
  local_channel_layer: str = "eca"
  local_spatial_activation: str | None = None
  softmax_axis: str = "key"
  dtype: Any = jnp.float32

  def _check(self, x: Array) -> None:
    if x.ndim != 4:
      raise ValueError(f"GLAM takes a feature map [batch, height, width, channels], got shape "
                       f"{x.shape}.")
    self.check_settings()

  def check_settings(self) -> None:
    """Raises ValueError naming the first invalid setting (called before the first use, and by
    `jaxdml.models.necks.neck_from_name` when a config names this module)."""
    for name in ("local_channel", "local_spatial", "global_channel", "global_spatial"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
    ints = {"kernel_size": self.kernel_size, "spatial_kernel": self.spatial_kernel,
            "reduced_channels": self.reduced_channels or 1}
    ints.update({f"dilations[{i}]": d for i, d in enumerate(self.dilations)})
    for name, value in ints.items():
      if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    for name in ("kernel_size", "spatial_kernel"):  # odd: the map keeps its size
      if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
        raise ValueError(f"{name} must be odd and positive, got {getattr(self, name)}.")
    if self.softmax_axis not in SOFTMAX_AXES:
      raise ValueError(f"softmax_axis must be one of {SOFTMAX_AXES}, got {self.softmax_axis!r}.")
    if self.local_channel_layer not in LOCAL_CHANNEL_LAYERS:
      raise ValueError(f"local_channel_layer must be one of {LOCAL_CHANNEL_LAYERS}, got "
                       f"{self.local_channel_layer!r}.")
    if self.local_spatial_activation not in SPATIAL_ACTIVATIONS:
      raise ValueError(f"local_spatial_activation must be one of {SPATIAL_ACTIVATIONS}, got "
                       f"{self.local_spatial_activation!r}.")
    if not self.dilations or any(d < 1 for d in self.dilations):
      raise ValueError(f"dilations must be positive, got {self.dilations}.")
    if self.reduced_channels is not None and self.reduced_channels < 1:
      raise ValueError(f"reduced_channels must be >= 1 or None, got {self.reduced_channels}.")

  def _conv(self, features: int, kernel: int = 1, dilation: int = 1, name: str | None = None):
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), kernel_dilation=(dilation, dilation),
                   padding=[(pad, pad), (pad, pad)], dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, *, return_maps: bool = False):
    """[B, h, w, c] -> [B, h, w, c]; with `return_maps`, also the attention maps and the fusion
    weights by branch name."""
    self._check(x)
    b, h, w, c = x.shape
    cr = self.reduced_channels or max(1, c // 8)
    f = x.astype(jnp.float32)
    maps: dict[str, Array] = {}
    streams = [f]

    if self.local_channel or self.local_spatial:
      fl = f
      if self.local_channel:
        a = _ChannelConv(self.kernel_size, self.local_channel_layer, name="local_channel")(fl)
        maps["local_channel"] = a
        fl = fl * a[:, None, None, :] + fl
      if self.local_spatial:
        r = self._conv(cr, name="local_spatial_reduce")(fl)
        parts = [r] + [self._conv(cr, self.spatial_kernel, d, name=f"local_spatial_dilated{i}")(r)
                       for i, d in enumerate(self.dilations)]
        a = self._conv(1, name="local_spatial_out")(jnp.concatenate(parts, axis=-1))
        a = a.astype(jnp.float32)
        if self.local_spatial_activation == "sigmoid":
          a = jax.nn.sigmoid(a)
        maps["local_spatial"] = a[..., 0]
        fl = fl * a + fl
      streams.append(fl)

    if self.global_channel or self.global_spatial:
      fg = f
      if self.global_channel:
        q = _ChannelConv(self.kernel_size, name="global_channel_query")(fg)  # [B, c]
        k = _ChannelConv(self.kernel_size, name="global_channel_key")(fg)
        # A[i, j] = k_i q_j; output channel j mixes input channels i: normalise over i
        attn = _softmax(k[:, :, None] * q[:, None, :], axis=1, mode=self.softmax_axis)
        maps["global_channel"] = attn
        v = fg.reshape(b, h * w, c)
        fg = fg * jnp.einsum("bni,bij->bnj", v, attn).reshape(b, h, w, c)
      if self.global_spatial:
        qs = self._conv(cr, name="global_spatial_query")(fg).reshape(b, h * w, cr)
        ks = self._conv(cr, name="global_spatial_key")(fg).reshape(b, h * w, cr)
        vs = self._conv(cr, name="global_spatial_value")(fg).reshape(b, h * w, cr)
        # A[m, n] = K_m . Q_n; output position n mixes positions m: normalise over m
        logits = jnp.einsum("bmc,bnc->bmn", ks.astype(jnp.float32), qs.astype(jnp.float32))
        attn = _softmax(logits, axis=1, mode=self.softmax_axis)
        maps["global_spatial"] = attn
        g = jnp.einsum("bmc,bmn->bnc", vs.astype(jnp.float32), attn).reshape(b, h, w, cr)
        g = self._conv(c, name="global_spatial_out")(g).astype(jnp.float32)
        fg = fg * g + fg
      streams.append(fg)

    if len(streams) == 1:
      out = f
    else:
      logits = self.param("fusion", nn.initializers.zeros, (len(streams),), jnp.float32)
      weights = jax.nn.softmax(logits)
      maps["fusion"] = weights
      out = sum(wi * s for wi, s in zip(weights, streams, strict=True))
    out = out.astype(x.dtype)
    return (out, maps) if return_maps else out
