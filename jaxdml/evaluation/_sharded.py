"""Exact k-nearest-neighbour search with the references split across devices.

`sharded_knn` gives the results of `knn` when the reference set is too large for one device, or
to use every device of a host. The references are padded to a multiple of the number of devices
along the mesh axis (or axes) and split into equal contiguous shards, device `j` holding
references `j * S ... (j + 1) * S - 1`. The whole search is one jitted program around a
`jax.shard_map`: the queries, replicated on every device, are scanned a chunk at a time; each
device scores the chunk against its shard, masks its padding (and the query itself when
excluded) with -inf and keeps its local top k; the [C, k] candidates of all devices, with global
indices (local index + shard offset), are gathered and the global top k is taken from the
`devices * k` of them.

This is exact: each of a query's k best references is among the k best of its own shard. Both
top-k steps are plain `lax.top_k` calls, which keep the lower index among equal scores, so ties go
to the lower reference index.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdml.evaluation import _search as _search_lib

Array = jax.Array
Mesh = jax.sharding.Mesh

DEFAULT_AXIS = "data"


def default_mesh(axis: str = DEFAULT_AXIS) -> Mesh:
  """A 1-D mesh over all devices (of all processes), with the single axis `axis`."""
  return jax.make_mesh((jax.device_count(),), (axis,))


def _resolve_axes(mesh: Mesh, axis: str | Sequence[str] | None) -> tuple[str, ...]:
  if axis is None:
    return tuple(mesh.axis_names)
  axes = (axis,) if isinstance(axis, str) else tuple(axis)
  unknown = [a for a in axes if a not in mesh.axis_names]
  if unknown or not axes or len(set(axes)) != len(axes):
    raise ValueError(f"`axis` must name distinct axes of the mesh {tuple(mesh.axis_names)}, "
                     f"got {axis!r}.")
  return axes


def _merge_top_k(vals: Array, idx: Array, axes: tuple[str, ...], k: int) -> tuple[Array, Array]:
  """Global top k from every device's local candidates [C, k_local] (global indices).

  The gathered candidates are laid out device by device, i.e. by increasing reference index
  among equal scores, and `lax.top_k` keeps the first of equal values: ties go to the lower
  reference index, as in a single `lax.top_k` over all references.
  """
  vals = lax.all_gather(vals, axes, axis=1, tiled=True, to="invarying")  # [C, D * k_local]
  idx = lax.all_gather(idx, axes, axis=1, tiled=True, to="invarying")
  vals, pos = lax.top_k(vals, k)
  return vals, jnp.take_along_axis(idx, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("mesh", "axes", "k", "chunk", "exclude_self",
                                             "similarity"))
def _sharded_search(
    queries: Array,
    references: Array | None,
    *,
    mesh: Mesh,
    axes: tuple[str, ...],
    k: int,
    chunk: int,
    exclude_self: bool,
    similarity: str,
) -> tuple[Array, Array]:
  """The whole search as one program: padding, placement, the chunk loop and the merges."""
  q, r, r_half_sq = _search_lib._prepare(queries, references, similarity)
  if references is None:
    r = q
  euclidean = r_half_sq is not None
  num_q, num_r = q.shape[0], r.shape[0]
  num_devices = int(np.prod([mesh.shape[a] for a in axes]))
  shard = -(-num_r // num_devices)
  k_local = min(k, shard)
  num_chunks = -(-num_q // chunk)
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  split = jax.sharding.NamedSharding(mesh, jax.P(axes))
  qc = jnp.pad(q, ((0, num_chunks * chunk - num_q), (0, 0))).reshape(num_chunks, chunk, -1)
  qc = jax.device_put(qc, replicated)
  r = jax.device_put(jnp.pad(r, ((0, shard * num_devices - num_r), (0, 0))), split)
  if euclidean:
    r_half_sq = jax.device_put(jnp.pad(r_half_sq, (0, shard * num_devices - num_r)), split)

  def local(qc, r, r_half_sq):
    cols = lax.axis_index(axes) * shard + jnp.arange(shard, dtype=jnp.int32)  # global indices
    pad = cols[None, :] >= num_r

    def one_chunk(args):
      i, qi = args
      s = qi @ r.T  # [C, S]
      if euclidean:  # rank by q.r - |r|^2 / 2, which orders like -|q - r|^2
        s = s - r_half_sq[None, :]
      drop = pad
      if exclude_self:
        query_ids = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
        drop = drop | (cols[None, :] == query_ids[:, None])
      vals, idx = lax.top_k(jnp.where(drop, -jnp.inf, s), k_local)
      vals, idx = _merge_top_k(vals, cols[idx], axes, k)
      if euclidean:
        q_sq = jnp.sum(jnp.square(qi), axis=1, keepdims=True)
        vals = jnp.minimum(2.0 * vals - q_sq, 0.0)  # -max(|q|^2 + |r|^2 - 2 q.r, 0)
      return vals, idx

    return lax.map(one_chunk, (jnp.arange(num_chunks, dtype=jnp.int32), qc))

  split_spec = jax.P(axes)
  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(jax.P(), split_spec, split_spec if euclidean else None),
                     out_specs=(jax.P(), jax.P()))
  vals, idx = fn(qc, r, r_half_sq)
  return vals.reshape(-1, k)[:num_q], idx.reshape(-1, k)[:num_q]


def sharded_knn(
    queries: Array,
    references: Array | None = None,
    k: int = 10,
    *,
    similarity: str = "cosine",
    exclude_self: bool | None = None,
    chunk_size: int = 1024,
    mesh: Mesh | None = None,
    axis: str | Sequence[str] | None = None,
) -> tuple[Array, Array]:
  """Exact k-nearest-neighbour search with the references split across the devices of a mesh.

  Takes the arguments of `knn` and returns the same neighbours: the scores agree up to float
  rounding, and so do the indices except between references of exactly equal score, which go to
  the lower reference index. (`knn` does the same when it runs a single `lax.top_k` per row, as
  for small reference sets; in general it breaks such ties arbitrarily.) Padding added to split
  the references evenly is never returned.
  Memory per device is O(R / devices x d) for the references plus O(chunk_size x R / devices)
  for the scores; every device holds all the queries.

  The search compiles once per shape of `queries` and `references` (`knn` once per chunk shape).
  Works eagerly and under `jax.jit` (with every argument but the embeddings static). With several
  processes, each must pass the same full arrays.

  Args:
    queries: [Q, d] floating-point embeddings.
    references: [R, d] floating-point embeddings; `None` searches the queries among themselves.
    k: number of neighbours per query; at most the number of candidates (R, or R - 1 when the
      query itself is excluded). It may exceed the number of references per device.
    similarity: "cosine" (rows are L2-normalised first), "dot" or "neg_squared_euclidean", as in
      `jaxdml.similarity.SIMILARITIES`.
    exclude_self: leave each query out of its own results. Defaults to True when `references` is
      None and False otherwise. With explicit references it assumes query i is reference i.
    chunk_size: queries per step at most; memory per device grows as chunk_size x R / devices.
    mesh: the devices to split the references over; None builds a 1-D mesh over all devices with
      the axis "data" (`default_mesh`).
    axis: the mesh axis, or tuple of axes, to split the references along; None splits them over
      all axes of the mesh. The references are replicated along the other axes.

  Returns:
    scores: [Q, k] similarities, in decreasing order (float32, or float64 for float64 input).
    indices: [Q, k] int32 reference indices.
    Both are replicated on every device of the mesh.

  Raises:
    ValueError: the errors of `knn`, and an `axis` that is not an axis of `mesh`.
    TypeError: non-floating embeddings, non-integer `k` or `chunk_size`.

  Example:
    >>> x = jax.random.normal(jax.random.key(0), (100, 16))
    >>> scores, idx = sharded_knn(x, k=5)  # leave-one-out, references split over all devices
    >>> idx.shape
    (100, 5)
  """
  same, k, chunk_size, exclude_self, num_q, num_r = _search_lib.check_search_args(
      queries, references, k, similarity, exclude_self, chunk_size)
  if mesh is None:
    mesh = default_mesh()
  axes = _resolve_axes(mesh, axis)

  if num_q == 0:
    dtype = jax.dtypes.canonicalize_dtype(jnp.promote_types(queries.dtype, jnp.float32))
    return jnp.zeros((0, k), dtype), jnp.zeros((0, k), jnp.int32)
  return _sharded_search(queries, references, mesh=mesh, axes=axes, k=k,
                         chunk=min(chunk_size, num_q), exclude_self=exclude_self,
                         similarity=similarity)
