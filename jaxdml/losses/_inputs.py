"""Builds the (sim or dist, target, mask) primitive from embeddings and labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
  """(sim, target, mask) for a batch against itself (self-pairs masked) or against references."""
  refs, ref_labels, self_ref = _refs(embeddings, labels, ref_embeddings, ref_labels)
  s = similarity.get(sim)(embeddings, None if self_ref else refs)
  target, valid = _targets(labels, ref_labels, self_ref, mask)
  return s, target, valid


def dist_inputs(embeddings, labels, ref_embeddings=None, ref_labels=None, *,
                distance="euclidean", normalize=True, mask=None) -> tuple[Array, Array, Array]:
  """(dist, target, mask); by default Euclidean distance of L2-normalised embeddings."""
  _checks.one_of(distance, DISTANCES, "distance")
  refs, ref_labels, self_ref = _refs(embeddings, labels, ref_embeddings, ref_labels)
  q, r = embeddings, None if self_ref else refs
  if normalize or distance == "cosine":
    q = similarity.l2_normalize(q)
    r = None if r is None else similarity.l2_normalize(r)
  if distance == "euclidean":
    d = similarity.euclidean(q, r)
  elif distance == "squared_euclidean":
    d = similarity.squared_euclidean(q, r)
  else:
    d = 1.0 - similarity.dot(q, r)
  target, valid = _targets(labels, ref_labels, self_ref, mask)
  return d, target, valid


def as_float(x: Array) -> Array:
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)
