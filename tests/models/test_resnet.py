"""ResNet: parity with a PyTorch reference (torchvision names), weight files, batch norm modes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxdml.models import weights
from jaxdml.models.resnet import (
    ResNet,
    load_resnet,
    resnet,
    resnet18,
    resnet50,
    resnet_variables_from_torch,
)

torch = pytest.importorskip("torch")
from torch_reference import (  # noqa: E402
    TorchBasicBlock,
    TorchResNet,
    randomize_batchnorm,
    torch_resnet,
)


def _nhwc(t) -> jnp.ndarray:
  return jnp.asarray(t.detach().permute(0, 2, 3, 1).numpy())


def _apply(model, variables, x, train=False, mutable=False):
  fn = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))
  return fn(variables, x)


def _torch_model(depth_or_layers, seed=0):
  g = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  if isinstance(depth_or_layers, int):
    m = torch_resnet(depth_or_layers)
  else:
    m = TorchResNet(TorchBasicBlock, list(depth_or_layers))
  return randomize_batchnorm(m, g), g


def _tree_close(a, b, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("depth", [18, 50])
def test_feature_map_matches_torch(depth):
  tm, g = _torch_model(depth)
  tm.eval()
  x = torch.randn(2, 3, 64, 64, generator=g)
  with torch.no_grad():
    ref = _nhwc(tm.features(x))
  model = resnet(depth)
  variables = resnet_variables_from_torch(tm.state_dict(), depth)
  # exactly the pytree that init creates
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(jnp.shape, variables)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  out = _apply(model, variables, _nhwc(x))
  assert out.shape == (2, 2, 2, 512 if depth == 18 else 2048) == ref.shape
  assert model.out_features == out.shape[-1]
  assert float(jnp.max(jnp.abs(ref))) > 0.1
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_parameter_count_matches_torch():
  tm = torch_resnet(50)
  n_torch = sum(p.numel() for k, p in tm.named_parameters() if not k.startswith("fc."))
  shapes = jax.eval_shape(lambda: resnet50().init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 32, 32, 3)), train=False))
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"])) == n_torch


def test_load_resnet_from_pth_safetensors_npz(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  tm, _ = _torch_model(18)
  direct = resnet_variables_from_torch(tm.state_dict(), 18)
  sd = tm.state_dict()
  torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "r18.pth")
  np_sd = {k: v.numpy() for k, v in sd.items()}
  safetensors_numpy.save_file(np_sd, str(tmp_path / "r18.safetensors"))
  np.savez(tmp_path / "r18.npz", **np_sd)

  model, variables = load_resnet(tmp_path / "r18.pth", 18, strip_prefix="module.",
                                 frozen_bn=True)
  assert isinstance(model, ResNet) and model.frozen_bn and model.stage_sizes == (2, 2, 2, 2)
  _tree_close(variables, direct, atol=0)
  for name in ("r18.safetensors", "r18.npz"):
    model, variables = load_resnet(tmp_path / name, resnet18())
    _tree_close(variables, direct, atol=0)
  with pytest.raises(ValueError, match="model_kwargs"):
    load_resnet(tmp_path / "r18.npz", resnet18(), frozen_bn=True)


def test_converter_errors():
  sd = {k: v.numpy() for k, v in torch_resnet(18).state_dict().items()}
  missing = dict(sd)
  del missing["layer2.0.downsample.1.running_var"]
  with pytest.raises(KeyError, match=r"layer2\.0\.downsample\.1\.running_var"):
    resnet_variables_from_torch(missing, 18)
  bad = dict(sd)
  bad["layer1.1.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"layer1\.1\.conv2\.weight.*\(64, 64, 3, 3\)"):
    resnet_variables_from_torch(bad, 18)
  sd34 = {k: v.numpy() for k, v in torch_resnet(34).state_dict().items()}
  with pytest.raises(KeyError, match="not used"):
    resnet_variables_from_torch(sd34, 18)
  params = resnet_variables_from_torch(sd34, 18, strict=False)["params"]
  assert "layer3_1" in params and "layer3_2" not in params
  with pytest.raises(ValueError, match="depth"):
    resnet(20)
  with pytest.raises(KeyError, match="missing"):
    resnet_variables_from_torch(sd, 50)
  assert weights.take(sd, "conv1.weight", (64, 3, 7, 7)).shape == (64, 3, 7, 7)


# A small ResNet (two basic-block stages) for the batch-norm and dtype tests.
_LAYERS = (1, 1)


def _small():
  tm, g = _torch_model(_LAYERS, seed=1)
  x = torch.randn(2, 3, 32, 32, generator=g)
  return tm, x, resnet_variables_from_torch(tm.state_dict(), ResNet(_LAYERS, "basic"))


def test_batchnorm_train_step_matches_torch():
  tm, x, variables = _small()
  tm.train()
  with torch.no_grad():
    ref = _nhwc(tm.features(x))
  after = resnet_variables_from_torch(tm.state_dict(), ResNet(_LAYERS, "basic"))
  out, updates = _apply(ResNet(_LAYERS, "basic"), variables, _nhwc(x), train=True,
                        mutable=["batch_stats"])
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  # momentum 0.9 (flax) == 0.1 (torch), unbiased variance in the running average
  _tree_close(updates["batch_stats"], after["batch_stats"], atol=1e-5)
  mean0 = variables["batch_stats"]["bn1"]["mean"]
  assert float(jnp.max(jnp.abs(updates["batch_stats"]["bn1"]["mean"] - mean0))) > 1e-3


def test_frozen_bn_uses_running_stats_and_gets_no_gradient():
  _, x, variables = _small()
  model = ResNet(_LAYERS, "basic", frozen_bn=True)
  x = _nhwc(x)

  def loss(params, train):
    out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=train, mutable=["batch_stats"])
    return jnp.sum(out ** 2), (out, upd)

  (_, (out, upd)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                   static_argnums=1)(variables["params"], True)
  _tree_close(upd["batch_stats"], variables["batch_stats"], atol=0)
  np.testing.assert_allclose(out, _apply(ResNet(_LAYERS, "basic"), variables, x), atol=1e-5)
  flat = traverse_util.flatten_dict(grads, sep="/")
  bn = [v for k, v in flat.items() if k.endswith(("scale", "bias"))]
  conv = [v for k, v in flat.items() if k.endswith("kernel")]
  assert len(bn) == 2 * 6 and len(conv) == 6
  assert all(float(jnp.max(jnp.abs(v))) == 0.0 for v in bn)
  assert all(float(jnp.max(jnp.abs(v))) > 0.0 for v in conv)


def test_bfloat16_compute():
  _, x, variables = _small()
  x = _nhwc(x)
  out32 = _apply(ResNet(_LAYERS, "basic"), variables, x)
  out16 = _apply(ResNet(_LAYERS, "basic", dtype=jnp.bfloat16), variables, x)
  assert out16.dtype == jnp.bfloat16 and out16.shape == out32.shape
  assert bool(jnp.all(jnp.isfinite(out16)))
  scale = float(jnp.max(jnp.abs(out32)))
  assert float(jnp.max(jnp.abs(out16.astype(jnp.float32) - out32))) < 0.1 * scale


def test_init_dtypes_and_zero_init_residual():
  model = ResNet((1,), "basic", width=8, dtype=jnp.bfloat16, zero_init_residual=True)
  # an "rbg" key: XLA compiles its generator far faster on CPU than the default threefry
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
      jax.random.key(0, impl="rbg"))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
  assert float(jnp.max(jnp.abs(v["params"]["layer1_0"]["bn2"]["scale"]))) == 0.0
  assert float(jnp.min(v["params"]["layer1_0"]["bn1"]["scale"])) == 1.0
  # torchvision's conv init: kaiming-normal, fan_out = 9 * 8 for the 3x3 convs
  k = v["params"]["layer1_0"]["conv1"]["kernel"]
  assert k.shape == (3, 3, 8, 8)
  assert 0.6 < float(jnp.std(k)) / np.sqrt(2 / 72) < 1.4


def test_conv_impls_agree_in_values_and_gradients():
  """The CPU matmul forms (1x1 products, 3x3 im2col, sliced max-pool) equal XLA's convolutions."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 35, 33, 3)), jnp.float32)  # odd sizes
  key = jax.random.key(0, impl="rbg")
  models = {impl: ResNet(stage_sizes=(1, 1, 1, 1), block="basic", conv_impl=impl) for impl in
            ("xla", "matmul")}
  variables = models["xla"].init(key, x, train=False)

  def loss(params, impl):
    y, _ = models[impl].apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  results = {impl: jax.jit(jax.value_and_grad(loss), static_argnums=1)(variables["params"], impl)
             for impl in models}
  np.testing.assert_allclose(results["xla"][0], results["matmul"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results["xla"][1]), jax.tree.leaves(results["matmul"][1]),
                  strict=True):  # float32 sums in another order: relative to each leaf's scale
    scale = float(np.max(np.abs(np.asarray(a)))) + 1e-6
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=2e-5)
  with pytest.raises(ValueError, match="conv_impl"):
    resnet(18, conv_impl="fft").init(key, x, train=False)
