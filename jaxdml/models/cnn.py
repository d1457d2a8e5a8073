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

from jaxdml.models.heads import EmbeddingHead, GeM, pool
from jaxdml.models.layers import BatchNorm

#: the pooling methods of `ResCNN` (a feature map, no tokens)
CNN_POOLING = ("avg+max", "avg", "max", "gem")

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



def grey_head(model, linear_init: str) -> EmbeddingHead:
  """The embedding head of the grey-image CNNs from their attributes: HIER's Poincare-ball head
  (layer norm, orthogonal linear, `to_poincare`) with `hyperbolic`, else a linear layer
  initialised by `linear_init` and L2 normalisation if `normalize`."""
  if model.hyperbolic:
    return EmbeddingHead(model.embedding_dim, normalize=False, pre_layer_norm=True,
                         linear_init="orthogonal", poincare_c=model.poincare_c,
                         clip_r=model.clip_r)
  return EmbeddingHead(model.embedding_dim, normalize=model.normalize, linear_init=linear_init)

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
    self.head = grey_head(self, "torch_linear")

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


# torchvision's initialisation of convolutions (kaiming-normal, fan_out, ReLU gain), as ResNet's.
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNoBias(nn.Module):
  """k x k stride-1 'same' convolution without bias (a batch norm follows), kaiming fan_out init.

  A 1 x 1 kernel is a plain matrix product over the channels (with impl "im2col").

  Attributes:
    features: output channels.
    k: kernel size (odd).
    impl: "im2col" or "xla" (see `conv2d_same`).
  """

  features: int
  k: int = 3
  impl: str = "im2col"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", _kaiming_fan_out, (self.k, self.k, x.shape[-1], self.features))
    return conv2d_same(x, kernel, impl=self.impl)


