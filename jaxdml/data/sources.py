"""Random-access image sources for deep metric learning.

A *source* has `__len__`, `__getitem__(i) -> {"image": uint8 [H, W, 3], "label": int, ...}` and
an attribute `labels` (int64 [N], every example's label, available without decoding images).
Further integer label columns (e.g. "super_label", "middle_label", "coarse_label") are listed in
the attribute `columns` (name -> int64 [N], "label" included) and appear in every example.
Sources pickle (Grain worker processes receive copies) and have a deterministic `repr`, which
Grain compares when an iterator state is restored.

`dml_split` returns the standard class-disjoint splits of the usual benchmarks:

  ============== ========================= ===================================================
  name           TFDS dataset              splits
  ============== ========================= ===================================================
  cub200         caltech_birds2011         train (classes 0-99), test (100-199 -> 0-99)
  cars196        cars196                   train (classes 0-97), test (98-195 -> 0-97)
  sop            stanford_online_products  train, test (label: product; super_label: category)
  inshop         deepfashion_inshop        train, query, gallery (label: item)
  dyml_vehicle   dyml/vehicle              train, {query,gallery}_{fine,middle,coarse}
  dyml_animal    dyml/animal               train, {query,gallery}_{fine,middle,coarse}
  dyml_product   dyml/product              train, test, test_{fine,middle,coarse}
  ============== ========================= ===================================================

Labels are renumbered 0..C-1 in order of the original ids; query and gallery splits share one
numbering (a class has the same label in both).

Sources of encoded images (image folders, TFDS) also have `describe(i)` (the file or record of
example i, for error messages) and `fingerprint()` (changes when the stored data change), which
`jaxdml.data.verify` uses to check once that every image decodes; in-memory sources have
`in_memory = True` and nothing to check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxdml.data.transforms import as_rgb_uint8

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DYML_LEVELS = ("fine", "middle", "coarse")


def _digest(*arrays: np.ndarray) -> str:
  h = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _int_labels(labels: Any, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {labels.shape}.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {labels.dtype}.")
  return labels.astype(np.int64)


def relabel(labels: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
  """Renumbers labels to 0..C-1 in increasing order of the original ids.

  Args:
    labels: [N] integer labels.
    reference: optional labels whose classes define the numbering (must contain every id in
      `labels`); used to give a query and a gallery split one shared numbering.

  Returns:
    int64 [N].
  """
  labels = _int_labels(labels)
  classes = np.unique(labels if reference is None else _int_labels(reference, "reference"))
  out = np.searchsorted(classes, labels)
  if labels.size and (out.max() >= len(classes) or np.any(classes[out] != labels)):
    raise ValueError("reference does not contain every label.")
  return out.astype(np.int64)


class ArraySource:
  """An in-memory source over an image array.

  Args:
    images: uint8 [N, H, W, 3] (or [N, H, W], repeated to three channels on access).
    labels: [N] integer labels.
    **columns: further [N] integer label columns, returned in every example under their name.
  """

  in_memory = True  # decoded already: nothing for `jaxdml.data.verify` to check

  def __init__(self, images: np.ndarray, labels: np.ndarray, **columns: np.ndarray):
    images = np.asarray(images)
    if images.ndim not in (3, 4):
      raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}.")
    self.images = images
    self.labels = _int_labels(labels)
    if len(self.labels) != len(images):
      raise ValueError(f"{len(images)} images but {len(self.labels)} labels.")
    self.columns = {"label": self.labels}
    for key, values in columns.items():
      values = _int_labels(values, key)
      if len(values) != len(images):
        raise ValueError(f"column {key!r} has {len(values)} values for {len(images)} images.")
      self.columns[key] = values

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    out: dict[str, Any] = {"image": as_rgb_uint8(self.images[index])}
    for key, values in self.columns.items():
      out[key] = int(values[index])
    return out

  def __repr__(self) -> str:
    columns = ",".join(sorted(self.columns))
    return (f"ArraySource(n={len(self)}, image_shape={tuple(self.images.shape[1:])}, "
            f"columns={columns}, digest={_digest(*self.columns.values())})")

  def describe(self, index: int) -> str:
    return f"array image {int(index)}"


def _file_stats(folder: str, names: Sequence[str]) -> str:
  """A digest of the names, sizes and modification times of files in `folder`."""
  h = hashlib.sha1()
  for name in names:
    try:
      st = os.stat(os.path.join(folder, name))
      h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
      h.update(f"{name}\0missing\n".encode())
  return h.hexdigest()[:16]


class ImageFolderSource:
  """Images in one sub-folder per class: `root/<class name>/<image file>`.

  Class names are sorted and numbered 0..C-1 (`class_names[label]`); files are sorted within a
  class. Images are decoded with PIL and converted to RGB; a file that does not decode raises a
  ValueError naming it (`jaxdml.data.verify` checks them all before training).

  Args:
    root: folder holding one sub-folder per class.
    extensions: file-name endings (case-insensitive) counted as images.
  """

  def __init__(self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS):
    self.root = os.fspath(root)
    exts = tuple(e.lower() for e in extensions)
    self.class_names = sorted(
        d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
    paths, labels = [], []
    for label, name in enumerate(self.class_names):
      folder = os.path.join(self.root, name)
      for fname in sorted(os.listdir(folder)):
        if fname.lower().endswith(exts) and os.path.isfile(os.path.join(folder, fname)):
          paths.append(os.path.join(name, fname))
          labels.append(label)
    if not paths:
      raise ValueError(f"No images found under {self.root!r}.")
    self.paths = paths
    self.labels = np.asarray(labels, np.int64)
    self.columns = {"label": self.labels}

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    path = os.path.join(self.root, self.paths[index])
    try:
      with Image.open(path) as img:
        image = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors of unreadable files
      raise ValueError(f"cannot decode the image {path!r}: {type(e).__name__}: {e}") from e
    return {"image": image, "label": int(self.labels[index])}

  def __repr__(self) -> str:
    return f"ImageFolderSource(root={self.root!r}, n={len(self)}, digest={_digest(self.labels)})"

  def describe(self, index: int) -> str:
    """The path of example `index`'s file."""
    return os.path.join(self.root, self.paths[int(index)])

  def fingerprint(self) -> str:
    """Changes when a file is added, removed, resized or modified (names, sizes, mtimes)."""
    return f"{self!r}:{_file_stats(self.root, self.paths)}"


