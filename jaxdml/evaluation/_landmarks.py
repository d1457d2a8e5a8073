"""The revisited landmark-retrieval protocol (Revisited Oxford and Paris, Radenovic et al. 2018).

Each query has three lists of database images: "easy" and "hard" (the landmark is visible, easily
or with difficulty) and "junk" (it is not clearly visible). The three protocols score a ranking
of the database with different lists counted as positives and ignored:

| protocol | positives | ignored (junk) |
|---|---|---|
| easy | easy | junk + hard |
| medium | easy + hard | junk |
| hard | hard | junk + easy |

and report the mean over queries of a trapezoidal average precision (`trapezoid_ap`) and the
mean precision at k (mP@k). Both follow the published evaluation code exactly:
* ignored images are removed from the ranking: every positive moves up by the number of ignored
  images ranked before it;
* AP adds, for the j-th positive (0-based) at rank r (0-based, after the removal),
  `(j / r + (j + 1) / (r + 1)) / 2` times `1 / num_positives`, with `j / r` taken as 1 at r = 0:
  one positive at rank 1 scores 0.25, not the 0.5 of a finite-sum AP;
* P@k for a query uses `k' = min(k, rank of its last positive)` (1-based) and counts the
  positives within the first k' ranks, divided by k';
* queries without a positive under a protocol are left out of its means.

Only the ranks of each query's listed images matter, so `item_ranks` computes exactly those, for
every query at once, without sorting the database: an image's 0-based rank is the number of
database images that score higher, plus those of equal score and lower index (the order of a
stable sort by decreasing score). This is exact at any database size, with a million distractors
appended after the database (the ground truth indexes only the first n images), and splits the
database across the devices of a mesh as `sharded_knn` does.

    gt = LandmarkGroundTruth.from_revisitop(cfg["gnd"])       # the gnd_*.pkl lists
    metrics = landmark_metrics(query_desc, db_desc, gt, distractors=distractor_desc)
    metrics["medium/map"], metrics["hard/mp@10"]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdml import _checks
from jaxdml.evaluation import _search as _search_lib
from jaxdml.evaluation import _sharded

Array = jax.Array

PROTOCOLS = ("easy", "medium", "hard")
DEFAULT_KAPPAS = (1, 5, 10)

_PROTOCOL_LISTS = {"easy": (("easy",), ("junk", "hard")),
                   "medium": (("easy", "hard"), ("junk",)),
                   "hard": (("hard",), ("junk", "easy"))}


def _index_list(value, name: str) -> np.ndarray:
  arr = np.asarray([] if value is None else value).reshape(-1)
  if arr.size == 0:
    return np.zeros((0,), np.int64)
  if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
    arr = arr.astype(np.int64)  # MATLAB-exported lists hold integral floats
  if arr.dtype.kind not in "iu":
    raise TypeError(f"{name} must hold integer image indices, got {arr[:5].tolist()} "
                    f"(dtype {arr.dtype}).")
  arr = arr.astype(np.int64)
  if arr.min() < 0:
    raise ValueError(f"{name} holds a negative image index ({arr.min()}).")
  if np.unique(arr).size != arr.size:
    raise ValueError(f"{name} lists an image twice.")
  return arr


@dataclasses.dataclass(frozen=True)
class LandmarkGroundTruth:
  """The per-query image lists of a revisited data set.

  Attributes:
    easy, hard, junk: one int64 array of database indices per query.
    bbx: [Q, 4] float query boxes (x1, y1, x2, y2) in pixels of the full query image, or None.
  """

  easy: tuple[np.ndarray, ...]
  hard: tuple[np.ndarray, ...]
  junk: tuple[np.ndarray, ...]
  bbx: np.ndarray | None = None

  def __post_init__(self):
    lists = {}
    for name in ("easy", "hard", "junk"):
      value = getattr(self, name)
      if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a sequence with one index list per query, got "
                        f"{type(value).__name__}.")
      lists[name] = tuple(_index_list(v, f"`{name}[{i}]`") for i, v in enumerate(value))
      object.__setattr__(self, name, lists[name])
    sizes = {name: len(v) for name, v in lists.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"`easy`, `hard` and `junk` must have one list per query each, got "
                       f"{sizes}.")
    for i in range(sizes["easy"]):
      for a, b in (("easy", "hard"), ("easy", "junk"), ("hard", "junk")):
        both = np.intersect1d(lists[a][i], lists[b][i])
        if both.size:
          raise ValueError(f"query {i} lists image {int(both[0])} as both {a} and {b}.")
    if self.bbx is not None:
      bbx = np.asarray(self.bbx, np.float64)
      if bbx.shape != (sizes["easy"], 4):
        raise ValueError(f"`bbx` must have shape {(sizes['easy'], 4)} (x1, y1, x2, y2 per "
                         f"query), got {bbx.shape}.")
      if not np.all(np.isfinite(bbx)) or np.any(bbx[:, 2] <= bbx[:, 0]) or np.any(
          bbx[:, 3] <= bbx[:, 1]):
        raise ValueError("`bbx` rows must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1.")
      object.__setattr__(self, "bbx", bbx)

  @classmethod
  def from_revisitop(cls, gnd: Sequence[Mapping[str, Any]]) -> LandmarkGroundTruth:
    """From the `gnd` list of a `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl` file (one dict per
    query with "easy", "hard", "junk" and optionally "bbx")."""
    if isinstance(gnd, Mapping):
      raise TypeError("pass the file's `gnd` list (cfg['gnd']), not the whole dict.")
    rows = list(gnd)
    for i, row in enumerate(rows):
      if not isinstance(row, Mapping):
        raise TypeError(f"gnd[{i}] must be a dict with 'easy', 'hard' and 'junk', got "
                        f"{type(row).__name__}.")
      missing = [k for k in ("easy", "hard", "junk") if k not in row]
      if missing:
        raise ValueError(f"gnd[{i}] lacks {missing}: it is not a revisited ground truth.")
    has_bbx = bool(rows) and all(row.get("bbx") is not None for row in rows)
    return cls(easy=[r["easy"] for r in rows], hard=[r["hard"] for r in rows],
               junk=[r["junk"] for r in rows],
               bbx=np.asarray([r["bbx"] for r in rows], np.float64) if has_bbx else None)

  @property
  def num_queries(self) -> int:
    return len(self.easy)

  @property
  def max_index(self) -> int:
    """The largest database index any list names (-1 if all are empty)."""
    tops = [int(a.max()) for a in (*self.easy, *self.hard, *self.junk) if a.size]
    return max(tops, default=-1)

  def protocol(self, name: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(positives, ignored) per query under protocol `name` ("easy", "medium" or "hard")."""
    _checks.one_of(name, PROTOCOLS, "protocol")
    ok_names, junk_names = _PROTOCOL_LISTS[name]
    ok = tuple(np.concatenate([getattr(self, n)[i] for n in ok_names])
               for i in range(self.num_queries))
    junk = tuple(np.concatenate([getattr(self, n)[i] for n in junk_names])
                 for i in range(self.num_queries))
    return ok, junk

  def items(self) -> np.ndarray:
    """[Q, M] int32: each query's easy, hard and junk images (sorted), padded with -1."""
    rows = [np.sort(np.concatenate([self.easy[i], self.hard[i], self.junk[i]]))
            for i in range(self.num_queries)]
    width = max([r.size for r in rows], default=0)
    out = np.full((self.num_queries, max(width, 1)), -1, np.int32)
    for i, r in enumerate(rows):
      out[i, :r.size] = r
    return out


