"""Readers for Revisited Oxford and Paris (ROxf, RPar) and the R1M distractors, downloaded by hand.

The layout is the one the data sets' own download script creates (nothing here downloads):

    ROOT/roxford5k/gnd_roxford5k.pkl     {"imlist", "qimlist", "gnd": [{"easy", "hard",
    ROOT/roxford5k/jpg/<name>.jpg         "junk", "bbx"}, ...]}: 4,993 images, 70 queries
    ROOT/rparis6k/gnd_rparis6k.pkl       6,322 images, 70 queries
    ROOT/rparis6k/jpg/<name>.jpg
    ROOT/revisitop1m/revisitop1m.txt     one relative image path per line (1,001,001)
    ROOT/revisitop1m/jpg/<path>

Queries are images of the database list's naming, cropped to their box (`gnd[i]["bbx"]`, x1, y1,
x2, y2) before any processing, as the protocol requires; the query images themselves are not in
the database. `read_image` loads an image as the retrieval code of Radenovic et al. does: RGB,
the box crop for a query, then downscaled (never enlarged) so that its longer side is `max_size`,
a query by the factor its full image would get (`max_size * max(crop) / max(full)`).

The descriptors that the data sets' authors ship (`ROOT/features/<name>_resnet_rsfm120k_gem.mat`,
columns X database / Q queries) are read by `load_features`. Their published scores are ROxf
E/M/H 84.81 / 64.67 / 38.47 and RPar 92.12 / 77.20 / 56.32; tests/data/test_revisited.py checks
`jaxdml.evaluation.landmark_metrics` against them where the files are present
(JAXDML_REVISITOP_ROOT).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile

from jaxdml.evaluation import LandmarkGroundTruth

DATASETS = ("roxford5k", "rparis6k")
DISTRACTORS = "revisitop1m"


@dataclasses.dataclass(frozen=True)
class RevisitedDataset:
  """A revisited data set's lists.

  Attributes:
    name: "roxford5k" or "rparis6k".
    root: the data set's folder (ROOT/name).
    images: database image paths, in the ground truth's order.
    queries: query image paths (full images; crop with `gt.bbx`).
    gt: the ground truth.
  """

  name: str
  root: str
  images: tuple[str, ...]
  queries: tuple[str, ...]
  gt: LandmarkGroundTruth

  def read_query(self, i: int, max_size: int | None = 1024) -> np.ndarray:
    """Query `i`, cropped to its box and scaled as the protocol does (`read_image`)."""
    return read_image(self.queries[i], max_size=max_size, bbx=self.gt.bbx[i])

  def read_database(self, i: int, max_size: int | None = 1024) -> np.ndarray:
    return read_image(self.images[i], max_size=max_size)


def _layout_error(what: str, path: str, name: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{what} not found: {path!r}. Expected the revisited layout under ROOT: "
      f"ROOT/{name}/gnd_{name}.pkl and ROOT/{name}/jpg/<image>.jpg (see jaxdml.data.revisited).")


def load_revisited(root: str | os.PathLike, name: str, *, check_images: bool = True
                   ) -> RevisitedDataset:
  """Reads ROOT/name/gnd_name.pkl and the image paths it names.

  Args:
    root: the folder that holds "roxford5k" / "rparis6k".
    name: "roxford5k" or "rparis6k".
    check_images: fail now, naming the first missing file and the count, if any database or
      query image is missing.
  """
  if name not in DATASETS:
    raise ValueError(f"`name` must be one of {DATASETS}, got {name!r}.")
  folder = os.path.join(os.fspath(root), name)
  gnd_path = os.path.join(folder, f"gnd_{name}.pkl")
  if not os.path.isfile(gnd_path):
    raise _layout_error("ground truth", gnd_path, name)
  with open(gnd_path, "rb") as f:
    try:
      cfg = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one clear error
      raise ValueError(f"{gnd_path!r} is not a readable ground-truth pickle: {e}") from e
  if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
    raise ValueError(f"{gnd_path!r} must hold a dict with 'imlist', 'qimlist' and 'gnd'.")
  gt = LandmarkGroundTruth.from_revisitop(cfg["gnd"])
  if gt.num_queries != len(cfg["qimlist"]):
    raise ValueError(f"{gnd_path!r}: {len(cfg['qimlist'])} query names but {gt.num_queries} "
                     "ground-truth entries.")
  if gt.max_index >= len(cfg["imlist"]):
    raise ValueError(f"{gnd_path!r}: the ground truth names image {gt.max_index} of "
                     f"{len(cfg['imlist'])}.")
  if gt.bbx is None:
    raise ValueError(f"{gnd_path!r}: every query needs its 'bbx'.")
  jpg = os.path.join(folder, "jpg")
  images = tuple(os.path.join(jpg, f"{n}.jpg") for n in cfg["imlist"])
  queries = tuple(os.path.join(jpg, f"{n}.jpg") for n in cfg["qimlist"])
  if check_images:
    missing = [p for p in (*images, *queries) if not os.path.isfile(p)]
    if missing:
      raise _layout_error(f"{len(missing)} image(s), the first", missing[0], name)
  return RevisitedDataset(name, folder, images, queries, gt)


def load_distractors(root: str | os.PathLike, limit: int | None = None) -> tuple[str, ...]:
  """The paths of the R1M distractors (ROOT/revisitop1m/revisitop1m.txt), the first `limit`."""
  folder = os.path.join(os.fspath(root), DISTRACTORS)
  listing = os.path.join(folder, f"{DISTRACTORS}.txt")
  if not os.path.isfile(listing):
    raise FileNotFoundError(f"distractor list not found: {listing!r}. Expected "
                            f"ROOT/{DISTRACTORS}/{DISTRACTORS}.txt and ROOT/{DISTRACTORS}/jpg/.")
  with open(listing) as f:
    names = [line.strip() for line in f if line.strip()]
  if limit is not None:
    if limit < 0:
      raise ValueError(f"`limit` must be >= 0, got {limit}.")
    names = names[:limit]
  return tuple(os.path.join(folder, "jpg", n) for n in names)


def read_image(path: str | os.PathLike, *, max_size: int | None = 1024,
               bbx: Sequence[float] | None = None) -> np.ndarray:
  """An image as uint8 [H, W, 3], cropped to `bbx` (x1, y1, x2, y2) and scaled down so that
  its longer side is at most `max_size` (for a crop: `max_size * max(crop) / max(full)`), with
  PIL's antialiased thumbnail as the reference code. Truncated files are read as far as they go,
  as the reference code does (a file that is not an image is an error)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path!r}.")
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = True  # the reference loader's setting (R1M has such files)
  try:  # PIL's switch is global: set for this read only
    with open(path, "rb") as f:
      img = Image.open(f)
      img = img.convert("RGB")
  except Exception as e:  # noqa: BLE001 - PIL raises several types for a bad file
    raise ValueError(f"cannot read image {path!r}: {e}") from e
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous
  full = max(img.size)
  if bbx is not None:
    box = tuple(float(v) for v in bbx)
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
      raise ValueError(f"`bbx` must be (x1, y1, x2, y2) with x2 > x1, y2 > y1, got {bbx!r}.")
    img = img.crop(box)
  if max_size is not None:
    if max_size < 1:
      raise ValueError(f"`max_size` must be >= 1 or None, got {max_size}.")
    side = max_size * max(img.size) / full if bbx is not None else max_size
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
  return np.asarray(img, np.uint8)


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(queries [Q, d], database [N, d]) float32 from a revisitop features file (a MATLAB file
  with columns Q and X)."""
  from scipy.io import loadmat  # noqa: PLC0415 - scipy comes with scikit-learn

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"features file not found: {path!r}.")
  mat = loadmat(path)
  if "Q" not in mat or "X" not in mat:
    raise ValueError(f"{path!r} must hold the matrices 'Q' (queries) and 'X' (database).")
  q, x = np.asarray(mat["Q"]), np.asarray(mat["X"])
  if q.ndim != 2 or x.ndim != 2 or q.shape[0] != x.shape[0]:
    raise ValueError(f"{path!r}: Q {q.shape} and X {x.shape} must be [d, n] with one d.")
  return q.T.astype(np.float32), x.T.astype(np.float32)
