"""k-means, NMI (against scikit-learn) and the pairwise clustering F1 (by hand and by pair loops).

All k-means calls share one data shape, so k-means compiles once per number of clusters.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from jaxdml import evaluation as ev


def _blobs(seed=0, per_class=15, num_classes=4, dim=3, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = 3.0 * np.eye(num_classes, dim) + 1.0  # far apart, away from the origin
  y = np.repeat(np.arange(num_classes), per_class)
  x = centres[y] + spread * rng.standard_normal((len(y), dim))
  perm = rng.permutation(len(y))
  return x[perm].astype(np.float32), y[perm].astype(np.int32)


BLOB_X, BLOB_Y = _blobs()


def test_kmeans_recovers_blobs_and_is_deterministic():
  fn = jax.jit(functools.partial(ev.kmeans, num_clusters=4, num_iters=10))
  centroids, assign = fn(BLOB_X, key=jax.random.key(3))
  assert centroids.shape == (4, 3) and assign.shape == (60,) and assign.dtype == jnp.int32
  assign = np.asarray(assign)
  # The clusters are the classes, up to renaming.
  assert ev.nmi(BLOB_Y, assign) == pytest.approx(1.0)
  for c in range(4):
    np.testing.assert_allclose(np.asarray(centroids)[c], BLOB_X[assign == c].mean(0), atol=1e-5)
  again = fn(BLOB_X, key=jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(again[1]), assign)
  np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(centroids))
  # The seed argument (eager call) is the same as the key jax.random.key(seed).
  c2, a2 = ev.kmeans(BLOB_X, 4, seed=3, num_iters=10)
  np.testing.assert_array_equal(np.asarray(a2), assign)


def test_kmeans_chunked_assignment_matches():
  _, a1 = ev.kmeans(BLOB_X, 4, seed=1, num_iters=10)
  _, a2 = ev.kmeans(BLOB_X, 4, seed=1, num_iters=10, chunk_size=7)  # 60 = 8 chunks of 7, padded
  np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2))


def test_nmi_matches_sklearn_on_kmeans_output():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((60, 3)).astype(np.float32)  # no structure: an imperfect clustering
  _, assign = ev.kmeans(x, 4, seed=0, num_iters=10)
  assign = np.asarray(assign)
  assert ev.nmi(BLOB_Y, assign) == pytest.approx(
      normalized_mutual_info_score(BLOB_Y, assign), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_nmi_matches_sklearn_on_random_labelings(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 80))
  a = rng.integers(0, int(rng.integers(1, 8)), n) * 7 - 3  # arbitrary, non-contiguous values
  b = rng.integers(0, int(rng.integers(1, 8)), n)
  assert ev.nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)


@pytest.mark.parametrize("a,b", [
    ([0, 0, 0], [1, 1, 1]),  # one class, one cluster: 1.0
    ([0, 0, 1], [2, 2, 2]),  # one cluster: 0.0
    ([0, 1, 2, 3], [0, 0, 1, 1]),
    ([5, 5, 9, 9], [1, 1, 0, 0]),  # a renaming: 1.0
])
def test_nmi_limit_cases_match_sklearn(a, b):
  a, b = np.array(a), np.array(b)
  assert ev.nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)


def naive_f1(a, b):
  pairs = list(itertools.combinations(range(len(a)), 2))
  tp = sum(a[i] == a[j] and b[i] == b[j] for i, j in pairs)
  same_cluster = sum(b[i] == b[j] for i, j in pairs)
  same_class = sum(a[i] == a[j] for i, j in pairs)
  p, r = tp / same_cluster, tp / same_class
  return 2 * p * r / (p + r)


def test_f1_by_hand():
  # Classes {0,1,2}, {3,4}; clusters {0,1}, {2,3,4}. Same-class-and-cluster pairs: (0,1), (3,4).
  # Same-cluster pairs: 1 + 3 = 4; same-class pairs: 3 + 1 = 4. P = R = 2/4, F1 = 1/2.
  assert ev.clustering_f1([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx(0.5)
  # One cluster for classes of 4 and 2: TP = 6 + 1 = 7 of C(6, 2) = 15 same-cluster pairs and
  # 7 same-class pairs. P = 7/15, R = 1, F1 = 2 (7/15) / (22/15) = 7/11.
  assert ev.clustering_f1([0, 0, 0, 0, 1, 1], [3] * 6) == pytest.approx(7 / 11)
  assert ev.clustering_f1([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
  assert ev.clustering_f1([0, 1, 2], [0, 1, 2]) == 1.0  # all singletons on both sides
  assert ev.clustering_f1([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0  # no true-positive pair


@pytest.mark.parametrize("seed", range(3))
def test_f1_matches_pair_loop(seed):
  rng = np.random.default_rng(seed)
  a, b = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
  assert ev.clustering_f1(a, b) == pytest.approx(naive_f1(a, b), abs=1e-12)


def test_clustering_metrics_on_blobs():
  got = ev.clustering_metrics(BLOB_X, BLOB_Y, seed=0)
  assert got == {"nmi": pytest.approx(1.0), "f1": pytest.approx(1.0)}


@pytest.mark.parametrize("call,error,match", [
    (lambda: ev.kmeans(BLOB_X, 61), ValueError, "`num_clusters`"),
    (lambda: ev.kmeans(BLOB_X, 2.5), TypeError, "`num_clusters`"),
    (lambda: ev.kmeans(BLOB_X.astype(np.int32), 2), TypeError, "`x`"),
    (lambda: ev.kmeans(BLOB_X[0], 2), ValueError, "`x`"),
    (lambda: ev.nmi([0, 1, 1], [0, 1]), ValueError, "same length"),
    (lambda: ev.nmi([0.5, 1.0], [0, 1]), TypeError, "`labels_true`"),
    (lambda: ev.clustering_f1([[0, 1]], [[0, 1]]), ValueError, "`labels_true`"),
    (lambda: ev.clustering_metrics(BLOB_X, BLOB_Y[:10]), ValueError, "`labels`"),
    # degenerate: 1.0 whatever the embeddings (one class; one class per point); NaN points
    (lambda: ev.clustering_metrics(BLOB_X, np.zeros(len(BLOB_X), np.int32)), ValueError,
     "at least two classes"),
    (lambda: ev.clustering_metrics(BLOB_X, np.arange(len(BLOB_X), dtype=np.int32)), ValueError,
     "one member"),
    (lambda: ev.clustering_metrics(np.where(np.arange(len(BLOB_X))[:, None] == 2, np.nan,
                                            BLOB_X), BLOB_Y), ValueError, "`embeddings` holds NaN"),
])
def test_bad_inputs(call, error, match):
  with pytest.raises(error, match=match):
    call()