def trapezoid_ap(ranks, num_positives: int) -> float:
  """Average precision as the area under the precision-recall curve by trapezoids.

  Args:
    ranks: 0-based ranks of the positives that were retrieved, in increasing order (after
      ignored images were removed, see `remove_ignored`).
    num_positives: the query's number of positives (those not in `ranks` add nothing).

  >>> trapezoid_ap([1], 1), round(trapezoid_ap([0, 2], 2), 4)
  (0.25, 0.7917)
  """
  r = np.asarray(ranks, np.float64).reshape(-1)
  if isinstance(num_positives, bool) or not isinstance(num_positives, (int, np.integer)):
    raise TypeError(f"`num_positives` must be an int, got {type(num_positives).__name__}.")
  if num_positives < max(1, r.size):
    raise ValueError(f"`num_positives` ({num_positives}) must be >= 1 and at least the number "
                     f"of ranks ({r.size}).")
  if r.size and (np.any(np.diff(r) <= 0) or r[0] < 0 or np.any(r != np.round(r))):
    raise ValueError("`ranks` must be distinct non-negative integers in increasing order.")
  j = np.arange(r.size, dtype=np.float64)
  before = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
  after = (j + 1) / (r + 1)
  return float(np.sum((before + after) / 2) / num_positives)


def remove_ignored(positive_ranks, ignored_ranks) -> np.ndarray:
  """Ranks of the positives once the ignored images are taken out of the ranking: each moves up
  by the number of ignored images ranked before it.

  >>> remove_ignored([0, 3, 7], [1, 2, 5]).tolist()
  [0, 1, 4]
  """
  pos = np.sort(np.asarray(positive_ranks, np.int64).reshape(-1))
  junk = np.sort(np.asarray(ignored_ranks, np.int64).reshape(-1))
  return pos - np.searchsorted(junk, pos, side="left")


