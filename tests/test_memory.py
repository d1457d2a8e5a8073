"""Cross-batch memory: ring-buffer order by hand, masks, gradients, and losses against it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L
from jaxdml import memory

update = jax.jit(memory.xbm_update)
xmask = jax.jit(memory.xbm_mask, static_argnames=("batch_size", "enqueued"))


def rows(values, dim=2):
  """Embeddings whose rows are [v, -v] so slots can be read back by value."""
  v = np.asarray(values, np.float32)
  return jnp.asarray(np.stack([v, -v], axis=1)[:, :dim])


def test_fifo_order_wrap_around_and_count():
  state = memory.xbm_init(memory_size=5, dim=2)
  assert state.embeddings.shape == (5, 2) and state.labels.dtype == jnp.int32
  assert int(state.ptr) == 0 and int(state.count) == 0
  state = update(state, rows([1, 2, 3]), jnp.array([10, 20, 30]))
  np.testing.assert_array_equal(state.embeddings[:, 0], [1, 2, 3, 0, 0])
  np.testing.assert_array_equal(state.labels, [10, 20, 30, 0, 0])
  assert int(state.ptr) == 3 and int(state.count) == 3
  state = update(state, rows([4, 5, 6]), jnp.array([40, 50, 60]))
  # slots 3, 4 then wrap to 0: the oldest entry (1) is overwritten first
  np.testing.assert_array_equal(state.embeddings[:, 0], [6, 2, 3, 4, 5])
  np.testing.assert_array_equal(state.embeddings[:, 1], [-6, -2, -3, -4, -5])
  np.testing.assert_array_equal(state.labels, [60, 20, 30, 40, 50])
  assert int(state.ptr) == 1 and int(state.count) == 5
  for step in range(3):
    state = update(state, rows([7 + step, 8 + step]), jnp.array([1, 2]))
    assert int(state.count) == 5  # saturates at capacity
  assert int(state.ptr) == (1 + 6) % 5
  np.testing.assert_array_equal(state.embeddings[:, 0], [9, 10, 8, 8, 9])
  # a batch as large as the memory replaces it whole
  state = update(state, rows([1, 2, 3, 4, 5]), jnp.arange(5))
  np.testing.assert_array_equal(state.embeddings[:, 0], [4, 5, 1, 2, 3])
  assert int(state.ptr) == 2


def test_state_is_a_pytree_that_goes_through_jit():
  state = memory.xbm_init(4, 3, dtype=jnp.float32)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  assert len(leaves) == 4
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert isinstance(again, memory.XBMState)
  out = update(state, jnp.ones((2, 3)), jnp.array([1, 2], jnp.int32))
  assert isinstance(out, memory.XBMState) and out.embeddings.dtype == jnp.float32


def test_no_gradient_flows_into_stored_embeddings(rng):
  state = memory.xbm_init(6, 2)
  state = update(state, jnp.asarray(rng.normal(size=(2, 2)), jnp.float32), jnp.array([0, 1]))
  z = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
  y = jnp.array([0, 1, 0])
  g = jax.jit(jax.grad(lambda z: jnp.sum(memory.xbm_update(state, z, y).embeddings ** 2)))(z)
  np.testing.assert_array_equal(g, 0.0)

  # A loss against the memory gets gradient only through the query side.
  def loss(z):
    s = memory.xbm_update(state, z, y)
    return L.contrastive_loss(z, y, s.embeddings, s.labels, mask=memory.xbm_mask(s, 3))

  def query_only(z):
    s = memory.xbm_update(state, z, y)
    refs = jax.lax.stop_gradient(s.embeddings)
    return L.contrastive_loss(z, y, refs, s.labels, mask=memory.xbm_mask(s, 3))

  g1 = jax.jit(jax.grad(loss))(z)
  g2 = jax.jit(jax.grad(query_only))(z)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)
  assert np.abs(np.asarray(g1)).max() > 0


def test_mask_excludes_own_and_empty_slots():
  state = memory.xbm_init(5, 2)
  state = update(state, rows([1, 2]), jnp.array([0, 1]))
  np.testing.assert_array_equal(memory.xbm_valid(state), [True, True, False, False, False])
  np.testing.assert_array_equal(xmask(state, batch_size=2),
                                [[False, True, False, False, False],
                                 [True, False, False, False, False]])
  np.testing.assert_array_equal(xmask(state, batch_size=2, enqueued=False),
                                [[True, True, False, False, False]] * 2)
  state = update(state, rows([3, 4]), jnp.array([0, 1]))
  state = update(state, rows([5, 6]), jnp.array([0, 1]))  # slots 4 and 0 (wrap)
  np.testing.assert_array_equal(xmask(state, batch_size=2),
                                [[True, True, True, True, False],
                                 [False, True, True, True, True]])


def _ms_against(z, y, refs, ref_labels, mask):
  return L.multi_similarity_loss(z, y, refs, ref_labels, mask=mask)


ms_against = jax.jit(_ms_against)


def test_loss_against_memory_equals_naive_concatenation(rng):
  size, b = 10, 4
  state = memory.xbm_init(size, 5)
  batches = [(rng.normal(size=(b, 5)).astype(np.float32), rng.integers(3, size=b).astype(np.int32))
             for _ in range(4)]
  seen = []
  for z, y in batches:
    state = update(state, jnp.asarray(z), jnp.asarray(y))
    seen.append((z, y))
    value = ms_against(jnp.asarray(z), jnp.asarray(y), state.embeddings, state.labels,
                       xmask(state, batch_size=b))
    # naive: the most recent `size` entries, in insertion order, the batch itself last
    refs = np.concatenate([s[0] for s in seen])[-size:]
    ref_labels = np.concatenate([s[1] for s in seen])[-size:]
    mask = np.ones((b, len(refs)), bool)
    mask[np.arange(b), len(refs) - b + np.arange(b)] = False  # each query's own copy
    pad = size - len(refs)  # pad to a fixed shape with masked rows: a single compilation
    refs = np.concatenate([refs, np.zeros((pad, 5), np.float32)])
    ref_labels = np.concatenate([ref_labels, np.zeros(pad, np.int32)])
    mask = np.concatenate([mask, np.zeros((b, pad), bool)], axis=1)
    expected = ms_against(jnp.asarray(z), jnp.asarray(y), refs, ref_labels, mask)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  # the first batch against the memory equals the batch against itself
  state = update(memory.xbm_init(size, 5), jnp.asarray(batches[0][0]),
                 jnp.asarray(batches[0][1]))
  first = ms_against(jnp.asarray(batches[0][0]), jnp.asarray(batches[0][1]), state.embeddings,
                     state.labels, xmask(state, batch_size=b))
  plain = jax.jit(L.multi_similarity_loss)(jnp.asarray(batches[0][0]),
                                           jnp.asarray(batches[0][1]))
  np.testing.assert_allclose(first, plain, rtol=1e-5, atol=1e-6)


def test_matches_pml_cross_batch_memory(pml, rng):
  """Same stream through PML's CrossBatchMemory (enqueue first, own positive removed)."""
  torch = pml.torch
  size, b, dim = 10, 4, 5
  xbm = pml.pml.losses.CrossBatchMemory(pml.pml.losses.MultiSimilarityLoss(), dim,
                                        memory_size=size)
  xbm.embedding_memory = xbm.embedding_memory.double()
  state = memory.xbm_init(size, dim)
  for _ in range(4):  # fills, then wraps
    z = rng.normal(size=(b, dim)).astype(np.float32)
    y = rng.integers(3, size=b).astype(np.int32)
    expected = float(xbm(torch.tensor(z.astype(np.float64)), torch.tensor(y, dtype=torch.long)))
    state = update(state, jnp.asarray(z), jnp.asarray(y))
    value = ms_against(jnp.asarray(z), jnp.asarray(y), state.embeddings, state.labels,
                       xmask(state, batch_size=b))
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)


def test_errors():
  with pytest.raises(ValueError, match="memory_size"):
    memory.xbm_init(0, 4)
  state = memory.xbm_init(3, 2)
  with pytest.raises(ValueError, match="dimension"):
    update(state, jnp.ones((2, 3)), jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="does not fit"):
    update(state, jnp.ones((4, 2)), jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="`labels`"):
    update(state, jnp.ones((2, 2)), jnp.zeros(3, jnp.int32))
  with pytest.raises(TypeError, match="`labels`"):
    update(state, jnp.ones((2, 2)), jnp.zeros(2, jnp.float32))
  with pytest.raises(TypeError, match="`embeddings`"):
    update(state, jnp.ones((2, 2), jnp.int32), jnp.zeros(2, jnp.int32))
