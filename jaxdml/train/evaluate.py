"""Embedding a dataset with a trained model and scoring the retrieval.

Embedding runs the jitted eval-mode model on fixed-size batches sharded over the mesh (the last
batch padded, its padding dropped). Scoring is exact: leave-one-out retrieval on one set (CUB,
Cars, SOP, digit pairs) or queries against a gallery (In-shop, DyML), plus clustering NMI / F1
on leave-one-out sets.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdml import evaluation
from jaxdml.geometry import poincare
from jaxdml.train.sharding import put_batch
from jaxdml.train.step import make_embed_fn


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


class Embedder:
  """Embeds arrays or loader batches with `model` in eval mode over `mesh`."""

  def __init__(self, model, mesh: Mesh):
    self.mesh = mesh
    self._fn = make_embed_fn(model, mesh)

  def __call__(self, params: Any, model_state: Any, images: np.ndarray) -> np.ndarray:
    """Embeddings of one batch (its size a multiple of the device count).

    Every process passes the same whole batch; with several processes each contributes its
    contiguous share as its local part of the global array, and all get every embedding back.
    """
    images = np.asarray(images)
    count = jax.process_count()
    if count > 1:
      share = len(images) // count
      images = images[jax.process_index() * share:(jax.process_index() + 1) * share]
    batch = put_batch({"image": images}, self.mesh)
    return np.asarray(self._fn(params, model_state, batch["image"]))

  def arrays(self, params: Any, model_state: Any, images: np.ndarray,
             batch_size: int = 1000) -> np.ndarray:
    """Embeddings of `images` [N, ...] in fixed-size batches."""
    n = len(images)
    size = _round_up(min(batch_size, max(n, 1)), self.mesh.size)
    out = []
    for i in range(0, n, size):
      chunk = np.asarray(images[i:i + size])
      m = len(chunk)
      if m < size:
        chunk = np.concatenate([chunk, np.zeros((size - m,) + chunk.shape[1:], chunk.dtype)])
      out.append(self(params, model_state, chunk)[:m])
    return np.concatenate(out)

  def loader(self, params: Any, model_state: Any, batches: Iterable[dict]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) of an eval loader's batches ({"image", "label", "mask"})."""
    embs, labels = [], []
    for batch in batches:
      images = np.asarray(batch["image"])
      mask = np.asarray(batch.get("mask", np.ones(len(images), bool)), bool)
      size = _round_up(len(images), self.mesh.size)
      if size > len(images):
        images = np.concatenate([images, np.zeros((size - len(images),) + images.shape[1:],
                                                  images.dtype)])
        mask = np.concatenate([mask, np.zeros(size - len(mask), bool)])
      z = self(params, model_state, images)
      embs.append(z[mask])
      labels.append(np.asarray(batch["label"])[mask[:len(batch["label"])]])
    return np.concatenate(embs), np.concatenate(labels)


def _search_mesh(mesh: Mesh | None, similarity: str) -> Mesh | None:
  if similarity == "poincare":  # the hyperbolic search runs on one device
    return None
  return mesh if mesh is not None and mesh.size > 1 else None


def leave_one_out_metrics(embeddings: np.ndarray, labels: np.ndarray, *,
                          ks=(1, 2, 4, 8), seed: int = 0, clustering: bool = True,
                          mesh: Mesh | None = None, similarity: str = "cosine",
                          c: float = 0.1, full_map: bool = True) -> dict[str, float]:
  """Leave-one-out retrieval metrics and (optionally) clustering NMI / F1 of a labelled set.

  `full_map=False` leaves out the full-ranking "map" (`retrieval_metrics`), whose cost grows
  with the class sizes (minutes for classes of thousands of images).

  With a `mesh` of several devices the k-NN search is sharded over it (`sharded_knn`).
  `similarity="poincare"`: the embeddings are points of the Poincare ball of curvature
  parameter `c`, searched by hyperbolic distance (on one device) and clustered by k-means on
  their tangent vectors at the origin (`logmap0`).
  """
  emb = jnp.asarray(embeddings, jnp.float32)
  lab = jnp.asarray(labels, jnp.int32)
  metrics = dict(evaluation.retrieval_metrics(emb, lab, ks=tuple(ks),
                                              mesh=_search_mesh(mesh, similarity),
                                              similarity=similarity, c=c,
                                              full_map=full_map))
  if clustering:
    flat = poincare.logmap0(emb, c=c) if similarity == "poincare" else emb
    metrics.update(evaluation.clustering_metrics(flat, lab, seed=seed))
  return {k: float(v) for k, v in metrics.items()}


def query_gallery_metrics(query_emb: np.ndarray, query_labels: np.ndarray,
                          gallery_emb: np.ndarray, gallery_labels: np.ndarray, *,
                          ks=(1, 10, 20), mesh: Mesh | None = None,
                          similarity: str = "cosine", c: float = 0.1) -> dict[str, float]:
  """Retrieval metrics of queries against a separate gallery (In-shop, DyML); `similarity` and
  `c` as in `leave_one_out_metrics`."""
  metrics = evaluation.retrieval_metrics(
      jnp.asarray(query_emb, jnp.float32), jnp.asarray(query_labels, jnp.int32),
      jnp.asarray(gallery_emb, jnp.float32), jnp.asarray(gallery_labels, jnp.int32),
      ks=tuple(ks), mesh=_search_mesh(mesh, similarity), similarity=similarity, c=c)
  return {k: float(v) for k, v in metrics.items()}

