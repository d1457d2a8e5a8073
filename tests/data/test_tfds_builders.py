"""TFDS builders (In-shop, DyML) prepared from tiny fake manual downloads, read via dml_split."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")
# TFDS needs it to locate the code of builders defined outside its own package.
pytest.importorskip("importlib_resources", reason="importlib-resources is not installed")

from jaxdml.data import pipeline, sources  # noqa: E402
from jaxdml.data.tfds_builders import dyml as dyml_lib  # noqa: E402
from jaxdml.data.tfds_builders import inshop as inshop_lib  # noqa: E402


def _write_image(path, value, mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.full((8, 8, 3), value, np.uint8)
  img = Image.fromarray(array)
  if mode != "RGB":
    img = img.convert(mode)
  img.save(path)


def _make_inshop(root):
  # (item, status) per image; items 1-2 train, 5 and 9 are query/gallery items.
  rows = [(1, "train"), (1, "train"), (2, "train"), (2, "train"), (2, "train"),
          (9, "query"), (5, "query"), (9, "gallery"), (5, "gallery"), (5, "gallery")]
  lines = [str(len(rows)), "image_name item_id evaluation_status"]
  for n, (item, status) in enumerate(rows):
    name = f"img/WOMEN/Dresses/id_{item:08d}/{n:02d}_1_front.jpg"
    _write_image(os.path.join(root, name), 10 * n, mode="L" if n == 3 else "RGB")
    lines.append(f"{name} id_{item:08d} {status}")
  os.makedirs(os.path.join(root, "Eval"))
  with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


def test_inshop_builder_and_dml_split(tmp_path):
  manual, data = str(tmp_path / "manual"), str(tmp_path / "data")
  _make_inshop(manual)
  train = sources.dml_split("inshop", "train", data_dir=data, manual_dir=manual)
  query = sources.dml_split("inshop", "query", data_dir=data)
  gallery = sources.dml_split("inshop", "gallery", data_dir=data)
  assert (len(train), len(query), len(gallery)) == (5, 2, 3)
  np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(query.labels, [1, 0])      # items 9, 5 -> shared numbering
  np.testing.assert_array_equal(gallery.labels, [1, 0, 0])
  example = train[3]
  assert example["image"].shape == (8, 8, 3) and example["image"].dtype == np.uint8
  assert example["label"] == 1
  assert abs(int(train[2]["image"].mean()) - 20) <= 3  # file order kept (JPEG is lossy)
  builder = tfds.builder("deepfashion_inshop", data_dir=data)
  assert builder.info.splits["train"].num_examples == 5
  restored = pickle.loads(pickle.dumps(gallery))
  np.testing.assert_array_equal(restored[2]["image"], gallery[2]["image"])
  batch = next(pipeline.make_train_loader(train, classes_per_batch=2, per_class=2, image_size=6))
  assert batch["image"].shape == (4, 6, 6, 3)
  assert sorted(batch["label"].tolist()) == [0, 0, 1, 1]
  evals = list(pipeline.make_eval_loader(query, batch_size=3, image_size=6, resize_size=7))
  assert len(evals) == 1 and evals[0]["mask"].tolist() == [True, True, False]


def test_inshop_partition_parser(tmp_path):
  path = tmp_path / "p.txt"
  path.write_text("3\nimage_name item_id evaluation_status\n"
                  "img/a/id_00000007/01.jpg id_00000007 train\n\n"
                  "img/b/id_00000011/02.jpg   id_00000011   gallery\n")
  rows = inshop_lib.read_partition(str(path))
  assert rows == [("img/a/id_00000007/01.jpg", "id_00000007", "train"),
                  ("img/b/id_00000011/02.jpg", "id_00000011", "gallery")]
  assert inshop_lib.item_number("id_00000011") == 11


def _write_csv(path, header, rows, glued):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  body = "\n".join(", ".join(str(x) for x in row) for row in rows)
  with open(path, "w") as f:
    f.write(header + ("" if glued else "\n") + body + "\n")


def _make_dyml(root, config):
  base = os.path.join(root, f"dyml_{config}")
  train = [(f"t{i}.png", i % 2 + 3, i % 3 + 10, i % 4 + 20) for i in range(8)]
  for fname, *_ in train:
    _write_image(os.path.join(base, "train", "imgs", fname), 30)
  # The released files glue the header to the first row; accept both forms.
  _write_csv(os.path.join(base, "train", "label.csv"), "fname, coarse_id, middle_id, fine_id",
             train, glued=True)
  if config == "product":
    test = [(f"x{i}.jpg", 7 + i % 2, 50 + i % 3, 90 + i) for i in range(5)]
    for fname, *_ in test:
      _write_image(os.path.join(base, "mini-bmk_all_in_one", "imgs", fname), 60)
    _write_csv(os.path.join(base, "mini-bmk_all_in_one", "label.csv"),
               "fname, coarse_id, middle_id, fine_id", test, glued=False)
    return
  for level, ids in (("fine", (31, 33)), ("middle", (12, 14)), ("coarse", (4, 6))):
    for kind, count in (("query", 2), ("gallery", 4)):
      rows = [(f"{kind}{i}.jpg", ids[i % 2]) for i in range(count)]
      if kind == "query":
        rows = [(f, ids[1]) for f, _ in rows]  # queries of the second class only
      for fname, _ in rows:
        _write_image(os.path.join(base, f"bmk_{level}", kind, fname), 90)
      _write_csv(os.path.join(base, f"bmk_{level}", f"{kind}.csv"), "fname, label_id", rows,
                 glued=kind == "gallery")


def test_dyml_vehicle_builder_and_dml_split(tmp_path):
  manual, data = str(tmp_path / "manual"), str(tmp_path / "data")
  _make_dyml(manual, "vehicle")
  train = sources.dml_split("dyml_vehicle", "train", data_dir=data, manual_dir=manual)
  assert len(train) == 8
  np.testing.assert_array_equal(train.labels, np.arange(8) % 4)
  np.testing.assert_array_equal(train.columns["middle_label"], np.arange(8) % 3)
  np.testing.assert_array_equal(train.columns["coarse_label"], np.arange(8) % 2)
  example = train[5]
  assert example["image"].shape == (8, 8, 3)
  assert (example["label"], example["middle_label"], example["coarse_label"]) == (1, 2, 1)
  for level in dyml_lib.LEVELS:
    query = sources.dml_split("dyml_vehicle", f"query_{level}", data_dir=data)
    gallery = sources.dml_split("dyml_vehicle", f"gallery_{level}", data_dir=data)
    np.testing.assert_array_equal(query.labels, [1, 1])
    np.testing.assert_array_equal(gallery.labels, [0, 1, 0, 1])
    assert set(query[0]) == {"image", "label"}
  with pytest.raises(ValueError):
    sources.dml_split("dyml_vehicle", "test", data_dir=data)


def test_dyml_product_builder_and_dml_split(tmp_path):
  manual, data = str(tmp_path / "manual"), str(tmp_path / "data")
  _make_dyml(manual, "product")
  train = sources.dml_split("dyml_product", "train", data_dir=data, manual_dir=manual)
  assert len(train) == 8
  test = sources.dml_split("dyml_product", "test", data_dir=data)
  np.testing.assert_array_equal(test.labels, np.arange(5))
  np.testing.assert_array_equal(test.columns["middle_label"], np.arange(5) % 3)
  np.testing.assert_array_equal(test.columns["coarse_label"], np.arange(5) % 2)
  coarse = sources.dml_split("dyml_product", "test_coarse", data_dir=data)
  np.testing.assert_array_equal(coarse.labels, np.arange(5) % 2)
  assert coarse[0]["image"].shape == (8, 8, 3)


def test_dyml_csv_reader_handles_glued_header(tmp_path):
  path = tmp_path / "label.csv"
  path.write_text("fname, coarse_id, middle_id, fine_id0.jpg, 1, 2, 3\n1.jpg, 4, 5, 6\n\n")
  assert dyml_lib.read_label_csv(str(path), 3) == [("0.jpg", (1, 2, 3)), ("1.jpg", (4, 5, 6))]
  path.write_text("fname, fine_id\nq.jpg, 7\n")
  assert dyml_lib.read_label_csv(str(path), 1) == [("q.jpg", (7,))]
