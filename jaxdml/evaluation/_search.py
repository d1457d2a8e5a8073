"""Exact k-nearest-neighbour search by similarity.

Two exact methods, chosen by `knn`:

* Chunked (the general one): queries go through one jitted function `chunk_size` rows at a time
  (the last chunk is padded, so a single shape compiles); each chunk computes its [C, R]
  similarities and keeps its top k. Memory is O(chunk_size x R).
* Symmetric (a set searched among itself on CPU, see `_knn_symmetric`): only half of the [N, N]
  matrix is computed, which halves the dominant matrix-product cost.

Both find the top k of a row in two exact stages instead of one `lax.top_k` over the whole row,
which on CPU is several times faster: the columns are split into groups of `g`, the k groups with
the largest maximum are kept, and the top k is taken over their members. This is exact: each of
the row's k best columns lies in a group whose maximum is at least its score, and at most k - 1
groups can have a larger maximum, since each holds a distinct column scoring higher than it.
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

# Interleaved group sizes tried for the two-stage top-k, largest first; see `_group_size`.
_GROUP_SIZES = (32, 16, 8)
# On CPU a chunk's [C, R] similarity block is kept under this size, so that it is still in the
# last-level cache when the top-k passes read it (C = 256 for R = 20k; measured ~20% faster than
# C = 1024 at R = 20k, d = 512 on a 2-core AMD EPYC with a 32 MiB L3).
_CPU_CHUNK_BYTES = 20 * 2**20


def _group_size(num_candidates: int, k: int) -> int:
  """Group size of the two-stage top-k, or 1 for a plain `lax.top_k`.

  Pruning pays off once the row holds at least ~4 groups' worth of candidates per kept group.
  """
  for g in _GROUP_SIZES:
    if num_candidates >= 4 * g * k:
      return g
  return 1


def _top_k(s: Array, k: int) -> tuple[Array, Array]:
  # The barrier keeps XLA from folding later slices into the top-k: on CPU it would then lower
  # the top-k to a full sort of every row, ~100x slower than its TopK kernel.
  return lax.optimization_barrier(lax.top_k(s, k))


def _top_k_rows(s: Array, k: int, group: int) -> tuple[Array, Array]:
  """Exact top k of every row of `s` [C, N] (values descending, column indices int32)."""
  if group == 1:
    return _top_k(s, k)
  c, n = s.shape
  ng = n // group  # number of groups; the last `n - ng * group` columns form a tail
  n0 = ng * group
  s3 = s[:, :n0].reshape(c, group, ng)  # s3[:, t, m] = s[:, t * ng + m]: group m is s3[:, :, m]
  _, gidx = _top_k(jnp.max(s3, axis=1), k)  # [C, k] best groups
  cand = jnp.take_along_axis(s3, gidx[:, None, :], axis=2).reshape(c, group * k)
  cols = (jnp.arange(group, dtype=jnp.int32)[None, :, None] * ng + gidx[:, None, :]).reshape(
      c, group * k)
  if n0 < n:
    cand = jnp.concatenate([cand, s[:, n0:]], axis=1)
    tail = jnp.broadcast_to(jnp.arange(n0, n, dtype=jnp.int32), (c, n - n0))
    cols = jnp.concatenate([cols, tail], axis=1)
  vals, pos = _top_k(cand, k)
  return vals, jnp.take_along_axis(cols, pos, axis=1)


def _drop_self(vals: Array, idx: Array, query_ids: Array, k: int) -> tuple[Array, Array]:
  """From k + 1 neighbours per row, removes the query's own index (or the last one if absent)."""
  is_self = idx == query_ids[:, None]
  pos = jnp.where(jnp.any(is_self, axis=1), jnp.argmax(is_self, axis=1), k)
  shift = jnp.arange(k)[None, :] >= pos[:, None]
  return (jnp.where(shift, vals[:, 1:], vals[:, :k]), jnp.where(shift, idx[:, 1:], idx[:, :k]))


@functools.partial(jax.jit, static_argnames=("k", "group", "exclude_self", "euclidean"))
def _search_chunk(
    q: Array,
    r: Array,
    r_half_sq: Array | None,
    start: Array,
    *,
    k: int,
    group: int,
    exclude_self: bool,
    euclidean: bool,
) -> tuple[Array, Array]:
  """Top-k references for one chunk of queries `q` [C, d] (rows start..start+C-1 of the queries)."""
  s = q @ r.T  # [C, R]
  if euclidean:  # rank by q.r - |r|^2 / 2, which orders like -|q - r|^2
    s = s - r_half_sq[None, :]
  kk = k + 1 if exclude_self else k
  vals, idx = _top_k_rows(s, kk, group)
  if exclude_self:
    query_ids = start + jnp.arange(q.shape[0], dtype=jnp.int32)
    vals, idx = _drop_self(vals, idx, query_ids, k)
  if euclidean:
    q_sq = jnp.sum(jnp.square(q), axis=1, keepdims=True)
    vals = jnp.minimum(2.0 * vals - q_sq, 0.0)  # -max(|q|^2 + |r|^2 - 2 q.r, 0)
  return vals, idx


