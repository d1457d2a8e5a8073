"""The revisited landmark protocol against a line-by-line NumPy port of the published evaluation
(full stable argsort, the junk-shifting loop, trapezoids), hand cases, and exact ranks."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdml import evaluation
from jaxdml.evaluation import LandmarkGroundTruth, item_ranks, landmark_metrics, revisited_map

# ------------------------------------------------------------------------ naive reference


def _naive_ap(ranks, nres):
  ap = 0.0
  for j, rank in enumerate(ranks):
    precision_0 = 1.0 if rank == 0 else j / rank
    precision_1 = (j + 1) / (rank + 1)
    ap += (precision_0 + precision_1) / nres / 2.0
  return ap


def _naive_shift(pos, bad):
  """The published loop: each positive moves up by the junk ranked before it."""
  pos = list(pos)
  k, ij = 0, 0
  for ip in range(len(pos)):
    while ij < len(bad) and pos[ip] > bad[ij]:
      k += 1
      ij += 1
    pos[ip] -= k
  return pos


def _naive_map(ranking, ok_lists, junk_lists, kappas):
  """ranking: [N, Q] database indices best first (the published code's layout)."""
  aps, prs = [], []
  for i, (ok, junk) in enumerate(zip(ok_lists, junk_lists, strict=True)):
    if len(ok) == 0:
      continue
    column = ranking[:, i]
    pos = [r for r in range(len(column)) if column[r] in set(ok)]
    bad = [r for r in range(len(column)) if column[r] in set(junk)]
    pos = _naive_shift(pos, bad)
    aps.append(_naive_ap(pos, len(ok)))
    pos1 = [p + 1 for p in pos]
    row = []
    for kappa in kappas:
      kq = min(max(pos1), kappa)
      row.append(sum(p <= kq for p in pos1) / kq)
    prs.append(row)
  return float(np.mean(aps)), np.mean(np.asarray(prs), axis=0)


def _stable_ranking(q, db):
  s = np.asarray(db, np.float64) @ np.asarray(q, np.float64).T  # [N, Q]
  return np.argsort(-s, axis=0, kind="stable")


def _random_gt(rng, num_q, n, empty_hard=()):
  easy, hard, junk = [], [], []
  for i in range(num_q):
    perm = rng.permutation(n)
    a, b, c = rng.integers(1, 6), rng.integers(0 if i in empty_hard else 1, 5), rng.integers(0, 6)
    if i in empty_hard:
      b = 0
    easy.append(perm[:a])
    hard.append(perm[a:a + b])
    junk.append(perm[a + b:a + b + c])
  return LandmarkGroundTruth(easy=easy, hard=hard, junk=junk)


# ------------------------------------------------------------------------------ hand cases


def test_hand_cases_of_the_protocol():
  # one positive at 0-based rank 1: 0.25 (a finite-sum AP would say 0.5)
  assert evaluation.trapezoid_ap([1], 1) == 0.25
  assert round(evaluation.trapezoid_ap([0, 2], 2), 4) == 0.7917
  assert evaluation.trapezoid_ap([0, 1, 2], 3) == 1.0
  assert evaluation.trapezoid_ap([], 4) == 0.0
  assert evaluation.trapezoid_ap([0], 2) == 0.5  # the unretrieved positive adds nothing
  # junk at rank 0, then the positive: 1.0
  db = np.eye(3, dtype=np.float32)
  q = np.array([[0.9, 0.5, 0.1]], np.float32)  # ranks: image 0, 1, 2
  gt = LandmarkGroundTruth(easy=[[1]], hard=[[]], junk=[[0]])
  with pytest.warns(RuntimeWarning, match="hard protocol"):
    m = landmark_metrics(q, db, gt)
  assert m["easy/map"] == 1.0 and m["medium/map"] == 1.0
  assert m["easy/mp@1"] == 1.0 and m["easy/mp@5"] == 1.0  # k' = min(k, last positive) = 1
  assert np.isnan(m["hard/map"])  # no hard positive: the protocol has no query


def test_protocol_lists():
  gt = LandmarkGroundTruth(easy=[[0, 1]], hard=[[2]], junk=[[3]])
  for name, ok, junk in (("easy", [0, 1], [3, 2]), ("medium", [0, 1, 2], [3]),
                         ("hard", [2], [3, 0, 1])):
    got_ok, got_junk = gt.protocol(name)
    assert got_ok[0].tolist() == ok and got_junk[0].tolist() == junk
  assert gt.items().tolist() == [[0, 1, 2, 3]]
  with pytest.raises(ValueError, match="protocol"):
    gt.protocol("medium-hard")


def test_remove_ignored_matches_the_loop():
  rng = np.random.default_rng(0)
  for _ in range(50):
    ranks = rng.permutation(40)
    pos, junk = np.sort(ranks[:6]), np.sort(ranks[6:15])
    assert evaluation.remove_ignored(pos, junk).tolist() == _naive_shift(pos, junk)


# ------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_the_published_evaluation(seed):
  rng = np.random.default_rng(seed)
  n, num_q, d = 60, 7, 6
  db = rng.standard_normal((n, d)).astype(np.float32)
  q = rng.standard_normal((num_q, d)).astype(np.float32)
  gt = _random_gt(rng, num_q, n, empty_hard=(3,))
  kappas = (1, 5, 10)
  m = landmark_metrics(q, db, gt, kappas=kappas, per_query=True)
  ranking = _stable_ranking(q, db)
  for name in evaluation.PROTOCOLS:
    ok, junk = gt.protocol(name)
    want_map, want_pr = _naive_map(ranking, ok, junk, kappas)
    np.testing.assert_allclose(m[f"{name}/map"], want_map, rtol=0, atol=1e-12)
    np.testing.assert_allclose([m[f"{name}/mp@{k}"] for k in kappas], want_pr, atol=1e-12)
  assert np.isnan(m["hard/ap"][3]) and np.isfinite(m["medium/ap"][3])
  # the same from a full ranking
  from_ranking = revisited_map(evaluation.ranks_in_ranking(ranking.T, gt.items()), gt, kappas)
  for key, value in from_ranking.items():
    np.testing.assert_allclose(m[key], value, atol=1e-12)


def test_distractors_only_act_by_outranking():
  rng = np.random.default_rng(3)
  n, num_q, d = 40, 5, 4
  db = np.abs(rng.standard_normal((n, d))).astype(np.float32)  # non-negative, as GeM's
  q = np.abs(rng.standard_normal((num_q, d))).astype(np.float32)
  gt = _random_gt(rng, num_q, n)
  base = landmark_metrics(q, db, gt)
  far = -np.abs(rng.standard_normal((30, d))).astype(np.float32)
  # distractors scoring below every database image for every query change nothing
  scores_far = q @ far.T
  assert scores_far.max() < (q @ db.T).min()
  assert landmark_metrics(q, db, gt, distractors=far) == base
  # otherwise: exactly the metrics of the concatenated database, with the positives unchanged
  near = np.abs(rng.standard_normal((30, d))).astype(np.float32)
  with_near = landmark_metrics(q, db, gt, distractors=near)
  ranking = _stable_ranking(q, np.concatenate([db, near]))
  for name in evaluation.PROTOCOLS:
    want, _ = _naive_map(ranking, *gt.protocol(name), (1,))
    np.testing.assert_allclose(with_near[f"{name}/map"], want, atol=1e-12)
    assert with_near[f"{name}/map"] <= base[f"{name}/map"] + 1e-12


def test_item_ranks_are_stable_sort_positions_with_ties():
  rng = np.random.default_rng(4)
  db = rng.integers(-1, 2, (50, 3)).astype(np.float32)  # many exactly equal scores
  q = rng.integers(-1, 2, (6, 3)).astype(np.float32)
  items = np.stack([rng.permutation(50)[:9] for _ in range(6)]).astype(np.int32)
  items[2, 5:] = -1
  ranking = _stable_ranking(q, db).T  # [Q, N]
  want = evaluation.ranks_in_ranking(ranking, items)
  for chunk in (None, 1, 4):
    np.testing.assert_array_equal(item_ranks(q, db, items, chunk_size=chunk), want)
  assert (item_ranks(q, db, items)[2, 5:] == -1).all()


@pytest.mark.parametrize("similarity", ["cosine", "neg_squared_euclidean"])
def test_item_ranks_other_similarities(similarity):
  rng = np.random.default_rng(5)
  db = rng.standard_normal((30, 4)).astype(np.float32) * rng.uniform(0.5, 2, (30, 1))
  q = rng.standard_normal((3, 4)).astype(np.float32)
  items = np.tile(np.arange(30, dtype=np.int32), (3, 1))
  if similarity == "cosine":
    s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        db / np.linalg.norm(db, axis=1, keepdims=True)).T
  else:
    s = -((q[:, None, :].astype(np.float64) - db[None]) ** 2).sum(-1)
  ranking = np.argsort(-s, axis=1, kind="stable")
  np.testing.assert_array_equal(item_ranks(q, db, items, similarity=similarity),
                                evaluation.ranks_in_ranking(ranking, items))


