"""Retrieval metrics by hyperbolic distance for embeddings in the Poincare ball."""

import numpy as np
import pytest

from jaxdml import evaluation


def _naive_poincare_dist(x, y, c):
  """Closed form in float64: d = 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|), Mobius addition."""
  xy, x2, y2 = -x @ y, x @ x, y @ y
  num = (1 + 2 * c * xy + c * y2) * (-x) + (1 - c * x2) * y
  den = 1 + 2 * c * xy + c * c * x2 * y2
  return 2 / np.sqrt(c) * np.arctanh(np.sqrt(c) * np.linalg.norm(num / den))


def test_poincare_retrieval_matches_a_naive_search():
  rng = np.random.default_rng(0)
  c = 0.5
  labels = np.repeat(np.arange(5), 4)
  centres = rng.normal(size=(5, 3))
  x = centres[labels] + 0.9 * rng.normal(size=(20, 3))
  x = 1.3 * np.tanh(np.linalg.norm(x, axis=1, keepdims=True)) * x / np.linalg.norm(
      x, axis=1, keepdims=True)  # inside the ball of radius 1/sqrt(0.5) = 1.41
  d = np.array([[_naive_poincare_dist(a, b, c) for b in x] for a in x])
  np.fill_diagonal(d, np.inf)
  order = np.argsort(d, axis=1)
  r1 = np.mean(labels[order[:, 0]] == labels)
  r4 = np.mean([np.any(labels[o[:4]] == lab) for o, lab in zip(order, labels, strict=True)])
  rprec = np.mean([np.mean(labels[o[:3]] == lab) for o, lab in zip(order, labels, strict=True)])
  m = evaluation.retrieval_metrics(x.astype(np.float32), labels, ks=(1, 4),
                                   similarity="poincare", c=c)
  assert "map" not in m
  np.testing.assert_allclose([m["recall@1"], m["recall@4"], m["r_precision"]], [r1, r4, rprec])
  # a different geometry ranks differently here: the test would notice a cosine fallback
  cos = evaluation.retrieval_metrics(x.astype(np.float32), labels, ks=(1, 4))
  assert (cos["recall@1"], cos["r_precision"]) != (m["recall@1"], m["r_precision"])
  with pytest.raises(ValueError, match="similarity"):
    evaluation.retrieval_metrics(x.astype(np.float32), labels, similarity="lorentz")
