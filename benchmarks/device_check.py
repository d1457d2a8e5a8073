"""The device check's exact-search benchmark and its one results table.

Two subcommands, both run by `benchmarks/device_check.sh`:

  search  Exact k-NN of Q queries among R references (separate sets, inner product of unit
          vectors): `jaxdml.evaluation.knn` (at its default matmul precision and at "highest")
          and `sharded_knn`, against brute force in PyTorch (`q @ r.T` then `torch.topk`, in
          float32 and in TF32) and faiss's `IndexFlatIP` (on the GPU through
          `StandardGpuResources` when faiss has GPU support, else on the CPU) where faiss
          imports. Each gets one untimed call (for jaxdml: the compilation, reported apart) and
          then --repeats timed ones; the median wall time is reported, with the top-k recall of
          each against an exact float64 search of the first --check-queries queries.
  table   Reads what the parts wrote into a results folder and prints one markdown table, with
          every figure, its device and the command that produced it (to a file too with --out).

    python benchmarks/device_check.py search --refs 20000 --queries 1000 --json out.jsonl
    python benchmarks/device_check.py table --results RESULTS_DIR --out device_check.md
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

import numpy as np

# --- search -------------------------------------------------------------------------------------


def make_unit_vectors(n: int, d: int, centres: np.ndarray, rng: np.random.Generator,
                      block: int = 1 << 16) -> np.ndarray:
  """[n, d] float32 unit vectors: a random centre plus noise of comparable spread, per row."""
  out = np.empty((n, d), np.float32)
  for s in range(0, n, block):
    m = min(block, n - s)
    x = rng.standard_normal((m, d), dtype=np.float32)
    x *= 1.5
    x += centres[rng.integers(0, len(centres), m)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out[s:s + m] = x
  return out


def exact_top_k(q: np.ndarray, r: np.ndarray, k: int, block: int = 1 << 17) -> np.ndarray:
  """Indices [Q, k] of the k largest inner products, computed in float64 (the reference)."""
  q64 = q.astype(np.float64)
  best_s = np.full((len(q), 0), -np.inf)
  best_i = np.zeros((len(q), 0), np.int64)
  for s in range(0, len(r), block):
    sc = q64 @ r[s:s + block].astype(np.float64).T
    kk = min(k, sc.shape[1])
    top = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
    best_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], axis=1)
    best_i = np.concatenate([best_i, top + s], axis=1)
    keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
  return best_i


def recall_vs(idx: np.ndarray, ref: np.ndarray) -> float:
  """Mean fraction of each row's reference neighbours that `idx` found."""
  idx = np.asarray(idx)[:len(ref)]
  return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(idx, ref, strict=True)]))


def time_calls(fn, repeats: int) -> tuple[float, float, object]:
  """(first-call seconds, median of `repeats` further calls, last output)."""
  t = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times), out


def search_impls(q: np.ndarray, r: np.ndarray, args) -> list:
  """(name, device, callable returning host indices or a device array, note) per implementation;
  a callable of None marks one that cannot run here, with the reason as the note."""
  import jax

  from jaxdml import evaluation

  impls = []
  qj, rj = jax.device_put(q), jax.device_put(r)
  jax_dev = jax.devices()[0].device_kind
  for chunk in args.chunk_sizes:
    def run(chunk=chunk):
      return jax.block_until_ready(evaluation.knn(qj, rj, k=args.k, similarity="dot",
                                                  chunk_size=chunk))[1]
    impls.append((f"jaxdml knn (chunk {chunk})", jax_dev, run, "default matmul precision"))

  def run_highest():
    with jax.default_matmul_precision("highest"):
      return jax.block_until_ready(evaluation.knn(qj, rj, k=args.k, similarity="dot",
                                                  chunk_size=args.chunk_sizes[0]))[1]
  impls.append((f"jaxdml knn (chunk {args.chunk_sizes[0]})", jax_dev, run_highest,
                "matmul precision highest"))

  def run_sharded():
    return jax.block_until_ready(evaluation.sharded_knn(qj, rj, k=args.k, similarity="dot",
                                                        chunk_size=args.chunk_sizes[0]))[1]
  impls.append((f"jaxdml sharded_knn (chunk {args.chunk_sizes[0]})",
                f"{jax.device_count()} x {jax_dev}", run_sharded, "default matmul precision"))
  for name, build in (("PyTorch matmul + topk", lambda: torch_impls(q, r, args)),
                      ("faiss IndexFlatIP", lambda: [faiss_impl(q, r, args)])):
    try:
      impls.extend(build())
    except Exception as e:  # noqa: BLE001 - a baseline that cannot be set up gets a table line
      impls.append((name, "-", None, f"setup failed: {type(e).__name__}: {e}"[:300]))
  return impls


