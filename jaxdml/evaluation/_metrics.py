"""Retrieval metrics: Recall@K, Precision@1, R-Precision, MAP@R and full-ranking mAP.

The definitions follow pytorch-metric-learning's `AccuracyCalculator`:

* with no separate references, the queries are searched among themselves and each query is left
  out of its own ranking (leave-one-out);
* R, the number of relevant references of a query, counts the references with the query's label,
  the query itself excluded;
* queries with R = 0 ("lone" labels: the label never occurs among the references, or only in the
  query itself) are left out of every average.

The metric functions take the labels of the retrieved neighbours, `neighbor_labels [Q, K]`
(`ref_labels[indices]` from `knn`), so that one search serves all of them; `retrieval_metrics`
does the search and returns them all. They are jit-compatible (`ks` static), and as building
blocks they do not judge their inputs: with no valid query they return NaN.

`retrieval_metrics` and `mean_average_precision` take embeddings and judge them first (every
check below is an error, except the warning):
* NaN or inf embeddings: their neighbours would be arbitrary (a NaN scores above everything);
* fewer than two classes among the references: every metric would be 1.0 whatever the
  embeddings;
* a Recall@k cut-off above the number of candidate references per query;
* lone queries are left out and counted: a `LoneQueryWarning` says how many; when every query
  is lone (e.g. all classes are singletons in a leave-one-out evaluation) there is nothing to
  measure and it is an error.
"""

from __future__ import annotations

import functools
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdml import _checks
from jaxdml import similarity as similarity_lib
from jaxdml.evaluation import _search, _sharded
from jaxdml.geometry import poincare

Array = jax.Array


class LoneQueryWarning(UserWarning):
  """Some queries have no relevant reference (R = 0) and were left out of the retrieval metrics."""


