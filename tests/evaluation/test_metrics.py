"""Retrieval metrics against a hand-computed example and naive per-query Python loops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from jaxdml import evaluation as ev

# Five points on a line, searched among themselves (leave-one-out) by -squared distance.
#   item:   0     1     2     3     4
#   x:      0.0   0.1  -0.5   1.0   1.2
#   label:  0     0     1     1     0
# Ranking of the others (nearest first), their labels, R (same-label others):
#   0: [1, 2, 3, 4]  labels [0, 1, 1, 0]  R=2  top-R rel [1, 0]
#      RP = 1/2, MAP@R = (1/2)(1/1) = 1/2, AP = (1/1 + 2/4)/2 = 3/4
#   1: [0, 2, 3, 4]  labels [0, 1, 1, 0]  R=2  same as item 0: RP 1/2, MAP@R 1/2, AP 3/4
#   2: [0, 1, 3, 4]  labels [0, 0, 1, 0]  R=1  RP 0, MAP@R 0, AP = 1/3 (match at rank 3)
#   3: [4, 1, 0, 2]  labels [0, 0, 0, 1]  R=1  RP 0, MAP@R 0, AP = 1/4
#   4: [3, 1, 0, 2]  labels [1, 0, 0, 1]  R=2  top-R rel [0, 1]
#      RP = 1/2, MAP@R = (1/2)(0 + 1/2) = 1/4, AP = (1/2 + 2/3)/2 = 7/12
# Means over the 5 queries:
#   P@1 = recall@1 = 2/5; recall@2 = 3/5 (items 0, 1, 4); recall@4 = 1
#   RP = 1.5/5 = 0.3; MAP@R = 1.25/5 = 0.25; mAP = (3/4 + 3/4 + 1/3 + 1/4 + 7/12)/5 = 8/15
LINE_X = np.array([[0.0], [0.1], [-0.5], [1.0], [1.2]], np.float32)
LINE_Y = np.array([0, 0, 1, 1, 0], np.int32)
LINE_EXPECTED = {
    "recall@1": 0.4, "recall@2": 0.6, "recall@4": 1.0, "precision@1": 0.4,
    "r_precision": 0.3, "map@r": 0.25, "map": 8 / 15,
}


def _metrics(x, y, rx=None, ry=None, ks=(1, 2, 4), similarity="neg_squared_euclidean", **kw):
  return ev.retrieval_metrics(x, y, rx, ry, ks=ks, similarity=similarity, chunk_size=4, **kw)


def test_hand_computed_example():
  got = _metrics(LINE_X, LINE_Y)
  assert set(got) == set(LINE_EXPECTED)
  for key, value in LINE_EXPECTED.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key
  without_map = _metrics(LINE_X, LINE_Y, full_map=False)
  assert without_map == {key: v for key, v in got.items() if key != "map"}


def test_lone_queries_are_left_out():
  # A far point with a label of its own changes no ranking among the five, and is lone (R = 0):
  # the means are those of the five queries. Then with references: a query label absent from them.
  x = np.concatenate([LINE_X, [[5.0]]]).astype(np.float32)
  y = np.concatenate([LINE_Y, [9]]).astype(np.int32)
  with pytest.warns(ev.LoneQueryWarning, match="1 of 6 queries are lone"):
    got = _metrics(x, y)
  for key, value in LINE_EXPECTED.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key
  np.testing.assert_array_equal(np.asarray(ev.num_relevant(jnp.asarray(y))), [2, 2, 1, 1, 2, 0])
  q, yq = np.array([[0.05], [3.0]], np.float32), np.array([0, 7], np.int32)
  ref = _metrics(q[:1], yq[:1], LINE_X, LINE_Y)
  with pytest.warns(ev.LoneQueryWarning, match="1 of 2 queries.*not occur among `ref_labels`"):
    with_lone = _metrics(q, yq, LINE_X, LINE_Y)
  assert ref == pytest.approx(with_lone)
  with pytest.warns(ev.LoneQueryWarning, match="1 of 6"):
    assert ev.mean_average_precision(x, y, similarity="neg_squared_euclidean") == pytest.approx(
        8 / 15)


def test_no_warning_without_lone_queries(recwarn):
  _metrics(LINE_X, LINE_Y)
  assert not [w for w in recwarn if issubclass(w.category, ev.LoneQueryWarning)]


def test_all_lone_is_an_error():
  # All classes singletons: there is no relevant reference to find. This used to give NaN.
  with pytest.raises(ValueError, match="all 5 queries are lone.*singleton"):
    _metrics(LINE_X, np.arange(5, dtype=np.int32))
  with pytest.raises(ValueError, match="all 5 queries are lone"):
    ev.mean_average_precision(LINE_X, np.arange(5, dtype=np.int32))
  with pytest.raises(ValueError, match="all 2 queries are lone"):
    _metrics(LINE_X[:2], np.array([7, 8], np.int32), LINE_X, LINE_Y)


def test_one_class_is_an_error():
  # Every metric was 1.0 whatever the embeddings.
  one = np.zeros(5, np.int32)
  with pytest.raises(ValueError, match="at least two classes.*`labels`"):
    _metrics(LINE_X, one)
  with pytest.raises(ValueError, match="at least two classes.*`ref_labels`"):
    _metrics(LINE_X[:2], LINE_Y[:2], LINE_X, one)
  with pytest.raises(ValueError, match="at least two classes"):
    ev.mean_average_precision(LINE_X, one)
  with pytest.raises(ValueError, match="at least two classes"):
    _metrics(LINE_X, one, similarity="poincare")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_an_error(bad):
  # A NaN scores above every number: it used to be everyone's nearest neighbour, and the metrics
  # came out finite.
  x = LINE_X.copy()
  x[3, 0] = bad
  with pytest.raises(ValueError, match="`embeddings` holds NaN or inf.*row 3"):
    _metrics(x, LINE_Y)
  with pytest.raises(ValueError, match="`ref_embeddings` holds NaN or inf"):
    _metrics(LINE_X[:2], LINE_Y[:2], x, LINE_Y)
  with pytest.raises(ValueError, match="`embeddings` holds NaN or inf"):
    ev.mean_average_precision(jnp.asarray(x), LINE_Y)
  with pytest.raises(ValueError, match="`embeddings` holds NaN or inf"):
    _metrics(x, LINE_Y, similarity="poincare")


def test_the_jittable_building_blocks_keep_nan():
  # The metric functions do not judge: no valid query gives NaN, under jit.
  nl, qy = jnp.asarray(NEIGHBORS), jnp.asarray(QUERY_Y)
  none = jnp.zeros(4, jnp.int32)
  assert np.isnan(float(jax.jit(ev.r_precision)(nl, qy, none)))
  assert np.isnan(float(jax.jit(ev.map_at_r)(nl, qy, none)))
  valid = jnp.zeros(4, bool)
  assert np.isnan(np.asarray(jax.jit(functools.partial(ev.recall_at_k, ks=(1,)))(
      nl, qy, valid=valid))).all()


def test_ks_above_the_candidates_is_an_error():
  # Leave-one-out over 5 points: 4 candidates. Recall@8 used to be clipped to recall@4 (1.0).
  with pytest.raises(ValueError, match="`ks` holds 8, more than the 4 candidate"):
    _metrics(LINE_X, LINE_Y, ks=(1, 8))
  assert _metrics(LINE_X, LINE_Y, ks=(4,))["recall@4"] == 1.0  # exactly the gallery: fine
  with pytest.raises(ValueError, match="`ks` holds 6, more than the 5 candidate"):
    _metrics(LINE_X[:2], LINE_Y[:2], LINE_X, LINE_Y, ks=(6,))
  with pytest.raises(ValueError, match="`ks`"):
    _metrics(LINE_X, LINE_Y, ks=(5,), similarity="poincare")


def naive_metrics(q, yq, r, yr, ks, exclude_self):
  """Per-query loops over a full float64 cosine ranking."""
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  rn = r / np.linalg.norm(r, axis=1, keepdims=True)
  s = qn.astype(np.float64) @ rn.T.astype(np.float64)
  out = {f"recall@{k}": [] for k in ks}
  out.update({"precision@1": [], "r_precision": [], "map@r": [], "map": []})
  for i in range(len(q)):
    order = [j for j in np.argsort(-s[i], kind="stable") if not (exclude_self and j == i)]
    rel = [int(yr[j] == yq[i]) for j in order]
    big_r = sum(rel)
    if big_r == 0:
      continue  # lone query
    for k in ks:
      out[f"recall@{k}"].append(float(any(rel[:k])))
    out["precision@1"].append(rel[0])
    out["r_precision"].append(sum(rel[:big_r]) / big_r)
    hits, map_r, ap = 0, 0.0, 0.0
    for n, is_rel in enumerate(rel, start=1):
      hits += is_rel
      if is_rel:
        ap += hits / n
        if n <= big_r:
          map_r += hits / n
    out["map@r"].append(map_r / big_r)
    out["map"].append(ap / big_r)
  return {key: float(np.mean(v)) for key, v in out.items()}


@pytest.mark.parametrize("separate_refs", [False, True])
def test_matches_naive_loops(separate_refs):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((70, 6)).astype(np.float32)
  y = rng.integers(0, 7, 70).astype(np.int32)
  y[0] = 50  # a lone label
  x[y < 3] += 1.0  # some structure, so the metrics are not all near chance
  if separate_refs:
    args = (x[:30], y[:30], x[30:], y[30:])
    expected = naive_metrics(x[:30], y[:30], x[30:], y[30:], (1, 2, 4, 8), False)
  else:
    args = (x, y, None, None)
    expected = naive_metrics(x, y, x, y, (1, 2, 4, 8), True)
  with pytest.warns(ev.LoneQueryWarning):  # the lone label 50 (and absent labels)
    got = _metrics(*args, ks=(1, 2, 4, 8), similarity="cosine")
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key


def test_map_ties_follow_sklearn_average_precision():
  # Embeddings on a coarse grid: many exactly equal scores. Ties rank the irrelevant first.
  rng = np.random.default_rng(1)
  x = np.round(rng.standard_normal((40, 2)) * 1.5).astype(np.float32)
  y = rng.integers(0, 4, 40).astype(np.int32)
  got = ev.mean_average_precision(x, y, similarity="dot", chunk_size=16)
  s = x.astype(np.float64) @ x.T.astype(np.float64)
  aps = []
  for i in range(40):
    keep = np.arange(40) != i
    rel = (y[keep] == y[i]).astype(int)
    if rel.any():
      aps.append(average_precision_score(rel, s[i, keep]))
  assert got == pytest.approx(float(np.mean(aps)), abs=1e-6)


# The metric functions on given neighbour labels, through jax.jit.
NEIGHBORS = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]], np.int32)
QUERY_Y = np.array([0, 0, 3, 0], np.int32)
NUM_REL = np.array([2, 3, 0, 1], np.int32)  # query 2 is lone
# query 0: R=2, rel@R [1, 0] -> RP 1/2, MAP@R (1/2)(1) = 1/2
# query 1: R=3, rel@R [0, 0, 1] -> RP 1/3, MAP@R (1/3)(1/3) = 1/9
# query 3: R=1, rel@R [1] -> RP 1, MAP@R 1
# recall@1: queries 0, 3 hit of 0, 1, 3 -> 2/3; recall@3: all three -> 1; P@1 over all 4: 2/4.


def test_metric_functions_under_jit():
  nl, qy, nr = jnp.asarray(NEIGHBORS), jnp.asarray(QUERY_Y), jnp.asarray(NUM_REL)
  valid = nr > 0
  recall = jax.jit(functools.partial(ev.recall_at_k, ks=(1, 3)))(nl, qy, valid=valid)
  np.testing.assert_allclose(np.asarray(recall), [2 / 3, 1.0], rtol=1e-6)
  assert float(jax.jit(ev.precision_at_1)(nl, qy)) == pytest.approx(0.5)
  assert float(jax.jit(ev.r_precision)(nl, qy, nr)) == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
  assert float(jax.jit(ev.map_at_r)(nl, qy, nr)) == pytest.approx((1 / 2 + 1 / 9 + 1) / 3)


@pytest.mark.parametrize("call,error,match", [
    (lambda: ev.retrieval_metrics(LINE_X, LINE_Y, ref_embeddings=LINE_X), ValueError,
     "ref_labels"),
    (lambda: ev.retrieval_metrics(LINE_X, LINE_Y.astype(np.float32)), TypeError, "`labels`"),
    (lambda: ev.retrieval_metrics(LINE_X, LINE_Y[:4]), ValueError, "`labels`"),
    (lambda: ev.retrieval_metrics(LINE_X, LINE_Y, ks=(0,)), ValueError, "`ks`"),
    (lambda: ev.retrieval_metrics(LINE_X, LINE_Y, ks=(1, 2, 4, 8)), ValueError, "`ks`"),
    (lambda: ev.retrieval_metrics(LINE_X, LINE_Y, similarity="l2"), ValueError, "`similarity`"),
    (lambda: ev.map_at_r(NEIGHBORS[:, :2], QUERY_Y, NUM_REL), ValueError, "k >= max"),
    (lambda: ev.recall_at_k(NEIGHBORS, QUERY_Y, ks=(5,)), ValueError, "`ks`"),
    (lambda: ev.r_precision(NEIGHBORS, QUERY_Y, NUM_REL[:3]), ValueError, "`num_relevant`"),
    (lambda: ev.precision_at_1(NEIGHBORS.astype(np.float32), QUERY_Y), TypeError,
     "`neighbor_labels`"),
])
def test_bad_inputs(call, error, match):
  with pytest.raises(error, match=match):
    call()
