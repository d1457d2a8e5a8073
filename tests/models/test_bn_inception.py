"""BN-Inception: parity with a PyTorch reference, weight files, frozen BN, bf16."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models.bn_inception import (
    BatchNorm,
    BNInception,
    bn_inception_preprocess,
    bn_inception_variables_from_torch,
    load_bn_inception,
    max_pool_ceil,
)

torch = pytest.importorskip("torch", exc_type=ImportError)
sys.path.insert(0, os.path.dirname(__file__))
from torch_reference_bninception import TorchBNInception  # noqa: E402

# 68 x 64: the first max pool keeps a partial window in height (ceil mode: 17 rows, 16 with
# floor); both grid reductions see even sizes; the last map is 2 x 2.
H, W = 68, 64


# Each program here runs once: ask XLA for little backend optimisation (its CPU code generation
# dominates these tests' time); fall back to a plain compile where the options are unknown.
_QUICK = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile(f, *args):
  """f jit-compiled (quickly) for arguments shaped like args."""
  lowered = jax.jit(f).lower(*args)
  try:
    return lowered.compile(compiler_options=_QUICK)
  except Exception:  # noqa: BLE001 - any rejection of the options: use the defaults
    return lowered.compile()


def _run(f, *args):
  return _compile(f, *args)(*args)


def _torch_model(seed: int = 0) -> TorchBNInception:
  torch.manual_seed(seed)
  m = TorchBNInception()
  with torch.no_grad():
    for mod in m.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.normal_(0.0, 0.2)
        mod.running_mean.normal_(0.0, 0.2)
        mod.running_var.uniform_(0.5, 2.0)
  return m.eval()


@pytest.fixture(scope="module")
def ref():
  """(torch model, its state dict as numpy, input NHWC numpy, torch features NHWC numpy)."""
  m = _torch_model()
  x = np.random.default_rng(0).normal(size=(2, H, W, 3)).astype(np.float32)
  with torch.no_grad():
    out = m.features(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  sd = {k: v.numpy().copy() for k, v in m.state_dict().items()}
  return m, sd, x, out


@pytest.fixture(scope="module")
def variables(ref):
  return bn_inception_variables_from_torch(ref[1])


def test_reference_has_the_pretrainedmodels_layout(ref):
  sd = ref[1]
  assert len(sd) == 485  # 69 conv (weight, bias) + 69 BN (5 each) + last_linear (2)
  assert sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 11_315_272
  assert sd["inception_3a_double_3x3_2.weight"].shape == (96, 96, 3, 3)
  assert sd["inception_5b_pool_proj.weight"].shape == (128, 1024, 1, 1)
  assert ref[0].conv1_7x7_s2_bn.eps == 1e-5


def test_parity_with_torch(ref, variables):
  _, _, x, expected = ref
  model = BNInception()
  out = _run(lambda v, x: model.apply(v, x, train=False), variables, jnp.asarray(x))
  assert out.shape == (2, 2, 2, 1024) == expected.shape
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4, rtol=0)


def test_shapes_at_224():
  shapes = jax.eval_shape(lambda x: BNInception().init_with_output(
      jax.random.PRNGKey(0), x, train=False), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  out, variables = shapes
  assert out.shape == (1, 7, 7, 1024)
  assert variables["params"]["conv1_7x7_s2"]["kernel"].shape == (7, 7, 3, 64)
  assert variables["batch_stats"]["inception_5b_pool_proj_bn"]["var"].shape == (128,)
  assert "last_linear" not in variables["params"]
  n = sum(a.size for a in jax.tree.leaves(variables))
  assert n == 11_315_272 - 1024 * 1000 - 1000


def test_max_pool_ceil_matches_torch():
  x = np.random.default_rng(1).normal(size=(1, 9, 12, 2)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  for k, s, p in [(3, 2, 0), (3, 1, 1), (3, 2, 1), (2, 2, 0)]:
    r = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=True).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(max_pool_ceil(jnp.asarray(x), k, s, p)), r)


def test_odd_grid_reduction_input_raises(variables):
  with pytest.raises(ValueError, match="even"):
    jax.eval_shape(lambda v, x: BNInception().apply(v, x, train=False), variables,
                   jax.ShapeDtypeStruct((1, 72, 64, 3), jnp.float32))


def test_weight_files_round_trip(ref, variables, tmp_path):
  m, sd, _, _ = ref
  from safetensors.numpy import save_file
  st = tmp_path / "bninception.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(st))
  pth = tmp_path / "bninception.pth"
  torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, str(pth))
  for path, prefix in [(st, None), (pth, "module.")]:
    model, loaded = load_bn_inception(path, strip_prefix=prefix, frozen_bn=True)
    assert isinstance(model, BNInception) and model.frozen_bn
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_missing_and_misshapen_weights(ref):
  sd = dict(ref[1])
  del sd["inception_4c_3x3_bn.running_var"]
  with pytest.raises(KeyError, match="inception_4c_3x3_bn.running_var"):
    bn_inception_variables_from_torch(sd)
  sd = dict(ref[1])
  sd["inception_3a_1x1.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"inception_3a_1x1.weight.*\(64, 192, 1, 1\)"):
    bn_inception_variables_from_torch(sd)


def test_frozen_bn_gets_no_gradient_and_keeps_stats(ref, variables):
  x = jnp.asarray(ref[2][:1, :64])
  model = BNInception(frozen_bn=True)

  def loss(params):
    out, new = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
    return jnp.mean(out ** 2), (out, new)

  g, (out, new) = _run(jax.grad(loss, has_aux=True), variables["params"])
  bn = [k for k in g if k.endswith("_bn")]
  assert len(bn) == 69
  for k in bn:
    assert not np.any(np.asarray(g[k]["scale"])) and not np.any(np.asarray(g[k]["bias"]))
  assert np.any(np.asarray(g["conv1_7x7_s2"]["kernel"]))
  assert np.any(np.asarray(g["inception_5b_pool_proj"]["kernel"]))
  jax.tree.map(np.testing.assert_array_equal, new["batch_stats"], variables["batch_stats"])
  # frozen BN in training mode computes the eval-mode function
  m = ref[0]
  with torch.no_grad():
    expected = m.features(torch.from_numpy(ref[2][:1, :64]).permute(0, 3, 1, 2))
  np.testing.assert_allclose(np.asarray(out), expected.permute(0, 2, 3, 1).numpy(), atol=1e-4,
                             rtol=0)


def test_train_mode_bn_uses_batch_stats_and_updates_like_torch():
  m = _torch_model(1)
  x = np.random.default_rng(3).normal(size=(2, 64, 64, 3)).astype(np.float32)
  v = bn_inception_variables_from_torch({k: t.numpy() for k, t in m.state_dict().items()})
  m.train()
  with torch.no_grad():
    expected = m.features(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  model = BNInception()
  out, new = _run(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), v,
                   jnp.asarray(x))
  # batch statistics over few values (2 x 2 x 2 in block 5) amplify float32 rounding, so the
  # whole-network check is loose; `test_batch_norm_matches_torch` checks the layer tightly.
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-2, rtol=0)
  for name in ("conv1_7x7_s2_bn", "inception_3a_double_3x3_2_bn"):
    bn = getattr(m, name)
    np.testing.assert_allclose(new["batch_stats"][name]["mean"], bn.running_mean.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(new["batch_stats"][name]["var"], bn.running_var.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_batch_norm_matches_torch():
  rng = np.random.default_rng(4)
  bn_t = torch.nn.BatchNorm2d(5)
  with torch.no_grad():
    bn_t.weight.uniform_(0.5, 1.5)
    bn_t.bias.normal_()
  bn = BatchNorm()
  v = {"params": {"scale": jnp.asarray(bn_t.weight.detach().numpy()),
                  "bias": jnp.asarray(bn_t.bias.detach().numpy())},
       "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)}}
  for _ in range(3):
    x = rng.normal(1.0, 2.0, size=(3, 4, 6, 5)).astype(np.float32)
    y, new = bn.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])
    v = {"params": v["params"], "batch_stats": new["batch_stats"]}
    with torch.no_grad():
      y_t = bn_t.train()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(y), y_t, atol=1e-5)
    np.testing.assert_allclose(v["batch_stats"]["mean"], bn_t.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(v["batch_stats"]["var"], bn_t.running_var.numpy(), atol=1e-5)
  with torch.no_grad():
    y_t = bn_t.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(bn.apply(v, jnp.asarray(x), train=False)), y_t,
                             atol=1e-5)


def test_bfloat16_is_finite_and_close(ref, variables):
  _, _, x, expected = ref
  model = BNInception(dtype=jnp.bfloat16)
  out = _run(lambda v, x: model.apply(v, x, train=False), variables, jnp.asarray(x))
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  assert np.all(np.isfinite(out))
  assert np.abs(out - expected).max() <= 0.1 * np.abs(expected).max()


def test_preprocess():
  rgb = jnp.array([[[1.0, 0.5, 0.0]]])
  np.testing.assert_allclose(bn_inception_preprocess(rgb), [[[0 - 104, 127.5 - 117, 255 - 128]]])
