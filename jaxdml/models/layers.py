"""Layers shared by the backbones."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class BatchNorm(nn.Module):
  """Batch norm over the last axis with PyTorch's semantics (see the module docstring).

  Statistics are computed in float32 whatever `dtype`; the affine map is applied in `dtype`.

  Attributes:
    frozen: always use (and never update) the running statistics; no gradient to scale/bias.
    momentum: running average decay, Flax convention (new = momentum * old + (1 - m) * batch).
    epsilon: added to the variance.
    dtype: the output dtype.
    axis_name: a mapped axis over which batch statistics are averaged (synchronised batch norm).
    scale_init: initialiser of the scale (ones; zeros for the last norm of a residual branch).
  """

  frozen: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[..., C] -> [..., C] in `dtype`."""
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if self.frozen:
      scale, bias = jax.lax.stop_gradient(scale), jax.lax.stop_gradient(bias)
    if train and not self.frozen:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      n = x.size // c
      mean = jnp.mean(xf, axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
        n = n * jax.lax.psum(1, self.axis_name)
      var = jnp.mean(jnp.square(xf - mean), axes)  # two-pass: no cancellation
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        unbiased = var * (n / jnp.maximum(n - 1, 1))  # PyTorch keeps the unbiased variance
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    return x.astype(self.dtype) * mul.astype(self.dtype) + add.astype(self.dtype)
