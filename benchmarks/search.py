"""Exact k-NN search: jaxdml.evaluation.knn against faiss.IndexFlatIP on the CPU.

Both sides search N unit vectors among themselves by inner product (= cosine similarity) and
leave each query out of its own results: jaxdml through `knn(x, k=k)` (references=None excludes
self), faiss by asking for k + 1 neighbours and dropping the query's own index (or the last one
when ties push it out). Each side gets a warm-up call (for jaxdml: the jit compile), then
`--repeats` rounds call the two in turn, and the median wall time of each is reported with the
process CPU time of the same calls (a check on timings taken while other jobs share the cores).

Run:
  python benchmarks/search.py                      # N=20000, d=512, k=10
  python benchmarks/search.py --n 5000 --repeats 5
  python benchmarks/search.py --explicit-refs      # knn's general (chunked) method
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import jax
import numpy as np

from jaxdml import evaluation


def make_data(n: int, d: int, num_classes: int, seed: int) -> np.ndarray:
  """Unit vectors around `num_classes` random centres (noise comparable to the spread)."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_classes, d)).astype(np.float32)
  x = centres[rng.integers(0, num_classes, n)] + 1.5 * rng.standard_normal((n, d)).astype(
      np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fns: dict, repeats: int) -> dict:
  """Warm-up call of each function, then `repeats` rounds calling them in turn (interleaved, so
  that a change in machine load hits both). Returns, per name, the median wall and CPU seconds
  and the last output."""
  out = {name: fn() for name, fn in fns.items()}
  walls = {name: [] for name in fns}
  cpus = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      w0, c0 = time.perf_counter(), time.process_time()
      out[name] = fn()
      walls[name].append(time.perf_counter() - w0)
      cpus[name].append(time.process_time() - c0)
  return {name: (statistics.median(walls[name]), statistics.median(cpus[name]), out[name])
          for name in fns}


def faiss_search(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  index = faiss.IndexFlatIP(x.shape[1])
  index.add(x)
  scores, idx = index.search(x, k + 1)
  # Drop each query's own index; when it is absent (ties), drop the last neighbour instead.
  is_self = idx == np.arange(len(x))[:, None]
  pos = np.where(is_self.any(1), is_self.argmax(1), k)
  keep = np.arange(k + 1)[None, :] != pos[:, None]
  return scores[keep].reshape(-1, k), idx[keep].reshape(-1, k)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=20_000, help="queries = references")
  parser.add_argument("--d", type=int, default=512, help="embedding dimension")
  parser.add_argument("--k", type=int, default=10, help="neighbours per query")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up")
  parser.add_argument("--chunk-size", type=int, default=1024, help="jaxdml query chunk size")
  parser.add_argument("--classes", type=int, default=1000, help="clusters in the synthetic data")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--explicit-refs", action="store_true",
                      help="pass references=x, exclude_self=True: times knn's general chunked "
                      "method instead of its leave-one-out (references=None) method")
  args = parser.parse_args()

  x = make_data(args.n, args.d, args.classes, args.seed)
  xj = jax.device_put(x)
  print(f"N={args.n} d={args.d} k={args.k} repeats={args.repeats} (self excluded); "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} threads"
        + ("; jaxdml given explicit references" if args.explicit_refs else ""))

  refs = xj if args.explicit_refs else None

  def run_jax():
    return jax.block_until_ready(evaluation.knn(
        xj, refs, k=args.k, similarity="cosine", exclude_self=True, chunk_size=args.chunk_size))

  res = timed({"jax": run_jax, "faiss": lambda: faiss_search(x, args.k)}, args.repeats)
  jax_wall, jax_cpu, (j_scores, j_idx) = res["jax"]
  faiss_wall, faiss_cpu, (f_scores, f_idx) = res["faiss"]

  j_idx, j_scores = np.asarray(j_idx), np.asarray(j_scores)
  rows_equal = np.mean(np.all(j_idx == f_idx, axis=1))
  sets_equal = np.mean(np.all(np.sort(j_idx, 1) == np.sort(f_idx, 1), axis=1))
  print(f"jaxdml.knn        : {jax_wall:7.3f} s wall (median), {jax_cpu:7.3f} s CPU")
  print(f"faiss.IndexFlatIP : {faiss_wall:7.3f} s wall (median), {faiss_cpu:7.3f} s CPU")
  print(f"ratio jaxdml/faiss: {jax_wall / faiss_wall:7.3f} wall, {jax_cpu / faiss_cpu:7.3f} CPU")
  print(f"top-{args.k} agreement: index sets equal in {sets_equal:.5f} of rows, "
        f"ordered indices equal in {rows_equal:.5f}, "
        f"max |score difference| {np.max(np.abs(j_scores - f_scores)):.2e}")
  if sets_equal < 1:
    bad = np.any(np.sort(j_idx, 1) != np.sort(f_idx, 1), axis=1)
    kth_diff = np.max(np.abs(j_scores[bad, -1] - f_scores[bad, -1]))
    print(f"  {int(bad.sum())} rows differ; there the k-th scores of the two searches differ by at "
          f"most {kth_diff:.2e} (a near-tie at the cut-off, within float32 rounding)")

if __name__ == "__main__":
  main()
