"""The `(sim or dist, target, mask)` primitive of a batch, built from embeddings and labels.

Every pair loss and miner reads this triple; the `(embeddings, labels)` wrappers of
`jaxdml.losses` build it here, and so can a caller that mines first and then calls a loss's
matrix form. A batch is compared with itself (self-pairs masked out) or with references (a
memory bank, a teacher's embeddings).
"""

from __future__ import annotations

import jax

from jaxdml import _checks, similarity, targets

Array = jax.Array

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def _refs(embeddings, labels, ref_embeddings, ref_labels):
  _checks.embeddings(embeddings, "embeddings")
  _checks.labels(labels, embeddings.shape[0], "labels")
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("pass both `ref_embeddings` and `ref_labels`, or neither.")
  if ref_embeddings is None:
    return embeddings, labels, True
  _checks.embeddings(ref_embeddings, "ref_embeddings")
  _checks.labels(ref_labels, ref_embeddings.shape[0], "ref_labels")
  if ref_embeddings.shape[1] != embeddings.shape[1]:
    raise ValueError(
        f"`ref_embeddings` have dimension {ref_embeddings.shape[1]} but `embeddings` have "
        f"{embeddings.shape[1]}.")
  return ref_embeddings, ref_labels, False


def _targets(labels, ref_labels, self_ref, mask):
  target, valid = targets.from_labels(labels, ref_labels, exclude_self=self_ref)
  if mask is not None:
    _checks.same_shape(mask, valid, "mask", "the [Q, R] pair matrix")
    valid = valid & mask
  return target, valid


def sim_inputs(embeddings, labels, ref_embeddings=None, ref_labels=None, *, sim="cosine",
               mask=None) -> tuple[Array, Array, Array]:
  """(sim, target, mask) of a batch against itself (self-pairs masked) or against references.

  Args:
    embeddings: [Q, d]; labels: [Q] integers.
    ref_embeddings, ref_labels: optional [R, d], [R]; default: the batch itself.
    sim: "cosine", "dot" or "neg_squared_euclidean" (`jaxdml.similarity.get`).
    mask: optional [Q, R] bool ANDed with the validity mask (e.g. a miner's).

  >>> import jax.numpy as jnp
  >>> s, t, m = sim_inputs(jnp.eye(3), jnp.array([0, 0, 1]))
  >>> t.tolist(), m[0].tolist()
  ([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [False, True, True])
  """
  refs, ref_labels, self_ref = _refs(embeddings, labels, ref_embeddings, ref_labels)
  s = similarity.get(sim)(embeddings, None if self_ref else refs)
  target, valid = _targets(labels, ref_labels, self_ref, mask)
  return s, target, valid


def dist_inputs(embeddings, labels, ref_embeddings=None, ref_labels=None, *,
                distance="euclidean", normalize=True, mask=None) -> tuple[Array, Array, Array]:
  """(dist, target, mask); by default the Euclidean distance of L2-normalised embeddings.

  Args:
    embeddings, labels, ref_embeddings, ref_labels, mask: as `sim_inputs`.
    distance: "euclidean", "squared_euclidean" or "cosine" (1 - cosine similarity).
    normalize: L2-normalise both sides first (always for "cosine").

  >>> import jax.numpy as jnp
  >>> d, t, m = dist_inputs(jnp.array([[3.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1]))
  >>> round(float(d[0, 1]) ** 2, 5)
  2.0
  """
  _checks.one_of(distance, DISTANCES, "distance")
  refs, ref_labels, self_ref = _refs(embeddings, labels, ref_embeddings, ref_labels)
  d = distance_matrix(embeddings, None if self_ref else refs, distance=distance,
                      normalize=normalize)
  target, valid = _targets(labels, ref_labels, self_ref, mask)
  return d, target, valid


def distance_matrix(queries: Array, references: Array | None = None, *,
                    distance: str = "euclidean", normalize: bool = True) -> Array:
  """[Q, R] distances of `dist_inputs` (`references=None`: the queries against themselves).

  >>> import jax.numpy as jnp
  >>> distance_matrix(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]]), distance="cosine")
  Array([[1.]], dtype=float32)
  """
  _checks.one_of(distance, DISTANCES, "distance")
  q, r = queries, references
  if normalize or distance == "cosine":
    q = similarity.l2_normalize(q)
    r = None if r is None else similarity.l2_normalize(r)
  if distance == "euclidean":
    return similarity.euclidean(q, r)
  if distance == "squared_euclidean":
    return similarity.squared_euclidean(q, r)
  return 1.0 - similarity.dot(q, r)