def torch_impls(q: np.ndarray, r: np.ndarray, args) -> list:
  """PyTorch brute force: chunks of `q @ r.T` then `torch.topk`, in float32 and TF32."""
  try:
    import torch
  except ImportError as e:
    return [("PyTorch matmul + topk", "-", None, f"torch does not import: {e}")]
  device = ("cuda" if torch.cuda.is_available() else "cpu") if args.torch_device == "auto" else (
      args.torch_device)
  cuda = device.startswith("cuda")
  kind = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
  qt, rt = torch.from_numpy(q).to(device), torch.from_numpy(r).to(device)
  chunk = args.torch_chunk

  def make(tf32: bool):
    def run():
      torch.backends.cuda.matmul.allow_tf32 = tf32
      out = []
      for s in range(0, len(qt), chunk):
        out.append(torch.topk(qt[s:s + chunk] @ rt.T, args.k, dim=1).indices)
      res = torch.cat(out)
      if cuda:
        torch.cuda.synchronize()
      torch.backends.cuda.matmul.allow_tf32 = False
      return res.cpu().numpy()
    return run

  note = f"chunks of {chunk} queries"
  impls = [("PyTorch matmul + topk", f"{device} ({kind})", make(False), f"float32, {note}")]
  if cuda:
    impls.append(("PyTorch matmul + topk", f"{device} ({kind})", make(True), f"TF32, {note}"))
  return impls


def faiss_impl(q: np.ndarray, r: np.ndarray, args) -> tuple:
  """faiss IndexFlatIP: on the GPU when faiss has GPU support and sees one, else on the CPU."""
  try:
    import faiss
  except ImportError as e:
    return ("faiss IndexFlatIP", "-", None, f"faiss does not import ({e}); {args.faiss_note}")
  gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
  index = faiss.IndexFlatIP(r.shape[1])
  if gpus and not args.faiss_cpu:
    res = faiss.StandardGpuResources()
    index = faiss.index_cpu_to_gpu(res, 0, index)
    device, name = "cuda:0 (faiss GPU)", "faiss GpuIndexFlatIP"
  else:
    device = f"cpu ({faiss.omp_get_max_threads()} threads)"
    name = "faiss IndexFlatIP"
  t = time.perf_counter()
  index.add(r)
  add_s = time.perf_counter() - t

  def run():
    return index.search(q, args.k)[1]
  return (name, device, run,
          f"faiss {faiss.__version__}; index.add {add_s:.2f} s, not counted"
          + ("" if gpus and not args.faiss_cpu else f"; {args.faiss_note}"))