def _precision_at(ranks: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
  one_based = ranks + 1
  out = []
  for k in kappas:
    kq = min(int(one_based.max()), int(k))
    out.append(np.sum(one_based <= kq) / kq)
  return np.asarray(out, np.float64)


def _check_kappas(kappas) -> tuple[int, ...]:
  kappas = tuple(kappas)
  for k in kappas:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"`kappas` must be positive ints, got {kappas!r}.")
  return tuple(int(k) for k in kappas)


def revisited_map(ranks, gt: LandmarkGroundTruth, kappas: Sequence[int] = DEFAULT_KAPPAS,
                  *, per_query: bool = False) -> dict[str, Any]:
  """mAP and mP@k under the three protocols, from the ranks of each query's listed images.

  Args:
    ranks: [Q, M] 0-based ranks of `gt.items()` in each query's ranking (`item_ranks`, or
      `ranks_in_ranking` for a given ranking); -1 where `gt.items()` pads.
    gt: the ground truth.
    kappas: the k of mP@k.
    per_query: also return "<protocol>/ap" ([Q], NaN for queries left out) and
      "<protocol>/p@k" ([Q] each).

  Returns:
    {"<protocol>/map": float, "<protocol>/mp@<k>": float, ...} as fractions in [0, 1]; a
    protocol under which no query has a positive gives NaN (with a warning).
  """
  if not isinstance(gt, LandmarkGroundTruth):
    raise TypeError(f"`gt` must be a LandmarkGroundTruth, got {type(gt).__name__}.")
  kappas = _check_kappas(kappas)
  items = gt.items()
  ranks = np.asarray(ranks)
  if ranks.shape != items.shape:
    raise ValueError(f"`ranks` must have the shape of gt.items(), {items.shape}, got "
                     f"{ranks.shape}.")
  if np.any((ranks < 0) != (items < 0)):
    raise ValueError("`ranks` must be -1 exactly where gt.items() pads.")
  lookup = [dict(zip(items[i][items[i] >= 0].tolist(), ranks[i][items[i] >= 0].tolist(),
                     strict=True)) for i in range(gt.num_queries)]
  for i, row in enumerate(lookup):
    if len(set(row.values())) != len(row):
      raise ValueError(f"`ranks` gives two images of query {i} the same rank.")
  out: dict[str, Any] = {}
  for name in PROTOCOLS:
    ok, junk = gt.protocol(name)
    aps = np.full((gt.num_queries,), np.nan)
    prs = np.full((gt.num_queries, len(kappas)), np.nan)
    for i in range(gt.num_queries):
      if ok[i].size == 0:
        continue
      pos = np.asarray([lookup[i][j] for j in ok[i].tolist()], np.int64)
      ign = np.asarray([lookup[i][j] for j in junk[i].tolist()], np.int64)
      pos = remove_ignored(pos, ign)
      aps[i] = trapezoid_ap(pos, int(ok[i].size))
      prs[i] = _precision_at(pos, kappas)
    scored = ~np.isnan(aps)
    if not scored.any():
      warnings.warn(f"no query has a positive under the {name} protocol: its scores are NaN.",
                    RuntimeWarning, stacklevel=2)
      out[f"{name}/map"] = math.nan
      out.update({f"{name}/mp@{k}": math.nan for k in kappas})
    else:
      out[f"{name}/map"] = float(np.mean(aps[scored]))
      out.update({f"{name}/mp@{k}": float(np.mean(prs[scored, j])) for j, k in enumerate(kappas)})
    if per_query:
      out[f"{name}/ap"] = aps
      out.update({f"{name}/p@{k}": prs[:, j] for j, k in enumerate(kappas)})
  return out


