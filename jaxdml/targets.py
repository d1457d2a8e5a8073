"""Target and validity matrices: which (query, reference) pairs count, and how positive they are.

A target matrix `target [Q, R]` holds values in [0, 1]: 1 for a same-class pair, 0 for a
different-class pair, and anything between for mixed (interpolated) examples. A mask `[Q, R]` (bool)
says which pairs take part at all: it removes self-pairs, padding and unmined pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdml import _checks

Array = jax.Array


def from_labels(
    query_labels: Array,
    ref_labels: Array | None = None,
    *,
    exclude_self: bool | None = None,
    query_valid: Array | None = None,
    ref_valid: Array | None = None,
) -> tuple[Array, Array]:
  """Builds `(target, mask)` from integer labels.

  Args:
    query_labels: [Q] integer labels.
    ref_labels: [R] integer labels; `None` means the queries are their own references.
    exclude_self: drop the diagonal (pair of an example with itself). Defaults to True when
      `ref_labels` is None, False otherwise. When queries are the first Q references (a batch
      against [batch; memory]), pass True explicitly: the diagonal of the leading [Q, Q] block is
      removed.
    query_valid: optional [Q] bool, False for padding rows.
    ref_valid: optional [R] bool, False for padding / empty memory slots.

  Returns:
    target: [Q, R] float32, 1.0 where labels match.
    mask: [Q, R] bool, True where the pair takes part.
  """
  _checks.check_rank(query_labels, 1, "query_labels", "[Q]")
  _checks.check_integer(query_labels, "query_labels")
  if ref_labels is None:
    ref_labels = query_labels
    exclude_self = True if exclude_self is None else exclude_self
  else:
    _checks.check_rank(ref_labels, 1, "ref_labels", "[R]")
    _checks.check_integer(ref_labels, "ref_labels")
    exclude_self = False if exclude_self is None else exclude_self
  q, r = query_labels.shape[0], ref_labels.shape[0]
  target = (query_labels[:, None] == ref_labels[None, :]).astype(jnp.float32)
  mask = jnp.ones((q, r), dtype=bool)
  if exclude_self:
    if r < q:
      raise ValueError(f"exclude_self needs at least as many references ({r}) as queries ({q}).")
    mask = mask & ~jnp.eye(q, r, dtype=bool)
  if query_valid is not None:
    _checks.same_shape(query_valid, query_labels, "query_valid", "query_labels")
    mask = mask & jnp.asarray(query_valid, bool)[:, None]
  if ref_valid is not None:
    _checks.same_shape(ref_valid, ref_labels, "ref_valid", "ref_labels")
    mask = mask & jnp.asarray(ref_valid, bool)[None, :]
  return target, mask


def one_hot(labels: Array, num_classes: int) -> Array:
  """[B] integer labels -> [B, C] float32 targets against C class proxies."""
  _checks.check_rank(labels, 1, "labels", "[B]")
  _checks.check_integer(labels, "labels")
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def positives(target: Array, mask: Array | None) -> Array:
  """Bool [Q, R]: pairs with a positive part (target > 0) that take part."""
  pos = target > 0
  return pos if mask is None else pos & mask


def negatives(target: Array, mask: Array | None) -> Array:
  """Bool [Q, R]: pairs with a negative part (target < 1) that take part."""
  neg = target < 1
  return neg if mask is None else neg & mask


def pair_weights(target: Array, mask: Array | None) -> tuple[Array, Array]:
  """Positive weights `y` and negative weights `1 - y` of every pair, zero outside the mask.

  The weights every pair loss and miner reads: a pair is a positive with weight `target` and a
  negative with weight `1 - target`, so a soft (mixed) target counts on both sides.

  >>> import jax.numpy as jnp
  >>> pos, neg = pair_weights(jnp.array([[1.0, 0.25]]), jnp.array([[True, True]]))
  >>> pos.tolist(), neg.tolist()
  ([[1.0, 0.25]], [[0.0, 0.75]])
  """
  target = target.astype(jnp.float32) if not jnp.issubdtype(target.dtype, jnp.floating) else target
  pos = target
  neg = 1.0 - target
  if mask is not None:
    pos = jnp.where(mask, pos, 0.0)
    neg = jnp.where(mask, neg, 0.0)
  return pos, neg