class TFDSSource:
  """A source over a prepared TFDS dataset, read with `tfds.data_source` (ArrayRecord files).

  Reading needs no TensorFlow; the dataset must have been prepared with
  `file_format="array_record"` (done here when `download` is true and the data are missing).
  Image features other than `image_key` are not decoded.

  Args:
    name: TFDS name, e.g. "caltech_birds2011" or "dyml/vehicle".
    split: TFDS split expression, e.g. "train" or "train+test".
    data_dir: TFDS data directory (default: TFDS's default).
    image_key: feature holding the image.
    label_key: integer feature returned as "label".
    extra_keys: output name -> integer feature, returned in every example and in `columns`.
    download: prepare the dataset if it is not prepared yet.
    manual_dir: folder with manually downloaded files, for builders that need them.
  """

  def __init__(
      self,
      name: str,
      split: str,
      data_dir: str | os.PathLike | None = None,
      *,
      image_key: str = "image",
      label_key: str = "label",
      extra_keys: Mapping[str, str] | None = None,
      download: bool = True,
      manual_dir: str | os.PathLike | None = None,
  ):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.name = name
    self.split = split
    self.data_dir = None if data_dir is None else os.fspath(data_dir)
    self.image_key = image_key
    self.keys = {"label": label_key, **dict(extra_keys or {})}
    builder = tfds.builder(name, data_dir=self.data_dir)
    if not _is_prepared(builder):
      if not download:
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {self.data_dir!r}.")
      builder = tfds.builder(name, data_dir=self.data_dir, file_format="array_record")
      config = tfds.download.DownloadConfig(
          manual_dir=None if manual_dir is None else os.fspath(manual_dir))
      builder.download_and_prepare(download_config=config)
    image_features = [k for k, f in builder.info.features.items()
                      if isinstance(f, tfds.features.Image)]
    skip = tfds.decode.SkipDecoding()
    self._source = builder.as_data_source(
        split=split, decoders={k: skip for k in image_features if k != image_key})
    scan = builder.as_data_source(split=split, decoders={k: skip for k in image_features})
    self.columns = _scan_columns(scan, self.keys)
    self.labels = self.columns["label"]
    self._encoded = scan  # records with their images still encoded, for `describe`
    self._files = str(builder.data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    out: dict[str, Any] = {"image": as_rgb_uint8(example[self.image_key])}
    for out_key, key in self.keys.items():
      out[out_key] = int(example[key])
    return out

  def __repr__(self) -> str:
    return (f"TFDSSource(name={self.name!r}, split={self.split!r}, data_dir={self.data_dir!r}, "
            f"n={len(self)}, digest={_digest(*self.columns.values())})")

  def describe(self, index: int) -> str:
    """`<name> '<split>' record <index>`, with the image's file name when the dataset has one."""
    where = f"{self.name} {self.split!r} record {int(index)}"
    try:
      example = self._encoded[int(index)]
      name = next((example[k] for k in _FILE_NAME_KEYS if k in example), None)
    except Exception:  # noqa: BLE001 - a record that cannot be read at all
      return where
    if isinstance(name, bytes):
      name = name.decode("utf-8", "replace")
    return f"{where} ({name})" if name else where

  def fingerprint(self) -> str:
    """Changes when the prepared files change (names, sizes, mtimes of the dataset folder)."""
    try:
      names = sorted(os.listdir(self._files))
    except OSError:
      names = []
    return f"{self!r}:{_file_stats(self._files, names)}"


_FILE_NAME_KEYS = ("image/filename", "file_name", "filename")


def _is_prepared(builder: Any) -> bool:
  try:
    return bool(builder.is_prepared())
  except Exception:  # pylint: disable=broad-except
    return False


def _scan_columns(source: Any, keys: Mapping[str, str], chunk: int = 1024) -> dict[str, np.ndarray]:
  n = len(source)
  out = {name: np.empty(n, np.int64) for name in keys}
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, chunk):
    positions = list(range(start, min(start + chunk, n)))
    examples = getitems(positions) if getitems is not None else [source[i] for i in positions]
    for offset, example in enumerate(examples):
      for name, key in keys.items():
        out[name][start + offset] = int(example[key])
  return out


