"""Sharded exact k-NN search against the single-device `knn`, on 8 host CPU devices.

The number of host devices must be fixed before JAX starts, so the 8-device checks run once, all
together, in a child interpreter that imports this module and calls `_run_device_checks`; each
test then reads its own check's outcome. Sizes are tiny so that compiles stay cheap.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import evaluation
from jaxdml.evaluation import knn, sharded_knn

NUM_DEVICES = 8
_HERE = pathlib.Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]


def _data(seed, n, d=8, integer=False):
  rng = np.random.default_rng(seed)
  if integer:  # few distinct small-integer rows: exact ties of dot products, across shards
    return rng.integers(-1, 2, (n, 3)).astype(np.float32)
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x * rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)  # dot and cosine rank differently


def _stable_naive(q, r, k, exclude_self):
  """Dot-product top-k by a float64 stable argsort: ties go to the lower reference index."""
  s = np.asarray(q, np.float64) @ np.asarray(r, np.float64).T
  if exclude_self:
    s[np.arange(len(q)), np.arange(len(q))] = -np.inf
  return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _compare(q, r, k, similarity="cosine", exclude_self=None, chunk_size=1024, **kw):
  """Asserts that `sharded_knn` returns what `knn` does; returns the sharded indices."""
  scores, idx = sharded_knn(q, r, k, similarity=similarity, exclude_self=exclude_self,
                            chunk_size=chunk_size, **kw)
  ref_scores, ref_idx = knn(q, r, k, similarity=similarity, exclude_self=exclude_self,
                            chunk_size=chunk_size)
  assert idx.shape == (len(q), k) and idx.dtype == jnp.int32
  assert scores.dtype == ref_scores.dtype
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
  np.testing.assert_allclose(np.asarray(scores), np.asarray(ref_scores), rtol=1e-6, atol=1e-6)
  num_r = len(q) if r is None else len(r)
  assert np.asarray(idx).max() < num_r  # padding never returned
  return np.asarray(idx)


# ------------------------------------------------------------------ checks run on 8 devices


def check_queries_differ_from_references():
  # Q != R, R = 40 (5 per device), chunks of 4 not dividing Q = 13.
  _compare(_data(0, 13), _data(1, 40), 3, "cosine", chunk_size=4)


def check_leave_one_out():
  # Queries are their own references (exclude_self defaults to True), R = 37 not divisible by 8.
  _compare(_data(2, 37), None, 6, "dot", chunk_size=16)


def check_references_not_divisible():
  _compare(_data(3, 11), _data(4, 29), 4, "neg_squared_euclidean")


def check_k_above_shard_size():
  # 20 references: 3 per device (4 padding rows); k = 7 takes candidates from several devices.
  q, r = _data(5, 9), _data(6, 20)
  r[:9] = q  # query i is reference i
  _compare(q, r, 7, "cosine", exclude_self=True, chunk_size=5)
  # k = every candidate: 13 references, 3 of padding.
  idx = _compare(_data(7, 13), None, 12, "cosine")
  assert all(sorted(row) == [j for j in range(13) if j != i] for i, row in enumerate(idx))


def check_ties():
  # Rows in {-1, 0, 1}^3: many exactly equal scores, spread over all shards.
  x, r = _data(8, 30, integer=True), _data(9, 27, integer=True)
  for q, refs, k, exclude in ((x, None, 9, True), (x[:10], r, 8, False)):
    idx = _compare(q, refs, k, "dot", exclude_self=exclude)
    np.testing.assert_array_equal(idx, _stable_naive(q, x if refs is None else refs, k, exclude))
  top = -np.sort(-(x @ x.T - 99 * np.eye(len(x))), axis=1)[:, :10]
  assert (top[:, :-1] == top[:, 1:]).any()  # the data do have ties within the top k


def check_two_axis_mesh_and_jit():
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  q, r = _data(10, 7), _data(11, 21)
  _compare(q, r, 5, "cosine", mesh=mesh)  # split over all 8 devices
  _compare(q, r, 5, "cosine", mesh=mesh, axis="data")  # 4 shards, replicated along "model"
  fn = jax.jit(functools.partial(sharded_knn, k=5, mesh=mesh))
  scores, idx = fn(q, r)
  ref_scores, ref_idx = knn(q, r, 5)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
  np.testing.assert_allclose(np.asarray(scores), np.asarray(ref_scores), rtol=1e-6, atol=1e-6)


def check_retrieval_metrics_with_mesh():
  x = _data(12, 45)
  labels = np.arange(45) % 6
  mesh = evaluation.default_mesh()
  assert mesh.devices.size == NUM_DEVICES
  plain = evaluation.retrieval_metrics(x, labels, full_map=False)
  sharded = evaluation.retrieval_metrics(x, labels, full_map=False, mesh=mesh)
  assert plain == sharded, (plain, sharded)


def check_landmark_item_ranks_across_shards():
  # 61 database rows over 8 devices (padded shards), integer rows: exact ties across shards
  db, q = _data(15, 61, integer=True), _data(16, 5, integer=True)
  rng = np.random.default_rng(17)
  items = np.stack([rng.permutation(61)[:12] for _ in range(5)]).astype(np.int32)
  items[1, 7:] = -1
  s = np.asarray(q, np.float64) @ np.asarray(db, np.float64).T
  ranking = np.argsort(-s, axis=1, kind="stable")
  want = evaluation.ranks_in_ranking(ranking, items)
  mesh = jax.make_mesh((2, 4), ("a", "b"))
  for kwargs in (dict(), dict(chunk_size=2), dict(mesh=mesh), dict(mesh=mesh, axis="b")):
    np.testing.assert_array_equal(evaluation.item_ranks(q, db, items, **kwargs), want)


DEVICE_CHECKS = sorted(name for name in list(globals()) if name.startswith("check_"))


def _run_device_checks() -> None:
  """Entry point of the child interpreter: runs every check, prints {name: error or ""}."""
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  results = {}
  for name in DEVICE_CHECKS:
    try:
      globals()[name]()
      results[name] = ""
    except Exception:  # noqa: BLE001 - reported back to the parent test
      results[name] = traceback.format_exc()
  print(json.dumps(results))


@pytest.fixture(scope="module")
def device_results() -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={NUM_DEVICES}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
  code = (f"import sys; sys.path.insert(0, {str(_HERE)!r}); "
          "import test_sharded; test_sharded._run_device_checks()")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", DEVICE_CHECKS)
def test_on_eight_devices(device_results, name):
  assert name in device_results
  assert not device_results[name], device_results[name]


# ------------------------------------------------------------------ checks in this process


def test_default_mesh_in_process():
  # Whatever devices this process has: the default mesh spans all of them.
  _compare(_data(13, 10), _data(14, 19), 4, "neg_squared_euclidean", chunk_size=3)
  scores, idx = sharded_knn(np.zeros((0, 8), np.float32), _data(14, 19), 3)
  assert scores.shape == (0, 3) and idx.shape == (0, 3)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(k=10), ValueError, "`k`"),  # 9 candidates when leaving self out
    (dict(k=0), ValueError, "`k`"),
    (dict(chunk_size=1.5), TypeError, "`chunk_size`"),
    (dict(similarity="euclid"), ValueError, "`similarity`"),
    (dict(references=np.zeros((5, 4), np.float32), exclude_self=True), ValueError,
     "exclude_self"),
    (dict(references=np.zeros((10, 3), np.float32)), ValueError, "dimension"),
    (dict(axis="model"), ValueError, "`axis`"),
])
def test_bad_inputs(kwargs, error, match):
  args = dict(queries=_data(15, 10, d=4), references=None, k=3)
  args.update(kwargs)
  with pytest.raises(error, match=match):
    sharded_knn(args.pop("queries"), args.pop("references"), args.pop("k"), **args)
