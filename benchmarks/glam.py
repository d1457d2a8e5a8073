"""GLAM's ablation on the glyphs instance-retrieval variant, over seeds, beside the seed's table.

Each row is `jaxdml.configs.recipes.glyph_glam(variant)`: `ResCNN` on 64 x 64 glyphs, the
attention branches of the row after its last feature map (none for the baseline), GeM, FC to
512 and L2, ArcFace over the training code points, 8 epochs; scored on 200 unseen landmarks
(a clean query each; 20 graded views; 2,000 distractors) by the Revisited Oxford / Paris
protocol: Medium mAP (easy and hard views are positives) and Hard mAP (hard views only).
The code-point MAP@R of the ordinary glyph evaluation is reported too.

    python benchmarks/glam.py --seeds 0 1 2 --out benchmarks/results/glam_glyphs.json

Prints mean +- standard deviation over seeds, and the seed's ROxf / RPar figures for each row.
With --out every run's figures are written to that JSON file as soon as the run ends; a rerun
with the same file and setting keeps the runs it holds and does only the others.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

#: the seed's ablation (ResNet-101 on GLDv2-clean): ROxf M, RPar M, ROxf H, RPar H
SEED_TABLE = {
    "baseline": (72.8, 84.2, 49.9, 69.7),
    "local_channel": (72.2, 85.8, 48.3, 73.1),
    "local_spatial": (72.1, 85.3, 48.3, 71.9),
    "local": (73.7, 86.5, 52.6, 75.0),
    "global_channel": (73.3, 84.4, 49.8, 70.1),
    "global_spatial": (73.2, 86.3, 50.0, 72.7),
    "global": (77.2, 86.7, 57.4, 75.0),
    "global_local": (78.6, 88.5, 60.2, 76.8),
}
KEYS = ("instances/easy/map", "instances/medium/map", "instances/hard/map", "map@r")
COMMON = ["eval.baselines=false", "loop.tensorboard=false"]


def run_variant(variant: str, seed: int, epochs: int | None, overrides=()) -> dict:
  import dataclasses

  from jaxdml.app.config import apply_overrides
  from jaxdml.app.experiment import run
  from jaxdml.configs import recipes

  config = apply_overrides(recipes.glyph_glam(variant), [f"seed={seed}", *COMMON, *overrides])
  if epochs is not None:
    config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, epochs=epochs))
  t0 = time.perf_counter()
  out = run(config, progress=False, verbose=False)
  row = {k: float(out["final"][k]) for k in KEYS}
  row["seconds"] = time.perf_counter() - t0
  return row


def main():
  from jaxdml.configs.recipes import GLYPH_GLAM_VARIANTS

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--variants", nargs="*", default=list(GLYPH_GLAM_VARIANTS),
                      help=f"rows (default: all of {', '.join(GLYPH_GLAM_VARIANTS)})")
  parser.add_argument("--epochs", type=int, help="epochs (default: the recipe's 8)")
  parser.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                      help="config overrides for every row")
  parser.add_argument("--out", help="write the per-seed results as JSON here")
  args = parser.parse_args()
  for v in args.variants:
    if v not in GLYPH_GLAM_VARIANTS:
      parser.error(f"unknown variant {v!r}; variants: {', '.join(GLYPH_GLAM_VARIANTS)}")

  setting = {"epochs": args.epochs, "set": args.set}
  done: dict[tuple[str, int], dict] = {}
  if args.out and os.path.exists(args.out):
    with open(args.out) as f:
      saved = json.load(f)
    if {k: v for k, v in saved["setting"].items() if k != "seeds"} == setting:
      done = {(v, r["seed"]): r for v, rows in saved["rows"].items() for r in rows}
      print(f"resuming: {len(done)} runs of {args.out} kept", flush=True)

  def save():
    if args.out:
      rows: dict[str, list] = {}
      for (v, _), r in sorted(done.items(), key=lambda item: item[0][1]):
        rows.setdefault(v, []).append(r)
      with open(args.out + ".tmp", "w") as f:
        json.dump({"setting": {**setting, "seeds": sorted({s for _, s in done})},
                   "rows": rows}, f, indent=1)
      os.replace(args.out + ".tmp", args.out)

  for seed in args.seeds:  # seed-major: an interrupted benchmark has every row at some seeds
    for v in args.variants:
      if (v, seed) in done:
        continue
      row = run_variant(v, seed, args.epochs, args.set)
      row["seed"] = seed
      done[(v, seed)] = row
      save()
      print(f"{v:16s} seed {seed}: Medium {row['instances/medium/map']:.4f}  Hard "
            f"{row['instances/hard/map']:.4f}  MAP@R {row['map@r']:.4f}  "
            f"({row['seconds']:.0f} s)", flush=True)

  fmt = lambda xs: f"{100 * np.mean(xs):.1f} +- {100 * np.std(xs):.1f}"  # noqa: E731
  print(f"\nglyph instances, {len(args.seeds)} seeds (mean +- standard deviation, x 100); the "
        "seed's ResNet-101 on ROxf / RPar beside\n")
  print("| variant | Easy mAP | Medium mAP | Hard mAP | MAP@R code point | seed ROxf M / RPar M "
        "| seed ROxf H / RPar H |")
  print("|---|---|---|---|---|---|---|")
  for v in args.variants:
    rows = [done[(v, s)] for s in args.seeds if (v, s) in done]
    if not rows:
      continue
    t = SEED_TABLE[v]
    print(f"| {v} | " + " | ".join(fmt([r[k] for r in rows]) for k in KEYS)
          + f" | {t[0]} / {t[1]} | {t[2]} / {t[3]} |")


if __name__ == "__main__":
  main()