def _concrete(x) -> np.ndarray | None:
  """`x` as a NumPy array, or None while tracing (value checks are then skipped)."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def _check_neighbors(neighbor_labels, query_labels) -> None:
  _checks.check_rank(neighbor_labels, 2, "neighbor_labels", "[Q, K]")
  _checks.check_integer(neighbor_labels, "neighbor_labels")
  _checks.labels(query_labels, neighbor_labels.shape[0], "query_labels")


def _masked_mean(per_query: Array, valid: Array) -> Array:
  """Mean over valid queries; NaN when there are none."""
  valid = valid.astype(per_query.dtype)
  return jnp.sum(per_query * valid) / jnp.sum(valid)


def _valid(valid: Array | None, q: int) -> Array:
  if valid is None:
    return jnp.ones((q,), bool)
  _checks.check_rank(valid, 1, "valid", "[Q]")
  if valid.shape[0] != q:
    raise ValueError(f"`valid` has {valid.shape[0]} entries but there are {q} queries.")
  return jnp.asarray(valid, bool)


def _check_relevant(num_relevant, neighbor_labels) -> Array:
  _checks.check_rank(num_relevant, 1, "num_relevant", "[Q]")
  _checks.check_integer(num_relevant, "num_relevant")
  if num_relevant.shape[0] != neighbor_labels.shape[0]:
    raise ValueError(f"`num_relevant` has {num_relevant.shape[0]} entries but `neighbor_labels` "
                     f"has {neighbor_labels.shape[0]} rows.")
  r = _concrete(num_relevant)
  if r is not None and r.size and r.max() > neighbor_labels.shape[1]:
    raise ValueError(f"`neighbor_labels` holds {neighbor_labels.shape[1]} neighbours per query but "
                     f"some query has R={r.max()} relevant references: search with k >= max(R).")
  return jnp.asarray(num_relevant)


def num_relevant(
    query_labels: Array,
    ref_labels: Array | None = None,
    *,
    exclude_self: bool | None = None,
) -> Array:
  """R per query: how many references share the query's label (the query itself excluded).

  Args:
    query_labels: [Q] integer labels.
    ref_labels: [R] integer labels; None means the queries are their own references.
    exclude_self: subtract the query itself; defaults to True when `ref_labels` is None. With
      explicit references it assumes query i is reference i.

  Returns:
    [Q] int32 counts. Zero marks a "lone" query, which the retrieval metrics leave out.
  """
  _checks.check_rank(query_labels, 1, "query_labels", "[Q]")
  _checks.check_integer(query_labels, "query_labels")
  if ref_labels is None:
    ref_labels = query_labels
    exclude_self = True if exclude_self is None else exclude_self
  else:
    _checks.check_rank(ref_labels, 1, "ref_labels", "[R]")
    _checks.check_integer(ref_labels, "ref_labels")
    exclude_self = bool(exclude_self)
  sorted_refs = jnp.sort(jnp.asarray(ref_labels))
  counts = (jnp.searchsorted(sorted_refs, query_labels, side="right") -
            jnp.searchsorted(sorted_refs, query_labels, side="left")).astype(jnp.int32)
  return counts - 1 if exclude_self else counts


def recall_at_k(
    neighbor_labels: Array,
    query_labels: Array,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    valid: Array | None = None,
) -> Array:
  """Recall@k: the fraction of queries with at least one same-label item among their top k.

  This is the Recall@K of the deep-metric-learning literature (Song et al. 2016; Jegou et al.
  2011), not the information-retrieval recall (matches / R); for k = 1 it equals Precision@1.

  Args:
    neighbor_labels: [Q, K] labels of each query's neighbours, nearest first.
    query_labels: [Q] labels of the queries.
    ks: cut-offs, each at most K (static under jit).
    valid: optional [Q] bool, the queries to average over (e.g. `num_relevant(...) > 0`).

  Returns:
    [len(ks)] float32 recalls.

  References:
    Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016.
  """
  _check_neighbors(neighbor_labels, query_labels)
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1 or max(ks) > neighbor_labels.shape[1]:
    raise ValueError(f"`ks` must be non-empty values in [1, {neighbor_labels.shape[1]}] (the "
                     f"neighbours per query), got {ks}.")
  valid = _valid(valid, neighbor_labels.shape[0])
  hit = neighbor_labels == query_labels[:, None]  # [Q, K]
  first_hit = jnp.cumsum(hit, axis=1) > 0  # first_hit[:, j]: a match among the top j + 1
  return jnp.stack([_masked_mean(first_hit[:, k - 1].astype(jnp.float32), valid) for k in ks])


def precision_at_1(
    neighbor_labels: Array, query_labels: Array, *, valid: Array | None = None) -> Array:
  """Precision@1: the fraction of queries whose nearest neighbour has the query's label.

  Args:
    neighbor_labels: [Q, K] labels of each query's neighbours, nearest first (K >= 1).
    query_labels: [Q] labels of the queries.
    valid: optional [Q] bool, the queries to average over.

  Returns:
    Scalar float32.
  """
  _check_neighbors(neighbor_labels, query_labels)
  if neighbor_labels.shape[1] < 1:
    raise ValueError("`neighbor_labels` needs at least one neighbour per query.")
  valid = _valid(valid, neighbor_labels.shape[0])
  hit = (neighbor_labels[:, 0] == query_labels).astype(jnp.float32)
  return _masked_mean(hit, valid)


def _at_r_terms(neighbor_labels, query_labels, num_relevant, valid):
  r = _check_relevant(num_relevant, neighbor_labels)
  valid = _valid(valid, neighbor_labels.shape[0]) & (r > 0)
  rank = jnp.arange(1, neighbor_labels.shape[1] + 1)
  within_r = rank[None, :] <= r[:, None]  # [Q, K]
  rel = ((neighbor_labels == query_labels[:, None]) & within_r).astype(jnp.float32)
  return rel, rank, jnp.maximum(r, 1).astype(jnp.float32), valid


def r_precision(
    neighbor_labels: Array,
    query_labels: Array,
    num_relevant: Array,
    *,
    valid: Array | None = None,
) -> Array:
  """R-Precision: per query, the fraction of its top R neighbours that share its label.

  `RP = (1/R) sum_{i<=R} rel_i`, averaged over queries with R > 0, where R is the number of
  relevant references (`num_relevant`) and rel_i is 1 when neighbour i has the query's label.

  Args:
    neighbor_labels: [Q, K] labels of each query's neighbours, nearest first, K >= max(R).
    query_labels: [Q] labels of the queries.
    num_relevant: [Q] integer R per query (see `num_relevant`); queries with R = 0 are skipped.
    valid: optional [Q] bool, further restricts the queries averaged over.

  Returns:
    Scalar float32 (NaN when no query has R > 0).

  References:
    Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020, section 3.2.
  """
  _check_neighbors(neighbor_labels, query_labels)
  rel, _, r, valid = _at_r_terms(neighbor_labels, query_labels, num_relevant, valid)
  return _masked_mean(jnp.sum(rel, axis=1) / r, valid)


def map_at_r(
    neighbor_labels: Array,
    query_labels: Array,
    num_relevant: Array,
    *,
    valid: Array | None = None,
) -> Array:
  """MAP@R: mean average precision over each query's top R neighbours.

  Per query `MAP@R = (1/R) sum_{i<=R} rel_i * P@i`, with `P@i = (1/i) sum_{j<=i} rel_j` the
  precision among the first i neighbours and R the number of relevant references; averaged over
  queries with R > 0. It rewards rankings that put all R matches first, like mAP, while needing
  only the top R neighbours.

  Args:
    neighbor_labels: [Q, K] labels of each query's neighbours, nearest first, K >= max(R).
    query_labels: [Q] labels of the queries.
    num_relevant: [Q] integer R per query (see `num_relevant`); queries with R = 0 are skipped.
    valid: optional [Q] bool, further restricts the queries averaged over.

  Returns:
    Scalar float32 (NaN when no query has R > 0).

  References:
    Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020, section 3.2.
  """
  _check_neighbors(neighbor_labels, query_labels)
  rel, rank, r, valid = _at_r_terms(neighbor_labels, query_labels, num_relevant, valid)
  precision = jnp.cumsum(rel, axis=1) / rank[None, :]
  return _masked_mean(jnp.sum(rel * precision, axis=1) / r, valid)


@functools.partial(jax.jit, static_argnames=("exclude_self", "euclidean"))
def _average_precision_chunk(q, r, r_half_sq, rel_idx, start, *, exclude_self, euclidean):
  """AP of each query of a chunk over its full ranking, by counting instead of sorting.

  `rel_idx [C, M]` lists each query's relevant references (-1 pads). For a relevant reference j
  with score s_j, `P@rank(j) = #{relevant with score >= s_j} / #{references with score >= s_j}`
  (ties count as ranked above, as in sklearn's average_precision_score).
  """
  s = q @ r.T  # [C, N]
  if euclidean:
    s = s - r_half_sq[None, :]
  qid = start + jnp.arange(q.shape[0], dtype=jnp.int32)

  def one_query(args):  # a per-row loop: XLA vectorises the [M, N] count far better than [C, M, N]
    row, rel, self_id = args
    present = rel >= 0
    rs = row[jnp.maximum(rel, 0)]  # [M] scores of the relevant references
    n_ge = jnp.sum(row[None, :] >= rs[:, None], axis=1, dtype=jnp.int32)
    if exclude_self:
      n_ge -= (row[self_id] >= rs).astype(jnp.int32)
    rel_ge = jnp.sum((rs[None, :] >= rs[:, None]) & present[None, :], axis=1, dtype=jnp.int32)
    prec = jnp.where(present, rel_ge / jnp.maximum(n_ge, 1), 0.0)
    return jnp.sum(prec) / jnp.maximum(jnp.sum(present), 1)

  return lax.map(one_query, (s, rel_idx, qid))


def _num_relevant_np(query_labels: np.ndarray, ref_labels: np.ndarray,
                     exclude_self: bool) -> np.ndarray:
  sorted_refs = np.sort(ref_labels)
  counts = (np.searchsorted(sorted_refs, query_labels, side="right") -
            np.searchsorted(sorted_refs, query_labels, side="left"))
  return (counts - int(exclude_self)).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("ks",))
def _knn_metrics(neighbor_labels, query_labels, num_rel, *, ks):
  """All kNN-based metrics in one compiled function (lone queries left out)."""
  valid = num_rel > 0
  return (recall_at_k(neighbor_labels, query_labels, ks, valid=valid),
          precision_at_1(neighbor_labels, query_labels, valid=valid),
          r_precision(neighbor_labels, query_labels, num_rel),
          map_at_r(neighbor_labels, query_labels, num_rel))


def _relevant_lists(query_labels: np.ndarray, ref_labels: np.ndarray,
                    exclude_self: bool) -> np.ndarray:
  """[Q, M] indices of each query's relevant references, -1 padded (host-side)."""
  uniq, ref_class = np.unique(ref_labels, return_inverse=True)
  order = np.argsort(ref_class, kind="stable")
  counts = np.bincount(ref_class, minlength=len(uniq))
  width = int(counts.max()) if counts.size else 0
  table = np.full((len(uniq), max(width, 1)), -1, np.int32)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos = np.arange(len(order)) - starts[ref_class[order]]
  table[ref_class[order], pos] = order
  q_class = np.searchsorted(uniq, query_labels)
  found = (q_class < len(uniq)) & (uniq[np.minimum(q_class, len(uniq) - 1)] == query_labels)
  rel = np.where(found[:, None], table[np.minimum(q_class, len(uniq) - 1)], -1)
  if exclude_self:
    rel = np.where(rel == np.arange(len(query_labels))[:, None], -1, rel)
  return rel


def _check_pair(embeddings, labels, ref_embeddings, ref_labels):
  _checks.embeddings(embeddings, "embeddings")
  _checks.labels(labels, embeddings.shape[0], "labels")
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("`ref_embeddings` and `ref_labels` must be given together.")
  if ref_embeddings is not None:
    _checks.embeddings(ref_embeddings, "ref_embeddings")
    _checks.labels(ref_labels, ref_embeddings.shape[0], "ref_labels")
    if ref_embeddings.shape[1] != embeddings.shape[1]:
      raise ValueError(f"`embeddings` have dimension {embeddings.shape[1]} but `ref_embeddings` "
                       f"have dimension {ref_embeddings.shape[1]}.")


def _judge_inputs(embeddings, ref_embeddings, ql: np.ndarray, rl: np.ndarray,
                  same: bool) -> np.ndarray:
  """The eager checks of `retrieval_metrics` and `mean_average_precision`; returns R per query.

  Raises for non-finite embeddings, fewer than two reference classes, no query or only lone
  queries; warns (`LoneQueryWarning`) with the number of lone queries when there are some.
  """
  why = "their neighbours would be arbitrary; find where they come from (e.g. a diverged model)"
  _checks.all_finite(embeddings, "embeddings", why)
  if not same:
    _checks.all_finite(ref_embeddings, "ref_embeddings", why)
  if ql.size == 0:
    raise ValueError("retrieval metrics need at least one query; `embeddings` is empty.")
  classes = np.unique(rl)
  if len(classes) < 2:
    where = "`labels`" if same else "`ref_labels`"
    held = f"only the class {classes[0]}" if len(classes) else "no class"
    raise ValueError(f"retrieval needs at least two classes among the references, but {where} "
                     f"hold {held}: every metric would be 1.0 whatever the embeddings.")
  r = _num_relevant_np(ql, rl, exclude_self=same)
  lone = int(np.sum(r == 0))
  what = ("their label occurs once (a singleton class)" if same else
          "their label does not occur among `ref_labels`")
  if lone == len(r):
    raise ValueError(f"all {lone} queries are lone: {what}, so no query has a relevant "
                     "reference and there is nothing to measure.")
  if lone:
    warnings.warn(f"{lone} of {len(r)} queries are lone ({what}) and are left out of the "
                  "retrieval metrics.", LoneQueryWarning, stacklevel=3)
  return r


def mean_average_precision(
    embeddings: Array,
    labels: Array,
    ref_embeddings: Array | None = None,
    ref_labels: Array | None = None,
    *,
    similarity: str = "cosine",
    chunk_size: int = 256,
) -> float:
  """mAP over the full ranking of the references (standard average precision).

  Per query `AP = (1/R) sum_{j relevant} P@rank(j)`, where the sum runs over all R relevant
  references, wherever they rank, and `P@n` is the precision among the first n references;
  averaged over queries with R > 0. Unlike MAP@R it looks past the top R. A reference scoring
  exactly as much as a relevant one counts as ranked above it, as in
  `sklearn.metrics.average_precision_score` (so collapsed embeddings score low, not high).

  It is computed exactly without sorting: per query, each relevant reference's rank is counted
  against all references, O(Q x N x max(R)) comparisons and O(chunk_size x N) memory.

  Args:
    embeddings: [Q, d] query embeddings.
    labels: [Q] integer query labels.
    ref_embeddings: [N, d] reference embeddings; None searches the queries among themselves,
      leaving each query out of its own ranking.
    ref_labels: [N] integer reference labels (given with `ref_embeddings`).
    similarity: "cosine", "dot" or "neg_squared_euclidean" (not "poincare": see
      `retrieval_metrics`).
    chunk_size: queries per step.

  Returns:
    mAP as a Python float, over the queries with a relevant reference.

  Raises:
    ValueError: NaN or inf embeddings, fewer than two classes among the references, no query, or
      no query with a relevant reference (all lone); and bad shapes or arguments.

  Warns:
    LoneQueryWarning: with the number of lone queries, when some (not all) are.
  """
  _check_pair(embeddings, labels, ref_embeddings, ref_labels)
  _checks.one_of(similarity, tuple(similarity_lib.SIMILARITIES), "similarity")
  chunk_size = _search._check_int(chunk_size, "chunk_size")
  same = ref_embeddings is None
  ql = np.asarray(labels)
  rl = ql if same else np.asarray(ref_labels)
  _judge_inputs(embeddings, ref_embeddings, ql, rl, same)
  return _full_map(embeddings, ref_embeddings, ql, rl, similarity, chunk_size)


def _full_map(embeddings, ref_embeddings, ql: np.ndarray, rl: np.ndarray, similarity: str,
              chunk_size: int) -> float:
  """`mean_average_precision` once its inputs are checked (NaN when no query is valid)."""
  same = ref_embeddings is None
  q, r, r_half_sq = _search._prepare(embeddings, ref_embeddings, similarity)
  rel = _relevant_lists(ql, rl, exclude_self=same)
  num_q = q.shape[0]
  chunk = max(1, min(chunk_size, num_q))
  fn = functools.partial(_average_precision_chunk, exclude_self=same,
                         euclidean=r_half_sq is not None)
  aps = []
  for start in range(0, num_q, chunk):
    qc, rc = q[start:start + chunk], rel[start:start + chunk]
    if qc.shape[0] < chunk:
      qc = jnp.pad(qc, ((0, chunk - qc.shape[0]), (0, 0)))
      rc = np.pad(rc, ((0, chunk - rc.shape[0]), (0, 0)), constant_values=-1)
    aps.append(np.asarray(fn(qc, r, r_half_sq, jnp.asarray(rc), jnp.int32(start))))
  ap = np.concatenate(aps)[:num_q] if aps else np.zeros(0)
  valid = (rel >= 0).any(axis=1)
  return float(ap[valid].mean()) if valid.any() else float("nan")


def retrieval_metrics(
    embeddings: Array,
    labels: Array,
    ref_embeddings: Array | None = None,
    ref_labels: Array | None = None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    similarity: str = "cosine",
    chunk_size: int = 1024,
    full_map: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    c: float = poincare.DEFAULT_C,
) -> dict[str, float]:
  """All retrieval metrics from one exact k-NN search (plus the full-ranking mAP).

  With `ref_embeddings=None` the queries are their own references and each query is left out of
  its own results, as in the standard protocol (Musgrave et al. 2020, "compared to self"); then a
  label seen only once is lone. Queries whose label has no other reference (R = 0) are left out
  of every metric, as in pytorch-metric-learning, and counted: a `LoneQueryWarning` gives their
  number (`int((evaluation.num_relevant(labels) == 0).sum())` in the leave-one-out case). The
  search fetches `max(max(ks), max R)` neighbours, so R-Precision and MAP@R are exact.

  Args:
    embeddings: [Q, d] query embeddings.
    labels: [Q] integer query labels.
    ref_embeddings: [N, d] reference embeddings, or None (leave-one-out on the queries).
    ref_labels: [N] integer reference labels, given with `ref_embeddings`.
    ks: Recall@k cut-offs, ints from 1 to the number of candidate references per query (N, or
      N - 1 when each query is left out of its own results), as `k` of `knn`.
    similarity: "cosine", "dot", "neg_squared_euclidean", or "poincare" for embeddings in the
      Poincare ball of curvature parameter `c` (HIER, Hyp-ViT): neighbours by hyperbolic
      distance (`jaxdml.geometry.poincare.hyperbolic_knn`). The "poincare" search runs on one
      device (`mesh` is not used) and gives no full-ranking "map".
    chunk_size: queries per search step (memory O(chunk_size x N)).
    full_map: also compute "map", the mAP over the full ranking (`mean_average_precision`). It
      scores every reference again and counts ranks, which costs about as much as the search
      (more with large classes); False skips it.
    mesh: if given, the k-NN search splits the references over all devices of this mesh
      (`sharded_knn`), with the same results up to the order of exactly tied neighbours. The
      full-ranking "map" still runs on one device.
    c: the ball's curvature parameter, for `similarity="poincare"` only.

  Returns:
    Python floats under "recall@<k>" for each k, "precision@1", "r_precision", "map@r" and,
    with `full_map`, "map", averaged over the queries that are not lone.

  Raises:
    ValueError: NaN or inf embeddings (their neighbours would be arbitrary); fewer than two
      classes among the references (every metric would be 1.0); a k of `ks` above the number of
      candidates; no query, or every query lone (e.g. all classes singletons); and bad shapes
      or arguments.
    TypeError: non-floating embeddings, non-integer labels or `ks`.

  Warns:
    LoneQueryWarning: with the number of lone queries, when some (not all) are.

  References:
    Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020 (MAP@R,
    R-Precision); Song et al., CVPR 2016 (Recall@K).

  Example:
    >>> emb = jax.random.normal(jax.random.key(0), (60, 8))
    >>> labels = jnp.arange(60) % 6
    >>> m = retrieval_metrics(emb, labels)
    >>> sorted(m)
    ['map', 'map@r', 'precision@1', 'r_precision', 'recall@1', 'recall@2', 'recall@4', 'recall@8']
  """
  _check_pair(embeddings, labels, ref_embeddings, ref_labels)
  _checks.one_of(similarity, (*similarity_lib.SIMILARITIES, "poincare"), "similarity")
  ks = tuple(ks)
  for k in ks:
    _search._check_int(k, "ks")
  if not ks:
    raise ValueError("`ks` must not be empty.")
  same = ref_embeddings is None
  ql = np.asarray(labels)
  rl = ql if same else np.asarray(ref_labels)
  num_refs = len(rl)
  num_candidates = num_refs - int(same)
  if num_candidates < 1:
    raise ValueError("retrieval metrics need at least one candidate reference per query.")
  if max(ks) > num_candidates:
    raise ValueError(f"`ks` holds {max(ks)}, more than the {num_candidates} candidate references "
                     "per query: Recall@k would be 1.0 by construction. Use smaller cut-offs.")
  r = _judge_inputs(embeddings, ref_embeddings, ql, rl, same)
  k_search = min(max(max(ks), int(r.max()) if r.size else 1), num_candidates)
  hyperbolic = similarity == "poincare"
  if hyperbolic:
    _, idx = poincare.hyperbolic_knn(jnp.asarray(embeddings), None if same else
                                     jnp.asarray(ref_embeddings), k_search, c=c,
                                     chunk_size=chunk_size)
  elif mesh is None:
    _, idx = _search.knn(embeddings, ref_embeddings, k_search, similarity=similarity,
                         chunk_size=chunk_size)
  else:
    _, idx = _sharded.sharded_knn(embeddings, ref_embeddings, k_search, similarity=similarity,
                                  chunk_size=chunk_size, mesh=mesh)
  recalls, p1, rp, mapr = _knn_metrics(rl[np.asarray(idx)], ql, r, ks=ks)
  out = {f"recall@{k}": float(v) for k, v in zip(ks, np.asarray(recalls), strict=True)}
  out["precision@1"] = float(p1)
  out["r_precision"] = float(rp)
  out["map@r"] = float(mapr)
  if full_map and not hyperbolic:
    out["map"] = _full_map(embeddings, ref_embeddings, ql, rl, similarity,
                           max(1, chunk_size // 4))
  return out
