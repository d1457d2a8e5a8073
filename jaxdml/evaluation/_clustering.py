"""Clustering quality of embeddings: k-means in JAX, NMI and the pairwise F1.

`clustering_metrics` follows the deep-metric-learning protocol (and pytorch-metric-learning's
AccuracyCalculator): cluster the embeddings with k-means into as many clusters as there are
classes, then compare the clusters with the classes by NMI and by the pairwise F1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdml import _checks
from jaxdml import similarity as similarity_lib

Array = jax.Array


def _sq_dists(x: Array, x_sq: Array, c: Array) -> Array:
  """Squared distances [N, K] between rows of x and c (clipped at 0)."""
  return jnp.maximum(x_sq[:, None] - 2.0 * (x @ c.T) + jnp.sum(jnp.square(c), axis=1)[None, :],
                     0.0)


def _assign(x: Array, centroids: Array, chunk: int) -> Array:
  """Index of the nearest centroid of each row of x, in chunks of rows (memory O(chunk x K))."""
  n = x.shape[0]
  c_sq = jnp.sum(jnp.square(centroids), axis=1)

  def nearest(xc):  # |x|^2 is the same for every centroid, so it is left out
    return jnp.argmin(c_sq[None, :] - 2.0 * (xc @ centroids.T), axis=1).astype(jnp.int32)

  if n <= chunk:
    return nearest(x)
  num_chunks = -(-n // chunk)
  xp = jnp.pad(x, ((0, num_chunks * chunk - n), (0, 0)))
  return lax.map(nearest, xp.reshape(num_chunks, chunk, -1)).reshape(-1)[:n]


def _kmeans_pp(x: Array, key: Array, num_clusters: int, num_trials: int) -> Array:
  """Greedy k-means++ seeding (Arthur and Vassilvitskii 2007; greedy variant as in sklearn).

  The first centre is a uniformly drawn row; each next one is the best, by the resulting
  potential sum_i min_c |x_i - c|^2, of `num_trials` rows drawn with probability proportional to
  their squared distance to the nearest centre so far.
  """
  n = x.shape[0]
  x_sq = jnp.sum(jnp.square(x), axis=1)
  key, sub = jax.random.split(key)
  first = x[jax.random.randint(sub, (), 0, n)]
  d2 = _sq_dists(x, x_sq, first[None, :])[:, 0]
  centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)

  def add_centre(i, carry):
    centroids, d2, key = carry
    key, sub = jax.random.split(key)
    # When every row coincides with a centre (d2 == 0), draw uniformly instead.
    weights = jnp.where(jnp.sum(d2) > 0, d2, jnp.ones_like(d2))
    cand = jax.random.choice(sub, n, (num_trials,), p=weights / jnp.sum(weights))
    cand_d2 = jnp.minimum(d2[None, :], _sq_dists(x, x_sq, x[cand]).T)  # [trials, N]
    best = jnp.argmin(jnp.sum(cand_d2, axis=1))
    return centroids.at[i].set(x[cand[best]]), cand_d2[best], key

  return lax.fori_loop(1, num_clusters, add_centre, (centroids, d2, key))[0]


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters", "chunk_size"))
def _kmeans(x: Array, key: Array, *, num_clusters: int, num_iters: int,
            chunk_size: int) -> tuple[Array, Array]:
  num_trials = 2 + int(np.log(num_clusters))
  centroids = _kmeans_pp(x, key, num_clusters, num_trials)
  ones = jnp.ones((x.shape[0],), x.dtype)

  def lloyd_step(carry):
    it, centroids, assign, _ = carry
    new_assign = _assign(x, centroids, chunk_size)
    sums = jax.ops.segment_sum(x, new_assign, num_segments=num_clusters)
    counts = jax.ops.segment_sum(ones, new_assign, num_segments=num_clusters)
    # An empty cluster keeps its centre.
    new_centroids = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None],
                              centroids)
    return it + 1, new_centroids, new_assign, jnp.any(new_assign != assign)

  def not_done(carry):
    it, _, _, changed = carry
    return (it < num_iters) & changed

  init = (jnp.int32(0), centroids, jnp.full((x.shape[0],), -1, jnp.int32), jnp.bool_(True))
  _, centroids, _, _ = lax.while_loop(not_done, lloyd_step, init)
  return centroids, _assign(x, centroids, chunk_size)


def _check_int(value, name: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
  return int(value)


def kmeans(
    x: Array,
    num_clusters: int,
    *,
    key: Array | None = None,
    seed: int = 0,
    num_iters: int = 20,
    chunk_size: int = 4096,
) -> tuple[Array, Array]:
  """k-means clustering (Lloyd's algorithm) with greedy k-means++ seeding, in pure JAX.

  Seeding picks centres one by one with probability proportional to the squared distance to the
  nearest centre so far, keeping the best of `2 + log(num_clusters)` draws (as scikit-learn).
  Lloyd iterations then alternate assignment and mean update in a `lax.while_loop` until the
  assignments stop changing or `num_iters` is reached; an empty cluster keeps its centre. The
  result is a deterministic function of the key. Jit-compatible with `num_clusters`,
  `num_iters` and `chunk_size` static. Points are not checked for NaN (that would not work under
  jit); `clustering_metrics` rejects them.

  Args:
    x: [N, d] floating-point points.
    num_clusters: K, the number of clusters, 1 <= K <= N.
    key: a `jax.random` key; if None, `jax.random.key(seed)` is used.
    seed: integer seed, used when `key` is None.
    num_iters: maximum number of Lloyd iterations (pytorch-metric-learning's faiss k-means
      runs 20).
    chunk_size: points per step of the assignment (memory O(chunk_size x K)).

  Returns:
    centroids: [K, d] cluster centres.
    assignments: [N] int32 index of each point's nearest centre.

  References:
    Lloyd, "Least squares quantization in PCM", 1982; Arthur and Vassilvitskii, "k-means++: the
    advantages of careful seeding", SODA 2007.

  Example:
    >>> x = jnp.concatenate([jnp.zeros((5, 2)), jnp.ones((5, 2))])
    >>> _, assign = kmeans(x, 2, seed=0)
    >>> bool(assign[0] != assign[-1])
    True
  """
  _checks.embeddings(x, "x")
  num_clusters = _check_int(num_clusters, "num_clusters", 1)
  if num_clusters > x.shape[0]:
    raise ValueError(f"`num_clusters`={num_clusters} exceeds the number of points ({x.shape[0]}).")
  num_iters = _check_int(num_iters, "num_iters", 0)
  chunk_size = _check_int(chunk_size, "chunk_size", 1)
  if key is None:
    key = jax.random.key(seed)
  x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
  return _kmeans(x, key, num_clusters=num_clusters, num_iters=num_iters, chunk_size=chunk_size)


def _labelings(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(labels_true), np.asarray(labels_pred)
  for v, name in ((a, "labels_true"), (b, "labels_pred")):
    _checks.check_rank(v, 1, name, "[N]")
    _checks.check_integer(v, name)
  if a.shape != b.shape:
    raise ValueError(f"`labels_true` and `labels_pred` must have the same length, got "
                     f"{a.shape[0]} and {b.shape[0]}.")
  return a, b


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[classes, clusters] co-occurrence counts (int64)."""
  _, ai = np.unique(a, return_inverse=True)
  _, bi = np.unique(b, return_inverse=True)
  nb = int(bi.max()) + 1 if bi.size else 0
  na = int(ai.max()) + 1 if ai.size else 0
  return np.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb).astype(np.int64)


