"""Vision Transformer: parity with a PyTorch reference, timm / Hugging Face weights, resampling."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models.vit import (
    VisionTransformer,
    deit_small_patch16,
    load_vit,
    resample_pos_embed,
    vit_small_patch16,
    vit_state_dict_from_hf,
    vit_variables_from_hf,
    vit_variables_from_timm,
)

torch = pytest.importorskip("torch", exc_type=ImportError)
sys.path.insert(0, os.path.dirname(__file__))
from torch_reference_vit import TorchViT  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


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


def _tiny_model(**kw) -> VisionTransformer:
  return VisionTransformer(**{**TINY, **kw})


def _nchw(x: np.ndarray):
  return torch.from_numpy(x).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def ref():
  """(torch tiny ViT with random weights, its state dict as numpy)."""
  torch.manual_seed(0)
  m = TorchViT(**TINY, num_classes=10).eval()
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "norm" in name:
        p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p))
    m.cls_token.normal_()
    m.pos_embed.normal_()
  return m, {k: v.numpy().copy() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def variables(ref):
  return vit_variables_from_timm(ref[1], _tiny_model())


def _to_hf(sd: dict[str, np.ndarray], prefix: str = "vit.") -> dict[str, np.ndarray]:
  """timm names -> Hugging Face ViTForImageClassification names (qkv split into q, k, v)."""
  ren = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
         "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
  out = {prefix + "embeddings.cls_token": sd["cls_token"],
         prefix + "embeddings.position_embeddings": sd["pos_embed"],
         "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
  for k, v in sd.items():
    if k.startswith("patch_embed.proj."):
      out[prefix + "embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
    elif k.startswith("norm."):
      out[prefix + "layernorm." + k.split(".")[-1]] = v
    elif k.startswith("blocks."):
      _, i, rest = k.split(".", 2)
      layer, kind = f"{prefix}encoder.layer.{i}.", rest.rsplit(".", 1)
      if kind[0] == "attn.qkv":
        for name, part in zip(("query", "key", "value"), np.split(v, 3, axis=0), strict=True):
          out[f"{layer}attention.attention.{name}.{kind[1]}"] = part
      else:
        out[f"{layer}{ren[kind[0]]}.{kind[1]}"] = v
  return out


def test_reference_has_timm_layout():
  sd = TorchViT().state_dict()  # the vit_small_patch16_224 / deit_small_patch16_224 shapes
  assert sum(v.numel() for v in sd.values()) == 22_050_664
  per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
               "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
               "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
  expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
              "norm.weight", "norm.bias", "head.weight", "head.bias"}
  expected |= {f"blocks.{i}.{n}" for i in range(12) for n in per_block}
  assert set(sd) == expected
  assert sd["pos_embed"].shape == (1, 197, 384)
  assert sd["blocks.0.attn.qkv.weight"].shape == (1152, 384)


def test_parity_with_torch(ref, variables):
  m, _ = ref
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = m.forward_features(_nchw(x)).numpy()
  model = _tiny_model()
  out = _run(lambda v, x: model.apply(v, x, train=False), variables, jnp.asarray(x))
  assert out.shape == (2, 17, 48) == expected.shape
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4, rtol=0)


def test_small_patch16_shapes_match_the_timm_layout():
  sd = {k: v.numpy() for k, v in TorchViT().state_dict().items()}
  converted = vit_variables_from_timm(sd)
  for make in (vit_small_patch16, deit_small_patch16):
    model = make()
    assert (model.embed_dim, model.depth, model.num_heads, model.patch_size) == (384, 12, 6, 16)
    assert model.mlp_ratio == 4 and model.qkv_bias and model.layer_norm_eps == 1e-6
    out, v = jax.eval_shape(lambda x, model=model: model.init_with_output(
        jax.random.PRNGKey(0), x, train=False), jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert out.shape == (2, 197, 384)
    assert jax.tree.map(lambda a: a.shape, v) == jax.tree.map(lambda a: a.shape, converted)
    assert sum(a.size for a in jax.tree.leaves(v)) == 22_050_664 - 384 * 1000 - 1000
    out = jax.eval_shape(lambda v, x, model=model: model.apply(v, x, train=False), v,
                         jax.ShapeDtypeStruct((1, 256, 192, 3), jnp.float32))
    assert out.shape == (1, 1 + 16 * 12, 384)


def test_hf_names_give_the_same_variables(ref, variables):
  sd = ref[1]
  for prefix in ("vit.", ""):
    hf = _to_hf(sd, prefix)
    hf[prefix + "pooler.dense.weight"] = np.zeros((48, 48), np.float32)  # ignored
    jax.tree.map(np.testing.assert_array_equal, vit_variables_from_hf(hf, _tiny_model()),
                 variables)
  back = vit_state_dict_from_hf(_to_hf(sd))
  assert set(back) == set(sd) - {"head.weight", "head.bias"}
  hf = _to_hf(sd)
  hf["vit.embeddings.distillation_token"] = np.zeros((1, 1, 48), np.float32)
  with pytest.raises(ValueError, match="distill"):
    vit_variables_from_hf(hf)


def test_resample_pos_embed_matches_torch_bicubic_antialias():
  rng = np.random.default_rng(1)
  pe = rng.normal(size=(1, 1 + 6 * 6, 5)).astype(np.float32)
  for new in [(9, 7), (4, 3), (6, 6)]:
    grid = torch.from_numpy(pe[:, 1:]).reshape(1, 6, 6, 5).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", antialias=True)
    expected = np.concatenate([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, 5).numpy()], 1)
    out = resample_pos_embed(jnp.asarray(pe), new)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="square"):
    resample_pos_embed(jnp.asarray(pe[:, :-1]), (3, 3))


def test_other_image_size_resamples_pos_embed(ref, variables):
  m, sd = ref
  x = np.random.default_rng(2).normal(size=(1, 48, 40, 3)).astype(np.float32)
  grid = torch.from_numpy(sd["pos_embed"][:, 1:]).reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
  grid = torch.nn.functional.interpolate(grid, size=(6, 5), mode="bicubic", antialias=True)
  pos = torch.cat([torch.from_numpy(sd["pos_embed"][:, :1]),
                   grid.permute(0, 2, 3, 1).reshape(1, 30, 48)], 1)
  m2 = TorchViT(**{**TINY, "img_size": 48}, num_classes=10).eval()
  m2.pos_embed = torch.nn.Parameter(pos)  # a 6 x 5 grid; the reference only adds it
  m2.load_state_dict({k: v for k, v in m.state_dict().items() if k != "pos_embed"}, strict=False)
  with torch.no_grad():
    expected = m2.forward_features(_nchw(x)).numpy()
  # on the fly: a model made for 32 x 32 run on 48 x 40 images
  out = _run(lambda v, x: _tiny_model().apply(v, x, train=False), variables, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4, rtol=0)
  # at import: a model made for 48 x 40 (the checkpoint's 4 x 4 grid resampled to 6 x 5)
  model = VisionTransformer(patch_size=8, embed_dim=48, depth=2, num_heads=3, img_size=(48, 40))
  v = vit_variables_from_timm(sd, model)
  np.testing.assert_allclose(np.asarray(v["params"]["pos_embed"]), pos.detach().numpy(),
                             atol=1e-5, rtol=0)
  out = _run(lambda v, x: model.apply(v, x, train=False), v, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="multiple of patch_size"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 36, 40, 3)), train=False), v)


def test_weight_files_round_trip(ref, variables, tmp_path):
  m, sd = ref
  from safetensors.numpy import save_file
  st = tmp_path / "vit.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(st))
  hf = tmp_path / "hf.safetensors"
  save_file(_to_hf(sd), str(hf))
  pth = tmp_path / "deit.pth"  # Facebook's DeiT files wrap the state dict as {"model": ...}
  torch.save({"model": m.state_dict(), "epoch": 300}, str(pth))
  npz = tmp_path / "vit.npz"
  np.savez(npz, **{"module." + k: v for k, v in sd.items()})
  for path, kw in [(st, {}), (hf, {}), (pth, {}), (npz, {"strip_prefix": "module."}),
                   (hf, {"naming": "hf"})]:
    model, loaded = load_vit(path, _tiny_model(), **kw)
    assert model == _tiny_model()
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  with pytest.raises(ValueError, match="blocks"):
    load_vit(st, "deit_small_patch16")
  with pytest.raises(ValueError, match="variant"):
    load_vit(st, "vit_huge")


def test_missing_and_misshapen_weights(ref):
  sd = dict(ref[1])
  del sd["blocks.1.mlp.fc2.bias"]
  with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.fc2\.bias"):
    vit_variables_from_timm(sd, _tiny_model())
  sd = dict(ref[1])
  sd["blocks.0.attn.qkv.weight"] = np.zeros((48, 48), np.float32)
  with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*\(144, 48\)"):
    vit_variables_from_timm(sd, _tiny_model())
  with pytest.raises(ValueError, match="blocks"):
    vit_variables_from_timm(ref[1], _tiny_model(depth=3))
  hf = _to_hf(ref[1])
  del hf["vit.encoder.layer.0.attention.attention.key.weight"]
  with pytest.raises(KeyError, match="key.weight"):
    vit_variables_from_hf(hf)


def test_bfloat16_is_finite_and_close(ref, variables):
  x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = ref[0].forward_features(_nchw(x)).numpy()
  model = VisionTransformer(**{**TINY, "dtype": jnp.bfloat16})
  out = _run(lambda v, x: model.apply(v, x, train=False), variables, jnp.asarray(x))
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  assert np.all(np.isfinite(out))
  assert np.abs(out - expected).max() <= 0.1 * np.abs(expected).max()


def test_dropout_and_drop_path_only_in_training(variables):
  x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 32, 32, 3)), jnp.float32)
  model = VisionTransformer(**TINY, drop_path_rate=0.5, proj_drop_rate=0.1, attn_drop_rate=0.1)
  plain = _run(lambda v: _tiny_model().apply(v, x, train=True), variables)
  evaluated = _run(lambda v: model.apply(v, x, train=False), variables)
  np.testing.assert_allclose(evaluated, plain, atol=1e-6)

  def loss(v, key):
    out = model.apply(v, x, train=True, rngs={"dropout": key})
    return jnp.sum(out ** 2), out

  step = _compile(jax.value_and_grad(loss, has_aux=True), variables, jax.random.PRNGKey(0))
  (_, a), g = step(variables, jax.random.PRNGKey(0))
  (_, b), _ = step(variables, jax.random.PRNGKey(1))
  assert np.all(np.isfinite(np.asarray(a))) and not np.allclose(a, b)
  assert not np.allclose(a, plain)
  assert all(np.all(np.isfinite(np.asarray(t))) for t in jax.tree.leaves(g))