class SubsetSource:
  """Selected examples of another source, with replaced label columns.

  Args:
    source: the underlying source.
    indices: [n] positions in `source`.
    columns: name -> [n] integer labels, returned instead of (or besides) the underlying
      example's value; must include "label". Columns of `source` not named here are dropped.
  """

  def __init__(self, source: Any, indices: np.ndarray, columns: Mapping[str, np.ndarray]):
    self.source = source
    self.indices = np.asarray(indices, np.int64).reshape(-1)
    if "label" not in columns:
      raise ValueError("columns must include 'label'.")
    self.columns = {k: _int_labels(v, k) for k, v in columns.items()}
    for key, values in self.columns.items():
      if len(values) != len(self.indices):
        raise ValueError(f"column {key!r} has {len(values)} values for {len(self.indices)} "
                         "indices.")
    self.labels = self.columns["label"]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    example = self.source[int(self.indices[index])]
    out: dict[str, Any] = {"image": example["image"]}
    for key, values in self.columns.items():
      out[key] = int(values[index])
    return out

  def __repr__(self) -> str:
    return (f"SubsetSource(source={self.source!r}, n={len(self)}, "
            f"digest={_digest(self.indices, *self.columns.values())})")

  @property
  def in_memory(self) -> bool:
    return bool(getattr(self.source, "in_memory", False))

  def describe(self, index: int) -> str:
    inner = int(self.indices[int(index)])
    describe = getattr(self.source, "describe", None)
    return describe(inner) if describe is not None else f"example {inner}"

  def fingerprint(self) -> str | None:
    inner = getattr(self.source, "fingerprint", None)
    if inner is None:
      return None
    return f"{inner()}:{_digest(self.indices)}"


def _class_split(base: TFDSSource, split: str, num_train_classes: int) -> SubsetSource:
  labels = base.labels
  if split == "train":
    keep = labels < num_train_classes
  elif split == "test":
    keep = labels >= num_train_classes
  else:
    raise ValueError(f"Unknown split {split!r}; expected 'train' or 'test'.")
  indices = np.nonzero(keep)[0]
  return SubsetSource(base, indices, {"label": relabel(labels[indices])})


def _whole(base: Any, columns: Mapping[str, np.ndarray]) -> SubsetSource:
  return SubsetSource(base, np.arange(len(base)), columns)


