"""Exact k-NN search against a float64 NumPy argsort, on tie-free random data.

Shapes are tiny and each configuration compiles once; the symmetric leave-one-out method is
exercised by shrinking its block size and minimum set size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import similarity as sim_lib
from jaxdml.evaluation import _search, knn


def naive_knn(q, r, k, similarity, exclude_self):
  """Top-k by a full float64 similarity matrix and a stable argsort."""
  q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
  if similarity == "cosine":
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    s = q @ r.T
  elif similarity == "dot":
    s = q @ r.T
  else:
    s = -np.sum((q[:, None, :] - r[None, :, :]) ** 2, axis=-1)
  if exclude_self:
    s[np.arange(len(q)), np.arange(len(q))] = -np.inf
  idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, idx, axis=1), idx


def _data(seed, n, d=8, scale=False):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  if scale:  # rows of different norms, so that dot and cosine rank differently
    x *= rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)
  return x


def _check(q, r, k, similarity, exclude_self, **kw):
  scores, idx = knn(q, r, k, similarity=similarity, exclude_self=exclude_self, **kw)
  ex = (r is None) if exclude_self is None else exclude_self
  ref_scores, ref_idx = naive_knn(q, q if r is None else r, k, similarity, ex)
  assert idx.shape == (len(q), k) and idx.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  np.testing.assert_allclose(np.asarray(scores), ref_scores, rtol=1e-5, atol=2e-5)


# (queries, references or None, k, similarity, exclude_self, chunk_size). Sizes pick both top-k
# paths: a plain lax.top_k (few candidates) and the two-stage grouped one with a tail (300 refs).
CASES = {
    "self_cosine_chunks_not_dividing": (37, None, 5, "cosine", None, 8),
    "self_included": (37, None, 5, "cosine", False, 16),
    "refs_dot_grouped": (23, 300, 3, "dot", None, 10),
    "refs_euclidean_grouped": (23, 300, 3, "neg_squared_euclidean", None, 1024),
    "refs_exclude_self": (20, 45, 6, "cosine", True, 7),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_naive(name):
  nq, nr, k, similarity, exclude_self, chunk = CASES[name]
  q = _data(0, nq, scale=True)
  r = None
  if nr is not None:
    r = _data(1, nr, scale=True)
    if exclude_self:
      r[:nq] = q  # query i is reference i
  _check(q, r, k, similarity, exclude_self, chunk_size=chunk)


def test_grouped_top_k_matches_plain():
  s = jnp.asarray(np.random.default_rng(4).standard_normal((5, 1003)).astype(np.float32))
  for group in (8, 32):
    vals, idx = jax.jit(_search._top_k_rows, static_argnums=(1, 2))(s, 6, group)
    ref_vals, ref_idx = jax.lax.top_k(s, 6)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
    np.testing.assert_array_equal(np.asarray(vals), np.asarray(ref_vals))


@pytest.fixture
def small_symmetric(monkeypatch):
  """Makes the symmetric leave-one-out method run on small sets (64-row blocks)."""
  monkeypatch.setattr(_search, "_SYM_MIN_N", 64)
  monkeypatch.setattr(_search, "_SYM_BLOCK", 64)


@pytest.mark.parametrize("similarity,exclude_self", [
    ("cosine", None), ("neg_squared_euclidean", False), ("dot", True)])
def test_symmetric_method_matches_naive(small_symmetric, similarity, exclude_self):
  n, k = 197, 4  # 197 = 3 blocks of 64 + 5: padding, and a group mixing real rows and padding
  kk = k + (exclude_self is not False)
  assert _search._symmetric_group(n, kk, np.float32) is not None  # the method is really used
  _check(_data(5, n, scale=True), None, k, similarity, exclude_self)


def test_under_jit_and_scores_match_similarity():
  q, r = _data(6, 11), _data(7, 40)
  fn = jax.jit(functools.partial(knn, k=4, similarity="cosine", chunk_size=4))
  scores, idx = fn(q, r)
  eager_scores, eager_idx = knn(q, r, 4, chunk_size=4)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(eager_idx))
  np.testing.assert_allclose(np.asarray(scores), np.asarray(eager_scores), rtol=1e-6)
  full = np.asarray(sim_lib.cosine(jnp.asarray(q), jnp.asarray(r)))
  np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(full, np.asarray(idx), 1),
                             rtol=1e-5, atol=1e-6)


def test_k_equal_to_all_candidates_and_empty_queries():
  x = _data(8, 6)
  _check(x, None, 5, "dot", None)  # every other point, in order
  scores, idx = knn(np.zeros((0, 8), np.float32), x, 3)
  assert scores.shape == (0, 3) and idx.shape == (0, 3)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(k=10), ValueError, "`k`"),  # 9 candidates when leaving self out
    (dict(k=2.0), TypeError, "`k`"),
    (dict(k=0), ValueError, "`k`"),
    (dict(similarity="euclid"), ValueError, "`similarity`"),
    (dict(chunk_size=0), ValueError, "`chunk_size`"),
    (dict(references=np.zeros((10, 3), np.float32)), ValueError, "dimension"),
    (dict(references=np.zeros((5, 4), np.float32), exclude_self=True), ValueError,
     "exclude_self"),
    (dict(queries=np.zeros((10,), np.float32)), ValueError, "`queries`"),
    (dict(queries=np.zeros((10, 4), np.int32)), TypeError, "`queries`"),
    (dict(references=np.zeros((10, 4, 1), np.float32)), ValueError, "`references`"),
])
def test_bad_inputs(kwargs, error, match):
  args = dict(queries=_data(9, 10, d=4), references=None, k=3)
  args.update(kwargs)
  with pytest.raises(error, match=match):
    knn(args.pop("queries"), args.pop("references"), args.pop("k"), **args)
