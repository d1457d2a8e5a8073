"""MobileNetV2: torchvision's layout imported and checked against a PyTorch network written
here with torchvision's module names (eval and train mode, odd input sizes), and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models.mobilenet import (
    INVERTED_RESIDUAL_SETTING,
    MobileNetV2,
    make_divisible,
    mobilenet_v2_variables_from_torch,
)

torch = pytest.importorskip("torch")
tnn = torch.nn
from torch_reference import randomize_batchnorm  # noqa: E402


def _cbr(i, o, k, s, groups=1):
  """torchvision's Conv2dNormActivation: Sequential(conv, bn, ReLU6), padding (k - 1) // 2."""
  return tnn.Sequential(tnn.Conv2d(i, o, k, s, (k - 1) // 2, groups=groups, bias=False),
                        tnn.BatchNorm2d(o), tnn.ReLU6())


class _TorchInvertedResidual(tnn.Module):

  def __init__(self, i, o, s, t):
    super().__init__()
    hidden = int(round(i * t))
    layers = [] if t == 1 else [_cbr(i, hidden, 1, 1)]
    layers += [_cbr(hidden, hidden, 3, s, groups=hidden),
               tnn.Conv2d(hidden, o, 1, 1, 0, bias=False), tnn.BatchNorm2d(o)]
    self.conv = tnn.Sequential(*layers)
    self.residual = s == 1 and i == o

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


class _TorchMobileNetV2(tnn.Module):

  def __init__(self, width=1.0):
    super().__init__()
    c_in = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    features = [_cbr(3, c_in, 3, 2)]
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
      out = make_divisible(c * width)
      for r in range(n):
        features.append(_TorchInvertedResidual(c_in, out, s if r == 0 else 1, t))
        c_in = out
    features.append(_cbr(c_in, last, 1, 1))
    self.features = tnn.Sequential(*features)
    self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(last, 1000))

  def forward(self, x):
    return self.features(x)


def _torch_net(width, seed=0):
  torch.manual_seed(seed)
  return randomize_batchnorm(_TorchMobileNetV2(width), torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("width,shape", [(1.0, (2, 64, 64)), (0.5, (1, 67, 45))])
def test_matches_the_torchvision_layout_in_eval_mode(width, shape):
  net = _torch_net(width).eval()
  model = MobileNetV2(width_mult=width)
  variables = mobilenet_v2_variables_from_torch(net.state_dict(), model)
  x = np.random.default_rng(0).normal(size=(shape[0], 3, *shape[1:])).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
  assert out.shape == ref.shape and out.shape[-1] == model.out_features
  # the stride-2 layers pad symmetrically: odd sizes give torch's ceil((n - 1) / 2) + 1 maps
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_train_mode_normalises_by_batch_statistics_and_updates_the_running_ones():
  """96 x 96: the last maps are 3 x 3, so each batch statistic averages 36 values (at 32 x 32,
  4 values of a 1 x 1 map give near-zero variances that amplify float rounding)."""
  net = _torch_net(0.5).train()
  model = MobileNetV2(width_mult=0.5)
  variables = mobilenet_v2_variables_from_torch(net.state_dict(), model)
  x = np.random.default_rng(1).normal(size=(4, 3, 96, 96)).astype(np.float32)
  ref = net(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
  out, updates = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=True,
                             mutable=["batch_stats"])
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  stats = net.state_dict()
  np.testing.assert_allclose(updates["batch_stats"]["features_3"]["conv_1_1"]["var"],
                             stats["features.3.conv.1.1.running_var"].numpy(), rtol=1e-4)
  np.testing.assert_allclose(updates["batch_stats"]["features_0_1"]["mean"],
                             stats["features.0.1.running_mean"].numpy(), rtol=1e-4, atol=1e-6)


def test_layout_and_errors():
  sd = {k: v.numpy() for k, v in _torch_net(0.5).state_dict().items()}
  v = mobilenet_v2_variables_from_torch(sd, MobileNetV2(width_mult=0.5))
  assert v["params"]["features_2"]["conv_1_0"]["kernel"].shape == (3, 3, 1, 48)  # depthwise
  assert set(v["params"]["features_1"]) == {"conv_0_0", "conv_0_1", "conv_1", "conv_2"}
  with pytest.raises(ValueError, match=r"features.0.1.running_mean' has shape \(16,\), "
                     r"expected \(32,\)"):
    mobilenet_v2_variables_from_torch(sd)  # width 0.5 weights into width 1
  missing = {k: a for k, a in sd.items() if k != "features.5.conv.3.running_var"}
  with pytest.raises(KeyError, match="features.5.conv.3.running_var' is missing"):
    mobilenet_v2_variables_from_torch(missing, MobileNetV2(width_mult=0.5))
  with pytest.raises(KeyError, match="not used by the MobileNetV2"):
    mobilenet_v2_variables_from_torch({**sd, "extra.weight": np.zeros(1)},
                                      MobileNetV2(width_mult=0.5))
  with pytest.raises(ValueError, match=r"RGB images \[B, H, W, 3\]"):
    MobileNetV2().init(jax.random.key(0), jnp.zeros((1, 32, 32)), train=False)


def test_a_config_trains_from_a_torchvision_file(tmp_path):
  """`model.name=mobilenet_v2` with `model.pretrained` a torchvision state dict (.npz here): the
  embedding model's backbone is the PyTorch network."""
  from jaxdml.app import build
  from jaxdml.app.config import Config, apply_overrides

  net = _torch_net(1.0).eval()
  path = tmp_path / "mobilenet_v2.npz"
  np.savez(path, **{k: v.numpy() for k, v in net.state_dict().items()})
  config = apply_overrides(Config(), [  # AML's student: projection to 64, GeM, L2
      "data.dataset=cub200", "model.name=mobilenet_v2", f"model.pretrained={path}",
      "model.pooling=gem", "model.neck=projection", "model.neck_kwargs.features=64",
      "model.embedding_layer=false", "model.embedding_dim=64"])
  model, load_pretrained = build.build_model(config)
  x = np.random.default_rng(2).normal(size=(1, 3, 64, 64)).astype(np.float32)
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  variables = load_pretrained(model.init(jax.random.key(0), xj, train=False))
  backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  out = model.backbone.apply(backbone, xj, train=False)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  assert model.apply(variables, xj, train=False).shape == (1, config.model.embedding_dim)
