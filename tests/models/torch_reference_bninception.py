"""A plain PyTorch BN-Inception for parity tests.

Its `state_dict()` names and shapes are those of the `bninception` weights of the
`pretrainedmodels` package (conv1_7x7_s2, conv1_7x7_s2_bn, ..., inception_5b_pool_proj_bn,
last_linear). Written independently of the Flax module: block widths are listed here again, and
the pools are PyTorch's own `MaxPool2d(ceil_mode=True)` / `AvgPool2d(count_include_pad=True)`.
"""

from __future__ import annotations

import torch
from torch import nn

# name: (kind, widths); "mixed" widths: 1x1, 3x3 reduce, 3x3, double reduce, double, pool proj.
BLOCKS = [
    ("3a", "mixed", (64, 64, 64, 64, 96, 32), "avg"),
    ("3b", "mixed", (64, 64, 96, 64, 96, 64), "avg"),
    ("3c", "reduce", (128, 160, 64, 96), None),
    ("4a", "mixed", (224, 64, 96, 96, 128, 128), "avg"),
    ("4b", "mixed", (192, 96, 128, 96, 128, 128), "avg"),
    ("4c", "mixed", (160, 128, 160, 128, 160, 128), "avg"),
    ("4d", "mixed", (96, 128, 192, 160, 192, 128), "avg"),
    ("4e", "reduce", (128, 192, 192, 256), None),
    ("5a", "mixed", (352, 192, 320, 160, 224, 128), "avg"),
    ("5b", "mixed", (352, 192, 320, 192, 224, 128), "max"),
]


class TorchBNInception(nn.Module):
  """BN-Inception with the layer names of `pretrainedmodels.bninception`."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self._add("conv1_7x7_s2", 3, 64, 7, 2, 3)
    self._add("conv2_3x3_reduce", 64, 64, 1)
    self._add("conv2_3x3", 64, 192, 3, 1, 1)
    cin = 192
    for block, kind, w, pool in BLOCKS:
      p = f"inception_{block}_"
      if kind == "mixed":
        c1, r3, c3, rd, cd, cp = w
        self._add(p + "1x1", cin, c1, 1)
        self._add(p + "3x3_reduce", cin, r3, 1)
        self._add(p + "3x3", r3, c3, 3, 1, 1)
        self._add(p + "double_3x3_reduce", cin, rd, 1)
        self._add(p + "double_3x3_1", rd, cd, 3, 1, 1)
        self._add(p + "double_3x3_2", cd, cd, 3, 1, 1)
        setattr(self, p + "pool",
                nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
                if pool == "avg" else nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True))
        self._add(p + "pool_proj", cin, cp, 1)
        cin = c1 + c3 + cd + cp
      else:
        r3, c3, rd, cd = w
        self._add(p + "3x3_reduce", cin, r3, 1)
        self._add(p + "3x3", r3, c3, 3, 2, 1)
        self._add(p + "double_3x3_reduce", cin, rd, 1)
        self._add(p + "double_3x3_1", rd, cd, 3, 1, 1)
        self._add(p + "double_3x3_2", cd, cd, 3, 2, 1)
        setattr(self, p + "pool", nn.MaxPool2d(3, stride=2, ceil_mode=True))
        cin = c3 + cd + cin
    self.last_linear = nn.Linear(1024, num_classes)

  def _add(self, name, cin, cout, k, stride=1, pad=0):
    setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=pad))
    setattr(self, name + "_bn", nn.BatchNorm2d(cout))

  def _cbr(self, x, name):
    return torch.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

  def features(self, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1024, h, w]."""
    x = self._cbr(x, "conv1_7x7_s2")
    x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
    x = self._cbr(self._cbr(x, "conv2_3x3_reduce"), "conv2_3x3")
    x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
    for block, kind, _, _ in BLOCKS:
      p = f"inception_{block}_"
      a = self._cbr(self._cbr(x, p + "3x3_reduce"), p + "3x3")
      d = self._cbr(self._cbr(self._cbr(x, p + "double_3x3_reduce"), p + "double_3x3_1"),
                    p + "double_3x3_2")
      pooled = getattr(self, p + "pool")(x)
      if kind == "mixed":
        x = torch.cat([self._cbr(x, p + "1x1"), a, d, self._cbr(pooled, p + "pool_proj")], 1)
      else:
        x = torch.cat([a, d, pooled], 1)
    return x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    f = self.features(x)
    return self.last_linear(f.mean((2, 3)))
