"""DAS, Metrix and HIER against their baselines, with their controls, over seeds: on the glyphs
benchmark (the default) or on digit pairs.

Glyphs (`--benchmark glyphs`): every run is the glyphs recipe (`jaxdml train --config glyphs`:
`ResCNN`, 8 epochs, AdamW 1e-3) with the objective, batches and optimiser of a method's
published recipe; the runs and their settings are `glyph_das`, `glyph_metrix` and `glyph_hier`
of `jaxdml.configs.recipes`:

  - "MS (DAS recipe)" / "+ DAS" / "+ DAS, generation off": DAS Table 1's multi-similarity run
    (MS 2 / 40 / 0.5 with its pair miner, 64 classes x 2 images, DAS K 8), and the control whose
    generated embeddings are exact copies of the real ones;
  - "MS (Metrix recipe)" / "+ Metrix input" / "feature" / "embedding": the official Metrix MS
    run (17.97 / 75.66 / 0.77 with its miner at 0.39, random batches of 100) and its mixup at
    the three locations;
  - "PA (linear head)" / "PA (hyperbolic head)" / "PA + HIER, weight 0.5" / "weight 5": Proxy-
    Anchor, on HIER's Poincare-ball head, and with HIER's loss (512 proxies) at two weights,
    all with HIER's optimiser settings.

It reports MAP@R and R@1 at each level (code point, decomposition base, script) on the unseen
test classes (8 images of each, as the glyphs task scores them).

Digit pairs (`--benchmark digits`): the setting with headroom of the earlier benchmark, 10
training images per class and 10 epochs of 16 classes x 4 (the digit rows below, at the
argparse defaults of each method); the hierarchy is first digit / first digit < 5.

For the hyperbolic rows it also reports how well the learned geometry agrees with the label
hierarchy, which training never sees: each test class is summarised by its centroid in the
ball (the tangent-space mean, `expmap0(mean(logmap0(z)))`), and for every pair of classes

  - "LCA depth": the distance to the origin of the proxy HIER takes as their lowest common
    ancestor (`hier.lowest_common_ancestors`), rounded to 1e-3 so that proxies at the same
    depth tie; deeper = more related;
  - "centroid distance": minus the hyperbolic distance of the two centroids (no proxies; also
    defined for the baselines).

Each score is turned into an AUC: the probability that a random pair sharing the middle label
(decomposition base; first digit) scores higher than a random pair that does not ("middle"),
and, among pairs with different middle labels, that a pair sharing the coarse label (script;
side of 5) scores higher than a pair that does not ("coarse"). 0.5 is no agreement, 1.0
perfect. "proxies inside clip_r" is the fraction of HIER's proxies whose parameters lie inside
the clipping radius (the others all map to the same depth, the rim of the clipped ball).

    python benchmarks/methods.py --seeds 0 1 2            # glyphs: 2-6 min a run on 2 CPU
                                                          # cores, HIER's about 25 min
    python benchmarks/methods.py --benchmark digits       # about 10 minutes

Prints a table of mean +- standard deviation over seeds. With --out it writes every run's
figures to that JSON file as soon as the run ends, and a rerun with the same file and setting
keeps the runs it holds and does only the others (so an interrupted benchmark resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

# digit rows: dotted config overrides (as `jaxdml train --set ...` takes them) on the defaults
COMMON = ["eval.baselines=false", "loop.tensorboard=false"]
HYPERBOLIC = ["model.head=hyperbolic", "optim.clip_value=10"]
PA = ["objective.loss=proxy_anchor"]
HIER = ["objective.hier.num_proxies=64"]
METRIX = ["objective.metrix.location=feature"]
CONTRASTIVE = ["objective.loss=contrastive", "objective.loss_kwargs.neg_margin=0.5"]

ROWS = {
    "MS": ["objective.loss=multi_similarity"],
    "MS + DAS": ["objective.methods=das"],
    "MS + Metrix": ["objective.methods=metrix", *METRIX],
    "contrastive": CONTRASTIVE,
    "contrastive + Metrix": [*CONTRASTIVE, "objective.methods=metrix", *METRIX],
    "PA (linear head)": PA,
    "PA (hyperbolic head)": [*PA, *HYPERBOLIC],
    "PA + HIER": [*PA, *HYPERBOLIC, "objective.methods=hier", *HIER],
    "PA + Metrix + HIER": [*PA, *HYPERBOLIC, "objective.methods=metrix,hier", *METRIX, *HIER],
}

# glyph rows: (builder of jaxdml.configs.recipes, its arguments)
GLYPH_ROWS = {
    "MS (DAS recipe)": ("glyph_das", ("none",)),
    "+ DAS": ("glyph_das", ("on",)),
    "+ DAS, generation off": ("glyph_das", ("off",)),
    "MS (Metrix recipe)": ("glyph_metrix", (None,)),
    "+ Metrix input": ("glyph_metrix", ("input",)),
    "+ Metrix input, weight 0": ("glyph_metrix", ("input", 0.0)),
    "+ Metrix feature": ("glyph_metrix", ("feature",)),
    "+ Metrix embedding": ("glyph_metrix", ("embedding",)),
    "PA (linear head)": ("glyph_hier", ("linear", None)),
    "PA (hyperbolic head)": ("glyph_hier", ("hyperbolic", None)),
    "PA + HIER, weight 0.5": ("glyph_hier", ("hyperbolic", 0.5)),
    "PA + HIER, weight 5": ("glyph_hier", ("hyperbolic", 5.0)),
}
GLYPH_KEYS = ("map@r", "middle/map@r", "coarse/map@r", "recall@1", "middle/recall@1",
              "coarse/recall@1")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
  """P(score of a random positive > score of a random negative), ties counted half (from the
  ranks of the pooled scores, the Mann-Whitney statistic)."""
  from scipy.stats import rankdata

  pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
  if not len(pos) or not len(neg):
    return float("nan")
  ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
  u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
  return float(u / (len(pos) * len(neg)))


def hierarchy_agreement(emb, labels, c, middle_of, coarse_of, proxies=None,
                        chunk: int = 65536) -> dict[str, float]:
  """AUCs of the label hierarchy (see the module docstring) from class centroids in the ball.

  `middle_of(classes)` and `coarse_of(classes)` map fine labels to their parents."""
  import jax.numpy as jnp

  from jaxdml.geometry import poincare
  from jaxdml.methods import hier

  classes = np.unique(labels)
  tangent = np.asarray(poincare.logmap0(jnp.asarray(emb), c=c))
  cent = poincare.expmap0(jnp.asarray(np.stack([tangent[labels == k].mean(0) for k in classes])),
                          c=c)
  i, j = np.triu_indices(len(classes), 1)
  mid, coa = np.asarray(middle_of(classes)), np.asarray(coarse_of(classes))
  middle = mid[i] == mid[j]
  coarse = coa[i] == coa[j]
  scores = {"centroid distance": -np.asarray(poincare.dist_matrix(cent, c=c))[i, j]}
  if proxies is not None:
    depth = np.concatenate([
        np.asarray(hier.lowest_common_ancestors(cent[i[s:s + chunk]], cent[j[s:s + chunk]],
                                                proxies, c=c)[1])
        for s in range(0, len(i), chunk)])
    # depths equal up to float residue (every proxy clipped to the rim) must tie, not rank
    scores["LCA depth"] = np.round(depth, 3)
  out = {}
  for name, s in scores.items():
    out[f"{name} middle"] = auc(s[middle], s[~middle])
    cross = ~middle
    out[f"{name} coarse"] = auc(s[cross & coarse], s[cross & ~coarse])
  return out


def _ball_rows(config, state, images, labels, middle_of, coarse_of) -> dict[str, float]:
  from jaxdml.app import build
  from jaxdml.methods import hier
  from jaxdml.train.evaluate import Embedder

  c, clip_r = config.model.ball
  model, _ = build.build_model(config)
  emb = Embedder(model, build.build_mesh(config)).arrays(state.params, state.model_state, images)
  row, proxies = {}, None
  if "hier" in config.objective.methods:
    raw = np.asarray(state.params["loss"]["hier"])
    proxies = hier.proxies_in_ball(raw, c=c, clip_r=clip_r)
    row["proxies inside clip_r"] = float(np.mean(np.linalg.norm(raw, axis=1) < clip_r))
  row.update(hierarchy_agreement(emb, labels, c, middle_of, coarse_of, proxies))
  return row


def run_glyph_row(name: str, seed: int, epochs: int | None = None, overrides=()) -> dict:
  import dataclasses

  from jaxdml.app import glyphs as glyphs_task
  from jaxdml.app.config import apply_overrides
  from jaxdml.app.experiment import run
  from jaxdml.configs import recipes

  builder, args = GLYPH_ROWS[name]
  config = getattr(recipes, builder)(*args)
  config = apply_overrides(config, [f"seed={seed}", *COMMON, *overrides])
  if epochs is not None:
    config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, epochs=epochs))
  t0 = time.perf_counter()
  out = run(config, progress=False, verbose=False)
  m = out["final"]
  row = {k: m[k] for k in GLYPH_KEYS}
  row["seconds"] = time.perf_counter() - t0
  if config.model.ball is not None:
    data = glyphs_task.load(config)
    keep = glyphs_task.eval_subset(data.test_labels, config.data.glyphs.eval_images_per_class)
    labels = np.asarray(data.test_labels)[keep]
    levels = lambda k: data.levels(np.asarray(k))
    row.update(_ball_rows(config, out["state"], glyphs_task.to_inputs(data.test_images[keep]),
                          labels, lambda k: levels(k)["middle"], lambda k: levels(k)["coarse"]))
  return row


def run_row(name: str, seed: int, images_per_class: int = 10, epochs: int = 10) -> dict:
  from jaxdml.app.config import Config, apply_overrides
  from jaxdml.app.experiment import run
  from jaxdml.data import make_digit_pairs

  config = apply_overrides(Config(name=name), [f"seed={seed}",
                                               f"data.train_images_per_class={images_per_class}",
                                               f"loop.epochs={epochs}", *COMMON, *ROWS[name]])
  t0 = time.perf_counter()
  out = run(config, progress=False, verbose=False)
  m = out["metrics"]["trained"]
  row = {"map@r": m["map@r"], "recall@1": m["recall@1"], "seconds": time.perf_counter() - t0}
  if config.model.ball is not None:
    data = make_digit_pairs(config.data.data_seed, train_images_per_class=images_per_class)
    first = lambda k: np.asarray(k) // 10
    row.update(_ball_rows(config, out["state"], data.test_images, data.test_labels, first,
                          lambda k: first(k) < 5))
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--benchmark", choices=["glyphs", "digits"], default="glyphs")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="+", help="rows to run (default: all of the benchmark's)")
  parser.add_argument("--images-per-class", type=int, default=10,
                      help="digits: training images per class (the benchmark's default: 40)")
  parser.add_argument("--epochs", type=int, default=None,
                      help="epochs (default: glyphs 8, the recipe's; digits 10)")
  parser.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                      help="glyphs: config overrides for every row (e.g. "
                           "data.glyphs.max_classes=100 for a quick check)")
  parser.add_argument("--out", help="write the per-seed results as JSON here")
  args = parser.parse_args()
  glyphs = args.benchmark == "glyphs"
  table = GLYPH_ROWS if glyphs else ROWS
  names = args.rows or list(table)
  for name in names:
    if name not in table:
      parser.error(f"unknown row {name!r} of {args.benchmark}; rows: {', '.join(table)}")

  results: dict[str, list[dict]] = {}
  setting = {"benchmark": args.benchmark, "epochs": args.epochs, "set": args.set}
  if not glyphs:
    setting["train_images_per_class"] = args.images_per_class
  done = {}
  if args.out and os.path.exists(args.out):  # resume: keep the runs of the same setting
    with open(args.out) as f:
      saved = json.load(f)
    if {k: v for k, v in saved["setting"].items() if k != "seeds"} == setting:
      done = {(name, r["seed"]): r for name, rows in saved["rows"].items() for r in rows}
      print(f"resuming: {len(done)} runs of {args.out} kept", flush=True)

  def save():
    if args.out:
      everything = {}
      for (name, _), r in done.items():
        everything.setdefault(name, []).append(r)
      with open(args.out + ".tmp", "w") as f:
        json.dump({"setting": {**setting, "seeds": sorted({s for _, s in done})},
                   "rows": everything}, f, indent=1)
      os.replace(args.out + ".tmp", args.out)

  for name in names:
    for seed in args.seeds:
      if (name, seed) in done:
        results.setdefault(name, []).append(done[(name, seed)])
        continue
      if glyphs:
        row = run_glyph_row(name, seed, args.epochs, args.set)
      else:
        row = run_row(name, seed, args.images_per_class, args.epochs or 10)
      row["seed"] = seed
      results.setdefault(name, []).append(row)
      done[(name, seed)] = row
      save()
      print(f"{name:24s} seed {seed}: MAP@R {row['map@r']:.4f}  R@1 {row['recall@1']:.4f}  "
            f"({row['seconds']:.1f} s)", flush=True)

  fmt = lambda v: f"{np.mean(v):.3f} +- {np.std(v):.3f}"
  if glyphs:
    print(f"\nglyphs, {args.epochs or 8} epochs, {len(args.seeds)} seeds; mean +- standard "
          "deviation; levels code point / base / script\n")
    print("| objective | MAP@R code point | base | script | R@1 code point | base | script |")
    print("|---|---|---|---|---|---|---|")
    keys = GLYPH_KEYS
  else:
    print(f"\n{args.images_per_class} training images per class, {args.epochs or 10} epochs, "
          f"{len(args.seeds)} seeds; mean +- standard deviation\n")
    print("| objective | MAP@R | R@1 |")
    print("|---|---|---|")
    keys = ("map@r", "recall@1")
  for name, rows in results.items():
    print(f"| {name} | " + " | ".join(fmt([r[k] for r in rows]) for k in keys) + " |")
  extra = sorted({k for rows in results.values() for r in rows for k in r
                  if k.endswith(("middle", "coarse", "clip_r"))})
  if extra:
    print("\nagreement with the label hierarchy on the unseen classes (AUC, 0.5 = none), and "
          "the fraction of HIER proxies inside the clipping radius\n")
    print("| objective | " + " | ".join(extra) + " |")
    print("|---|" + "---|" * len(extra))
    for name, rows in results.items():
      if any(k in rows[0] for k in extra):
        print(f"| {name} | " + " | ".join(fmt([r[k] for r in rows]) if k in rows[0] else "-"
                                         for k in extra) + " |")


if __name__ == "__main__":
  main()
