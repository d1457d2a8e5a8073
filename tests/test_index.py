"""jaxdml.Index: exact search by each similarity against naive references, metrics, splits, the
file format, and input validation."""

from __future__ import annotations

import types

import numpy as np
import pytest

from jaxdml import evaluation
from jaxdml.index import FORMAT, Index, split_queries


def _naive_scores(q, g, similarity, c=0.1):
  """[Q, N] scores in float64, larger = closer."""
  q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
  if similarity == "cosine":
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    return qn @ gn.T
  if similarity == "dot":
    return q @ g.T
  if similarity == "neg_squared_euclidean":
    return -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
  # Poincare ball: d = arccosh(1 + 2 c |x - y|^2 / ((1 - c |x|^2)(1 - c |y|^2))) / sqrt(c)
  sq = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
  den = (1 - c * (q ** 2).sum(1))[:, None] * (1 - c * (g ** 2).sum(1))[None, :]
  return -np.arccosh(1 + 2 * c * sq / den) / np.sqrt(c)


def test_cosine_neighbours_of_a_hand_made_gallery():
  gallery = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [1, 1]], np.float32)
  index = Index(gallery, labels=np.array([0, 1, 2, 3, 0]), ids=["e", "n", "w", "s", "ne"])
  scores, ids = index.search(np.array([[2.0, 0.1], [-0.1, -3.0]], np.float32), k=3)
  # [2, 0.1]: cos to e = 2 / |q| = 0.99875, to ne = 2.1 / (|q| sqrt 2) = 0.74156, to n = 0.04994
  assert ids.tolist() == [["e", "ne", "n"], ["s", "w", "e"]]
  norm = np.hypot(2.0, 0.1)
  np.testing.assert_allclose(scores[0], [2 / norm, 2.1 / (norm * np.sqrt(2)), 0.1 / norm],
                             rtol=1e-6)
  _, labels = index.search(np.array([2.0, 0.1], np.float32), k=2, returns="labels")
  assert labels.tolist() == [0, 0]  # one [d] query gives [k]
  _, rows = index.search(np.array([2.0, 0.1], np.float32), k=2, returns="indices")
  assert rows.tolist() == [0, 4]


@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_squared_euclidean", "poincare"])
def test_search_equals_a_naive_ranking(similarity, rng):
  g = rng.normal(size=(40, 6)).astype(np.float32)
  q = rng.normal(size=(7, 6)).astype(np.float32)
  if similarity == "poincare":  # points well inside the ball of c = 0.5 (radius 1.414)
    g, q = (x / (1.0 + np.linalg.norm(x, axis=1, keepdims=True)) for x in (g, q))
  index = Index(g, similarity=similarity, c=0.5)
  scores, rows = index.search(q, k=5, returns="indices")
  ref = _naive_scores(q, g, similarity, c=0.5)
  np.testing.assert_array_equal(rows, np.argsort(-ref, axis=1)[:, :5])
  np.testing.assert_allclose(scores, np.take_along_axis(ref, rows, 1), rtol=2e-5, atol=2e-5)


def test_a_mesh_gives_the_same_neighbours(rng):
  g = rng.normal(size=(50, 8)).astype(np.float32)
  q = rng.normal(size=(9, 8)).astype(np.float32)
  index = Index(g)
  plain = index.search(q, k=4)
  sharded = index.search(q, k=4, mesh=evaluation.default_mesh())
  np.testing.assert_array_equal(plain[1], sharded[1])
  np.testing.assert_allclose(plain[0], sharded[0], rtol=1e-6)


def test_evaluate_is_the_retrieval_metrics_of_the_gallery(rng):
  centers = rng.normal(size=(5, 8)) * 4
  labels = np.repeat(np.arange(5), 6)
  emb = (centers[labels] + rng.normal(size=(30, 8))).astype(np.float32)
  index = Index(emb, labels=labels)
  assert index.evaluate(ks=(1, 2)) == evaluation.retrieval_metrics(emb, labels, ks=(1, 2))
  queries, gallery = index.split(2, seed=3)
  got = gallery.evaluate(queries.embeddings, queries.labels, ks=(1,))
  assert got == evaluation.retrieval_metrics(queries.embeddings, queries.labels,
                                             gallery.embeddings, gallery.labels, ks=(1,))
  # two well separated classes: every query's nearest item is of its class
  easy = Index(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32),
               labels=np.array([0, 0, 1, 1]))
  assert easy.evaluate(ks=(1,))["recall@1"] == 1.0