def _check_int(value, name: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
  if value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
  return int(value)


def check_search_args(queries, references, k, similarity: str, exclude_self, chunk_size
                      ) -> tuple[bool, int, int, bool, int, int]:
  """Validates a search's arguments (shared by `knn` and `sharded_knn`).

  Returns:
    (same, k, chunk_size, exclude_self, num_queries, num_references), with `exclude_self`
    resolved (None: True when the queries are their own references).
  """
  _checks.embeddings(queries, "queries")
  same = references is None
  if not same:
    _checks.embeddings(references, "references")
    if queries.shape[1] != references.shape[1]:
      raise ValueError(f"`queries` have dimension {queries.shape[1]} but `references` have "
                       f"dimension {references.shape[1]}.")
  if similarity not in similarity_lib.SIMILARITIES:
    raise ValueError(f"`similarity` must be one of {sorted(similarity_lib.SIMILARITIES)}, "
                     f"got {similarity!r}.")
  k = _check_int(k, "k")
  chunk_size = _check_int(chunk_size, "chunk_size")
  exclude_self = same if exclude_self is None else bool(exclude_self)
  num_q = queries.shape[0]
  num_r = num_q if same else references.shape[0]
  if exclude_self and num_r < num_q:
    raise ValueError(f"`exclude_self` assumes query i is reference i, so it needs at least as many "
                     f"references ({num_r}) as queries ({num_q}).")
  num_candidates = num_r - int(exclude_self)
  if k > num_candidates:
    raise ValueError(f"`k`={k} exceeds the number of candidate references per query "
                     f"({num_candidates}).")
  return same, k, chunk_size, exclude_self, num_q, num_r


@functools.partial(jax.jit, static_argnames=("similarity",))
def _prepare(queries: Array, references: Array | None,
             similarity: str) -> tuple[Array, Array, Array | None]:
  """Casts to a float type of at least 32 bits and applies the similarity's preprocessing.

  Returns `(q, r, r_half_sq)`: for "cosine" the L2-normalised rows, for "neg_squared_euclidean"
  also `|r|^2 / 2` (scores are ranked as `q.r - |r|^2 / 2`), else None. `r is q` when
  `references` is None (inside this jitted function; callers reuse `q` in that case).
  """
  ref = queries if references is None else references
  dtype = jnp.promote_types(jnp.result_type(queries, ref), jnp.float32)
  q = jnp.asarray(queries, dtype)
  r = q if references is None else jnp.asarray(references, dtype)
  r_half_sq = None
  if similarity == "cosine":
    q = similarity_lib.l2_normalize(q)
    r = q if references is None else similarity_lib.l2_normalize(r)
  elif similarity == "neg_squared_euclidean":
    r_half_sq = 0.5 * jnp.sum(jnp.square(r), axis=1)
  return q, r, r_half_sq


# ----------------------------------------------------------------------------------------------
# Leave-one-out search of a set among itself, using the symmetry of the similarity matrix.
#
# Pass 1 visits only the blocks (i, j), i <= j, of the [N, N] matrix (about half the products)
# and stores, for every row, the maximum of each group of `group` consecutive columns: the
# [N, N / group] matrix `gm`. Block (i, j) gives the row-group maxima of rows in i over columns in
# j and, read by columns, those of rows in j over columns in i. Pass 2 takes each row's best
# k (+1 for self) groups from `gm` - they hold its k (+1) nearest neighbours, by the argument in
# the module docstring - and recomputes the scores of their members exactly.
# ----------------------------------------------------------------------------------------------
_SYM_BLOCK = 1024  # rows per block in pass 1 (block products are [1024, 1024])
_SYM_MIN_N = 4096  # below this the chunked search is as fast
_SYM_MAX_BYTES = 256 * 2**20  # cap on the memory of `gm`
_SYM_REFINE_CHUNK = 1024  # queries per pass-2 step


def _symmetric_group(n: int, k: int, dtype) -> int | None:
  """Group size for the symmetric search of n points, or None to use the chunked search."""
  if n < _SYM_MIN_N:
    return None
  n_pad = -(-n // _SYM_BLOCK) * _SYM_BLOCK
  for g in (8, 16):
    if n_pad * (n_pad // g) * np.dtype(dtype).itemsize <= _SYM_MAX_BYTES and n_pad // g >= k:
      return g
  return None


@functools.partial(jax.jit, static_argnames=("block", "group", "n"))
def _symmetric_group_max(x: Array, bias: Array | None, pairs: Array, *, block: int, group: int,
                         n: int) -> Array:
  """Pass 1: `gm [Np, Np / group]`, the group maxima of `x x^T (+ bias + bias^T)`.

  `x` holds n real rows followed by zero padding. With `bias` (-inf on padding) the padding never
  scores. Without it padding scores 0, so the groups made only of padding are set to -inf and the
  one group mixing real rows and padding is recomputed from its real rows.
  """
  n_pad = x.shape[0]
  gb = block // group  # groups per block

  def step(gm, ij):
    i, j = ij[0], ij[1]
    s = lax.dynamic_slice_in_dim(x, i * block, block) @ lax.dynamic_slice_in_dim(
        x, j * block, block).T  # [block, block], symmetric when i == j
    if bias is not None:
      s = s + (lax.dynamic_slice_in_dim(bias, i * block, block)[:, None] +
               lax.dynamic_slice_in_dim(bias, j * block, block)[None, :])
    rows_i = jnp.max(s.reshape(block, gb, group), axis=2)  # rows of i, groups of j
    rows_j = jnp.max(s.reshape(gb, group, block), axis=1).T  # rows of j, groups of i
    gm = lax.dynamic_update_slice(gm, rows_j, (j * block, i * gb))
    return lax.dynamic_update_slice(gm, rows_i, (i * block, j * gb)), None  # wins when i == j

  gm = lax.scan(step, jnp.zeros((n_pad, n_pad // group), x.dtype), pairs)[0]
  if bias is None and n < n_pad:
    full = n // group  # groups [0, full) are all real
    if n % group:
      mixed = jnp.max(x @ x[full * group:n].T, axis=1)
      gm = gm.at[:, full].set(mixed)
      full += 1
    gm = gm.at[:, full:].set(-jnp.inf)
  return gm


@functools.partial(jax.jit, static_argnames=("k", "exclude_self", "euclidean"))
def _symmetric_refine(q, q_bias, gm, x_groups, bias_groups, start, *, k, exclude_self,
                      euclidean):
  """Pass 2 for a chunk of rows: exact scores of the members of each row's best groups."""
  kk = k + 1 if exclude_self else k
  c = q.shape[0]
  group = x_groups.shape[1]
  _, gidx = _top_k_rows(gm, kk, _group_size(gm.shape[1], kk))  # [C, kk] best groups

  def scores(args):
    qv, gi = args
    return jnp.einsum("kgd,d->kg", x_groups[gi], qv) + bias_groups[gi]

  s = lax.map(scores, (q, gidx), batch_size=32).reshape(c, kk * group)
  cols = (gidx[:, :, None] * group + jnp.arange(group, dtype=jnp.int32)).reshape(c, kk * group)
  vals, pos = _top_k(s, kk)
  idx = jnp.take_along_axis(cols, pos, axis=1)
  if exclude_self:
    vals, idx = _drop_self(vals, idx, start + jnp.arange(c, dtype=jnp.int32), k)
  if euclidean:  # vals + q_bias = -|q - r|^2 / 2
    vals = jnp.minimum(2.0 * (vals + q_bias[:, None]), 0.0)
  return vals, idx


def _knn_symmetric(x: Array, k: int, exclude_self: bool, euclidean: bool,
                   group: int) -> tuple[Array, Array]:
  n, d = x.shape
  block = _SYM_BLOCK
  nb = -(-n // block)
  n_pad = nb * block
  bias = -0.5 * jnp.sum(jnp.square(x), axis=1) if euclidean else jnp.zeros((n,), x.dtype)
  xp = jnp.pad(x, ((0, n_pad - n), (0, 0)))
  bp = jnp.pad(bias, (0, n_pad - n), constant_values=-jnp.inf)  # padding never scores
  pairs = jnp.asarray([(i, j) for i in range(nb) for j in range(i, nb)], jnp.int32)
  gm = _symmetric_group_max(xp, bp if euclidean else None, pairs, block=block, group=group, n=n)
  x_groups = xp.reshape(n_pad // group, group, d)
  bias_groups = bp.reshape(n_pad // group, group)
  chunk = min(_SYM_REFINE_CHUNK, block)  # divides block, hence n_pad
  refine = functools.partial(_symmetric_refine, k=k, exclude_self=exclude_self,
                             euclidean=euclidean)
  vals, idx = [], []
  for start in range(0, n, chunk):  # n_pad is a multiple of chunk: every step has one shape
    v, i = refine(xp[start:start + chunk], bp[start:start + chunk], gm[start:start + chunk],
                  x_groups, bias_groups, jnp.int32(start))
    vals.append(v)
    idx.append(i)
  return jnp.concatenate(vals)[:n], jnp.concatenate(idx)[:n]


def _on_cpu(x) -> bool:
  if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
    return jax.default_backend() == "cpu"
  return all(dev.platform == "cpu" for dev in x.devices())


def knn(
    queries: Array,
    references: Array | None = None,
    k: int = 10,
    *,
    similarity: str = "cosine",
    exclude_self: bool | None = None,
    chunk_size: int = 1024,
) -> tuple[Array, Array]:
  """Exact k-nearest-neighbour search: the k references most similar to each query.

  Similarity is larger for closer pairs. Queries are processed `chunk_size` at a time by one jitted
  function, so memory is O(chunk_size x R) and the [Q, R] matrix is never built. Works eagerly
  and under `jax.jit` (with `k`, `similarity`, `exclude_self` and `chunk_size` static).

  On CPU, a set searched among itself (`references=None`, 4096 <= N <= ~32k points) uses a
  faster method instead: it computes only half of the symmetric [N, N] similarity matrix, in
  1024 x 1024 blocks, keeping the maximum of every 8 (or 16) consecutive columns of each row
  (N^2/8 floats, at most 256 MiB), then rescores the members of each row's best groups exactly.
  Its results equal the chunked search's up to float rounding.

  Args:
    queries: [Q, d] floating-point embeddings.
    references: [R, d] floating-point embeddings; `None` searches the queries among themselves.
    k: number of neighbours per query; at most the number of candidates (R, or R - 1 when the
      query itself is excluded).
    similarity: "cosine" (rows are L2-normalised first), "dot" or "neg_squared_euclidean", as in
      `jaxdml.similarity.SIMILARITIES`.
    exclude_self: leave each query out of its own results. Defaults to True when `references` is
      None and False otherwise. With explicit references it assumes query i is reference i.
    chunk_size: queries per step at most; memory grows as chunk_size x R. On CPU steps are also
      capped at ~20 MiB of similarities (256 queries for R = 20k), which keeps them in cache.

  Returns:
    scores: [Q, k] similarities, in decreasing order (float32, or float64 for float64 input);
      they equal the entries of `jaxdml.similarity.<similarity>(queries, references)` up to float
      rounding.
    indices: [Q, k] int32 reference indices. Ties between equal scores are broken arbitrarily.

  NaN is not checked for (that would not work under jit) and propagates: a NaN score ranks above
  every number, so a NaN query gets NaN scores and a NaN reference is everyone's neighbour.
  `retrieval_metrics` rejects non-finite embeddings.

  Raises:
    ValueError: bad rank, dimension mismatch, `k` larger than the number of candidates,
      `exclude_self` with fewer references than queries, unknown `similarity`.
    TypeError: non-floating embeddings, non-integer `k` or `chunk_size`.

  Example:
    >>> x = jax.random.normal(jax.random.key(0), (100, 16))
    >>> scores, idx = knn(x, k=5)  # leave-one-out search of x among itself
    >>> idx.shape
    (100, 5)
  """
  same, k, chunk_size, exclude_self, num_q, num_r = check_search_args(
      queries, references, k, similarity, exclude_self, chunk_size)
  q, r, r_half_sq = _prepare(queries, references, similarity)
  if same:
    r = q
  if num_q == 0:
    return jnp.zeros((0, k), q.dtype), jnp.zeros((0, k), jnp.int32)
  euclidean = r_half_sq is not None
  kk = k + 1 if exclude_self else k

  group = _symmetric_group(num_q, kk, q.dtype) if same and _on_cpu(q) else None
  if group is not None:
    return _knn_symmetric(q, k, exclude_self, euclidean, group)

  chunk = min(chunk_size, num_q)
  if _on_cpu(q):  # keep each step's [chunk, R] block in cache for the passes after the product
    cap = _CPU_CHUNK_BYTES // (num_r * q.dtype.itemsize) // 32 * 32
    chunk = min(chunk, max(32, cap))
  step = functools.partial(_search_chunk, k=k, group=_group_size(num_r, kk),
                           exclude_self=exclude_self, euclidean=euclidean)
  all_vals, all_idx = [], []
  for start in range(0, num_q, chunk):
    qc = q[start:start + chunk]
    if qc.shape[0] < chunk:  # pad the last chunk so that one shape compiles
      qc = jnp.pad(qc, ((0, chunk - qc.shape[0]), (0, 0)))
    vals, idx = step(qc, r, r_half_sq, jnp.int32(start))
    all_vals.append(vals)
    all_idx.append(idx)
  if len(all_vals) == 1:
    return all_vals[0][:num_q], all_idx[0][:num_q]
  return jnp.concatenate(all_vals)[:num_q], jnp.concatenate(all_idx)[:num_q]