def ranks_in_ranking(ranking, items) -> np.ndarray:
  """Ranks of `items` [Q, M] (-1 padding) in a full ranking [Q, N] of database indices (each row
  a permutation of 0..N-1, best first), e.g. after re-ranking or query expansion."""
  ranking = np.asarray(ranking)
  items = np.asarray(items)
  if ranking.ndim != 2 or items.ndim != 2 or ranking.shape[0] != items.shape[0]:
    raise ValueError(f"`ranking` [Q, N] and `items` [Q, M] must be 2-D with the same Q, got "
                     f"{ranking.shape} and {items.shape}.")
  n = ranking.shape[1]
  if not np.all(np.sort(ranking, axis=1) == np.arange(n)[None, :]):
    raise ValueError("each row of `ranking` must be a permutation of the database indices.")
  if np.any(items >= n):
    raise ValueError(f"`items` name database image {int(items.max())}, beyond the {n} ranked.")
  position = np.empty_like(ranking)
  np.put_along_axis(position, ranking, np.arange(n)[None, :].repeat(ranking.shape[0], 0), axis=1)
  return np.where(items >= 0, np.take_along_axis(position, np.maximum(items, 0), axis=1), -1)


def _rank_block(s: Array, t: Array, items: Array, cols: Array) -> Array:
  """Per query and item: how many of the block's columns score higher, or equally at a lower
  index. s [C, B] scores, t [C, M] item scores, items [C, M] global indices, cols [B]."""
  higher = s[:, :, None] > t[:, None, :]
  tie = (s[:, :, None] == t[:, None, :]) & (cols[None, :, None] < items[:, None, :])
  return jnp.sum(higher | tie, axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("mesh", "axes", "chunk", "block", "similarity"))
