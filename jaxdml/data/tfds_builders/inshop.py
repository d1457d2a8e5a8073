"""TFDS builder for DeepFashion In-shop Clothes Retrieval (manual download).

Reference: Liu et al., "DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich
Annotations", CVPR 2016.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

_DESCRIPTION = """\
DeepFashion In-shop Clothes Retrieval: 52,712 images of 7,982 clothing items. The standard
retrieval protocol trains on 25,882 images of 3,997 items and evaluates 14,218 query images
against 12,612 gallery images of the other 3,985 items.
"""

_CITATION = """\
@inproceedings{liu2016deepfashion,
  title={DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich Annotations},
  author={Liu, Ziwei and Luo, Ping and Qiu, Shi and Wang, Xiaogang and Tang, Xiaoou},
  booktitle={CVPR},
  year={2016}
}
"""

SPLITS = ("train", "query", "gallery")


def rgb_image(path: str) -> Any:
  """The file at `path` if PIL reads it as an RGB JPEG or PNG, else PNG bytes of its RGB form.

  Stored images then always decode to three channels.
  """
  with Image.open(path) as img:
    if img.mode == "RGB" and img.format in ("JPEG", "PNG"):
      return path
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, format="PNG")
  return buffer.getvalue()


def item_number(item_id: str) -> int:
  """The integer of an In-shop item id such as "id_00000080" (80)."""
  digits = "".join(ch for ch in item_id if ch.isdigit())
  if not digits:
    raise ValueError(f"Item id {item_id!r} has no digits.")
  return int(digits)


def read_partition(path: str) -> list[tuple[str, str, str]]:
  """Rows (image_name, item_id, evaluation_status) of `Eval/list_eval_partition.txt`.

  The file starts with the number of rows, then the column names, then one whitespace-separated
  row per image; lines that do not have three fields, or whose status is not train, query or
  gallery, are skipped (this also skips the two header lines).
  """
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      fields = line.split()
      if len(fields) == 3 and fields[2] in SPLITS:
        rows.append((fields[0], fields[1], fields[2]))
  return rows


class DeepfashionInshop(tfds.core.GeneratorBasedBuilder):
  """DeepFashion In-shop Clothes Retrieval, read from a manual download.

  Expected `manual_dir` layout (the "In-shop Clothes Retrieval Benchmark" folder of DeepFashion,
  with `img.zip` extracted in place)::

    <manual_dir>/
      img/<GROUP>/<Cat>/id_<8 digits>/<image>.jpg   e.g. img/MEN/Denim/id_00000080/01_1_front.jpg
      Eval/list_eval_partition.txt

  `list_eval_partition.txt` has the number of images on its first line, the column names
  `image_name item_id evaluation_status` on its second, then one row per image, e.g.
  `img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`; image names are relative
  to `<manual_dir>`.

  Splits: train, query, gallery (in file order). Features: image, image/filename (as listed),
  item_id (the integer of "id_<8 digits>").
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the "In-shop Clothes Retrieval Benchmark" of DeepFashion
  (https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html): `img.zip` and
  `Eval/list_eval_partition.txt`. Extract `img.zip` into `manual_dir` so that it holds `img/`
  and `Eval/list_eval_partition.txt`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            "item_id": np.int64,
        }),
        supervised_keys=("image", "item_id"),
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    root = os.fspath(dl_manager.manual_dir)
    partition = os.path.join(root, "Eval", "list_eval_partition.txt")
    if not os.path.isfile(partition):
      raise FileNotFoundError(
          f"{partition} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    rows = read_partition(partition)
    return {split: self._generate_examples(root, [r for r in rows if r[2] == split])
            for split in SPLITS}

  def _generate_examples(self, root: str,
                         rows: list[tuple[str, str, str]]) -> Iterator[tuple[int, dict]]:
    for key, (image_name, item_id, _) in enumerate(rows):
      yield key, {
          "image": rgb_image(os.path.join(root, image_name)),
          "image/filename": image_name,
          "item_id": item_number(item_id),
      }
