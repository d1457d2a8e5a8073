"""cirtorch's ResNet-GeM checkpoints: positional names, GeM exponent, meta with numpy whitening;
the descriptors against the PyTorch network's GeM + L2."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.evaluation import apply_whitening
from jaxdml.models import cirtorch

torch = pytest.importorskip("torch")
from torch_reference import randomize_batchnorm, torch_resnet  # noqa: E402

_TO_CIRTORCH = {"conv1.": "features.0.", "bn1.": "features.1.", "layer1.": "features.4.",
                "layer2.": "features.5.", "layer3.": "features.6.", "layer4.": "features.7."}


def _cirtorch_file(tmp_path, p=2.8):
  torch.manual_seed(0)
  net = randomize_batchnorm(torch_resnet(18), torch.Generator().manual_seed(1)).eval()
  sd = {}
  for k, v in net.state_dict().items():
    if k.startswith("fc."):
      continue
    new = next(c + k[len(t):] for t, c in _TO_CIRTORCH.items() if k.startswith(t))
    sd[new] = v
  sd["pool.p"] = torch.tensor([p])
  rng = np.random.default_rng(0)
  lw = {"m": rng.normal(size=(512, 1)), "P": rng.normal(size=(512, 512)).astype(np.float32)}
  meta = {"architecture": "resnet18", "pooling": "gem", "mean": [0.485, 0.456, 0.406],
          "std": [0.229, 0.224, 0.225], "Lw": {"retrieval-SfM-120k": {"ss": lw, "ms": lw}}}
  path = tmp_path / "retrieval-resnet18-gem.pth"
  torch.save({"epoch": 3, "meta": meta, "state_dict": sd}, path)
  return path, net, lw


def test_descriptors_are_the_networks_gem_and_l2(tmp_path):
  path, net, lw = _cirtorch_file(tmp_path)
  model, variables, info = cirtorch.load_resnet_gem(path, depth=18)
  assert float(variables["params"]["gem"]["p"][0]) == pytest.approx(2.8)
  assert info["mean"] == pytest.approx([0.485, 0.456, 0.406]) and len(info["std"]) == 3
  x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    f = net.features(torch.from_numpy(x)).double()
    gem = f.clamp(min=1e-6).pow(2.8).mean((2, 3)).pow(1 / 2.8)
    ref = (gem / gem.norm(dim=1, keepdim=True)).numpy()
  out = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  w = info["whitening"]["retrieval-SfM-120k"]["ms"]
  whitened = np.asarray(apply_whitening(out, w))
  expect = (lw["P"] @ (ref.T - lw["m"])).T
  np.testing.assert_allclose(whitened, expect / np.linalg.norm(expect, axis=1, keepdims=True),
                             rtol=1e-3, atol=1e-4)


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(KeyError, match="no 'pool.p'"):
    cirtorch.to_torchvision({"features.0.weight": np.zeros((1,))})
  with pytest.raises(KeyError, match="'whiten.weight' is not a ResNet child"):
    cirtorch.to_torchvision({"pool.p": np.ones(1), "whiten.weight": np.zeros((2, 2))})
  path = tmp_path / "plain.pth"
  torch.save({"conv1.weight": torch.zeros(1)}, path)
  with pytest.raises(ValueError, match="not a cirtorch checkpoint"):
    cirtorch.read_checkpoint(path)