def search_main(args) -> None:
  rng = np.random.default_rng(args.seed)
  t = time.perf_counter()
  centres = rng.standard_normal((args.classes, args.d), dtype=np.float32)
  r = make_unit_vectors(args.refs, args.d, centres, rng)
  q = make_unit_vectors(args.queries, args.d, centres, rng)
  print(f"data: {args.queries} queries, {args.refs} x {args.d} references, k={args.k} "
        f"({time.perf_counter() - t:.1f} s to make)", flush=True)
  t = time.perf_counter()
  ref = exact_top_k(q[:args.check_queries], r, args.k)
  print(f"float64 reference on {len(ref)} queries: {time.perf_counter() - t:.1f} s", flush=True)
  case = f"exact top-{args.k}: {args.queries} queries x {args.refs} x {args.d} refs"
  for name, device, run, note in search_impls(q, r, args):
    rec = {"part": "search", "case": case, "impl": name, "device": device, "group": case}
    if run is None:
      rec["skipped"] = note
      print(f"{name}: skipped ({note})", flush=True)
    else:
      # faiss on the CPU takes seconds a call at full size: fewer repeats keep the part short.
      repeats = min(args.repeats, args.cpu_repeats) if device.startswith("cpu") else args.repeats
      try:
        first, med, idx = time_calls(run, repeats)
      except Exception as e:  # noqa: BLE001 - one failing implementation must not stop the rest
        rec["skipped"] = f"FAILED: {type(e).__name__}: {e}"[:300]
        print(f"{name}: {rec['skipped']}", flush=True)
        _append(args.json, rec)
        continue
      note += f"; median of {repeats}"
      rec.update(value=args.queries / med, unit="queries/s", seconds=med, first_call_s=first,
                 extra=f"{med * 1e3:.1f} ms/search; {note}; recall@{args.k} vs float64 "
                       f"{recall_vs(np.asarray(idx), ref):.4f}")
      print(f"{name} [{device}]: first {first:.3f} s, median {med:.4f} s; {rec['extra']}",
            flush=True)
    _append(args.json, rec)


def _append(path: str | None, record: dict) -> None:
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")


# --- table --------------------------------------------------------------------------------------

PART_TITLES = {"setup": "setup", "digits": "digit pairs", "train_step": "train step",
               "search": "search"}


def read_parts(results: pathlib.Path) -> list[dict]:
  """Per part, in run order: name, rc, seconds, command and note (from parts.tsv)."""
  parts = []
  path = results / "parts.tsv"
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        name, rc, secs, command, note = (line.split("\t") + [""] * 5)[:5]
        parts.append({"name": name, "rc": rc, "seconds": secs, "command": command, "note": note})
  return parts


