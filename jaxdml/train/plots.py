"""PNG figures of a run: training curves from its metrics log, and a retrieval grid.

Both draw on `matplotlib.figure.Figure` objects rendered by the Agg backend, so they work without
a display and leave pyplot's global state alone.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Channel means and standard deviations of common input normalisations (RGB, [0, 1] scale).
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# Frame colours of the retrieval grid (RGB, 0-255).
QUERY_COLOR = (40, 90, 200)
CORRECT_COLOR = (0, 170, 0)
WRONG_COLOR = (220, 0, 0)
_BACKGROUND = 255


def _save(fig: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  FigureCanvasAgg(fig).print_png(path)
  return path


def _series(records: Sequence[Mapping[str, Any]], key: str, x: str,
            parts: bool = False) -> dict[str, tuple]:
  """(x, y) of every record key equal to `key` or ending in "/<key>", by full key name; with
  `parts` also the keys starting with "<key>/" (the terms of a composed loss)."""
  out: dict[str, tuple[list, list]] = {}
  for rec in records:
    if x not in rec:
      continue
    for name, value in rec.items():
      if name == key or name.endswith("/" + key) or (parts and name.startswith(key + "/")):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
          xs, ys = out.setdefault(name, ([], []))
          xs.append(rec[x])
          ys.append(value)
  return {name: (np.asarray(xs), np.asarray(ys, float)) for name, (xs, ys) in out.items()}


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    x: str = "step",
    loss_key: str = "loss",
    metric_keys: Sequence[str] = ("recall@1", "map@r"),
    title: str | None = None,
    size: tuple[int, int] = (1000, 400),
    dpi: int = 100,
) -> str:
  """Training loss and retrieval metrics against steps (or epochs), as a two-panel PNG.

  Left: every record key equal to `loss_key`, ending in "/<loss_key>" ("loss", "train/loss") or
  starting with "<loss_key>/" (the terms of a composed objective, "loss/hier_loss"). Right: the
  same for each of `metric_keys` ("recall@1", "test/recall@1", "map@r", ...), each as its own
  line; metrics absent from the records are left out. Records without `x` are skipped; NaN
  values leave gaps.

  Args:
    records: metric records, e.g. from `jaxdml.train.metric_writers.read_metrics`.
    path: the PNG file to write (its directory is created if needed).
    x: the record key on the horizontal axis: "step", or "epoch" if the records carry it.
    loss_key: the name of the training loss.
    metric_keys: the evaluation metrics to draw, in [0, 1].
    title: a title above both panels.
    size: (width, height) of the PNG in pixels.
    dpi: resolution; it sets the size of text relative to the image.

  Returns:
    `path` as a string.
  """
  fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
  ax_loss, ax_metric = fig.subplots(1, 2)
  losses = _series(records, loss_key, x, parts=True)
  for name, (xs, ys) in sorted(losses.items()):
    ax_loss.plot(xs, ys, label=name, linewidth=1.2, marker="o" if len(xs) == 1 else None,
                 markersize=3)
  ax_loss.set_title("training loss")
  metrics = {}
  for key in metric_keys:
    metrics.update(_series(records, key, x))
  for name, (xs, ys) in metrics.items():
    ax_metric.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name)
  ax_metric.set_title("retrieval")
  ax_metric.set_ylim(-0.02, 1.02)
  for ax, series in ((ax_loss, losses), (ax_metric, metrics)):
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)
    if series:
      ax.legend(fontsize="small")
    else:
      ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes,
              color="gray")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def _denormalize(images: np.ndarray, mean, std) -> np.ndarray:
  """`images * std + mean`, per channel for colour images, with the averages for grayscale."""
  images = images.astype(np.float32)
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  if not (images.ndim == 4 and images.shape[-1] == mean.size == std.size):
    mean, std = mean.mean(), std.mean()
  return images * std + mean


def _to_rgb_uint8(images: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
  """[N, H, W(, C)] images (float or uint8) as [N, H, W, 3] uint8."""
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W], [N, H, W, 1] or [N, H, W, 3], got shape "
                     f"{images.shape}.")
  if images.dtype == np.uint8:
    out = images
  else:
    images = images.astype(np.float32)
    if value_range is None:
      lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
      if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
      elif hi <= lo:
        hi = lo + 1.0
    else:
      lo, hi = value_range
    out = np.clip((images - lo) / (hi - lo), 0.0, 1.0)
    out = np.round(np.nan_to_num(out) * 255.0).astype(np.uint8)
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return out


def retrieval_grid(
    query_images: np.ndarray,
    gallery_images: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    neighbours: np.ndarray,
    path: str | os.PathLike,
    *,
    num_queries: int = 8,
    k: int = 5,
    query_indices: Sequence[int] | None = None,
    normalization: str | tuple[Sequence[float], Sequence[float]] | None = None,
    value_range: tuple[float, float] | None = None,
    scale: int | None = None,
    border: int = 3,
    gap: int = 4,
    show_labels: bool = True,
    dpi: int = 100,
) -> str:
  """A PNG grid of queries and their nearest gallery images, framed by correctness.

  Row i shows query `query_indices[i]` in a blue frame, then a gap, then its first `k`
  neighbours `neighbours[q, :k]`, each framed green when its label equals the query's and red
  otherwise. With `show_labels` each image has its label written under it. Images are drawn
  pixel for pixel (enlarged `scale` times by repeating pixels), so the PNG is exactly

      width  = (k + 1) * (w + 2 * border) + (k + 4) * gap
      height = n * (h + 2 * border + label_height) + (n + 1) * gap

  pixels, where h x w is the scaled image size, n the number of rows and `label_height` 12 with
  `show_labels` (else 0). Row i's query frame starts at pixel (row, column)
  (gap + i * (h + 2 * border + label_height + gap), gap), its j-th neighbour's frame at column
  gap + (j + 1) * (w + 2 * border + gap) + 2 * gap.

  Args:
    query_images: [Q, H, W], [Q, H, W, 1] or [Q, H, W, 3] images, float or uint8.
    gallery_images: [N, H, W(, C)] images of the same size and kind. For leave-one-out
      retrieval pass the query images again.
    query_labels: [Q] labels.
    gallery_labels: [N] labels.
    neighbours: [Q, K] gallery indices per query, nearest first (e.g. from
      `jaxdml.evaluation.knn`), K >= k.
    path: the PNG file to write (its directory is created if needed).
    num_queries: rows to draw when `query_indices` is None; they are spread evenly over the
      queries (query sets are often sorted by class).
    k: neighbours per row.
    query_indices: which queries to draw, one row each.
    normalization: undo an input normalisation, `x * std + mean`, before display: a name in
      `NORMALIZATIONS` ("imagenet", "clip", "half") or a (mean, std) pair of per-channel sequences
      (their averages are used for grayscale images).
    value_range: the (black, white) values of float images after denormalisation. None: [0, 1]
      when the drawn images lie within it, else their overall minimum and maximum. uint8 images
      are drawn as they are.
    scale: integer enlargement; None picks the smallest one that makes the longer side at least
      64 pixels.
    border: frame width in pixels.
    gap: white space between images in pixels.
    show_labels: write each image's label under it.
    dpi: resolution of the text.

  Returns:
    `path` as a string.

  Raises:
    ValueError: inconsistent shapes, fewer than `k` neighbours, an index out of range, an
      unknown normalisation name.
  """
  query_images, gallery_images = np.asarray(query_images), np.asarray(gallery_images)
  query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
  neighbours = np.asarray(neighbours)
  num_q = len(query_images)
  if query_images.shape[1:] != gallery_images.shape[1:]:
    raise ValueError(f"query images {query_images.shape[1:]} and gallery images "
                     f"{gallery_images.shape[1:]} must have the same size.")
  if query_images.ndim not in (3, 4):
    raise ValueError(f"images must have rank 3 or 4, got shape {query_images.shape}.")
  if len(query_labels) != num_q or len(gallery_labels) != len(gallery_images):
    raise ValueError("there must be one label per image.")
  if neighbours.ndim != 2 or len(neighbours) != num_q:
    raise ValueError(f"`neighbours` must be [Q={num_q}, K], got shape {neighbours.shape}.")
  if not 1 <= k <= neighbours.shape[1]:
    raise ValueError(f"`k`={k} must be between 1 and the {neighbours.shape[1]} neighbours given.")
  if query_indices is None:
    n = max(1, min(num_queries, num_q))
    query_indices = np.unique(np.round(np.linspace(0, num_q - 1, n)).astype(int))
  rows = np.asarray(query_indices, int).reshape(-1)
  if rows.size == 0 or rows.min() < 0 or rows.max() >= num_q:
    raise ValueError(f"query indices must be in [0, {num_q}), got {list(rows)}.")
  shown = neighbours[rows, :k]
  if shown.min() < 0 or shown.max() >= len(gallery_images):
    raise ValueError(f"neighbour indices must be in [0, {len(gallery_images)}).")

  if normalization is not None:
    if isinstance(normalization, str):
      if normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {sorted(NORMALIZATIONS)} or a "
                         f"(mean, std) pair, got {normalization!r}.")
      normalization = NORMALIZATIONS[normalization]
    mean, std = normalization
    query_images = _denormalize(query_images, mean, std)
    gallery_images = _denormalize(gallery_images, mean, std)
  both = np.concatenate([query_images[rows], gallery_images[shown.reshape(-1)]])
  tiles = _to_rgb_uint8(both, value_range)
  h0, w0 = tiles.shape[1:3]
  if scale is None:
    scale = max(1, math.ceil(64 / max(h0, w0)))
  tiles = np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)
  h, w = h0 * scale, w0 * scale
  th, tw = h + 2 * border, w + 2 * border
  label_h = 12 if show_labels else 0
  n = len(rows)
  width = (k + 1) * tw + (k + 4) * gap
  height = n * (th + label_h) + (n + 1) * gap
  canvas = np.full((height, width, 3), _BACKGROUND, np.uint8)
  texts = []
  for i, q in enumerate(rows):
    top = gap + i * (th + label_h + gap)
    cells = [(gap, QUERY_COLOR, query_labels[q])]
    for j, g in enumerate(shown[i]):
      ok = gallery_labels[g] == query_labels[q]
      cells.append((gap + (j + 1) * (tw + gap) + 2 * gap, CORRECT_COLOR if ok else WRONG_COLOR,
                    gallery_labels[g]))
    for c, (left, color, label) in enumerate(cells):
      canvas[top:top + th, left:left + tw] = color
      canvas[top + border:top + border + h, left + border:left + border + w] = (
          tiles[i if c == 0 else n + i * k + c - 1])
      texts.append((left + tw / 2, top + th, str(label)))

  fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
  fig.figimage(canvas, xo=0, yo=0, origin="upper", resize=False)
  if show_labels:
    for x, y, text in texts:
      fig.text(x / width, 1.0 - y / height, text, ha="center", va="top", fontsize=7,
               color="black")
  return _save(fig, path)


def save_retrieval_grid(path, q_emb, q_lab, g_emb, g_lab, q_image, g_image, *, same_set: bool,
                        num_queries: int = 8, k: int = 5, similarity: str = "cosine",
                        c: float = 0.1) -> str:
  """Draws queries and their top-k retrievals (green right, red wrong).

  Args:
    path: PNG file to write.
    q_emb, q_lab, g_emb, g_lab: query and gallery embeddings and labels.
    q_image, g_image: `index -> image` (uint8 [H, W, 3], all the same size) of each set.
    same_set: leave-one-out (the gallery is the query set; the query is left out of its list).
    num_queries: rows, spread evenly over the queries.
    k: neighbours per row.
    similarity, c: "cosine", or "poincare" (hyperbolic distance in the ball of parameter c).
  """
  from jaxdml import evaluation  # noqa: PLC0415
  k = min(k, len(g_lab) - (1 if same_set else 0))
  qi = np.linspace(0, len(q_lab) - 1, min(num_queries, len(q_lab))).astype(int)
  q = np.asarray(q_emb, np.float32)[qi]
  g = np.asarray(g_emb, np.float32)
  if similarity == "poincare":
    from jaxdml.geometry import poincare  # noqa: PLC0415
    _, nn_idx = poincare.hyperbolic_knn(q, g, k + (1 if same_set else 0), c=c)
  else:
    _, nn_idx = evaluation.knn(q, g, k=k + (1 if same_set else 0), similarity=similarity)
  nn_idx = np.asarray(nn_idx)
  if same_set:  # leave-one-out: drop the query itself from its list
    nn_idx = np.stack([row[row != i][:k] for row, i in zip(nn_idx, qi, strict=True)])
  queries = np.stack([q_image(int(i)) for i in qi])
  needed = np.unique(nn_idx)
  remap = {int(g): j for j, g in enumerate(needed)}
  gallery = np.stack([g_image(int(i)) for i in needed])
  neighbours = np.vectorize(remap.get)(nn_idx)
  return retrieval_grid(queries, gallery, np.asarray(q_lab)[qi], np.asarray(g_lab)[needed],
                        neighbours, path, num_queries=len(qi), k=k)
