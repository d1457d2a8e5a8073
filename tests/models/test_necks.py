"""The neck seam: a module between the feature map and the pooling, by name and in the models."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import models
from jaxdml.app import build
from jaxdml.app.config import Config, ConfigError, apply_overrides, from_dict, to_dict
from jaxdml.models.glam import GLAM
from jaxdml.models.necks import NECKS, neck_from_name, neck_settings

OFF = dict(local_channel=False, local_spatial=False, global_channel=False, global_spatial=False)
GREY = jax.random.uniform(jax.random.key(0), (3, 32, 32))
RES = ["model.name=res_cnn"]


class _Scale(nn.Module):
  """A stand-in backbone: one 1 x 1 convolution (so the neck's input depends on parameters)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return nn.Conv(8, (1, 1), name="conv")(x)


def test_settings_are_the_module_fields_less_the_internal_ones():
  s = neck_settings("glam")
  assert set(s) == {f for f in GLAM.__dataclass_fields__} - {"parent", "name", "dtype"}
  assert s["dilations"] == (1, 3, 5) and s["softmax_axis"] == "key"
  assert set(NECKS) == {"glam", "projection"} and neck_settings("projection") == {"features": 2048}


def test_lists_become_tuples_and_overrides_apply():
  m = neck_from_name("glam", {"dilations": [1, 2], "global_spatial": False}, dtype=jnp.bfloat16)
  assert m.dilations == (1, 2) and m.global_spatial is False and m.dtype == jnp.bfloat16
  hash(m)  # a hashable module (settings read from JSON are lists)


@pytest.mark.parametrize("name,kwargs,match", [
    ("glm", {}, r"unknown neck 'glm'. Did you mean 'glam'\?"),
    ("glam", {"global_spatal": False}, r"unknown setting\(s\) \['global_spatal'\] of the 'glam' "
     r"neck \(did you mean 'global_spatial'"),
    ("glam", {"dtype": "float32"}, r"unknown setting\(s\) \['dtype'\]"),
    ("glam", {"kernel_size": 4}, "kernel_size must be odd and positive, got 4"),
    ("glam", {"spatial_kernel": 2}, "spatial_kernel must be odd and positive, got 2"),
    ("glam", {"dilations": [1, 0]}, r"dilations must be positive, got \(1, 0\)"),
    ("glam", {"local_spatial": 1}, "local_spatial must be true or false, got 1"),
    ("glam", {"reduced_channels": 2.5}, "reduced_channels must be an integer, got 2.5"),
    ("glam", {"softmax_axis": "query"}, "softmax_axis must be one of"),
])
def test_bad_names_and_settings_are_named(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    neck_from_name(name, kwargs)


def test_embedding_model_applies_the_neck_inside_features():
  x = jax.random.normal(jax.random.key(1), (2, 6, 5, 3))
  model = models.EmbeddingModel(backbone=_Scale(), neck=GLAM(), embedding_dim=4)
  v = model.init(jax.random.key(2), x, train=False)
  assert set(v["params"]) == {"backbone", "neck", "head"}
  feats = model.apply(v, x, train=False, method="features")
  raw = _Scale().apply({"params": v["params"]["backbone"]}, x)
  np.testing.assert_allclose(feats, GLAM().apply({"params": v["params"]["neck"]}, raw),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(feats, raw, atol=1e-3)  # the neck acts
  emb = model.apply(v, feats, train=False, method="embed_features")
  np.testing.assert_allclose(model.apply(v, x, train=False), emb, rtol=1e-6, atol=1e-6)


def test_res_cnn_with_an_identity_neck_is_the_res_cnn():
  """GLAM with its four branches off is the identity, so the embeddings are those of the same
  weights without a neck; with the branches on they differ."""
  plain = models.ResCNN(embedding_dim=8)
  v = plain.init(jax.random.key(3), GREY)
  off = models.ResCNN(embedding_dim=8, neck=GLAM(**OFF))
  np.testing.assert_allclose(off.apply(v, GREY), plain.apply(v, GREY), rtol=1e-6, atol=1e-6)
  on = models.ResCNN(embedding_dim=8, neck=GLAM())
  v_on = on.init(jax.random.key(3), GREY)
  assert set(v_on["params"]) == {"trunk", "neck", "head"}
  v_on = {**v_on, "params": {**v["params"], "neck": v_on["params"]["neck"]}}
  assert not np.allclose(on.apply(v_on, GREY), plain.apply(v, GREY), atol=1e-4)


def test_res_cnn_gem_pooling_is_the_generalised_mean():
  m = models.ResCNN(embedding_dim=8, pooling="gem", gem_p=3.0, normalize=False)
  v = m.init(jax.random.key(4), GREY)
  assert v["params"]["gem"]["p"].tolist() == [3.0]
  feats = np.asarray(m.apply(v, GREY, method="features"), np.float64)
  gem = np.mean(np.maximum(feats, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
  k, b = (np.asarray(v["params"]["head"]["embedding"][n], np.float64) for n in ("kernel", "bias"))
  np.testing.assert_allclose(m.apply(v, GREY), gem @ k + b, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="pooling must be one of"):
    models.ResCNN(pooling="cls").init(jax.random.key(0), GREY)


def test_config_builds_the_neck_and_round_trips():
  c = apply_overrides(Config(), [*RES, "model.neck=glam", "model.pooling=gem",
                                 "model.neck_kwargs.global_spatial=false",
                                 "model.neck_kwargs.dilations=[1,2]"])
  model, _ = build.build_model(c)
  assert isinstance(model.neck, GLAM) and model.pooling == "gem"
  assert model.neck.global_spatial is False and model.neck.dilations == (1, 2)
  assert from_dict(to_dict(c)) == c
  resnet, _ = build.build_model(apply_overrides(Config(), [
      "data.dataset=cub200", "model.name=resnet18", "model.neck=glam",
      "model.compute_dtype=bfloat16"]))
  assert isinstance(resnet.neck, GLAM) and resnet.neck.dtype == jnp.bfloat16


@pytest.mark.parametrize("overrides,match", [
    (["model.neck=glm"], "unknown neck 'glm'"),
    ([*RES, "model.neck=glam", "model.neck_kwargs.kernel_size=2"],
     "model.neck_kwargs.kernel_size='2': model.neck_kwargs of the 'glam' neck: kernel_size"),
    ([*RES, "model.neck_kwargs.local_spatial=false"], "is set without a neck"),
    (["model.neck=glam"], "the small CNN embeds its flattened feature map, so a neck does not"),
    (["data.dataset=cub200", "model.name=vit_small_patch16", "model.neck=glam"],
     "gives tokens, so model.neck does not apply"),
    ([*RES, "model.pooling=cls"], "res_cnn gives a feature map"),
])
def test_config_errors_name_the_field(overrides, match):
  with pytest.raises(ConfigError, match=match):
    apply_overrides(Config(), overrides)


def test_projection_neck_and_a_descriptor_without_embedding_layer():
  """AML's student: backbone, 1 x 1 projection (no bias) + ReLU, GeM, L2, no linear layer."""
  c = apply_overrides(Config(), ["data.dataset=cub200", "model.name=resnet18",
                                 "model.neck=projection", "model.neck_kwargs.features=24",
                                 "model.embedding_layer=false", "model.embedding_dim=24",
                                 "model.pooling=gem"])
  model, _ = build.build_model(c)
  x = jax.random.normal(jax.random.key(5), (2, 64, 64, 3))
  v = model.init(jax.random.key(6), x, train=False)
  assert set(v["params"]) == {"backbone", "neck", "gem"}  # no embedding layer
  assert v["params"]["neck"]["conv"]["kernel"].shape == (1, 1, 512, 24)
  out = model.apply(v, x, train=False)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  feats = model.apply(v, x, train=False, method="features")
  assert feats.shape[-1] == 24 and float(feats.min()) >= 0.0  # after the ReLU
  gem = np.mean(np.maximum(np.asarray(feats, np.float64), 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
  np.testing.assert_allclose(out, gem / np.linalg.norm(gem, axis=1, keepdims=True), rtol=1e-4)
  plain, _ = build.build_model(apply_overrides(Config(), [
      "data.dataset=cub200", "model.name=resnet18", "model.embedding_layer=false",
      "model.embedding_dim=512"]))
  assert plain.embedding_dim is None


@pytest.mark.parametrize("overrides,match", [
    (["data.dataset=cub200", "model.name=resnet18", "model.embedding_layer=false"],
     r"pooled 512-channel map the descriptor, but model.embedding_dim=128"),
    (["data.dataset=cub200", "model.name=resnet18", "model.neck=projection",
      "model.neck_kwargs.features=32", "model.embedding_layer=false"],
     r"pooled 32-channel map"),
    (["model.name=res_cnn", "model.embedding_layer=false"], "model.embedding_layer applies to"),
    (["data.dataset=cub200", "model.name=resnet18", "model.neck=projection",
      "model.neck_kwargs.features=0"], "features must be a positive integer"),
])
def test_descriptor_size_errors(overrides, match):
  with pytest.raises((ConfigError, ValueError), match=match):
    build.build_model(apply_overrides(Config(), overrides))
