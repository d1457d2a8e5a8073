"""Target and mask construction from labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import targets as T

from_labels = jax.jit(T.from_labels, static_argnames="exclude_self")


def test_batch_against_itself():
  y = jnp.array([0, 1, 0, 2])
  target, mask = from_labels(y)
  assert target.dtype == jnp.float32 and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(target, [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
  np.testing.assert_array_equal(mask, ~np.eye(4, dtype=bool))
  # self-pairs can be kept explicitly
  _, mask = from_labels(y, exclude_self=False)
  assert np.all(np.asarray(mask))


def test_against_references(batch):
  target, mask = from_labels(jnp.asarray(batch.labels), jnp.asarray(batch.ref_labels))
  expected = (batch.labels[:, None] == batch.ref_labels[None, :]).astype(np.float32)
  np.testing.assert_array_equal(target, expected)
  assert np.all(np.asarray(mask))  # nothing excluded by default
  # queries that are the first Q references (a batch against [batch; memory])
  refs = jnp.concatenate([jnp.asarray(batch.labels), jnp.asarray(batch.ref_labels)])
  target, mask = from_labels(jnp.asarray(batch.labels), refs, exclude_self=True)
  assert target.shape == (12, 22)
  np.testing.assert_array_equal(mask, ~np.eye(12, 22, dtype=bool))
  with pytest.raises(ValueError, match="exclude_self"):
    from_labels(jnp.arange(5), jnp.arange(3), exclude_self=True)


def test_validity_masks():
  q = jnp.array([0, 1, 1])
  r = jnp.array([1, 0, 1, 0])
  qv = jnp.array([True, False, True])
  rv = jnp.array([True, True, False, True])
  target, mask = from_labels(q, r, query_valid=qv, ref_valid=rv)
  np.testing.assert_array_equal(mask, np.outer([1, 0, 1], [1, 1, 0, 1]).astype(bool))
  np.testing.assert_array_equal(target[1], [1, 0, 1, 0])  # target itself is unmasked
  _, mask = from_labels(q, query_valid=qv)
  np.testing.assert_array_equal(mask, np.outer([1, 0, 1], [1, 1, 1]).astype(bool)
                                & ~np.eye(3, dtype=bool))
  with pytest.raises(ValueError, match="`ref_valid`"):
    from_labels(q, r, ref_valid=rv[:3])
  with pytest.raises(ValueError, match="`query_valid`"):
    from_labels(q, query_valid=qv[:, None])


def test_label_errors():
  with pytest.raises(TypeError, match="`query_labels`.*integer"):
    from_labels(jnp.zeros(3))
  with pytest.raises(TypeError, match="`ref_labels`.*integer"):
    from_labels(jnp.zeros(3, jnp.int32), jnp.zeros(3))
  with pytest.raises(ValueError, match="`query_labels`.*rank 1"):
    from_labels(jnp.zeros((3, 1), jnp.int32))
  with pytest.raises(ValueError, match="`ref_labels`.*rank 1"):
    from_labels(jnp.zeros(3, jnp.int32), jnp.zeros((3, 1), jnp.int32))
  # bool labels count as integer classes
  target, _ = from_labels(jnp.array([True, False, True]))
  np.testing.assert_array_equal(target[0], [1, 0, 1])


def test_one_hot_positives_negatives():
  oh = jax.jit(T.one_hot, static_argnums=1)(jnp.array([2, 0]), 3)
  np.testing.assert_array_equal(oh, [[0, 0, 1], [1, 0, 0]])
  assert oh.dtype == jnp.float32
  with pytest.raises(TypeError, match="`labels`"):
    T.one_hot(jnp.zeros(2), 3)
  target = jnp.array([[1.0, 0.0, 0.4], [0.0, 1.0, 1.0]])
  mask = jnp.array([[True, True, True], [True, False, True]])
  pos = jax.jit(T.positives)(target, mask)
  neg = jax.jit(T.negatives)(target, mask)
  np.testing.assert_array_equal(pos, [[True, False, True], [False, False, True]])
  np.testing.assert_array_equal(neg, [[False, True, True], [True, False, False]])
  np.testing.assert_array_equal(T.positives(target, None), np.asarray(target) > 0)
  np.testing.assert_array_equal(T.negatives(target, None), np.asarray(target) < 1)