def _entropy(counts: np.ndarray) -> float:
  counts = counts[counts > 0].astype(np.float64)
  total = counts.sum()
  return float(-np.sum(counts / total * (np.log(counts) - np.log(total))))


def nmi(labels_true: Array, labels_pred: Array) -> float:
  """Normalized mutual information of two labelings, arithmetic normalisation.

  `NMI = I(T; P) / ((H(T) + H(P)) / 2)` with natural logarithms, the same value as
  `sklearn.metrics.normalized_mutual_info_score` (default `average_method="arithmetic"`),
  including its limit cases: 1.0 when both labelings have a single class, 0.0 when the mutual
  information is 0. It does not depend on the label values, only on the partitions.

  Args:
    labels_true: [N] integer class labels.
    labels_pred: [N] integer cluster labels.

  Returns:
    NMI in [0, 1] as a Python float.

  References:
    Strehl and Ghosh, "Cluster ensembles", JMLR 2002; Vinh, Epps and Bailey, "Information
    theoretic measures for clusterings comparison", JMLR 2010.
  """
  a, b = _labelings(labels_true, labels_pred)
  cont = _contingency(a, b)
  if cont.shape[0] == cont.shape[1] <= 1:
    return 1.0
  if cont.shape[0] == 1 or cont.shape[1] == 1:
    return 0.0
  n = float(a.shape[0])
  row, col = cont.sum(axis=1).astype(np.float64), cont.sum(axis=0).astype(np.float64)
  i, j = np.nonzero(cont)
  nij = cont[i, j].astype(np.float64)
  terms = nij / n * (np.log(nij) + np.log(n) - np.log(row[i]) - np.log(col[j]))
  terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
  mi = max(float(terms.sum()), 0.0)
  if mi == 0.0:
    return 0.0
  return mi / (0.5 * (_entropy(row) + _entropy(col)))