def read_records(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  recs = []
  for line in path.read_text().splitlines():
    try:
      recs.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # a line cut short by a timeout
  return recs


def last_error(log: pathlib.Path) -> str:
  """The last line of a part's log that looks like an error (else its last line)."""
  if not log.exists():
    return "no log"
  lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
  for ln in reversed(lines):
    if any(w in ln for w in ("Error", "error", "Exception", "Killed")):
      return ln[:200]
  return lines[-1][:200] if lines else "empty log"


def _cell(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value: float) -> str:
  return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def table_rows(parts: list[dict], results: pathlib.Path, mark: str) -> list[list[str]]:
  rows = []
  for p in parts:
    title = PART_TITLES.get(p["name"], p["name"]) + mark
    cmd = f"`{p['command']}`" if p["command"] else ""
    recs = read_records(results / f"{p['name']}.jsonl")
    jax_by_group = {}
    for r in recs:
      if r.get("impl", "").startswith("jaxdml") and "seconds" in r:
        jax_by_group.setdefault(r.get("group"), r)
    for r in recs:
      if "skipped" in r:
        skip = r["skipped"]
        result = skip if skip.startswith("FAILED") else f"SKIPPED: {skip}"
        first, ratio = "", ""
      else:
        result = f"{_fmt(r['value'])} {r['unit']}" + (f"; {r['extra']}" if r.get("extra") else "")
        first = f"{r['first_call_s']:.1f} s" if r.get("first_call_s") is not None else ""
        base = jax_by_group.get(r.get("group"))
        ratio = ""
        if base is not None and base is not r and not r["impl"].startswith("jaxdml"):
          ratio = f"{r['seconds'] / base['seconds']:.2f}x"
      rows.append([title, r.get("case", ""), r.get("impl", ""), result, first, ratio,
                   r.get("device", ""), cmd])
    status = None
    if p["rc"] == "skip":
      status = f"SKIPPED: {p['note']}"
    elif p["rc"] in ("124", "137"):
      status = f"TIMED OUT after {p['seconds']} s; cases not listed above were not reached"
    elif p["rc"] not in ("0", ""):
      status = f"FAILED (exit {p['rc']}): {last_error(results / (p['name'] + '.log'))}"
    elif not recs and p["name"] != "setup":
      status = f"no figures written ({p['note'] or 'see the log'})"
    elif p["name"] == "setup":
      status = f"done in {p['seconds']} s" + (f"; {p['note']}" if p["note"] else "")
    if status:
      rows.append([title, "(part status)", "", _cell(status), "", "", "", cmd])
  return rows


def table_main(args) -> None:
  results = pathlib.Path(args.results)
  parts = read_parts(results)
  env = results / "env.txt"
  lines = ["# Device check", ""]
  if args.banner:
    lines += [f"**{args.banner}**", ""]
  if env.exists():
    lines += [f"- {ln}" for ln in env.read_text().splitlines() if ln.strip()] + [""]
  header = ["Part", "Case", "Implementation", "Result (median after warm-up)",
            "Compile / first call", "Other time / jaxdml time", "Device", "Command"]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "---|" * len(header))
  for row in table_rows(parts, results, f" ({args.mark})" if args.mark else ""):
    lines.append("| " + " | ".join(_cell(c) if i < 7 else c for i, c in enumerate(row)) + " |")
  lines += ["", "Medians after untimed warm-up steps; the first call (jaxdml: compilation plus one "
            "step or search; PyTorch: its first step) is reported apart. 'Other time / jaxdml "
            "time' divides a baseline's median by the first jaxdml row of the same case: above 1, "
            "jaxdml is faster. Digit pairs: whole training runs, jaxdml's including its "
            "compilation (its time without compilation is given beside it)."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)
    print(f"written to {args.out}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  s = sub.add_parser("search", help="exact k-NN: jaxdml against PyTorch and faiss")
  s.add_argument("--refs", type=int, default=1_000_000)
  s.add_argument("--queries", type=int, default=10_000)
  s.add_argument("--d", type=int, default=512)
  s.add_argument("--k", type=int, default=10)
  s.add_argument("--repeats", type=int, default=5, help="timed calls after the first")
  s.add_argument("--cpu-repeats", type=int, default=2,
                 help="timed calls at most for implementations on the CPU")
  s.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 4096],
                 help="jaxdml knn chunk sizes (the first also for sharded_knn and 'highest')")
  s.add_argument("--torch-chunk", type=int, default=4096, help="PyTorch queries per matmul")
  s.add_argument("--torch-device", default="auto", help="auto (cuda if available), cpu, cuda")
  s.add_argument("--faiss-cpu", action="store_true", help="faiss on the CPU even with a GPU")
  s.add_argument("--faiss-note", default=os.environ.get("DEVICE_CHECK_FAISS_NOTE", ""),
                 help="said on the faiss row when it is not on the GPU")
  s.add_argument("--check-queries", type=int, default=256,
                 help="queries checked against the float64 search")
  s.add_argument("--classes", type=int, default=1000, help="clusters in the synthetic data")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--json", default=None, help="append one JSON record per implementation")
  t = sub.add_parser("table", help="the markdown table of a results folder")
  t.add_argument("--results", required=True, help="folder with parts.tsv, env.txt, *.jsonl")
  t.add_argument("--out", default=None, help="also write the table here")
  t.add_argument("--banner", default="", help="a bold line above the table")
  t.add_argument("--mark", default="", help="appended to every part name, e.g. 'CPU'")
  args = parser.parse_args()
  if args.command == "search":
    search_main(args)
  else:
    table_main(args)


if __name__ == "__main__":
  main()