def _register_builders() -> None:
  import jaxdml.data.tfds_builders  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def dml_split(name: str, split: str, data_dir: str | os.PathLike | None = None,
              manual_dir: str | os.PathLike | None = None, *, download: bool = True) -> Any:
  """One split of a standard deep-metric-learning benchmark, as a source.

  Args:
    name: "cub200", "cars196", "sop", "inshop", "dyml_vehicle", "dyml_animal" or
      "dyml_product".
    split: "train" or "test" (cub200, cars196, sop); "train", "query" or "gallery" (inshop);
      "train" or "{query,gallery}_{fine,middle,coarse}" (dyml_vehicle, dyml_animal); "train",
      "test" or "test_{fine,middle,coarse}" (dyml_product).
    data_dir: TFDS data directory.
    manual_dir: folder with the manually downloaded files (inshop and dyml_*; see
      `jaxdml.data.tfds_builders` for the layouts), used when the dataset is prepared.
    download: prepare the TFDS dataset when it is missing. Preparing caltech_birds2011,
      cars196 and stanford_online_products runs TFDS's own builders, which need TensorFlow
      (and download from their original hosts; TFDS's cars196 links are reported dead);
      reading prepared ArrayRecord files, and preparing inshop and dyml_*, do not.

  Returns:
    A source whose labels are renumbered 0..C-1. CUB-200-2011 and Cars196 merge TFDS's train and
    test splits and split by class (first half of the classes trains, the rest tests). SOP's
    examples carry "super_label" (category). DyML train examples and dyml_product "test" carry
    "label" (fine), "middle_label" and "coarse_label"; a DyML benchmark split
    ("query_middle", "test_coarse", ...) carries the label of its level as "label". Query and
    gallery share one numbering. dyml_product's protocol evaluates each level leave-one-out on
    the single test set.
  """
  kw = {"data_dir": data_dir, "download": download, "manual_dir": manual_dir}
  if name == "cub200":
    return _class_split(TFDSSource("caltech_birds2011", "train+test", **kw), split, 100)
  if name == "cars196":
    return _class_split(TFDSSource("cars196", "train+test", **kw), split, 98)
  if name == "sop":
    if split not in ("train", "test"):
      raise ValueError(f"Unknown split {split!r} for sop; expected 'train' or 'test'.")
    base = TFDSSource("stanford_online_products", split, label_key="class_id",
                      extra_keys={"super_label": "super_class_id"}, **kw)
    return _whole(base, {"label": relabel(base.labels), "super_label": base.columns["super_label"]})
  if name == "inshop":
    _register_builders()
    if split == "train":
      base = TFDSSource("deepfashion_inshop", "train", label_key="item_id", **kw)
      return _whole(base, {"label": relabel(base.labels)})
    if split in ("query", "gallery"):
      base = TFDSSource("deepfashion_inshop", split, label_key="item_id", **kw)
      other = TFDSSource("deepfashion_inshop", "gallery" if split == "query" else "query",
                         label_key="item_id", **kw)
      reference = np.concatenate([base.labels, other.labels])
      return _whole(base, {"label": relabel(base.labels, reference)})
    raise ValueError(f"Unknown split {split!r} for inshop; expected train, query or gallery.")
  if name.startswith("dyml_"):
    _register_builders()
    config = name[len("dyml_"):]
    if config not in ("vehicle", "animal", "product"):
      raise ValueError(f"Unknown DyML dataset {name!r}.")
    return _dyml_split(f"dyml/{config}", config, split, kw)
  raise ValueError(f"Unknown dataset {name!r}; expected cub200, cars196, sop, inshop, "
                   "dyml_vehicle, dyml_animal or dyml_product.")


def _dyml_split(tfds_name: str, config: str, split: str, kw: Mapping[str, Any]) -> SubsetSource:
  levels = {"label": "fine_label", "middle_label": "middle_label",
            "coarse_label": "coarse_label"}
  if split == "train" or (config == "product" and split == "test"):
    base = TFDSSource(tfds_name, split, label_key="fine_label",
                      extra_keys={"middle_label": "middle_label", "coarse_label": "coarse_label"},
                      **kw)
    return _whole(base, {k: relabel(base.columns[k]) for k in levels})
  kind, _, level = split.partition("_")
  if level not in DYML_LEVELS:
    raise ValueError(f"Unknown split {split!r} for dyml/{config}.")
  if config == "product":
    if kind != "test":
      raise ValueError(f"dyml/product has splits train, test, test_<level>; got {split!r}.")
    base = TFDSSource(tfds_name, "test", label_key=f"{level}_label", **kw)
    return _whole(base, {"label": relabel(base.labels)})
  if kind not in ("query", "gallery"):
    raise ValueError(f"dyml/{config} has splits train, query_<level>, gallery_<level>; "
                     f"got {split!r}.")
  other_kind = "gallery" if kind == "query" else "query"
  base = TFDSSource(tfds_name, split, label_key=f"{level}_label", **kw)
  other = TFDSSource(tfds_name, f"{other_kind}_{level}", label_key=f"{level}_label", **kw)
  reference = np.concatenate([base.labels, other.labels])
  return _whole(base, {"label": relabel(base.labels, reference)})
