"""AML on glyphs: a wide teacher, a small student, each transfer loss, symmetric and asymmetric.

For each seed a teacher is trained by the glyphs recipe (`jaxdml train --config glyphs`) with a
wide `ResCNN` (widths 32 / 64 / 128, twice the recipe's); then students with a narrow one
(8 / 16 / 32, half the recipe's; one block a stage in both, and the same 128-d output, so the
student lives in the teacher's space), each for the same number of epochs:

* "alone": the student trained by the recipe's own loss (multi-similarity), no teacher;
* "Reg", "RKD", "DarkRank": AML's regression, relational and rank distillation, on random
  batches (the code draws random images for them: no labels are used);
* "Contr", "Contr+", "triplet", "MS": AML's tuple losses (margin 0.7; 5 hard negatives mined
  from the teacher's descriptors of the batch and of the last 2,048 training images, at most one
  per class), on the recipe's batches of 32 classes x 4 images.

Every student is scored by the run's own evaluation (leave-one-out on the unseen test code
points: symmetric MAP@R) and by `jaxdml.index.asymmetric_evaluation` on one query /
gallery split of the test set (2 queries a class): student against student ("symmetric"),
student queries against the teacher's gallery ("asymmetric"), and the teacher against itself.

    python benchmarks/aml.py --seeds 0 1 2 --out benchmarks/results/aml_glyphs.json

Runs are seed-major; with --out each run's figures are written as soon as it ends, and a rerun
with the same file and setting keeps those runs and does only the others. Teachers are kept in
--workdir (default /tmp/jaxdml_aml) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

TEACHER = ["model.widths=[32,64,128]"]
STUDENT = ["model.widths=[8,16,32]"]
RANDOM = ["data.sampler=random", "data.batch_size=128"]
POOL = ["objective.aml.pool_size=2048"]
ROWS = {
    "alone": [],
    "Reg": ["objective.aml.loss=regression", *RANDOM],
    "Contr": ["objective.aml.loss=contrastive", *POOL],
    "Contr+": ["objective.aml.loss=contrastive_plus", *POOL],
    "triplet": ["objective.aml.loss=triplet", *POOL],
    "MS": ["objective.aml.loss=multi_similarity", *POOL],
    "RKD": ["objective.aml.loss=rkd", *RANDOM],
    "DarkRank": ["objective.aml.loss=dark_rank", *RANDOM],
}
COMMON = ["eval.baselines=false", "loop.tensorboard=false"]
KEYS = ("map@r", "recall@1")


def _config(overrides):
  from jaxdml.app.config import apply_overrides
  from jaxdml.configs.glyphs import get_config

  return apply_overrides(get_config(), [*COMMON, *overrides])


def train(overrides, workdir) -> dict:
  from jaxdml.app.experiment import run

  config = _config([*overrides, f"loop.workdir={workdir}"])
  t0 = time.perf_counter()
  out = run(config, progress=False, verbose=False)
  return {"final": out["final"], "seconds": time.perf_counter() - t0}


def teacher_run(seed, epochs, root) -> str:
  workdir = os.path.join(root, f"teacher_seed{seed}_epochs{epochs}")
  import jaxdml

  try:
    jaxdml.load(workdir)
    print(f"teacher seed {seed}: reusing {workdir}", flush=True)
  except (FileNotFoundError, ValueError):
    out = train([f"seed={seed}", f"loop.epochs={epochs}", *TEACHER], workdir)
    print(f"teacher seed {seed}: MAP@R {out['final']['map@r']:.4f} ({out['seconds']:.0f} s)",
          flush=True)
  return workdir


def student_row(name, seed, epochs, teacher_dir, root) -> dict:
  import jaxdml
  from jaxdml.index import asymmetric_evaluation

  overrides = [f"seed={seed}", f"loop.epochs={epochs}", *STUDENT, *ROWS[name]]
  if name != "alone":
    overrides += ["objective.methods=aml", f"objective.aml.teacher={teacher_dir}"]
  workdir = os.path.join(root, "student")
  shutil.rmtree(workdir, ignore_errors=True)
  out = train(overrides, workdir)
  student, teacher = jaxdml.load(workdir), jaxdml.load(teacher_dir)
  images, labels, _ = student.split("test")
  split = asymmetric_evaluation(student, teacher, images, labels, seed=seed)
  row = {"seconds": out["seconds"], "loo_map@r": float(out["final"]["map@r"])}
  for protocol, metrics in split.items():
    for k in KEYS:
      row[f"{protocol}/{k}"] = float(metrics[k])
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="*", default=list(ROWS),
                      help=f"rows (default: all of {', '.join(ROWS)})")
  parser.add_argument("--epochs", type=int, default=4, help="student epochs (4)")
  parser.add_argument("--teacher-epochs", type=int, default=8, help="teacher epochs (8)")
  parser.add_argument("--workdir", default="/tmp/jaxdml_aml", help="where runs are written")
  parser.add_argument("--out", help="write the per-seed results as JSON here")
  args = parser.parse_args()
  for r in args.rows:
    if r not in ROWS:
      parser.error(f"unknown row {r!r}; rows: {', '.join(ROWS)}")

  setting = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs}
  done: dict[tuple[str, int], dict] = {}
  if args.out and os.path.exists(args.out):
    with open(args.out) as f:
      saved = json.load(f)
    if {k: v for k, v in saved["setting"].items() if k != "seeds"} == setting:
      done = {(r, x["seed"]): x for r, xs in saved["rows"].items() for x in xs}
      print(f"resuming: {len(done)} runs of {args.out} kept", flush=True)

  def save():
    if args.out:
      rows: dict[str, list] = {}
      for (r, _), x in sorted(done.items(), key=lambda item: item[0][1]):
        rows.setdefault(r, []).append(x)
      with open(args.out + ".tmp", "w") as f:
        json.dump({"setting": {**setting, "seeds": sorted({s for _, s in done})},
                   "rows": rows}, f, indent=1)
      os.replace(args.out + ".tmp", args.out)

  for seed in args.seeds:
    if all((r, seed) in done for r in args.rows):
      continue
    teacher_dir = teacher_run(seed, args.teacher_epochs, args.workdir)
    for r in args.rows:
      if (r, seed) in done:
        continue
      row = student_row(r, seed, args.epochs, teacher_dir, args.workdir)
      row["seed"] = seed
      done[(r, seed)] = row
      save()
      print(f"{r:9s} seed {seed}: symmetric {row['symmetric/map@r']:.4f}  asymmetric "
            f"{row['asymmetric/map@r']:.4f}  teacher {row['teacher/map@r']:.4f}  (leave-one-out "
            f"{row['loo_map@r']:.4f}, {row['seconds']:.0f} s)", flush=True)

  fmt = lambda xs: f"{np.mean(xs):.3f} +- {np.std(xs):.3f}"  # noqa: E731
  seeds = sorted({s for _, s in done if s in args.seeds})
  print(f"\nAML on glyphs, seeds {seeds} (mean +- standard deviation); MAP@R of the code point "
        "on a 2-queries-a-class split of the unseen test classes\n")
  print("| student | symmetric | asymmetric | R@1 sym. | R@1 asym. | teacher |")
  print("|---|---|---|---|---|---|")
  for r in args.rows:
    xs = [done[(r, s)] for s in seeds if (r, s) in done]
    if xs:
      print(f"| {r} | " + " | ".join(fmt([x[k] for x in xs]) for k in (
          "symmetric/map@r", "asymmetric/map@r", "symmetric/recall@1", "asymmetric/recall@1",
          "teacher/map@r")) + " |")


if __name__ == "__main__":
  main()
