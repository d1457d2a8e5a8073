"""Vision Transformer (ViT, Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021) backbones.

The network is timm's `VisionTransformer` with a class token and absolute position embeddings
that cover the class token: patch embedding (a p x p convolution with stride p), [CLS] + patches
+ position embedding, `depth` pre-norm blocks

    x = x + proj(attention(norm1(x)))      (fused qkv projection, softmax(q k^T / sqrt(d_head)))
    x = x + fc2(gelu(fc1(norm2(x))))       (hidden width mlp_ratio * embed_dim)

and a final LayerNorm. As in timm: LayerNorm epsilon 1e-6, exact (erf) GELU, qkv with bias.
ViT-S/16 (`vit_small_patch16`, timm `vit_small_patch16_224`) and DeiT-S (`deit_small_patch16`,
timm `deit_small_patch16_224`, Facebook's DeiT checkpoints) share one architecture: 384 wide,
12 blocks of 6 heads, MLP 1536, 16x16 patches, 224x224 images (a 14x14 grid, 197 tokens); they
differ only in their weights. The backbone returns all tokens after the final LayerNorm (no
classifier head); pooling ("cls" or "avg") is left to the caller.

Position embeddings at other image sizes: `pos_embed` holds one entry per patch of the grid of
`img_size` (plus the class token's). When an image gives another grid, the patch part of the
embedding is resampled to it on the fly, and `vit_variables_from_timm` / `_from_hf` resample a
checkpoint's embedding to the module's `img_size` once, both as timm does
(`resample_abs_pos_embed`): the class-token entry is kept, the [gh, gw, D] grid is resized with
bicubic interpolation (Keys kernel a = -0.5, half-pixel centres, weights renormalised at the
borders, antialiased when shrinking; equal, up to float rounding, to PyTorch's
`interpolate(mode="bicubic", antialias=True, align_corners=False)`). Image sides must be
multiples of the patch size.

Input convention of the weights: RGB in [0, 1], normalised per channel; mean / std 0.5 / 0.5
for timm's "augreg" `vit_small_patch16_224` weights, ImageNet (0.485, 0.456, 0.406) /
(0.229, 0.224, 0.225) for DeiT and DINO (see the checkpoint's configuration).
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

from jaxdml.models.weights import load_state_dict, take

Array = jax.Array


def resample_pos_embed(pos_embed: Array, new_grid: tuple[int, int],
                       old_grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1
                       ) -> Array:
  """Resizes absolute position embeddings to another patch grid (timm's resampling).

  Args:
    pos_embed: [1, num_prefix_tokens + gh * gw, D], prefix (class) tokens first.
    new_grid: (new gh, new gw).
    old_grid: (gh, gw) of `pos_embed`; square when None.
    num_prefix_tokens: leading entries copied unchanged.

  Returns:
    [1, num_prefix_tokens + new_gh * new_gw, D] in the dtype of `pos_embed`; the grid part is
    resized bicubically (antialiased, half-pixel centres) in float32.
  """
  n = pos_embed.shape[1] - num_prefix_tokens
  if old_grid is None:
    side = math.isqrt(n)
    if side * side != n:
      raise ValueError(f"position embedding has {n} patch entries, not a square grid; "
                       "pass old_grid.")
    old_grid = (side, side)
  if old_grid[0] * old_grid[1] != n:
    raise ValueError(f"old_grid {old_grid} does not match the {n} patch entries.")
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  d = pos_embed.shape[-1]
  grid = grid.astype(jnp.float32).reshape(1, old_grid[0], old_grid[1], d)
  grid = jax.image.resize(grid, (1, new_grid[0], new_grid[1], d), method="cubic",
                          antialias=True)
  grid = grid.reshape(1, new_grid[0] * new_grid[1], d).astype(pos_embed.dtype)
  return jnp.concatenate([prefix, grid], axis=1)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


_dense_init = nn.initializers.truncated_normal(0.02)


def _dropout(module: nn.Module, x: Array, rate: float, train: bool) -> Array:
  """Inverted dropout with the "dropout" rng of `module` (identity unless training, rate > 0).

  The mask is drawn as a flat vector and reshaped: the same distribution as `nn.Dropout`, but
  XLA's CPU compiler builds random bits of rank-4 shapes (attention maps) slowly.
  """
  if not train or rate == 0.0:
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (x.size,))
  return jnp.where(keep.reshape(x.shape), x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm layout)."""

  dim: int
  num_heads: int
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """x [B, N, D] -> [B, N, D]."""
    b, n, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f"embed dim {d} is not divisible by {h} heads.")
    hd = d // h
    qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=_dense_init, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, h, hd), 2, 0)  # each [B, N, H, hd]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(hd ** -0.5, q.dtype), k)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    attn = _dropout(self, attn, self.attn_drop_rate, train)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, d)
    out = nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_dense_init,
                   name="proj")(out)
    return _dropout(self, out, self.proj_drop_rate, train)


