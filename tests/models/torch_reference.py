"""Plain-PyTorch reference networks for parity tests of the Flax models.

Module and parameter names follow the published checkpoints' layouts, so that `state_dict()` has
the same keys as the corresponding pretrained weight files. Import only after
`pytest.importorskip("torch")`.
"""

from __future__ import annotations

import torch
from torch import nn

# --- ResNet ---
# Names as in torchvision.models.resnet: conv1, bn1, layer{1..4}.{i}.{conv,bn}{1..3},
# layer{k}.0.downsample.{0,1}, fc.


class TorchBasicBlock(nn.Module):
  """3x3 - 3x3 residual block (ResNet-18/34)."""

  expansion = 1

  def __init__(self, in_ch: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = _projection(in_ch, planes * self.expansion, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    skip = x if self.downsample is None else self.downsample(x)
    return self.relu(y + skip)


class TorchBottleneck(nn.Module):
  """1x1 - 3x3 (strided) - 1x1 residual block (ResNet-50/101/152)."""

  expansion = 4

  def __init__(self, in_ch: int, planes: int, stride: int = 1):
    super().__init__()
    out = planes * self.expansion
    self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _projection(in_ch, out, stride)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    skip = x if self.downsample is None else self.downsample(x)
    return self.relu(y + skip)


def _projection(in_ch: int, out: int, stride: int):
  if stride == 1 and in_ch == out:
    return None
  return nn.Sequential(nn.Conv2d(in_ch, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))


class TorchResNet(nn.Module):
  """ResNet with a classifier; `features(x)` is the output of layer4 (NCHW)."""

  def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    in_ch = 64
    for i, n in enumerate(layers):
      planes = 64 * 2 ** i
      blocks = []
      for j in range(n):
        blocks.append(block(in_ch, planes, stride=2 if i > 0 and j == 0 else 1))
        in_ch = planes * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_ch, num_classes)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return x

  def forward(self, x):
    return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


TORCH_RESNET_LAYERS = {
    18: (TorchBasicBlock, [2, 2, 2, 2]),
    34: (TorchBasicBlock, [3, 4, 6, 3]),
    50: (TorchBottleneck, [3, 4, 6, 3]),
    101: (TorchBottleneck, [3, 4, 23, 3]),
}


def torch_resnet(depth: int, num_classes: int = 1000) -> TorchResNet:
  """The reference ResNet of a torchvision depth, default (random) initialisation."""
  block, layers = TORCH_RESNET_LAYERS[depth]
  return TorchResNet(block, layers, num_classes)


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
  """Random BN affine parameters and running statistics (in place), so parity is not trivial."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
        m.bias.copy_(0.1 * torch.randn(c, generator=generator))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
        m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
        m.num_batches_tracked.fill_(7)
  return model