def test_split_queries_per_class():
  labels = np.array([4, 4, 4, 4, 7, 7, 9])
  q, g = split_queries(labels, 2, seed=0)
  assert sorted(np.concatenate([q, g]).tolist()) == list(range(7))
  # 2 of class 4, 1 of class 7 (one must stay in the gallery), none of the single 9
  assert sorted(labels[q].tolist()) == [4, 4, 7]
  assert 6 in g
  again = split_queries(labels, 2, seed=0)
  np.testing.assert_array_equal(q, again[0])
  with pytest.raises(ValueError, match="queries_per_class"):
    split_queries(labels, 0)


def test_subset_keeps_rows_and_metadata():
  index = Index(np.eye(4, dtype=np.float32), labels=np.array([0, 1, 2, 3]), ids=["a", "b", "c",
                                                                              "d"],
                metadata={"path": ["pa", "pb", "pc", "pd"]})
  sub = index.subset([3, 1])
  assert sub.ids.tolist() == ["d", "b"] and sub.labels.tolist() == [3, 1]
  assert sub.metadata["path"].tolist() == ["pd", "pb"]
  np.testing.assert_array_equal(sub.embeddings, np.eye(4, dtype=np.float32)[[3, 1]])


def _same(a: Index, b: Index) -> None:
  for name in ("embeddings", "ids", "labels"):
    x, y = getattr(a, name), getattr(b, name)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
  assert (a.similarity, a.c) == (b.similarity, b.c)
  assert a.metadata.keys() == b.metadata.keys()
  for k in a.metadata:
    assert a.metadata[k].dtype == b.metadata[k].dtype
    assert a.metadata[k].tobytes() == b.metadata[k].tobytes()


def test_save_load_round_trip_is_bit_identical(tmp_path, rng):
  emb = (rng.normal(size=(20, 5)) * 0.1).astype(np.float32)
  index = Index(emb, labels=rng.integers(0, 4, 20).astype(np.int16),
                ids=[f"img/{i:03d}.png" for i in range(20)], similarity="poincare", c=0.3,
                metadata={"width": np.arange(20, dtype=np.uint16) + 100})
  path = tmp_path / "sub" / "index.npz"
  assert index.save(path) == str(path)
  loaded = Index.load(path)
  _same(index, loaded)
  q = emb[:3] * 0.5
  for x, y in zip(index.search(q, 4), loaded.search(q, 4), strict=True):
    np.testing.assert_array_equal(x, y)
  no_labels = Index(emb.astype(np.float64))
  no_labels.save(tmp_path / "plain.npz")
  again = Index.load(tmp_path / "plain.npz")
  assert again.labels is None and again.embeddings.dtype == np.float64
  np.testing.assert_array_equal(again.ids, np.arange(20))


def test_load_refuses_other_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no index file"):
    Index.load(tmp_path / "missing.npz")
  np.savez(tmp_path / "plain.npz", embeddings=np.eye(3, dtype=np.float32))
  with pytest.raises(ValueError, match=r"not a jaxdml index file \(format None"):
    Index.load(tmp_path / "plain.npz")
  np.savez(tmp_path / "emb.npz", format=np.array("jaxdml.embeddings"))
  with pytest.raises(ValueError, match="jaxdml index --embeddings"):
    Index.load(tmp_path / "emb.npz")
  Index(np.eye(3, dtype=np.float32)).save(tmp_path / "v1.npz")
  with np.load(tmp_path / "v1.npz") as f:
    arrays = dict(f)
  np.savez(tmp_path / "v2.npz", **{**arrays, "version": np.array(2)})
  with pytest.raises(ValueError, match="format version 2; this jaxdml reads version 1"):
    Index.load(tmp_path / "v2.npz")
  np.save(tmp_path / "one.npy", np.eye(3))
  with pytest.raises(ValueError, match="holds one NumPy array"):
    Index.load(tmp_path / "one.npy")
  (tmp_path / "text.npz").write_text("hello")
  with pytest.raises(ValueError, match="not a jaxdml index file"):
    Index.load(tmp_path / "text.npz")
  assert str(np.load(tmp_path / "v1.npz")["format"]) == FORMAT