def _item_ranks(queries, database, items, *, mesh, axes, chunk, block, similarity):
  q, r, r_half_sq = _search_lib._prepare(queries, database, similarity)
  num_q, num_r = q.shape[0], r.shape[0]
  num_devices = int(np.prod([mesh.shape[a] for a in axes]))
  shard = -(-num_r // num_devices)
  shard = -(-shard // block) * block
  num_blocks = shard // block
  num_chunks = -(-num_q // chunk)
  pad_q = num_chunks * chunk - num_q
  qc = jnp.pad(q, ((0, pad_q), (0, 0))).reshape(num_chunks, chunk, -1)
  ic = jnp.pad(items, ((0, pad_q), (0, 0)), constant_values=-1).reshape(num_chunks, chunk, -1)
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  split = jax.sharding.NamedSharding(mesh, jax.P(axes))
  qc, ic = jax.device_put(qc, replicated), jax.device_put(ic, replicated)
  r = jax.device_put(jnp.pad(r, ((0, shard * num_devices - num_r), (0, 0))), split)
  bias = (jnp.zeros((num_r,), r.dtype) if r_half_sq is None else r_half_sq)
  bias = jax.device_put(jnp.pad(bias, (0, shard * num_devices - num_r)), split)

  def local(qc, ic, r, bias):
    offset = lax.axis_index(axes) * shard
    cols = offset + jnp.arange(shard, dtype=jnp.int32)

    def one_chunk(args):
      qi, it = args
      s = qi @ r.T - bias[None, :]  # [C, S]; scored like the search (q.r - |r|^2 / 2 for L2)
      s = jnp.where(cols[None, :] < num_r, s, -jnp.inf)  # padding ranks below everything
      local_idx = it - offset
      mine = (it >= 0) & (local_idx >= 0) & (local_idx < shard)
      t = jnp.take_along_axis(s, jnp.clip(local_idx, 0, shard - 1), axis=1)
      t = lax.psum(jnp.where(mine, t, 0.0), axes)  # every item is in exactly one shard
      sb = s.reshape(s.shape[0], num_blocks, block).transpose(1, 0, 2)
      cb = cols.reshape(num_blocks, block)

      def add(count, blk):
        s_blk, c_blk = blk
        return count + _rank_block(s_blk, t, it, c_blk), None

      zero = lax.pcast(jnp.zeros(it.shape, jnp.int32), axes, to="varying")
      count, _ = lax.scan(add, zero, (sb, cb))
      return lax.psum(count, axes)

    return lax.map(one_chunk, (qc, ic))

  fn = jax.shard_map(local, mesh=mesh, in_specs=(jax.P(), jax.P(), jax.P(axes), jax.P(axes)),
                     out_specs=jax.P())
  counts = fn(qc, ic, r, bias).reshape(num_chunks * chunk, -1)[:num_q]
  return jnp.where(items >= 0, counts, -1)


def item_ranks(
    queries,
    database,
    items,
    *,
    similarity: str = "dot",
    mesh: jax.sharding.Mesh | None = None,
    axis: str | Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
  """Exact 0-based ranks of given database images in each query's ranking, without sorting.

  The rank of image j for query q is the number of database images i with a higher score, or
  an equal one and i < j: its position in a stable sort by decreasing score. The database is
  split over the devices of `mesh` (as `sharded_knn` splits its references); each device counts
  over its shard and the counts are summed. Work is O(Q x N x M) comparisons (M the longest item
  list), memory per device O(chunk_size x N / devices).

  Args:
    queries: [Q, d] descriptors.
    database: [N, d] descriptors (distractors appended after the database proper).
    items: [Q, M] int database indices per query, -1 for padding (`LandmarkGroundTruth.items`).
    similarity: "dot" (the protocol's: descriptors are L2-normalised already), "cosine" or
      "neg_squared_euclidean".
    mesh, axis: as in `sharded_knn`; None uses every device.
    chunk_size: queries per step (None: as many as keep the [chunk, N / devices] scores near
      256 MiB).

  Returns:
    [Q, M] int64 ranks, -1 where `items` pads.
  """
  _, _, _, _, num_q, num_r = _search_lib.check_search_args(queries, database, 1, similarity,
                                                            False, chunk_size or 1)
  items = np.asarray(items)
  if items.ndim != 2 or items.shape[0] != num_q:
    raise ValueError(f"`items` must have shape [{num_q}, M] (one row per query), got "
                     f"{items.shape}.")
  if items.dtype.kind not in "iu":
    raise TypeError(f"`items` must hold integer indices, got dtype {items.dtype}.")
  if items.size and (items.max() >= num_r or items.min() < -1):
    raise ValueError(f"`items` must be database indices in [0, {num_r}) or -1 (padding), got "
                     f"values in [{items.min()}, {items.max()}].")
  _checks.all_finite(queries, "queries", "a descriptor that is not finite has no rank")
  _checks.all_finite(database, "database", "a descriptor that is not finite has no rank")
  if mesh is None:
    mesh = _sharded.default_mesh()
  axes = _sharded._resolve_axes(mesh, axis)
  if num_q == 0:
    return np.zeros((0, items.shape[1]), np.int64)
  num_devices = int(np.prod([mesh.shape[a] for a in axes]))
  per_device = -(-num_r // num_devices)
  if chunk_size is None:
    chunk_size = 2**26 // max(1, per_device)
  chunk = max(1, min(int(chunk_size), num_q))
  # the comparisons of a block are [chunk, block, M] booleans: about 16 MiB at most
  block_max = max(1, 2**24 // (chunk * max(items.shape[1], 1)))
  num_blocks = -(-per_device // block_max)
  block = -(-per_device // num_blocks)
  out = _item_ranks(queries, database, jnp.asarray(items, jnp.int32), mesh=mesh, axes=axes,
                    chunk=chunk, block=block, similarity=similarity)
  return np.asarray(out).astype(np.int64)


def landmark_metrics(
    queries,
    database,
    gt: LandmarkGroundTruth,
    *,
    distractors=None,
    kappas: Sequence[int] = DEFAULT_KAPPAS,
    similarity: str = "dot",
    mesh: jax.sharding.Mesh | None = None,
    per_query: bool = False,
) -> dict[str, Any]:
  """Easy / Medium / Hard mAP and mP@k of `queries` searched in `database` (+ `distractors`).

  Args:
    queries: [Q, d] query descriptors (from the cropped queries).
    database: [N, d] database descriptors, in the ground truth's order.
    gt: the ground truth; its lists index `database`.
    distractors: optional [D, d] descriptors appended after the database (R1M); they are never
      positive nor ignored.
    kappas, per_query: as in `revisited_map`.
    similarity, mesh: as in `item_ranks`.

  Returns:
    `revisited_map`'s dict: "easy/map", "medium/map", "hard/map", "<protocol>/mp@<k>".

  >>> import numpy as np
  >>> db = np.eye(3, dtype=np.float32)
  >>> gt = LandmarkGroundTruth(easy=[[0]], hard=[[2]], junk=[[]])
  >>> m = landmark_metrics(np.array([[1.0, 0.5, 0.2]], np.float32), db, gt)
  >>> m["easy/map"], round(m["medium/map"], 4), m["hard/map"]  # ranks 0, 1, 2: easy, -, hard
  (1.0, 0.7917, 0.25)
  """
  if not isinstance(gt, LandmarkGroundTruth):
    raise TypeError(f"`gt` must be a LandmarkGroundTruth, got {type(gt).__name__}.")
  _checks.embeddings(queries, "queries")
  _checks.embeddings(database, "database")
  if queries.shape[0] != gt.num_queries:
    raise ValueError(f"`queries` has {queries.shape[0]} rows but the ground truth has "
                     f"{gt.num_queries} queries.")
  if gt.max_index >= database.shape[0]:
    raise ValueError(f"the ground truth names database image {gt.max_index}, but `database` "
                     f"has {database.shape[0]} rows.")
  if distractors is not None:
    _checks.embeddings(distractors, "distractors")
    if distractors.shape[1] != database.shape[1]:
      raise ValueError(f"`distractors` have dimension {distractors.shape[1]} but `database` "
                       f"has {database.shape[1]}.")
    database = jnp.concatenate([jnp.asarray(database), jnp.asarray(distractors)], axis=0)
  items = gt.items()
  ranks = item_ranks(queries, database, items, similarity=similarity, mesh=mesh)
  return revisited_map(ranks, gt, kappas, per_query=per_query)
