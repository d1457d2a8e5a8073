"""A plain PyTorch Vision Transformer for parity tests.

Its `state_dict()` names and shapes are those of timm's `vit_small_patch16_224` /
`deit_small_patch16_224` (cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head). Attention is written out (no fused kernel);
LayerNorm eps 1e-6 and exact GELU as in timm.
"""

from __future__ import annotations

import torch
from torch import nn


class _PatchEmbed(nn.Module):
  def __init__(self, patch: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D], row-major patches


class _Attn(nn.Module):
  def __init__(self, dim: int, heads: int, qkv_bias: bool):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax((q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5, dim=-1)
    return self.proj((a @ v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(nn.functional.gelu(self.fc1(x)))


class _Block(nn.Module):
  def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = _Attn(dim, heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = _Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
  """ViT with timm's parameter names; `forward_features` returns all normalised tokens."""

  def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 384,
               depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, num_classes: int = 1000):
    super().__init__()
    n = (img_size // patch_size) ** 2
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.randn(1, n + 1, embed_dim) * 0.02)
    self.patch_embed = _PatchEmbed(patch_size, embed_dim)
    self.blocks = nn.ModuleList(
        [_Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)

  def forward_features(self, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1 + N, D]."""
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.forward_features(x)[:, 0])