def avg_pool_2x2(x: Array) -> Array:
  """2 x 2 average pooling with stride 2 of [B, H, W, C] (H, W even), as a reshape and a mean."""
  b, h, w, c = x.shape
  return jnp.mean(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def space_to_depth_2x2(x: Array) -> Array:
  """[B, H, W, C] -> [B, H / 2, W / 2, 4 C]: each 2 x 2 patch becomes one pixel's channels."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def max_pool_2x2(x: Array) -> Array:
  """2 x 2 max pooling with stride 2 of [B, H, W, C] (H, W even).

  A `lax.reduce_window` (its gradient, a select-and-scatter, goes to the first maximum of each
  window, as PyTorch's), not a reshape and a `jnp.max`: the gradient of a reduction max is a
  mask `x == max(x)`, which compiled without XLA's optimisations (--xla_backend_optimization_
  level=0) can compare two differently rounded recomputations of the same fused input and come
  out empty, giving a 0 / 0 gradient (tests/models/test_rescnn.py).
  """
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class ResBlock(nn.Module):
  """A basic residual block: conv3x3 - BN - ReLU - conv3x3 - BN, plus shortcut, then ReLU.

  With `downsample=True` the block halves the resolution: both the branch and the shortcut start
  with a 2 x 2 average pool, so the 3 x 3 convolutions run at the lower resolution (a cheap
  stand-in for a stride-2 convolution, in the spirit of ResNet-D's average-pool shortcut). Where
  the channel count changes the shortcut is a 1 x 1 projection (a matrix product) and a BN.

  Attributes:
    features: output channels.
    downsample: halve H and W.
    conv_impl: "im2col" or "xla".
  """

  features: int
  downsample: bool = False
  conv_impl: str = "im2col"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, C] -> [B, H', W', features] (H' = H / 2 with `downsample`)."""
    if self.downsample:
      x = avg_pool_2x2(x)
    y = ConvNoBias(self.features, 3, self.conv_impl, name="conv1")(x)
    y = nn.relu(BatchNorm(name="bn1")(y, train=train))
    y = ConvNoBias(self.features, 3, self.conv_impl, name="conv2")(y)
    y = BatchNorm(name="bn2")(y, train=train)
    if x.shape[-1] != self.features:
      x = ConvNoBias(self.features, 1, self.conv_impl, name="proj")(x)
      x = BatchNorm(name="proj_bn")(x, train=train)
    return nn.relu(y + x)


class ResTrunk(nn.Module):
  """The convolutional part of `ResCNN`: space-to-depth stem and residual stages (see there).

  Attributes:
    widths: channels of each stage (the stem has widths[0]).
    blocks: residual blocks of each stage.
    conv_impl: "im2col" or "xla".
  """

  widths: tuple[int, ...] = (16, 32, 64)
  blocks: tuple[int, ...] = (1, 1, 1)
  conv_impl: str = "im2col"

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """[B, H, W, 1] -> [B, H / f, W / f, widths[-1]] with f = 2 ** (len(widths) + 1)."""
    x = space_to_depth_2x2(x)
    x = ConvNoBias(self.widths[0], 3, self.conv_impl, name="stem")(x)
    x = nn.relu(BatchNorm(name="stem_bn")(x, train=train))
    x = max_pool_2x2(x)
    for i, (w, n) in enumerate(zip(self.widths, self.blocks, strict=True)):
      for j in range(n):
        x = ResBlock(w, downsample=i > 0 and j == 0, conv_impl=self.conv_impl,
                     name=f"stage{i + 1}_{j}")(x, train=train)
    return x


class ResCNN(nn.Module):
  """A small residual CNN for grey images, with a pooled (nonlinear) embedding head.

  Layout (`ResTrunk`): the stem is a 2 x 2 space-to-depth ([H, W, 1] -> [H/2, W/2, 4], a
  reshape), conv3x3(widths[0]) - BN - ReLU and a 2 x 2 max pool, so the first stage runs at a
  quarter of the input resolution (the space-to-depth and 3 x 3 convolution together see a 6 x 6
  window with stride 2, like a strided stem, but cost a 3 x 3 convolution at H/2). Then one stage
  per entry of `widths` with `blocks[i]` basic `ResBlock`s; every stage after the first starts
  with a downsampling block (2 x 2 average pool, then the 3 x 3 convolutions; a 1 x 1 projection
  shortcut where the width changes). The default (16, 32, 64) x (1, 1, 1) maps 32 x 32 images to
  a [2, 2, 64] feature map and 64 x 64 images to [4, 4, 64]: H and W must be multiples of
  `downsampling` (2 ** (len(widths) + 1)).

  The head pools the last map (by default; see `pooling`) by global average plus global max,
  summed as in Proxy-Anchor's ResNet recipe (`pool(..., "avg+max")`; summing keeps the
  embedding layer's input at C), then
  applies an `EmbeddingHead`: the ResNet recipes' linear layer (kaiming-normal fan_out, zero
  bias) and L2 norm, or with `hyperbolic=True` the Poincare-ball head of HIER / Hyp-ViT (as in
  `SmallCNN`). Because max pooling is not linear, embedding a mixture of two feature maps is not
  the mixture of their embeddings (even before normalisation), unlike `SmallCNN`'s
  flatten-and-linear head: Metrix's feature mixup and its embedding mixup differ here.

  Batch norm is `jaxdml.models.layers.BatchNorm` (PyTorch semantics, as in `ResNet`): with
  `train=True` it normalises by batch statistics and updates the running averages in the
  "batch_stats" collection (apply with `mutable=["batch_stats"]`, as the training step does for
  `features`, `embed_features` and `__call__`); with `train=False` it uses the running averages.
  The head has no batch norm, so `embed_features` never changes "batch_stats".

  Speed, the design constraint: one jitted training step (forward in training mode, backward,
  Adam update) at batch 128 of 32 x 32 images, median of 20 after warm-up on a shared 2-core CPU
  (jax 0.10.2), `python -c "from jaxdml.models.cnn import ResCNN, train_step_seconds as t;
  print(t(ResCNN(), repeats=20))"`: the default widths (16, 32, 64), blocks (1, 1, 1) took
  22-31 ms over three runs (36-37 ms with conv_impl="xla"), the default at 64 x 64 97-138 ms.
  With the max poolings written as a reshape and `jnp.max` instead of `lax.reduce_window` the
  32 x 32 step took 48-69 ms; wider or deeper networks cost about in proportion (widths
  (32, 64, 128) took about twice the default's time, blocks (2, 2, 2) about twice). The
  resolution of the first stage dominates: without the stem's max pool (first stage at H/2)
  the step took about three times as long. `SmallCNN` (full-resolution convolutions) took
  about 1.4 s on the same batch.

  Attributes:
    embedding_dim: output size.
    normalize: L2-normalise the output (Euclidean head).
    conv_impl: "im2col" (fast on CPU) or "xla" (see `conv2d_same`); the same function.
    hyperbolic: use the Poincare-ball head.
    poincare_c, clip_r: the ball's curvature parameter and the feature-clipping radius.
    widths: channels of each stage (the stem has widths[0]).
    blocks: residual blocks of each stage (>= 1 each).
    pooling: "avg+max" (the default above), "avg", "max" or "gem" (a learnable exponent,
      `params["gem"]["p"]`, initialised at `gem_p`: GLAM's and cirtorch's recipes).
    gem_p: GeM's initial exponent.
    neck: a module applied to the last feature map inside `features` (same shape out, e.g.
      `GLAM`), or None; its parameters are `params["neck"]`.
  """

  embedding_dim: int = 128
  normalize: bool = True
  conv_impl: str = "im2col"
  hyperbolic: bool = False
  poincare_c: float = 0.1
  clip_r: float = 2.3
  widths: tuple[int, ...] = (16, 32, 64)
  blocks: tuple[int, ...] = (1, 1, 1)
  pooling: str = "avg+max"
  gem_p: float = 3.0
  neck: nn.Module | None = None

  def setup(self):
    if self.pooling not in CNN_POOLING:
      raise ValueError(f"pooling must be one of {CNN_POOLING}, got {self.pooling!r}.")
    if len(self.widths) < 1 or len(self.widths) != len(self.blocks):
      raise ValueError(f"widths and blocks must be non-empty and of the same length, got "
                       f"widths={self.widths} and blocks={self.blocks}.")
    if any(w < 1 for w in self.widths) or any(n < 1 for n in self.blocks):
      raise ValueError(f"widths and blocks must be >= 1, got widths={self.widths} and "
                       f"blocks={self.blocks}.")
    self.trunk = ResTrunk(tuple(self.widths), tuple(self.blocks), self.conv_impl)
    if self.pooling == "gem":
      self.gem = GeM(p_init=self.gem_p)
    self.head = grey_head(self, "kaiming_fan_out")

  @property
  def downsampling(self) -> int:
    """The factor from the input resolution to the last feature map's."""
    return 2 ** (len(self.widths) + 1)

  def features(self, x: Array, *, train: bool = False) -> Array:
    """[B, H, W(, 1)] images -> [B, H / f, W / f, widths[-1]], f = `downsampling` (after the
    neck, if any)."""
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError(f"expected grey images [B, H, W] or [B, H, W, 1], got shape {x.shape}.")
    f = self.downsampling
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"image height and width must be multiples of {f} (2 ** (len(widths) + "
                       f"1)), got {x.shape[1]} x {x.shape[2]}.")
    features = self.trunk(x.astype(jnp.float32), train=train)
    return features if self.neck is None else self.neck(features)

  def embed_features(self, features: Array, *, train: bool = False) -> Array:
    """[B, h, w, C] feature map -> [B, embedding_dim] float32 (pooling, head)."""
    del train
    pooled = self.gem(features) if self.pooling == "gem" else pool(features, self.pooling)
    return self.head(pooled)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    return self.embed_features(self.features(x, train=train), train=train)


def train_step_seconds(model: nn.Module, *, batch_size: int = 128, image_size: int = 32,
                       repeats: int = 10, seed: int = 0) -> float:
  """Median wall time of one jitted training step of a grey-image embedding model.

  The step is a forward pass in training mode (batch statistics updated when the model has
  any), the backward pass and an Adam update, on uniform random [batch_size, image_size,
  image_size] images; the loss is a stand-in for a metric-learning loss (mean logsumexp of the
  batch's scaled similarities). Two calls compile and warm up before the `repeats` timed ones.

  Args:
    model: a module called as `model.apply(variables, images, train=...)` (`SmallCNN`,
      `ResCNN`).
    batch_size, image_size: the input batch [batch_size, image_size, image_size].
    repeats: timed steps (the median is returned).
    seed: PRNG seed of the images and the initialisation.

  Returns:
    Seconds per step.
  """
  import statistics  # noqa: PLC0415
  import time  # noqa: PLC0415

  import optax  # noqa: PLC0415

  for name, v in (("batch_size", batch_size), ("image_size", image_size), ("repeats", repeats)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}.")
  k_x, k_init = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.uniform(k_x, (batch_size, image_size, image_size))
  variables = dict(model.init(k_init, x[:2], train=False))
  params = variables.pop("params")
  names = list(variables)
  tx = optax.adam(1e-3)

  def loss_fn(params, state):
    if names:
      z, state = model.apply({"params": params, **state}, x, train=True, mutable=names)
    else:
      z = model.apply({"params": params}, x, train=True)
    return jnp.mean(jax.nn.logsumexp(10.0 * (z @ z.T), axis=1)), dict(state)

  @jax.jit
  def step(params, state, opt_state):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  carry = (params, variables, tx.init(params))
  for _ in range(2):
    *carry, loss = step(*carry)
    jax.block_until_ready(loss)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    *carry, loss = step(*carry)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return statistics.median(times)
