"""Random-access sources and dml_split's class-disjoint splits (TFDS mocked, no network)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxdml.data import sources


def test_array_source():
  images = np.arange(4 * 3 * 2 * 3, dtype=np.uint8).reshape(4, 3, 2, 3)
  src = sources.ArraySource(images, [3, 1, 3, 2], super_label=[1, 0, 1, 0])
  assert len(src) == 4 and src.labels.dtype == np.int64
  example = src[2]
  np.testing.assert_array_equal(example["image"], images[2])
  assert (example["label"], example["super_label"]) == (3, 1)
  grey = sources.ArraySource(np.zeros((2, 5, 5), np.uint8), [0, 1])
  assert grey[0]["image"].shape == (5, 5, 3)
  same = sources.ArraySource(images.copy(), [3, 1, 3, 2], super_label=[1, 0, 1, 0])
  assert repr(src) == repr(same)
  assert repr(src) != repr(sources.ArraySource(images, [3, 1, 3, 3], super_label=[1, 0, 1, 0]))
  restored = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(restored[1]["image"], images[1])
  with pytest.raises(ValueError):
    sources.ArraySource(images, [0, 1])


def test_image_folder_source(tmp_path):
  for name, values in (("zebra", (10, 20)), ("ant", (30,)), ("bee", (40, 50, 60))):
    os.makedirs(tmp_path / name)
    for i, v in enumerate(values):
      Image.fromarray(np.full((6, 7, 3), v, np.uint8)).save(tmp_path / name / f"{i}.png")
  Image.fromarray(np.full((4, 4), 99, np.uint8)).save(tmp_path / "bee" / "9.png")  # grey
  (tmp_path / "bee" / "notes.txt").write_text("not an image")
  src = sources.ImageFolderSource(tmp_path)
  assert src.class_names == ["ant", "bee", "zebra"]
  np.testing.assert_array_equal(src.labels, [0, 1, 1, 1, 1, 2, 2])
  assert src[0]["image"][0, 0].tolist() == [30, 30, 30] and src[0]["label"] == 0
  grey = src[4]["image"]
  assert grey.shape == (4, 4, 3) and grey.dtype == np.uint8 and grey[0, 0, 0] == 99
  assert src[6]["label"] == 2
  assert pickle.loads(pickle.dumps(src))[5]["image"][0, 0, 0] == 10


def test_relabel_and_subset():
  np.testing.assert_array_equal(sources.relabel([7, 3, 7, 10]), [1, 0, 1, 2])
  np.testing.assert_array_equal(sources.relabel([10, 3], reference=[3, 5, 10]), [2, 0])
  with pytest.raises(ValueError):
    sources.relabel([4], reference=[3, 5])
  base = sources.ArraySource(np.zeros((5, 2, 2, 3), np.uint8), [0, 1, 2, 3, 4])
  sub = sources.SubsetSource(base, [4, 1], {"label": [1, 0]})
  assert len(sub) == 2 and sub[0]["label"] == 1 and sub.labels.tolist() == [1, 0]
  assert "SubsetSource" in repr(sub) and repr(sub) == repr(
      sources.SubsetSource(base, [4, 1], {"label": [1, 0]}))


tfds = pytest.importorskip("tensorflow_datasets")


def _fake_data_source(counts):
  """An `as_data_source` replacement: `counts[split]` examples whose labels are i % classes."""

  def as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    del decoders, deserialize_method, kwargs
    num_classes = {"caltech_birds2011": 200, "cars196": 196}.get(self.name, 0)
    out = []
    for part in split.split("+"):
      offset = 0 if part == "train" else 1
      for i in range(counts[part]):
        value = np.uint8((i * 3 + offset) % 256)
        example = {"image": np.full((5, 4, 3), value, np.uint8)}
        if num_classes:
          example["label"] = (2 * i + offset) % num_classes
        else:  # stanford_online_products: class ids 0-49 train, 50-99 test
          example["class_id"] = 97 - (i % 50) if part == "test" else i % 50
          example["super_class_id"] = i % 12
        out.append(example)
    return out

  return as_data_source


@pytest.mark.parametrize("name,tfds_classes,train_classes", [("cub200", 200, 100),
                                                              ("cars196", 196, 98)])
def test_dml_split_class_disjoint(name, tfds_classes, train_classes):
  counts = {"train": tfds_classes, "test": tfds_classes}
  with tfds.testing.mock_data(as_data_source_fn=_fake_data_source(counts)):
    train = sources.dml_split(name, "train")
    test = sources.dml_split(name, "test")
  # Merged train+test: every class has 2 examples (one from each TFDS split).
  assert len(train) == 2 * train_classes and len(test) == 2 * (tfds_classes - train_classes)
  np.testing.assert_array_equal(np.bincount(train.labels), np.full(train_classes, 2))
  np.testing.assert_array_equal(np.bincount(test.labels),
                                np.full(tfds_classes - train_classes, 2))
  # Test class c is the original class c + train_classes.
  raw = np.concatenate([np.arange(tfds_classes) * 2 % tfds_classes,
                        (np.arange(tfds_classes) * 2 + 1) % tfds_classes])
  np.testing.assert_array_equal(test.labels, raw[raw >= train_classes] - train_classes)
  np.testing.assert_array_equal(train.labels, raw[raw < train_classes])
  example = test[0]
  assert example["image"].shape == (5, 4, 3) and example["image"].dtype == np.uint8
  assert example["label"] == test.labels[0]
  restored = pickle.loads(pickle.dumps(test))
  assert restored[3]["label"] == test[3]["label"]


def test_dml_split_sop():
  with tfds.testing.mock_data(as_data_source_fn=_fake_data_source({"train": 100, "test": 150})):
    train = sources.dml_split("sop", "train")
    test = sources.dml_split("sop", "test")
  assert len(train) == 100 and len(test) == 150
  np.testing.assert_array_equal(train.labels, np.arange(100) % 50)
  # Test classes 48..97 are renumbered 0..49 in order of their ids.
  np.testing.assert_array_equal(test.labels, 49 - np.arange(150) % 50)
  example = test[13]
  assert (example["label"], example["super_label"]) == (36, 1)
  with pytest.raises(ValueError):
    sources.dml_split("sop", "query")
  with pytest.raises(ValueError):
    sources.dml_split("unknown", "train")
