"""Cross-batch memory (XBM, Wang et al., CVPR 2020) as an explicit state pytree.

A fixed-size FIFO ring of past embeddings and labels. The state goes in and comes out of pure
functions, so it lives in the train state next to the parameters and is checkpointed with them:

    state = xbm_init(memory_size=1024, dim=128)
    state = xbm_update(state, z, y)                        # enqueue (stored without gradient)
    mask = xbm_mask(state, batch_size=z.shape[0])          # valid slots, the batch's own excluded
    loss = multi_similarity_loss(z, y, state.embeddings, state.labels, mask=mask)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdml import _checks

Array = jax.Array


class XBMState(NamedTuple):
  """embeddings [M, d]; labels [M] int32; ptr: next slot to write; count: filled slots (<= M)."""

  embeddings: Array
  labels: Array
  ptr: Array
  count: Array


def xbm_init(memory_size: int, dim: int, dtype=jnp.float32) -> XBMState:
  """An empty memory of `memory_size` slots (PML's CrossBatchMemory default is 1024)."""
  if memory_size < 1 or dim < 1:
    raise ValueError(f"memory_size and dim must be >= 1, got {memory_size}, {dim}.")
  return XBMState(jnp.zeros((memory_size, dim), dtype), jnp.zeros((memory_size,), jnp.int32),
                  jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def xbm_update(state: XBMState, embeddings: Array, labels: Array) -> XBMState:
  """Writes a batch into the ring (oldest entries are overwritten), without gradient."""
  _checks.embeddings(embeddings)
  _checks.labels(labels, embeddings.shape[0])
  size, dim = state.embeddings.shape
  b = embeddings.shape[0]
  if embeddings.shape[1] != dim:
    raise ValueError(f"embeddings have dimension {embeddings.shape[1]}, the memory {dim}.")
  if b > size:
    raise ValueError(f"batch of {b} does not fit a memory of {size} slots.")
  idx = (state.ptr + jnp.arange(b)) % size
  emb = state.embeddings.at[idx].set(jax.lax.stop_gradient(embeddings).astype(
      state.embeddings.dtype))
  lab = state.labels.at[idx].set(labels.astype(jnp.int32))
  return XBMState(emb, lab, (state.ptr + b) % size, jnp.minimum(state.count + b, size))


def xbm_valid(state: XBMState) -> Array:
  """[M] bool: slots that hold an entry."""
  return jnp.arange(state.embeddings.shape[0]) < state.count


def xbm_mask(state: XBMState, batch_size: int, *, enqueued: bool = True) -> Array:
  """[B, M] bool pair mask for a batch against the memory.

  Keeps filled slots; with `enqueued=True` (the batch was written by the last `xbm_update`),
  also removes each query's pair with its own slot.
  """
  size = state.embeddings.shape[0]
  mask = jnp.broadcast_to(xbm_valid(state)[None, :], (batch_size, size))
  if enqueued:
    own = (state.ptr - batch_size + jnp.arange(batch_size)) % size
    mask = mask & ~jax.nn.one_hot(own, size, dtype=bool)
  return mask
