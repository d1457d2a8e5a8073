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


def _corrupt_folder(root):
  _folder(root, "train", range(4), 3, 2)
  _folder(root, "test", range(4, 6), 3, 3)
  bad = root / "train" / "class_01" / "broken.jpg"
  bad.write_bytes(b"\x00 not an image, only bytes")
  return bad


def _corrupt_config(root, *more):
  return apply_overrides(Config(name="tiny"), [
      "data.dataset=image_folder", f"data.data_dir={root}", "model.name=resnet18",
      "data.image_size=32", "data.resize_size=36", "model.embedding_dim=8",
      "data.classes_per_batch=2", "data.per_class=2", "loop.epochs=1",
      "objective.loss=proxy_anchor", "eval.batch_size=8", *more])


def test_a_corrupt_image_stops_the_run_before_training(tmp_path, monkeypatch, capsys):
  bad = _corrupt_folder(tmp_path / "data")
  from jaxdml.train import loop  # noqa: PLC0415
  monkeypatch.setattr(loop, "init_state", lambda *a, **k: pytest.fail("training started"))
  with pytest.raises(ValueError, match="1 of the 13 images of image_folder 'train' cannot be "
                     "decoded") as info:
    run(_corrupt_config(tmp_path / "data"), progress=False, verbose=False)
  assert str(bad) in str(info.value) and "data.undecodable=skip" in str(info.value)
  code = cli.main(["train", "--config", "digits", "--dataset", "image_folder", "--data-dir",
                   str(tmp_path / "data"), "--model", "resnet18", "--loss", "proxy_anchor",
                   "--no-workdir", "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert err.startswith("error: 1 of the 13 images of image_folder 'train' cannot be decoded")


def test_skip_leaves_a_corrupt_image_out_and_caches_the_check(tmp_path, capsys, monkeypatch):
  from jaxdml.app import image_datasets  # noqa: PLC0415
  from jaxdml.app.build import build_mesh  # noqa: PLC0415
  from jaxdml.data import verify  # noqa: PLC0415
  root = tmp_path / "data"
  bad = _corrupt_folder(root)
  config = _corrupt_config(root, "data.undecodable=skip", f"loop.workdir={tmp_path / 'run'}")
  (tmp_path / "run").mkdir()
  task = image_datasets.make_task(config, build_mesh(config))
  assert task.summary.startswith("image_folder: 12 training images of 4 classes")
  err = capsys.readouterr().err
  assert "left out 1 of the 13 images of image_folder 'train'" in err and str(bad) in err
  batch = next(iter(task.batches))
  assert batch["image"].shape == (4, 32, 32, 3)
  check = tmp_path / "run" / image_datasets.CHECK_FILE
  assert len(json.loads(check.read_text())["sources"]) == 2  # train and test
  # the same files again (a resumed run): the check is read back, nothing is decoded
  monkeypatch.setattr(verify, "find_undecodable", lambda *a, **k: pytest.fail("decoded again"))
  again = image_datasets.make_task(config, build_mesh(config))
  assert again.summary == task.summary


def test_digit_pairs_are_not_checked(monkeypatch):
  from jaxdml import data  # noqa: PLC0415
  from jaxdml.app.experiment import make_task  # noqa: PLC0415
  from jaxdml.data import verify  # noqa: PLC0415
  monkeypatch.setattr(verify, "find_undecodable", lambda *a, **k: pytest.fail("checked"))
  monkeypatch.setattr(data, "verify_images", lambda *a, **k: pytest.fail("checked"))
  config = apply_overrides(Config(), ["data.train_images_per_class=4",
                                      "data.test_images_per_class=2"])
  assert make_task(config, None).num_classes > 0