# ------------------------------------------------------------------------------ the inputs


def test_from_revisitop_reads_the_pickle_layout():
  gnd = [{"easy": np.array([3, 1]), "hard": np.array([], np.int64), "junk": np.array([0]),
          "bbx": [1.0, 2.0, 30.5, 40.0]},
         {"easy": [2.0], "hard": [4], "junk": [], "bbx": (0, 0, 5, 5)}]
  gt = LandmarkGroundTruth.from_revisitop(gnd)
  assert gt.num_queries == 2 and gt.max_index == 4
  assert gt.easy[0].tolist() == [3, 1] and gt.easy[1].dtype == np.int64
  np.testing.assert_array_equal(gt.bbx, [[1, 2, 30.5, 40], [0, 0, 5, 5]])
  assert LandmarkGroundTruth.from_revisitop([{"easy": [0], "hard": [], "junk": []}]).bbx is None


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(easy=[[0]], hard=[[0]], junk=[[]]), ValueError, "both easy and hard"),
    (dict(easy=[[0, 0]], hard=[[]], junk=[[]]), ValueError, "twice"),
    (dict(easy=[[-1]], hard=[[]], junk=[[]]), ValueError, "negative"),
    (dict(easy=[[0.5]], hard=[[]], junk=[[]]), TypeError, "integer"),
    (dict(easy=[[0]], hard=[[], []], junk=[[]]), ValueError, "one list per query"),
    (dict(easy=[[0]], hard=[[]], junk=[[]], bbx=[[0, 0, 1]]), ValueError, "bbx"),
    (dict(easy=[[0]], hard=[[]], junk=[[]], bbx=[[5, 0, 1, 1]]), ValueError, "x2 > x1"),
])
def test_ground_truth_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    LandmarkGroundTruth(**kwargs)


