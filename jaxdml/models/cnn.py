"""The small CNN of the digit-pairs benchmark, with a convolution fast on CPU.

Measured on a 2-core CPU (jax 0.10.2): inside the jitted `lax.scan` epoch of `jaxdml.train`, a
step with `lax.conv_general_dilated` took about 550 ms, with the im2col form about 15 ms.

XLA's CPU convolution is slow for tiny images and channel counts (the step of this network spent
most of its time there). `conv2d_same(..., impl="im2col")` writes a stride-1 "same" convolution
as one matrix product over the k*k shifted copies of the input (im2col), which XLA's CPU backend
runs through its fast GEMM path, forward and backward. It computes exactly the same function as
`jax.lax.conv_general_dilated`; `impl="xla"` uses the latter (the better choice on GPU/TPU).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.models.heads import EmbeddingHead

Array = jax.Array


def conv2d_same(x: Array, kernel: Array, bias: Array | None = None, *,
                impl: str = "im2col") -> Array:
  """Stride-1 convolution with 'same' zero padding.

  Args:
    x: [B, H, W, C] NHWC input.
    kernel: [k, k, C, F] HWIO kernel (odd k).
    bias: optional [F].
    impl: "im2col" (one GEMM over shifted copies; fast on CPU) or "xla" (lax.conv).
  """
  k = kernel.shape[0]
  if kernel.shape[0] != kernel.shape[1] or k % 2 != 1:
    raise ValueError(f"kernel must be [k, k, C, F] with odd k, got {kernel.shape}.")
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"input has {x.shape[-1]} channels, kernel expects {kernel.shape[2]}.")
  if impl == "xla":
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  elif impl == "im2col":
    p = k // 2
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)],
                           axis=-1)
    y = (cols.reshape(b * h * w, k * k * c) @ kernel.reshape(k * k * c, -1)).reshape(b, h, w, -1)
  else:
    raise ValueError(f"impl must be 'im2col' or 'xla', got {impl!r}.")
  return y if bias is None else y + bias


class Conv3x3(nn.Module):
  """3x3 'same' convolution with PyTorch's default (kaiming-uniform, a=sqrt(5)) initialisation."""

  features: int
  impl: str = "im2col"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = 9 * x.shape[-1]
    bound = 1.0 / jnp.sqrt(fan_in)
    init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)
    kernel = self.param("kernel", init, (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", init, (self.features,))
    return conv2d_same(x, kernel, bias, impl=self.impl)


class SmallCNN(nn.Module):
  """conv3x3(32) - ReLU - conv3x3(64) - ReLU - maxpool 2x2 - linear(embedding_dim) [- L2 norm].

  The network of the digit-pairs benchmark (shared protocol with the PyTorch reference). Inputs
  are [B, H, W] or [B, H, W, 1] images; outputs [B, embedding_dim]. `train` is accepted for the
  common model signature `model.apply(variables, x, train=...)` and changes nothing here (no
  batch norm, no dropout).

  Like `EmbeddingModel` it splits at its last feature map: `method="features"` gives the pooled
  [B, H/2, W/2, 64] map and `method="embed_features"` flattens and embeds one, so features can be
  mixed in between (Metrix's feature mixup). The head is an `EmbeddingHead` with PyTorch's linear
  initialisation; `hyperbolic=True` swaps it for the Poincare-ball head of HIER / Hyp-ViT (layer
  norm without affine, orthogonal linear, `to_poincare` with curvature `poincare_c`).

  Attributes:
    embedding_dim: output size.
    normalize: L2-normalise the output (Euclidean head).
    conv_impl: "im2col" (fast on CPU) or "xla" (see `conv2d_same`).
    hyperbolic: use the Poincare-ball head.
    poincare_c, clip_r: the ball's curvature parameter and the feature-clipping radius.
  """

  embedding_dim: int = 128
  normalize: bool = True
  conv_impl: str = "im2col"
  hyperbolic: bool = False
  poincare_c: float = 0.1
  clip_r: float = 2.3

  def setup(self):
    self.conv1 = Conv3x3(32, self.conv_impl)
    self.conv2 = Conv3x3(64, self.conv_impl)
    if self.hyperbolic:
      self.head = EmbeddingHead(self.embedding_dim, normalize=False, pre_layer_norm=True,
                                linear_init="orthogonal", poincare_c=self.poincare_c,
                                clip_r=self.clip_r)
    else:
      self.head = EmbeddingHead(self.embedding_dim, normalize=self.normalize,
                                linear_init="torch_linear")

  def features(self, x: Array, *, train: bool = False) -> Array:
    """[B, H, W(, 1)] images -> [B, H/2, W/2, 64] feature map."""
    del train
    if x.ndim == 3:
      x = x[..., None]
    x = nn.relu(self.conv1(x))
    x = nn.relu(self.conv2(x))
    return nn.max_pool(x, (2, 2), strides=(2, 2))

  def embed_features(self, features: Array, *, train: bool = False) -> Array:
    """[B, h, w, 64] feature map -> [B, embedding_dim] float32."""
    del train
    return self.head(features.reshape(features.shape[0], -1))

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    return self.embed_features(self.features(x, train=train), train=train)
