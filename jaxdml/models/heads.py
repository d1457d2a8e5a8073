"""Pooling, embedding heads and a backbone + pooling + head embedding model.

The defaults follow the Proxy-Anchor (Kim et al., CVPR 2020) and multi-similarity (Wang et al.,
CVPR 2019) recipes: a linear layer from the pooled features to a 512-d embedding, no layer norm,
L2-normalised output, the linear layer initialised kaiming-normal with fan_out (std
sqrt(2 / embedding_dim)) and a zero bias, as `init.kaiming_normal_(weight, mode='fan_out')`
followed by `init.constant_(bias, 0)` in the Proxy-Anchor code. That code pools with
"avg+max" (global average plus global max); the multi-similarity code uses "avg".
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdml.geometry import poincare

Array = jax.Array

POOLING_METHODS = ("avg", "max", "avg+max", "gem", "cls", "tokens_avg")

# kaiming-normal, fan_out mode, ReLU gain sqrt(2): std = sqrt(2 / out_features), untruncated.
embedding_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def global_max(x: Array) -> Array:
  """Max over the middle axes of [B, H, W, C] or [B, T, D] -> [B, C].

  A `lax.reduce_window` over the whole map, whose gradient goes to the first maximum (as
  PyTorch's max pooling), rather than `jnp.max`, whose gradient is the mask `x == max(x)`:
  compiled without XLA's optimisations (--xla_backend_optimization_level=0, as the tests
  compile) that mask can compare two differently rounded recomputations of a fused input (an
  affine map then ReLU) and be empty, giving a 0 / 0 gradient.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return jnp.max(x, axis=tuple(range(1, x.ndim - 1)))
  window = (1, *x.shape[1:-1], 1)
  out = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
  return out.reshape(x.shape[0], x.shape[-1])


def pool(x: Array, method: str, *, p: float | Array = 3.0, eps: float = 1e-6) -> Array:
  """Global pooling of a feature map or a token sequence.

  Args:
    x: [B, H, W, C] feature map (pooled over H, W) or [B, T, D] tokens (pooled over T).
    method: "avg", "max", "avg+max" (sum of the average and the maximum), "gem" (generalised
      mean, Radenovic et al., TPAMI 2018: mean(max(x, eps) ** p) ** (1 / p)), "cls" (token 0 of
      [B, T, D]) or "tokens_avg" (mean of tokens 1..T-1 of [B, T, D], i.e. without the class
      token).
    p: the GeM exponent (scalar or shape [1]); only for "gem".
    eps: GeM's lower clamp of the input; only for "gem".

  Returns:
    [B, C] (in x's dtype; GeM is computed in float32 and cast back).
  """
  if method not in POOLING_METHODS:
    raise ValueError(f"pooling method must be one of {POOLING_METHODS}, got {method!r}.")
  if method in ("cls", "tokens_avg"):
    if x.ndim != 3:
      raise ValueError(f"pooling {method!r} needs tokens [B, T, D], got shape {x.shape}.")
    if method == "cls":
      return x[:, 0]
    if x.shape[1] < 2:
      raise ValueError(f"'tokens_avg' needs at least 2 tokens, got shape {x.shape}.")
    return jnp.mean(x[:, 1:], axis=1)
  if x.ndim == 4:
    axes = (1, 2)
  elif x.ndim == 3:
    axes = (1,)
  else:
    raise ValueError(f"expected [B, H, W, C] or [B, T, D], got shape {x.shape}.")
  if method == "avg":
    return jnp.mean(x, axis=axes)
  if method == "max":
    return global_max(x)
  if method == "avg+max":
    return jnp.mean(x, axis=axes) + global_max(x)
  p = jnp.reshape(jnp.asarray(p, jnp.float32), ())
  xf = jnp.maximum(x.astype(jnp.float32), eps)
  return (jnp.mean(xf ** p, axis=axes) ** (1.0 / p)).astype(x.dtype)


class GeM(nn.Module):
  """Generalised-mean pooling with a learnable exponent (Radenovic et al., TPAMI 2018).

  `mean(max(x, eps) ** p) ** (1 / p)` over H, W (or T): p = 1 is average pooling, p -> inf max
  pooling. The parameter is `p`, shape [1].

  Attributes:
    p_init: initial exponent.
    eps: lower clamp of the input (keeps x ** p and its gradient finite).
  """

  p_init: float = 3.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, H, W, C] or [B, T, D] -> [B, C]."""
    p = self.param("p", nn.initializers.constant(self.p_init), (1,), jnp.float32)
    return pool(x, "gem", p=p, eps=self.eps)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """x / max(||x||, sqrt(eps)) along the last axis."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


HEAD_INITS = ("kaiming_fan_out", "torch_linear", "orthogonal")


