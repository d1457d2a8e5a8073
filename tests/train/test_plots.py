"""PNG figures: training curves and the retrieval grid (pixel sizes and frame colours)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib import image as mpimg

from jaxdml.train import plots
from jaxdml.train.metric_writers import MetricsLogger, read_metrics


def _rgb(path):
  img = mpimg.imread(path)  # float in [0, 1], [H, W, 3 or 4]
  return np.round(img[..., :3] * 255).astype(int)


def test_curves_from_a_metrics_log(tmp_path):
  backend = matplotlib.get_backend()
  with MetricsLogger(tmp_path, tensorboard=False) as logger:
    for step in range(30):
      logger.log(step, loss=1.0 / (step + 1))
      if step % 10 == 9:
        logger.log(step, {"test/recall@1": step / 40, "test/map@r": step / 80}, epoch=step // 10)
  records = read_metrics(tmp_path)
  out = plots.plot_curves(records, tmp_path / "plots" / "curves.png", title="run")
  assert mpimg.imread(out).shape[:2] == (400, 1000)
  out = plots.plot_curves(records, tmp_path / "epochs.png", x="epoch", size=(600, 300))
  assert mpimg.imread(out).shape[:2] == (300, 600)
  out = plots.plot_curves([], tmp_path / "empty.png")  # no records yet: empty panels
  assert mpimg.imread(out).shape[:2] == (400, 1000)
  assert matplotlib.get_backend() == backend


def _case():
  """3 queries of labels 0, 1, 2 over a 4-image gallery of labels 0, 1, 1, 2 (grayscale 4x6)."""
  rng = np.random.default_rng(0)
  gallery = rng.random((4, 4, 6)).astype(np.float32)
  queries = rng.random((3, 4, 6)).astype(np.float32)
  neighbours = np.array([[0, 1, 3], [2, 0, 1], [1, 2, 0]])  # right/wrong: GRR, GRG, RRR
  return queries, gallery, np.array([0, 1, 2]), np.array([0, 1, 1, 2]), neighbours


def _frame_pixel(row, col, *, h, w, k_col, border=3, gap=4, label_h=12):
  """The top-left frame pixel of cell `k_col` (0: the query) of grid row `row`."""
  th, tw = h + 2 * border, w + 2 * border
  top = gap + row * (th + label_h + gap)
  left = gap if k_col == 0 else gap + k_col * (tw + gap) + 2 * gap
  return top + 1, left + 1  # inside the frame, away from anti-aliased text


@pytest.mark.parametrize("kind", ["float_hw", "uint8_hwc", "normalized_rgb"])
def test_retrieval_grid_frames(tmp_path, kind):
  queries, gallery, ql, gl, nb = _case()
  kwargs = {}
  if kind == "uint8_hwc":
    queries, gallery = (np.round(x * 255).astype(np.uint8)[..., None] for x in (queries, gallery))
  elif kind == "normalized_rgb":
    mean, std = plots.NORMALIZATIONS["imagenet"]
    queries, gallery = ((np.repeat(x[..., None], 3, -1) - mean) / std for x in (queries, gallery))
    kwargs = {"normalization": "imagenet"}
  out = plots.retrieval_grid(queries, gallery, ql, gl, nb, tmp_path / f"{kind}.png",
                             num_queries=3, k=3, **kwargs)
  img = _rgb(out)
  scale = 11  # the smallest making the longer side (6 * 11) at least 64 pixels
  h, w, k, n = 4 * scale, 6 * scale, 3, 3
  assert img.shape[:2] == (n * (h + 6 + 12) + (n + 1) * 4, (k + 1) * (w + 6) + (k + 4) * 4)
  right = [[True, False, False], [True, False, True], [False, False, False]]
  for row in range(n):
    y, x = _frame_pixel(row, 0, h=h, w=w, k_col=0)
    assert tuple(img[y, x]) == plots.QUERY_COLOR
    for j in range(k):
      y, x = _frame_pixel(row, 0, h=h, w=w, k_col=j + 1)
      color = plots.CORRECT_COLOR if right[row][j] else plots.WRONG_COLOR
      assert tuple(img[y, x]) == color, (row, j, img[y, x])
  # The first image is drawn pixel for pixel inside the query frame of row 0.
  y0, x0 = 4 + 3, 4 + 3
  shown = img[y0:y0 + h:scale, x0:x0 + w:scale, 0]
  expected = np.round(np.clip(_case()[0][0], 0, 1) * 255)
  np.testing.assert_allclose(shown, expected, atol=1)


def test_retrieval_grid_defaults_and_errors(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.normal(size=(20, 8, 16, 3)).astype(np.float32) * 3  # outside [0, 1]: min-max
  labels = np.arange(20) // 4
  nb = np.array([[(i + d) % 20 for d in range(1, 6)] for i in range(20)])
  out = plots.retrieval_grid(images, images, labels, labels, nb, tmp_path / "g.png",
                             show_labels=False, border=2, gap=1)
  h, w = 8 * 4, 16 * 4  # scale 4
  assert _rgb(out).shape[:2] == (8 * (h + 4) + 9, 6 * (w + 4) + 9)
  with pytest.raises(ValueError, match="`k`"):
    plots.retrieval_grid(images, images, labels, labels, nb, tmp_path / "x.png", k=6)
  with pytest.raises(ValueError, match="normalization"):
    plots.retrieval_grid(images, images, labels, labels, nb, tmp_path / "x.png",
                         normalization="cifar")
  with pytest.raises(ValueError, match="query indices"):
    plots.retrieval_grid(images, images, labels, labels, nb, tmp_path / "x.png",
                         query_indices=[20])