class Mlp(nn.Module):
  """fc1 - exact GELU - dropout - fc2 - dropout."""

  hidden: int
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """x [..., D] -> [..., D]."""
    d = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_dense_init, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    x = _dropout(self, x, self.drop_rate, train)
    x = nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_dense_init,
                 name="fc2")(x)
    return _dropout(self, x, self.drop_rate, train)


class DropPath(nn.Module):
  """Stochastic depth: zeroes whole residual branches per example with probability `rate`."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """x [B, ...]; identity unless training with rate > 0 (needs the "dropout" rng)."""
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class Block(nn.Module):
  """Pre-norm transformer block (timm `Block` without layer scale)."""

  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """x [B, N, D] -> [B, N, D]."""
    ln = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32,
                                   name=name)
    y = Attention(self.dim, self.num_heads, self.qkv_bias, self.attn_drop_rate,
                  self.proj_drop_rate, self.dtype, name="attn")(ln("norm1")(x), train=train)
    x = x + DropPath(self.drop_path_rate)(y, train=train)
    y = Mlp(int(self.dim * self.mlp_ratio), self.proj_drop_rate, self.dtype,
            name="mlp")(ln("norm2")(x), train=train)
    return x + DropPath(self.drop_path_rate)(y, train=train)


class VisionTransformer(nn.Module):
  """ViT backbone returning the token sequence after the final LayerNorm.

  Variables (`params` only, float32): `cls_token` [1, 1, D], `pos_embed` [1, 1 + gh * gw, D] for
  the grid of `img_size`, `patch_embed` {kernel [p, p, 3, D], bias}, `blocks_{i}` {norm1,
  attn {qkv, proj}, norm2, mlp {fc1, fc2}}, `norm`; the names of timm's state dict.

  Attributes:
    patch_size: side p of the square patches.
    embed_dim: token width D.
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_ratio: MLP hidden width / D.
    qkv_bias: bias in the qkv projection.
    img_size: image size (int or (H, W)) the position embeddings are made for; other sizes are
      served by resampling them (see the module docstring).
    pos_drop_rate: dropout after adding the position embeddings.
    proj_drop_rate: dropout after the attention projection and in the MLP.
    attn_drop_rate: dropout on attention weights.
    drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0 in the
      first (as timm). Dropout and drop path need the "dropout" rng when training.
    layer_norm_eps: LayerNorm epsilon (1e-6 in timm; Hugging Face configs say 1e-12).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32, softmax and
      LayerNorm statistics run in float32.
  """

  patch_size: int = 16
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  img_size: int | tuple[int, int] = 224
  pos_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> tuple[int, int]:
    """Patch grid (gh, gw) of `img_size`, the grid of the `pos_embed` parameter."""
    h, w = _pair(self.img_size)
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"img_size {(h, w)} is not a multiple of patch_size {self.patch_size}.")
    return h // self.patch_size, w // self.patch_size

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """All tokens after the final LayerNorm.

    Args:
      x: [B, H, W, 3] normalised RGB images; H and W multiples of `patch_size`.
      train: enables dropout / drop path (rng "dropout") when their rates are non-zero.

    Returns:
      [B, 1 + (H / p) * (W / p), D] in `dtype`: the class token first, then the patches in
      row-major order.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected NHWC images [B, H, W, 3], got shape {x.shape}.")
    p, d = self.patch_size, self.embed_dim
    b, h, w, _ = x.shape
    if h % p or w % p:
      raise ValueError(f"image size {(h, w)} is not a multiple of patch_size {p}.")
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, name="patch_embed")(x.astype(self.dtype))
    x = x.reshape(b, (h // p) * (w // p), d)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
    grid = self.grid_size
    pos = self.param("pos_embed", _dense_init, (1, 1 + grid[0] * grid[1], d), jnp.float32)
    pos = resample_pos_embed(pos, (h // p, w // p), grid)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
    x = x + pos.astype(self.dtype)
    x = _dropout(self, x, self.pos_drop_rate, train)
    for i in range(self.depth):
      rate = self.drop_path_rate * i / (self.depth - 1) if self.depth > 1 else 0.0
      x = Block(d, self.num_heads, self.mlp_ratio, self.qkv_bias, self.proj_drop_rate,
                self.attn_drop_rate, rate, self.layer_norm_eps, self.dtype,
                name=f"blocks_{i}")(x, train=train)
    return nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32,
                        name="norm")(x)


def vit_small_patch16(**kwargs) -> VisionTransformer:
  """ViT-S/16 (timm `vit_small_patch16_224`): 384 wide, 12 blocks, 6 heads (kwargs: fields)."""
  return VisionTransformer(**{**dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
                              **kwargs})


def deit_small_patch16(**kwargs) -> VisionTransformer:
  """DeiT-S (timm `deit_small_patch16_224`), the architecture of ViT-S/16 (kwargs: fields)."""
  return vit_small_patch16(**kwargs)


VIT_VARIANTS = {"vit_small_patch16": vit_small_patch16, "deit_small_patch16": deit_small_patch16}


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor
    v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
  return np.asarray(v)


def _num_blocks(sd: Mapping[str, Any], prefix: str = "blocks.") -> int:
  ids = {int(k[len(prefix):].split(".")[0]) for k in sd
         if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
  return max(ids) + 1 if ids else 0


def _infer_vit(sd: Mapping[str, np.ndarray]) -> VisionTransformer:
  """A VisionTransformer with the shapes of a timm-named state dict (num_heads is not stored)."""
  proj = take(sd, "patch_embed.proj.weight")
  d, p = proj.shape[0], proj.shape[-1]
  n = take(sd, "pos_embed").shape[1] - 1
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f"pos_embed has {n} patch entries, not a square grid; pass `model`.")
  hidden = take(sd, "blocks.0.mlp.fc1.weight").shape[0]
  return VisionTransformer(patch_size=p, embed_dim=d, depth=_num_blocks(sd), num_heads=1,
                           mlp_ratio=hidden / d, qkv_bias="blocks.0.attn.qkv.bias" in sd,
                           img_size=side * p)


def vit_variables_from_timm(state_dict: Mapping[str, Any],
                            model: VisionTransformer | None = None) -> dict[str, Any]:
  """Flax variables of `VisionTransformer` from a timm (or Facebook DeiT) state dict.

  Linear weights [out, in] become kernels [in, out], the patch convolution [D, 3, p, p] a
  [p, p, 3, D] kernel, LayerNorm weight / bias scale / bias. When the checkpoint's position grid
  differs from the model's (`img_size` / `patch_size`), `pos_embed` is resampled bicubically as
  timm does when it loads a checkpoint at another size (see `resample_pos_embed`). `head.*` and
  other extra names are ignored; a checkpoint with another number of blocks is an error.

  Args:
    state_dict: `{name: array}` with timm names (cls_token, pos_embed, patch_embed.proj.*,
      blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*); torch tensors
      or numpy arrays. DeiT's {"model": {...}} files are unwrapped by `load_state_dict`.
    model: the target module; inferred from the weights when None (grid from `pos_embed`).

  Returns:
    {"params": ...} of float32 arrays.

  Raises:
    KeyError: a weight is missing. ValueError: a weight has the wrong shape or the block count
      differs.
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  if model is None:
    model = _infer_vit(sd)
  if _num_blocks(sd) != model.depth:
    raise ValueError(f"the state dict has {_num_blocks(sd)} blocks, the model {model.depth}.")
  h, w = _pair(model.img_size)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)),
                                             train=False))["params"]

  def dense(name, s):
    out = {"kernel": take(sd, f"{name}.weight", s["kernel"].shape[::-1]).T}
    if "bias" in s:
      out["bias"] = take(sd, f"{name}.bias", s["bias"].shape)
    return out

  def norm(name, s):
    return {"scale": take(sd, f"{name}.weight", s["scale"].shape),
            "bias": take(sd, f"{name}.bias", s["bias"].shape)}

  d = model.embed_dim
  pos = take(sd, "pos_embed")
  if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d:
    raise ValueError(f"weight 'pos_embed' has shape {pos.shape}, expected (1, 1 + patches, {d}).")
  pos = np.asarray(resample_pos_embed(jnp.asarray(pos), model.grid_size))
  k = shapes["patch_embed"]["kernel"].shape
  params = {
      "cls_token": take(sd, "cls_token", (1, 1, d)),
      "pos_embed": take({"pos_embed": pos}, "pos_embed", shapes["pos_embed"].shape),
      "patch_embed": {"kernel": take(sd, "patch_embed.proj.weight",
                                     (k[3], k[2], k[0], k[1])).transpose(2, 3, 1, 0),
                      "bias": take(sd, "patch_embed.proj.bias", (d,))},
      "norm": norm("norm", shapes["norm"]),
  }
  for i in range(model.depth):
    s, n = shapes[f"blocks_{i}"], f"blocks.{i}"
    params[f"blocks_{i}"] = {
        "norm1": norm(f"{n}.norm1", s["norm1"]),
        "attn": {"qkv": dense(f"{n}.attn.qkv", s["attn"]["qkv"]),
                 "proj": dense(f"{n}.attn.proj", s["attn"]["proj"])},
        "norm2": norm(f"{n}.norm2", s["norm2"]),
        "mlp": {"fc1": dense(f"{n}.mlp.fc1", s["mlp"]["fc1"]),
                "fc2": dense(f"{n}.mlp.fc2", s["mlp"]["fc2"])},
    }
  # copies: the result must not alias buffers of the caller's (possibly torch-shared) arrays
  return {"params": jax.tree.map(lambda a: jnp.asarray(np.array(a, np.float32, copy=True)),
                                 params)}


_HF_PREFIXES = ("vit.", "deit.")


def vit_state_dict_from_hf(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Renames a Hugging Face `ViTModel` state dict to timm names (query / key / value -> qkv).

  Accepts names with or without the "vit." (or "deit.") prefix of the classification models;
  the pooler and classifier are dropped. Distilled DeiT checkpoints (a distillation token) are
  not supported.
  """
  sd = {k: _to_numpy(v) for k, v in state_dict.items()}
  for prefix in _HF_PREFIXES:
    if any(k.startswith(prefix + "embeddings.") for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
      break
  if "embeddings.distillation_token" in sd:
    raise ValueError("distilled DeiT checkpoints (with a distillation token) are not supported.")
  out = {"cls_token": take(sd, "embeddings.cls_token"),
         "pos_embed": take(sd, "embeddings.position_embeddings")}
  for s in ("weight", "bias"):
    out[f"patch_embed.proj.{s}"] = take(sd, f"embeddings.patch_embeddings.projection.{s}")
    out[f"norm.{s}"] = take(sd, f"layernorm.{s}")
  for i in range(_num_blocks(sd, "encoder.layer.")):
    hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
    pairs = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
             "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
             "mlp.fc2": "output.dense"}
    for s in ("weight", "bias"):
      for t, h in pairs.items():
        out[f"{tm}{t}.{s}"] = take(sd, f"{hf}{h}.{s}")
      qkv = [f"{hf}attention.attention.{q}.{s}" for q in ("query", "key", "value")]
      if s == "weight" or qkv[0] in sd:
        out[f"{tm}attn.qkv.{s}"] = np.concatenate([take(sd, n) for n in qkv], axis=0)
  return out


def vit_variables_from_hf(state_dict: Mapping[str, Any],
                          model: VisionTransformer | None = None) -> dict[str, Any]:
  """Flax variables of `VisionTransformer` from a Hugging Face `ViTModel` state dict.

  Names: [vit.]embeddings.{cls_token, position_embeddings, patch_embeddings.projection.*},
  [vit.]encoder.layer.N.{layernorm_before, attention.attention.{query, key, value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense}.*,
  [vit.]layernorm.*. Hugging Face ViT configs use LayerNorm epsilon 1e-12 (timm: 1e-6); pass
  `layer_norm_eps=1e-12` to the module to reproduce them exactly (the difference is tiny).

  Args:
    state_dict: `{name: array}` (torch tensors or numpy arrays).
    model: the target module; inferred from the weights when None.

  Returns:
    {"params": ...}, the same as `vit_variables_from_timm` of the equivalent timm checkpoint.
  """
  return vit_variables_from_timm(vit_state_dict_from_hf(state_dict), model)


def load_vit(path: str | os.PathLike, variant: str | VisionTransformer = "vit_small_patch16", *,
             naming: str = "auto", strip_prefix: str | None = None, **kwargs
             ) -> tuple[VisionTransformer, dict[str, Any]]:
  """Builds a ViT and its variables from a weight file.

  Args:
    path: `.safetensors`, `.pth` / `.pt` / `.bin` or `.npz` (timm, DeiT {"model": ...} or Hugging
      Face `ViTModel` / `ViTForImageClassification` names).
    variant: "vit_small_patch16", "deit_small_patch16" or a `VisionTransformer` instance.
    naming: "timm", "hf", or "auto" (Hugging Face when "embeddings.patch_embeddings" names
      are present).
    strip_prefix: removed from the start of names that have it (e.g. "module.").
    **kwargs: module fields for a named variant (img_size, dtype, drop_path_rate, ...).

  Returns:
    (module, {"params"}); `pos_embed` resampled to the module's `img_size` when needed.
  """
  if isinstance(variant, VisionTransformer):
    if kwargs:
      raise ValueError("module fields go to the VisionTransformer instance, not to load_vit.")
    model = variant
  elif variant in VIT_VARIANTS:
    model = VIT_VARIANTS[variant](**kwargs)
  else:
    raise ValueError(f"unknown ViT variant {variant!r}; expected one of {sorted(VIT_VARIANTS)} "
                     "or a VisionTransformer.")
  sd = load_state_dict(path, strip_prefix=strip_prefix)
  if naming == "auto":
    naming = "hf" if any("embeddings.patch_embeddings" in k for k in sd) else "timm"
  if naming == "hf":
    return model, vit_variables_from_hf(sd, model)
  if naming == "timm":
    return model, vit_variables_from_timm(sd, model)
  raise ValueError(f"naming must be 'auto', 'timm' or 'hf', got {naming!r}.")