def _torch_linear_init(fan_in: int):
  """PyTorch's `nn.Linear` default: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class EmbeddingHead(nn.Module):
  """Pooled features -> embedding: [layer norm] -> [linear] -> [layer norm] -> L2 norm or ball.

  The Euclidean head of Proxy-Anchor / multi-similarity is the default (linear, kaiming-normal
  fan_out, L2-normalised). The hyperbolic head of Hyp-ViT and HIER is
  `EmbeddingHead(pre_layer_norm=True, linear_init="orthogonal", normalize=False, poincare_c=0.1)`:
  LayerNorm without affine parameters, a linear layer with orthogonal kernel and zero bias, then
  `jaxdml.geometry.poincare.to_poincare` (clip at `clip_r`, expmap0, projection, Riemannian
  gradient), so the embeddings are points of the Poincare ball of curvature -c.

  Attributes:
    embedding_dim: output size of the linear layer ("embedding"); None: no linear layer.
    layer_norm: apply a LayerNorm (eps 1e-5, as PyTorch's) after the linear layer.
    normalize: L2-normalise the output (not with `poincare_c`).
    dtype: computation dtype of the linear layer; the output is float32.
    pre_layer_norm: a LayerNorm without scale and bias before the linear layer (HIER's head).
    linear_init: the linear layer's initialisation: "kaiming_fan_out" (kernel
      N(0, 2 / embedding_dim), bias 0; Proxy-Anchor), "torch_linear" (PyTorch's default,
      U(+-1/sqrt(fan_in)) for kernel and bias) or "orthogonal" (orthogonal kernel, bias 0;
      Hyp-ViT and HIER).
    poincare_c: map the output into the Poincare ball of this curvature parameter (None:
      Euclidean output).
    clip_r: feature-clipping radius before the exponential map (2.3, as Hyp-ViT and HIER).
  """

  embedding_dim: int | None = 512
  layer_norm: bool = False
  normalize: bool = True
  dtype: Any = jnp.float32
  pre_layer_norm: bool = False
  linear_init: str = "kaiming_fan_out"
  poincare_c: float | None = None
  clip_r: float | None = 2.3

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, D] -> [B, embedding_dim or D] float32."""
    if self.linear_init not in HEAD_INITS:
      raise ValueError(f"init must be one of {HEAD_INITS}, got {self.linear_init!r}.")
    if self.poincare_c is not None and self.normalize:
      raise ValueError("a Poincare-ball head (poincare_c) cannot also L2-normalise; set "
                       "normalize=False.")
    if self.pre_layer_norm:
      x = nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, dtype=jnp.float32,
                       name="pre_layer_norm")(x.astype(jnp.float32))
    if self.embedding_dim is not None:
      if self.linear_init == "kaiming_fan_out":
        kernel_init, bias_init = embedding_init, nn.initializers.zeros
      elif self.linear_init == "orthogonal":
        kernel_init, bias_init = nn.initializers.orthogonal(), nn.initializers.zeros
      else:
        kernel_init = bias_init = _torch_linear_init(x.shape[-1])
      x = nn.Dense(self.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=kernel_init, bias_init=bias_init, name="embedding")(x)
    x = x.astype(jnp.float32)
    if self.layer_norm:
      x = nn.LayerNorm(epsilon=1e-5, name="layer_norm")(x)
    if self.normalize:
      x = l2_normalize(x)
    if self.poincare_c is not None:
      x = poincare.to_poincare(x, c=self.poincare_c, clip_r=self.clip_r, riemannian=True)
    return x


class EmbeddingModel(nn.Module):
  """backbone [-> neck] -> pooling -> EmbeddingHead.

  `model.apply(variables, x, train=...)` gives embeddings; `method="features"` gives the
  backbone's feature map and `method="embed_features"` embeds a feature map, so that
  `embed_features(features(x)) == __call__(x)` and features can be transformed in between (e.g.
  mixed). With pooling "gem" the learnable exponent is `params["gem"]["p"]`.

  Attributes:
    backbone: a module called as `backbone(x, train=train)` returning [B, H, W, C] (or tokens
      [B, T, D] for "cls" / "tokens_avg"), e.g. a `ResNet`.
    pooling: one of `POOLING_METHODS`; "avg" (multi-similarity), "avg+max" (Proxy-Anchor).
    embedding_dim, layer_norm, normalize: see `EmbeddingHead` (512, False, True).
    gem_p: initial GeM exponent (pooling "gem").
    dtype: computation dtype of the head's linear layer.
    pre_layer_norm, head_init, poincare_c, clip_r: `EmbeddingHead`'s `pre_layer_norm`,
      `linear_init`, `poincare_c` and `clip_r` (the hyperbolic head of HIER / Hyp-ViT).
    neck: a module applied to the backbone's feature map inside `features` (same shape out,
      e.g. `GLAM`; `jaxdml.models.necks`), or None. Its parameters are `params["neck"]`.
  """

  backbone: nn.Module
  pooling: str = "avg"
  embedding_dim: int | None = 512
  layer_norm: bool = False
  normalize: bool = True
  gem_p: float = 3.0
  dtype: Any = jnp.float32
  pre_layer_norm: bool = False
  head_init: str = "kaiming_fan_out"
  poincare_c: float | None = None
  clip_r: float | None = 2.3
  neck: nn.Module | None = None

  def setup(self):
    if self.pooling not in POOLING_METHODS:
      raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}.")
    if self.pooling == "gem":
      self.gem = GeM(p_init=self.gem_p)
    self.head = EmbeddingHead(embedding_dim=self.embedding_dim, layer_norm=self.layer_norm,
                              normalize=self.normalize, dtype=self.dtype,
                              pre_layer_norm=self.pre_layer_norm, linear_init=self.head_init,
                              poincare_c=self.poincare_c, clip_r=self.clip_r)

  def features(self, x: Array, *, train: bool) -> Array:
    """Backbone feature map of inputs (after the neck, if any), e.g. [B, H, W, 3] ->
    [B, h, w, C]."""
    features = self.backbone(x, train=train)
    return features if self.neck is None else self.neck(features)

  def embed_features(self, features: Array, *, train: bool) -> Array:
    """Pooling and head: [B, h, w, C] (or [B, T, D]) -> [B, d] float32.

    `train` is accepted for symmetry with `features`; the head behaves the same either way.
    """
    del train
    if self.pooling == "gem":
      pooled = self.gem(features)
    else:
      pooled = pool(features, self.pooling)
    return self.head(pooled)

  def __call__(self, x: Array, *, train: bool) -> Array:
    """Embeddings of inputs: [B, H, W, 3] -> [B, d] float32."""
    return self.embed_features(self.features(x, train=train), train=train)
