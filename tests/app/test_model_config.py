"""Model options the chosen model does not use, and pretrained files, are refused up front."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxdml import cli
from jaxdml.app import build
from jaxdml.app.config import CNN_POOLING, Config, ConfigError, ModelConfig, apply_overrides
from jaxdml.app.experiment import run
from jaxdml.models.heads import POOLING_METHODS

RESNET = ["data.dataset=cub200", "model.name=resnet50"]
VIT = ["data.dataset=cub200", "model.name=vit_small_patch16"]


def test_pooling_choices_are_the_models():
  assert set(ModelConfig.__annotations__) >= {"pooling"}
  assert set(CNN_POOLING) < set(POOLING_METHODS)
  assert set(POOLING_METHODS) - set(CNN_POOLING) == {"cls", "tokens_avg"}
  for method in POOLING_METHODS:  # the config accepts exactly EmbeddingModel's methods
    assert apply_overrides(Config(), [*VIT, f"model.pooling={method}"]).model.pooling == method


@pytest.mark.parametrize("overrides", [[], RESNET])
def test_misspelled_pooling_lists_the_valid_values(overrides):
  with pytest.raises(ConfigError, match=r"model.pooling='avgg': expected one of 'avg', 'max', "
                     r"'avg\+max', 'gem', 'cls', 'tokens_avg' or none; closest: 'avg'"):
    apply_overrides(Config(), [*overrides, "model.pooling=avgg"])


@pytest.mark.parametrize("setting,message", [
    ("model.pooling=avg", "the small CNN embeds its flattened feature map"),
    ("model.frozen_bn=true", "no batch norm, so model.frozen_bn does not apply to small_cnn"),
    ("model.layer_norm=true", "no layer norm, so model.layer_norm does not apply to small_cnn"),
    ("model.compute_dtype=bfloat16",
     "float32 only, so model.compute_dtype does not apply to small_cnn"),
    ("model.pretrained=w.safetensors", "the small CNN has no pretrained weights"),
    ("model.poincare_c=0.2", "model.poincare_c applies to the hyperbolic head only"),
    ("model.clip_r=1.0", "model.clip_r applies to the hyperbolic head only"),
])
def test_small_cnn_refuses_the_options_it_does_not_use(setting, message):
  with pytest.raises(ConfigError, match=message):
    apply_overrides(Config(), [setting])


def test_small_cnn_options_it_uses():
  c = apply_overrides(Config(), ["model.conv_impl=xla", "model.normalize_embeddings=false",
                                 "model.embedding_dim=8"])
  assert (c.model.conv_impl, c.model.normalize_embeddings) == ("xla", False)
  c = apply_overrides(Config(), ["model.head=hyperbolic", "model.poincare_c=0.2",
                                 "model.clip_r=1.5", "objective.loss=proxy_anchor"])
  assert c.model.ball == (0.2, 1.5)
  # the defaults of unused options are fine (they cannot be told from unset)
  assert ModelConfig(frozen_bn=False, layer_norm=False, compute_dtype="float32").name == (
      "small_cnn")


@pytest.mark.parametrize("overrides,message", [
    ([*RESNET, "model.conv_impl=xla"],
     "model.conv_impl applies to small_cnn and res_cnn only, resnet50"),
    ([*RESNET, "model.pooling=cls"], "model.pooling='cls' pools a ViT's tokens; resnet50 gives a "
     r"feature map: model.pooling must be one of avg, max, avg\+max, gem"),
    ([*RESNET, "model.pooling=tokens_avg"], "must be one of avg, max, avg"),
    ([*VIT, "model.frozen_bn=true"], "model.frozen_bn does not apply to vit_small_patch16"),
    ([*RESNET, "model.clip_r=2.0"], "model.clip_r applies to the hyperbolic head only"),
])
def test_image_backbones_refuse_the_options_they_do_not_use(overrides, message):
  with pytest.raises(ConfigError, match=message):
    apply_overrides(Config(), overrides)


def test_image_backbones_accept_their_options():
  c = apply_overrides(Config(), [*RESNET, "model.pooling=gem", "model.frozen_bn=true",
                                 "model.layer_norm=true", "model.compute_dtype=bfloat16"])
  assert (c.model.pooling, c.model.frozen_bn, c.model.layer_norm) == ("gem", True, True)
  model, _ = build.build_model(c)
  assert (model.pooling, model.layer_norm, model.backbone.frozen_bn) == ("gem", True, True)
  c = apply_overrides(Config(), [*VIT, "model.pooling=tokens_avg", "model.layer_norm=true"])
  assert build.build_model(c)[0].pooling == "tokens_avg"


def test_a_saved_config_is_checked_too():
  with pytest.raises(ValueError, match="model.conv_impl applies to small_cnn and res_cnn only"):
    ModelConfig(name="resnet18", conv_impl="xla")


def _image_config(tmp_path, pretrained):
  return apply_overrides(Config(name="tiny"), [
      "data.dataset=image_folder", f"data.data_dir={tmp_path / 'no_images_needed'}",
      "model.name=resnet18", f"model.pretrained={pretrained}", "objective.loss=proxy_anchor",
      "data.per_class=2", "loop.epochs=1"])


def test_a_bad_pretrained_file_stops_the_run_before_the_data_are_read(tmp_path):
  path = tmp_path / "w.safetensors"
  path.write_bytes(b"\xff" * 64)
  with pytest.raises(ValueError, match="is not a readable .safetensors file") as info:
    run(_image_config(tmp_path, path), progress=False, verbose=False)  # no data set exists
  assert repr(str(path)) in str(info.value)
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    build.build_model(_image_config(tmp_path, tmp_path / "missing.pth"))


def test_the_cli_reports_a_bad_pretrained_file_in_one_line(tmp_path, capsys):
  path = tmp_path / "w.npz"
  path.write_bytes(b"not a zip")
  code = cli.main(["train", "--dataset", "image_folder", "--data-dir", str(tmp_path),
                   "--model", "resnet18", "--pretrained", str(path), "--loss", "proxy_anchor",
                   "--set", "data.per_class=2", "--no-workdir", "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert err.startswith(f"error: weight file {str(path)!r} is not a readable .npz file")


def test_weights_that_do_not_fit_the_backbone_name_the_file(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, **{"features.0.weight": np.zeros((2, 3), np.float32)})
  _, load_pretrained = build.build_model(_image_config(tmp_path, path))  # the header is fine
  with pytest.raises(ValueError, match=r"model.pretrained='.*other.npz' does not fit resnet18: "
                     r"weight '[\w.]+' is missing from the state dict"):
    load_pretrained({})


def test_res_cnn_layout_from_the_config():
  config = apply_overrides(Config(), ["model.name=res_cnn", "model.widths=[8,16]",
                                      "model.blocks=[2,1]"])
  model, _ = build.build_model(config)
  assert model.widths == (8, 16) and model.blocks == (2, 1)
  x = np.zeros((2, 8, 16), np.float32)  # the digit pairs: two stages fit 8 x 16
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  assert model.apply(variables, x, train=False).shape == (2, 128)
  only_widths, _ = build.build_model(apply_overrides(Config(), ["model.name=res_cnn",
                                                                "model.widths=[8,16]"]))
  assert only_widths.blocks == (1, 1)
  default, _ = build.build_model(apply_overrides(Config(), ["model.name=res_cnn"]))
  assert default.widths == (16, 32, 64) and default.blocks == (1, 1, 1)
  with pytest.raises(ConfigError, match="one entry per stage"):
    apply_overrides(Config(), ["model.name=res_cnn", "model.blocks=[1,1]"])
  with pytest.raises(ConfigError, match="ints >= 1"):
    apply_overrides(Config(), ["model.name=res_cnn", "model.widths=[8,0]"])
  with pytest.raises(ConfigError, match="apply to res_cnn"):
    apply_overrides(Config(), ["model.widths=[8,16]"])
