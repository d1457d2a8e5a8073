"""TFDS builder for the DyML benchmarks (DyML-Vehicle, DyML-Animal, DyML-Product; manual download).

Reference: Sun et al., "Dynamic Metric Learning: Towards a Scalable Metric Space to Accommodate
Multiple Semantic Scales", CVPR 2021.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxdml.data.tfds_builders.inshop import rgb_image

_DESCRIPTION = """\
DyML: image retrieval at three semantic scales. Every training image has a coarse, a middle and
a fine label. DyML-Vehicle and DyML-Animal evaluate each level on its own query/gallery
benchmark; DyML-Product has one test set labelled at all three levels.
"""

_CITATION = """\
@inproceedings{sun2021dynamic,
  title={Dynamic Metric Learning: Towards a Scalable Metric Space to Accommodate Multiple
         Semantic Scales},
  author={Sun, Yifan and Zhu, Yuke and Zhang, Yuhan and Zheng, Pengkun and Qiu, Xi and
          Zhang, Chi and Wei, Yichen},
  booktitle={CVPR},
  year={2021}
}
"""

LEVELS = ("fine", "middle", "coarse")
_HEADER = re.compile(r"^\s*fname(?:\s*,\s*[A-Za-z_]*_id)+", re.IGNORECASE)


def read_label_csv(path: str, num_labels: int) -> list[tuple[str, tuple[int, ...]]]:
  """Rows (fname, labels) of a DyML label file.

  The files are comma-separated (`fname, coarse, middle, fine` for training and the Product test
  set, `fname, label` for the Vehicle/Animal benchmarks). The header (`fname, ..._id`) may be on
  its own line or directly followed by the first row on the same line, as in the released
  files; both are handled. Lines without exactly `1 + num_labels` fields are skipped.

  Args:
    path: the CSV file.
    num_labels: label columns after fname.

  Returns:
    (fname, labels) per row, in file order.
  """
  with open(path, encoding="utf-8") as f:
    text = _HEADER.sub("", f.read().lstrip("\ufeff"), count=1)
  rows = []
  for line in text.splitlines():
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 1 + num_labels or not fields[0]:
      continue
    try:
      labels = tuple(int(field) for field in fields[1:])
    except ValueError:
      continue
    rows.append((fields[0], labels))
  return rows


class DymlConfig(tfds.core.BuilderConfig):
  """A DyML dataset: vehicle, animal or product."""


class Dyml(tfds.core.GeneratorBasedBuilder):
  """DyML-Vehicle, DyML-Animal and DyML-Product, read from a manual download.

  Expected `manual_dir` layout: the extracted dataset, either directly in `manual_dir` or in
  `manual_dir/dyml_<config>/` (so one manual folder can hold all three)::

    dyml_vehicle/ (or dyml_animal/)
      train/label.csv                  rows: fname, coarse, middle, fine
      train/imgs/<fname>
      bmk_coarse/query.csv             rows: fname, label (at that level)
      bmk_coarse/query/<fname>
      bmk_coarse/gallery.csv
      bmk_coarse/gallery/<fname>
      bmk_middle/...                   as bmk_coarse
      bmk_fine/...                     as bmk_coarse
    dyml_product/
      train/label.csv, train/imgs/<fname>
      mini-bmk_all_in_one/label.csv    rows: fname, coarse, middle, fine
      mini-bmk_all_in_one/imgs/<fname>

  Splits: "train" and, for vehicle and animal, "query_<level>" and "gallery_<level>" for
  level in fine, middle, coarse; for product, "test". All in file order. Features: image,
  image/filename, fine_label, middle_label, coarse_label (the ids in the files; -1 for a level
  a split does not label).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DymlConfig(name="vehicle", description="DyML-Vehicle."),
      DymlConfig(name="animal", description="DyML-Animal."),
      DymlConfig(name="product", description="DyML-Product."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the DyML datasets from the links in
  https://github.com/SupetZYK/DynamicMetricLearning (README, "Downloads") and extract them into
  `manual_dir` as `dyml_vehicle/`, `dyml_animal/` and `dyml_product/` (or extract one of them
  directly into `manual_dir`).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            "fine_label": np.int64,
            "middle_label": np.int64,
            "coarse_label": np.int64,
        }),
        homepage="https://github.com/SupetZYK/DynamicMetricLearning",
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _root(self, manual_dir: str) -> str:
    nested = os.path.join(manual_dir, f"dyml_{self.builder_config.name}")
    root = nested if os.path.isdir(nested) else manual_dir
    if not os.path.isfile(os.path.join(root, "train", "label.csv")):
      raise FileNotFoundError(
          f"train/label.csv not found in {root}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return root

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = self._root(os.fspath(dl_manager.manual_dir))
    all_levels = ("coarse", "middle", "fine")
    splits = {"train": self._generate_examples(
        os.path.join(root, "train", "label.csv"), os.path.join(root, "train", "imgs"),
        all_levels)}
    if self.builder_config.name == "product":
      folder = os.path.join(root, "mini-bmk_all_in_one")
      splits["test"] = self._generate_examples(
          os.path.join(folder, "label.csv"), os.path.join(folder, "imgs"), all_levels)
      return splits
    for level in LEVELS:
      folder = os.path.join(root, f"bmk_{level}")
      for kind in ("query", "gallery"):
        splits[f"{kind}_{level}"] = self._generate_examples(
            os.path.join(folder, f"{kind}.csv"), os.path.join(folder, kind), (level,))
    return splits

  def _generate_examples(self, csv_path: str, image_dir: str,
                         levels: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    for key, (fname, labels) in enumerate(read_label_csv(csv_path, len(levels))):
      example = {f"{level}_label": -1 for level in LEVELS}
      example.update({f"{level}_label": label for level, label in zip(levels, labels, strict=True)})
      example["image"] = rgb_image(os.path.join(image_dir, fname))
      example["image/filename"] = fname
      yield key, example