@pytest.mark.parametrize("make, error, message", [
    (lambda: Index(np.eye(3)[:, :, None]), ValueError, "`embeddings` must have rank 2"),
    (lambda: Index(np.eye(3, dtype=np.int32)), TypeError, "`embeddings` must be a floating"),
    (lambda: Index(np.zeros((0, 3), np.float32)), ValueError, "`embeddings` is empty"),
    (lambda: Index(np.array([[1, 0], [np.nan, 1]], np.float32)), ValueError,
     r"`embeddings` holds non-finite values \(NaN or inf\), first in row 1"),
    (lambda: Index(np.eye(3, dtype=np.float32), labels=[0, 1]), ValueError,
     "`labels` has 2 entries but the embeddings have 3 rows"),
    (lambda: Index(np.eye(3, dtype=np.float32), labels=[0.5, 1, 2]), TypeError, "`labels`"),
    (lambda: Index(np.eye(3, dtype=np.float32), ids=["a", "b", "a"]), ValueError,
     "`ids` must be unique; 'a' appears 2 times"),
    (lambda: Index(np.eye(3, dtype=np.float32), ids=[1, 2]), ValueError, "`ids` must be"),
    (lambda: Index(np.eye(3, dtype=np.float32), similarity="l2"), ValueError,
     "`similarity` must be one of"),
    (lambda: Index(np.eye(3, dtype=np.float32) * 4, similarity="poincare"), ValueError,
     "`embeddings` row 0 lies outside the Poincare ball of c=0.1"),
    (lambda: Index(np.eye(3, dtype=np.float32), metadata={"p": [1, 2]}), ValueError,
     r"`metadata\['p'\]` must have one entry per embedding"),
])
def test_bad_index_arguments_are_named(make, error, message):
  with pytest.raises(error, match=message):
    make()


def test_bad_search_arguments_are_named():
  index = Index(np.eye(3, dtype=np.float32))
  with pytest.raises(ValueError, match="`queries` have dimension 2 but the index holds "
                     "dimension 3"):
    index.search(np.ones((1, 2), np.float32), k=1)
  with pytest.raises(ValueError, match=r"`k`=4 exceeds the size of the index \(3 items\)"):
    index.search(np.ones((1, 3), np.float32), k=4)
  with pytest.raises(ValueError, match="k must be a positive int"):
    index.search(np.ones((1, 3), np.float32), k=0)
  with pytest.raises(ValueError, match="`queries` holds non-finite values"):
    index.search(np.array([[1, np.nan, 0]], np.float32), k=1)
  with pytest.raises(ValueError, match="the index has no labels"):
    index.search(np.ones((1, 3), np.float32), k=1, returns="labels")
  with pytest.raises(ValueError, match="evaluation needs labels"):
    index.evaluate()
  labelled = Index(np.eye(3, dtype=np.float32), labels=[0, 0, 1])
  with pytest.raises(ValueError, match="`query_labels` has 1 entries but the embeddings have 2"):
    labelled.evaluate(np.ones((2, 3), np.float32), [0])


def test_from_run_takes_the_runs_embeddings_and_similarity():
  points = np.array([[0.1, 0.0], [0.0, 0.2], [-0.3, 0.0]], np.float32)
  run = types.SimpleNamespace(embed=lambda images, batch_size=None: points[np.asarray(images)],
                              similarity="poincare", c=0.7)
  index = Index.from_run(run, [2, 0], labels=[1, 0])
  assert (index.similarity, index.c, index.labels.tolist()) == ("poincare", 0.7, [1, 0])
  np.testing.assert_array_equal(index.embeddings, points[[2, 0]])
