"""Shared fixtures: small seeded batches and float64 NumPy helpers for reference computations."""

from __future__ import annotations

import os

# Tests compile many small programs and run each a few times: XLA's cheaper backend optimisation
# halves the suite's compile time without changing what is computed. Set before jax starts.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

import types  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


class Batch(NamedTuple):
  """A batch (embeddings [B, d] float32, labels [B] int32) and references ([R, d], [R])."""

  emb: np.ndarray
  labels: np.ndarray
  ref_emb: np.ndarray
  ref_labels: np.ndarray


def _make_batch(seed: int, batch: int = 12, classes: int = 4, refs: int = 10,
                dim: int = 5) -> Batch:
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(classes), batch // classes)).astype(np.int32)
  emb = rng.normal(size=(batch, dim)).astype(np.float32)
  # References hold the batch's classes plus one class (`classes`) the batch lacks.
  ref_labels = rng.permutation(np.arange(refs) % (classes + 1)).astype(np.int32)
  ref_emb = rng.normal(size=(refs, dim)).astype(np.float32)
  return Batch(emb, labels, ref_emb, ref_labels)


@pytest.fixture(scope="session")
def batch() -> Batch:
  """12 examples of 4 classes (3 each, shuffled), dim 5; 10 references over 5 classes."""
  return _make_batch(0)


@pytest.fixture(scope="session")
def batch2() -> Batch:
  """A second batch with the same shapes as `batch` and a different seed."""
  return _make_batch(1)


@pytest.fixture
def rng() -> np.random.Generator:
  """A freshly seeded generator per test: data do not depend on test order (or xdist)."""
  return np.random.default_rng(1234)


def _l2n(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)


def _cdist(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))


def _pairs(qlab, rlab, self_ref):
  """Ordered positive and negative (i, j) pairs; self-pairs removed when `self_ref`."""
  pos, neg = [], []
  for i, yi in enumerate(qlab):
    for j, yj in enumerate(rlab):
      if self_ref and i == j:
        continue
      (pos if yi == yj else neg).append((i, j))
  return pos, neg


def _lse(values):
  values = np.asarray(values, np.float64)
  m = values.max()
  return m + np.log(np.exp(values - m).sum())


def _avg_nonzero(values):
  values = np.asarray(values, np.float64)
  nz = values[values > 0]
  return nz.mean() if nz.size else 0.0


@pytest.fixture(scope="session")
def npref() -> types.SimpleNamespace:
  """float64 NumPy helpers: l2n, cdist, pairs, lse, avg_nonzero."""
  return types.SimpleNamespace(l2n=_l2n, cdist=_cdist, pairs=_pairs, lse=_lse,
                               avg_nonzero=_avg_nonzero)


@pytest.fixture(scope="session")
def pml():
  """pytorch_metric_learning (and torch) or skip."""
  torch = pytest.importorskip("torch", exc_type=ImportError)
  pml_mod = pytest.importorskip("pytorch_metric_learning", exc_type=ImportError)
  for sub in ("losses", "miners", "distances", "regularizers"):
    pytest.importorskip(f"pytorch_metric_learning.{sub}", exc_type=ImportError)
  return types.SimpleNamespace(torch=torch, pml=pml_mod)
