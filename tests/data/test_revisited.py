"""Readers of the revisited landmark data sets, on a miniature copy of their layout written here,
and (where a user has the files: JAXDML_REVISITOP_ROOT) the parity of the evaluation on the
descriptors the data sets' authors ship."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxdml import evaluation
from jaxdml.data import revisited


def _write_fixture(root, name="roxford5k", n=12, nq=3, seed=0):
  rng = np.random.default_rng(seed)
  folder = root / name
  (folder / "jpg").mkdir(parents=True)
  imlist = [f"db_{i:03d}" for i in range(n)]
  qimlist = [f"query_{i}" for i in range(nq)]
  for k, im in enumerate(imlist + qimlist):
    h, w = (150, 200) if k % 2 else (120, 90)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "jpg" /
                                                                          f"{im}.jpg")
  gnd = []
  for _ in range(nq):
    perm = rng.permutation(n)
    gnd.append({"easy": perm[:3], "hard": perm[3:5], "junk": perm[5:6],
                "bbx": [10.0, 20.0, 70.4, 80.0]})
  with open(folder / f"gnd_{name}.pkl", "wb") as f:
    pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
  return folder


def test_reads_the_layout(tmp_path):
  _write_fixture(tmp_path)
  data = revisited.load_revisited(tmp_path, "roxford5k")
  assert len(data.images) == 12 and len(data.queries) == 3 and data.gt.num_queries == 3
  assert data.images[0].endswith(os.path.join("roxford5k", "jpg", "db_000.jpg"))
  np.testing.assert_array_equal(data.gt.bbx[0], [10, 20, 70.4, 80])
  # a database image: longer side brought to max_size, aspect kept; never enlarged
  assert data.read_database(1, max_size=100).shape == (75, 100, 3)
  assert data.read_database(1, max_size=None).shape == (150, 200, 3)
  assert data.read_database(1, max_size=1024).shape == (150, 200, 3)
  # a query (full image 200 x 150, query index 1 -> fixture image 13: 150 x 200): cropped to
  # x 10..70.4 (PIL rounds to 10..70), y 20..80, then scaled by 100 / 200
  q = data.read_query(1, max_size=100)
  assert q.shape == (30, 30, 3)
  assert data.read_query(1, max_size=None).shape == (60, 60, 3)


def test_layout_errors(tmp_path):
  with pytest.raises(ValueError, match="roxford5k"):
    revisited.load_revisited(tmp_path, "oxford5k")
  with pytest.raises(FileNotFoundError, match="gnd_roxford5k.pkl"):
    revisited.load_revisited(tmp_path, "roxford5k")
  folder = _write_fixture(tmp_path)
  os.remove(folder / "jpg" / "db_004.jpg")
  with pytest.raises(FileNotFoundError, match="1 image.*db_004.jpg"):
    revisited.load_revisited(tmp_path, "roxford5k")
  assert len(revisited.load_revisited(tmp_path, "roxford5k", check_images=False).images) == 12
  (folder / "gnd_roxford5k.pkl").write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="not a readable"):
    revisited.load_revisited(tmp_path, "roxford5k")
  with pytest.raises(FileNotFoundError, match="revisitop1m.txt"):
    revisited.load_distractors(tmp_path)
  (folder / "jpg" / "bad.jpg").write_bytes(b"\x00" * 10)
  with pytest.raises(ValueError, match="cannot read image"):
    revisited.read_image(folder / "jpg" / "bad.jpg")


def test_distractors_and_features(tmp_path):
  scipy_io = pytest.importorskip("scipy.io")
  d1m = tmp_path / "revisitop1m"
  d1m.mkdir()
  (d1m / "revisitop1m.txt").write_text("a/1.jpg\nb/2.jpg\n\nc/3.jpg\n")
  paths = revisited.load_distractors(tmp_path)
  assert [p[-7:] for p in paths] == ["a/1.jpg", "b/2.jpg", "c/3.jpg"]
  assert len(revisited.load_distractors(tmp_path, limit=2)) == 2
  # the shipped descriptors: columns, read as rows; then scored by the protocol
  folder = _write_fixture(tmp_path, "rparis6k", n=20, nq=4, seed=3)
  data = revisited.load_revisited(tmp_path, "rparis6k")
  rng = np.random.default_rng(5)
  x = np.abs(rng.standard_normal((8, 20)))
  q = np.abs(rng.standard_normal((8, 4)))
  scipy_io.savemat(folder / "features.mat", {"X": x, "Q": q})
  queries, database = revisited.load_features(folder / "features.mat")
  assert queries.shape == (4, 8) and database.shape == (20, 8)
  m = evaluation.landmark_metrics(queries, database, data.gt)
  ranks = np.argsort(-(database @ queries.T), axis=0, kind="stable").T
  again = evaluation.revisited_map(evaluation.ranks_in_ranking(ranks, data.gt.items()), data.gt)
  assert m == pytest.approx(again, abs=1e-12)


_REAL = os.environ.get("JAXDML_REVISITOP_ROOT")


@pytest.mark.skipif(not _REAL, reason="set JAXDML_REVISITOP_ROOT to the revisited data (with "
                    "features/*_resnet_rsfm120k_gem.mat) to check parity")
@pytest.mark.parametrize("name,want", [("roxford5k", (84.81, 64.67, 38.47)),
                                       ("rparis6k", (92.12, 77.20, 56.32))])
def test_parity_with_the_shipped_descriptors(name, want):
  root = _REAL
  data = revisited.load_revisited(os.path.join(root, "datasets") if os.path.isdir(
      os.path.join(root, "datasets")) else root, name, check_images=False)
  features = os.path.join(root, "features", f"{name}_resnet_rsfm120k_gem.mat")
  queries, database = revisited.load_features(features)
  m = evaluation.landmark_metrics(queries, database, data.gt)
  got = tuple(round(100 * m[f"{p}/map"], 2) for p in evaluation.PROTOCOLS)
  assert got == want
