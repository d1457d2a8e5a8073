"""EfficientNet with timm's `tf_efficientnet_*` layout: checked against a PyTorch network written
here with timm's module names and TF "SAME" padding (eval and train mode, odd sizes), against
timm itself when it is installed, and the import's errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models.efficientnet import (
    SCALING,
    EfficientNet,
    efficientnet_variables_from_timm,
    stage_settings,
)
from jaxdml.models.mobilenet import make_divisible

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional
from torch_reference import randomize_batchnorm  # noqa: E402


class _SameConv(tnn.Conv2d):
  """TensorFlow's "SAME": total padding max((ceil(n / s) - 1) s + k - n, 0), the extra pixel at
  the end."""

  def forward(self, x):
    pads = []
    for n, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
      total = max((math.ceil(n / s) - 1) * s + k - n, 0)
      pads.append((total // 2, total - total // 2))
    x = F.pad(x, [*pads[1], *pads[0]])
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(c):
  return tnn.BatchNorm2d(c, eps=1e-3)


class _SE(tnn.Module):

  def __init__(self, c, rd):
    super().__init__()
    self.conv_reduce = tnn.Conv2d(c, rd, 1)
    self.conv_expand = tnn.Conv2d(rd, c, 1)

  def forward(self, x):
    s = F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))
    return x * torch.sigmoid(self.conv_expand(s))


class _DS(tnn.Module):

  def __init__(self, i, o, k, s):
    super().__init__()
    self.conv_dw = _SameConv(i, i, k, s, groups=i, bias=False)
    self.bn1 = _bn(i)
    self.se = _SE(i, round(i * 0.25))
    self.conv_pw = tnn.Conv2d(i, o, 1, bias=False)
    self.bn2 = _bn(o)
    self.skip = s == 1 and i == o

  def forward(self, x):
    y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
    return x + y if self.skip else y


class _IR(tnn.Module):

  def __init__(self, i, o, k, s, e):
    super().__init__()
    mid = make_divisible(i * e)
    self.conv_pw = tnn.Conv2d(i, mid, 1, bias=False)
    self.bn1 = _bn(mid)
    self.conv_dw = _SameConv(mid, mid, k, s, groups=mid, bias=False)
    self.bn2 = _bn(mid)
    self.se = _SE(mid, round(mid * 0.25 / e))
    self.conv_pwl = tnn.Conv2d(mid, o, 1, bias=False)
    self.bn3 = _bn(o)
    self.skip = s == 1 and i == o

  def forward(self, x):
    y = F.silu(self.bn1(self.conv_pw(x)))
    y = self.se(F.silu(self.bn2(self.conv_dw(y))))
    y = self.bn3(self.conv_pwl(y))
    return x + y if self.skip else y


class _TorchEfficientNet(tnn.Module):

  def __init__(self, variant):
    super().__init__()
    width, depth = SCALING[variant]
    c = make_divisible(32 * width)
    self.conv_stem = _SameConv(3, c, 3, 2, bias=False)
    self.bn1 = _bn(c)
    stages = []
    for kind, repeats, k, s, e, out in stage_settings(width, depth):
      blocks = []
      for j in range(repeats):
        stride = s if j == 0 else 1
        blocks.append(_DS(c, out, k, stride) if kind == "ds" else _IR(c, out, k, stride, e))
        c = out
      stages.append(tnn.Sequential(*blocks))
    self.blocks = tnn.Sequential(*stages)
    head = make_divisible(1280 * width)
    self.conv_head = tnn.Conv2d(c, head, 1, bias=False)
    self.bn2 = _bn(head)
    self.classifier = tnn.Linear(head, 1000)

  def forward(self, x):
    x = self.blocks(F.silu(self.bn1(self.conv_stem(x))))
    return F.silu(self.bn2(self.conv_head(x)))


def _randomised(net, seed=0):
  return randomize_batchnorm(net, torch.Generator().manual_seed(seed))


def _compare(net, model, x, train=False):
  variables = efficientnet_variables_from_timm(net.state_dict(), model)
  net.train(train)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  if train:
    out, _ = model.apply(variables, xj, train=True, mutable=["batch_stats"])
  else:
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, xj)
  assert out.shape == ref.shape and out.shape[-1] == model.out_features
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("variant,shape", [("b3", (2, 64, 64)), ("b0", (1, 67, 45))])
def test_matches_the_timm_layout_in_eval_mode(variant, shape):
  """Even and odd sizes: on an even input TF's "SAME" pads (0, 1) at stride 2 (PyTorch's
  symmetric padding would shift every later map); on an odd one it pads (1, 1)."""
  torch.manual_seed(0)
  net = _randomised(_TorchEfficientNet(variant))
  x = np.random.default_rng(0).normal(size=(shape[0], 3, *shape[1:])).astype(np.float32)
  _compare(net, EfficientNet(variant=variant), x)


def test_train_mode_uses_batch_statistics():
  torch.manual_seed(1)
  net = _randomised(_TorchEfficientNet("b0"), seed=1)
  x = np.random.default_rng(1).normal(size=(4, 3, 96, 96)).astype(np.float32)
  _compare(net, EfficientNet(variant="b0"), x, train=True)


def test_b3_layout_and_errors():
  assert EfficientNet().out_features == 1536
  torch.manual_seed(0)
  sd = {k: v.numpy() for k, v in _TorchEfficientNet("b3").state_dict().items()}
  features = sum(a.size for k, a in sd.items()
                 if not k.startswith("classifier.") and "running" not in k
                 and "num_batches" not in k)
  assert features == 10_696_232  # timm's tf_efficientnet_b3 has 12.23M with its classifier
  v = efficientnet_variables_from_timm(sd)
  assert v["params"]["blocks_0_0"]["convdw"]["kernel"].shape == (3, 3, 1, 40)
  assert v["params"]["blocks_6_1"]["se"]["convreduce"]["kernel"].shape == (1, 1, 2304, 96)
  with pytest.raises(ValueError, match=r"'blocks.0.0.bn1.running_mean' has shape \(40,\), "
                     r"expected \(32,\)"):
    efficientnet_variables_from_timm(sd, EfficientNet(variant="b0"))
  with pytest.raises(KeyError, match="'blocks.2.1.se.conv_expand.bias' is missing"):
    efficientnet_variables_from_timm({k: a for k, a in sd.items()
                                      if k != "blocks.2.1.se.conv_expand.bias"})
  with pytest.raises(KeyError, match="not used by the EfficientNet-B3"):
    efficientnet_variables_from_timm({**sd, "blocks.7.0.conv_pw.weight": np.zeros(1)})
  with pytest.raises(ValueError, match="variant must be one of"):
    EfficientNet(variant="b9").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_matches_timm_itself():
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  net = _randomised(timm.create_model("tf_efficientnet_b3", pretrained=False))
  x = np.random.default_rng(3).normal(size=(1, 3, 64, 64)).astype(np.float32)
  variables = efficientnet_variables_from_timm(net.state_dict(), EfficientNet())
  with torch.no_grad():
    ref = net.eval().forward_features(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  out = EfficientNet().apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