def clustering_f1(labels_true: Array, labels_pred: Array) -> float:
  """Pairwise F1 of a clustering against the classes, as used in deep metric learning.

  Over all C(N, 2) pairs of items: a pair is a true positive when both items share a class and a
  cluster. `precision = TP / #pairs in the same cluster`, `recall = TP / #pairs in the same
  class`, `F1 = 2 P R / (P + R)`; all counts come from the contingency table as sums of
  C(n, 2) = n (n - 1) / 2. F1 is 1.0 when neither labeling puts any two items together (they
  agree), and 0.0 when there is no true-positive pair.

  Args:
    labels_true: [N] integer class labels.
    labels_pred: [N] integer cluster labels.

  Returns:
    F1 in [0, 1] as a Python float.

  References:
    Manning, Raghavan and Schutze, "Introduction to Information Retrieval", 2008, section 16.3;
    Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016.
  """
  a, b = _labelings(labels_true, labels_pred)
  cont = _contingency(a, b)

  def pairs(counts):
    return int(np.sum(counts * (counts - 1) // 2))

  tp = pairs(cont)
  same_cluster = pairs(cont.sum(axis=0))
  same_class = pairs(cont.sum(axis=1))
  if same_cluster == 0 and same_class == 0:
    return 1.0
  if tp == 0:
    return 0.0
  precision, recall = tp / same_cluster, tp / same_class
  return 2.0 * precision * recall / (precision + recall)


def clustering_metrics(
    embeddings: Array,
    labels: Array,
    *,
    seed: int = 0,
    num_iters: int = 20,
    normalize: bool = True,
) -> dict[str, float]:
  """NMI and pairwise F1 of k-means clusters of the embeddings against their classes.

  k-means runs with as many clusters as there are distinct labels (as in pytorch-metric-learning's
  AccuracyCalculator, which uses faiss k-means), seeded by `seed`.

  Args:
    embeddings: [N, d] floating-point embeddings.
    labels: [N] integer labels.
    seed: k-means seed.
    num_iters: maximum Lloyd iterations.
    normalize: L2-normalise the embeddings first (as for cosine-similarity embeddings; PML's
      testers normalise by default).

  Returns:
    {"nmi": ..., "f1": ...} as Python floats.

  Raises:
    ValueError: NaN or inf embeddings; no embedding; fewer than two classes, or only classes of
      one member (with as many clusters as points both metrics are 1.0 whatever the
      embeddings); bad shapes.

  Example:
    >>> emb = jnp.concatenate([jnp.zeros((4, 2)), jnp.ones((4, 2))]) + jnp.arange(8)[:, None] * 1e-3
    >>> m = clustering_metrics(emb, jnp.array([0] * 4 + [1] * 4), normalize=False)
    >>> round(m["nmi"], 6), m["f1"]
    (1.0, 1.0)
  """
  _checks.embeddings(embeddings, "embeddings")
  _checks.labels(labels, embeddings.shape[0], "labels")
  y = np.asarray(labels)
  num_classes = len(np.unique(y))
  if num_classes == 0:
    raise ValueError("`embeddings` is empty.")
  _checks.all_finite(embeddings, "embeddings", "k-means of non-finite points is meaningless")
  if num_classes < 2:
    raise ValueError(f"clustering metrics need at least two classes, but `labels` hold only the "
                     f"class {np.unique(y)[0]}: NMI and F1 would be 1.0 whatever the embeddings.")
  if num_classes == len(y):
    raise ValueError(f"every class in `labels` has one member ({num_classes} classes, "
                     f"{len(y)} points): with one cluster per point NMI and F1 are 1.0 whatever "
                     "the embeddings.")
  x = similarity_lib.l2_normalize(embeddings) if normalize else embeddings
  _, assign = kmeans(x, num_classes, seed=seed, num_iters=num_iters)
  assign = np.asarray(assign)
  return {"nmi": nmi(y, assign), "f1": clustering_f1(y, assign)}