def test_argument_errors():
  db = np.eye(4, dtype=np.float32)
  q = np.ones((1, 4), np.float32)
  gt = LandmarkGroundTruth(easy=[[0]], hard=[[]], junk=[[]])
  with pytest.raises(ValueError, match="1 queries"):
    landmark_metrics(np.ones((2, 4), np.float32), db, gt)
  with pytest.raises(ValueError, match="names database image 5"):
    landmark_metrics(q, db, LandmarkGroundTruth(easy=[[5]], hard=[[]], junk=[[]]))
  with pytest.raises(ValueError, match="`queries` holds NaN"):
    landmark_metrics(np.full((1, 4), np.nan, np.float32), db, gt)
  with pytest.raises(ValueError, match="`distractors` have dimension 3"):
    landmark_metrics(q, db, gt, distractors=np.ones((2, 3), np.float32))
  with pytest.raises(ValueError, match="kappas"):
    landmark_metrics(q, db, gt, kappas=(0,))
  with pytest.raises(TypeError, match="LandmarkGroundTruth"):
    landmark_metrics(q, db, {"easy": [[0]]})
  with pytest.raises(ValueError, match=r"\[0, 4\)"):
    item_ranks(q, db, np.array([[4]]))
  with pytest.raises(ValueError, match="shape of gt.items"):
    revisited_map(np.zeros((1, 3), np.int64), gt)
  with pytest.raises(ValueError, match="same rank"):
    revisited_map(np.zeros((1, 2), np.int64),
                  LandmarkGroundTruth(easy=[[0]], hard=[[1]], junk=[[]]))
  with pytest.raises(ValueError, match="permutation"):
    evaluation.ranks_in_ranking(np.zeros((1, 4), np.int64), np.zeros((1, 1), np.int64))
