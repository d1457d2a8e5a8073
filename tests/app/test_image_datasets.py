"""An image-folder dataset through the grain pipeline, a ResNet-18 and the trainer, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxdml import cli
from jaxdml.app.config import Config, DataConfig, apply_overrides
from jaxdml.app.experiment import run
from jaxdml.app.image_datasets import eval_plan


def _folder(root, split, classes, per_class, seed):
  rng = np.random.default_rng(seed)
  for c in classes:
    d = root / split / f"class_{c:02d}"
    d.mkdir(parents=True)
    base = rng.integers(0, 255, (3,))
    for i in range(per_class):
      img = np.clip(base + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  _folder(root, "train", range(6), 4, 0)
  _folder(root, "test", range(6, 10), 3, 1)
  return root


def test_image_folder_run_with_resnet(folder, tmp_path):
  config = apply_overrides(Config(name="tiny"), [
      "data.dataset=image_folder", f"data.data_dir={folder}", "model.name=resnet18",
      "data.image_size=32", "data.resize_size=36", "model.embedding_dim=16",
      "model.pooling=avg+max", "model.frozen_bn=true", "data.classes_per_batch=3",
      "data.per_class=2", "loop.epochs=2", "optim.learning_rate=1e-3",
      "objective.loss=proxy_anchor", "eval.batch_size=8", f"loop.workdir={tmp_path / 'run'}",
      "eval.recall_ks=1,2"])
  result = run(config, progress=False, verbose=False)
  m = result["metrics"]["trained"]
  assert m == result["final"]
  assert 0.0 <= m["recall@1"] <= 1.0 and np.isfinite(m["map@r"])
  assert np.isfinite(result["losses"]).all() and len(result["losses"]) == 2 * 4
  for name in ("retrieval.png", "curves.png", "metrics.jsonl", "config.json"):
    assert (tmp_path / "run" / name).exists(), name
  # `jaxdml eval` on the run directory gives the same figures
  out = tmp_path / "eval.json"
  assert cli.main(["eval", "--workdir", str(tmp_path / "run"), "--output", str(out)]) == 0
  again = json.loads(out.read_text())["metrics"]["trained"]
  assert abs(again["map@r"] - m["map@r"]) < 1e-6


def test_eval_plans():
  assert eval_plan("cub200") == [("", "loo", ("test",))]
  assert eval_plan("inshop") == [("", "query_gallery", ("query", "gallery"))]
  assert [p[0] for p in eval_plan("dyml_vehicle")] == ["fine", "middle", "coarse"]
  assert eval_plan("dyml_product")[1] == ("middle", "loo", ("test_middle",))


def test_image_dataset_needs_an_image_backbone(folder):
  with pytest.raises(ValueError, match="backbone"):
    Config(data=DataConfig(dataset="image_folder", data_dir=str(folder)))
