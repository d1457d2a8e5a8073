"""DAS, Metrix and HIER against their baseline losses on the digit-pairs benchmark, over seeds.

The default digit-pairs recipe already reaches MAP@R 0.94, which leaves little room to see a
method help. This benchmark uses a setting with headroom: 10 training images per class (500
images of 50 classes instead of 2,000) and 10 epochs of 16 classes x 4 images; the test set and
its leave-one-out protocol are the benchmark's (1,000 images of 50 unseen classes). Every row
is the same small CNN and optimiser (AdamW lr 1e-3, weight decay 1e-4, loss parameters at 100x
without decay); only the objective (and, for HIER, the head) changes:

  - MS / MS + DAS: multi-similarity (alpha 2, beta 50, base 0.5) with DAS at the authors'
    argparse defaults (K 4, scale [0.5, 2], shift 0.01, bank 10, R 3);
  - MS / contrastive + Metrix: Metrix feature mixup at the official code's defaults (alpha 2,
    w 0.4, a coin flip per step between positive-negative and anchor-negative pairs, the first
    positive mixed with every negative);
  - PA (linear head) / PA (hyperbolic head) / PA + HIER: Proxy-Anchor on the Euclidean head,
    the same on HIER's Poincare-ball head (c 0.1, clip 2.3), then HIER's regulariser with 64
    hierarchical proxies at 50x, lambda2 0.5, gradients clipped by value at 10 (HIER's recipe);
  - PA + Metrix + HIER: the three composed in one step.

For HIER it also reports how well the learned geometry agrees with the benchmark's label
hierarchy (fine = digit pair, middle = first digit, coarse = first digit < 5) on the 50 unseen
test classes: each class is summarised by its centroid in the ball (the tangent-space mean,
`expmap0(mean(logmap0(z)))`), and for every pair of classes

  - "LCA depth": the distance to the origin of the proxy HIER takes as their lowest common
    ancestor (`hier.lowest_common_ancestors`), rounded to 1e-3 so that proxies at the same
    depth tie; deeper = more related;
  - "centroid distance": minus the hyperbolic distance of the two centroids (no proxies; also
    defined for the baseline).

Each score is turned into an AUC: the probability that a random pair sharing the first digit
scores higher than a random pair that does not ("middle"), and, among pairs with different first
digits, that a pair on the same side of 5 scores higher than a pair across ("coarse"). 0.5 is no
agreement, 1.0 perfect. Training sees only the fine labels.

    python benchmarks/methods.py --seeds 0 1 2           # about 10 minutes on 2 CPU cores
    python benchmarks/methods.py --images-per-class 40 --epochs 20 --rows "PA (hyperbolic head)" \
        "PA + HIER"                                      # HIER in the full default setting

Prints a table of mean +- standard deviation over seeds (and writes JSON with --out).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

# every row: dotted config overrides (as `jaxdml train --set ...` takes them) on the defaults
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


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
  """P(score of a random positive > score of a random negative), ties counted half."""
  diff = pos[:, None] - neg[None, :]
  return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def hierarchy_agreement(emb, labels, c, proxies=None) -> dict[str, float]:
  """AUCs of the label hierarchy (see the module docstring) from class centroids in the ball."""
  import jax.numpy as jnp

  from jaxdml.geometry import poincare
  from jaxdml.methods import hier

  classes = np.unique(labels)
  tangent = np.asarray(poincare.logmap0(jnp.asarray(emb), c=c))
  cent = poincare.expmap0(jnp.asarray(np.stack([tangent[labels == k].mean(0) for k in classes])),
                          c=c)
  i, j = np.triu_indices(len(classes), 1)
  first = classes // 10
  middle = first[i] == first[j]
  coarse = (first[i] < 5) == (first[j] < 5)
  scores = {"centroid distance": -np.asarray(poincare.dist_matrix(cent, c=c))[i, j]}
  if proxies is not None:
    _, depth = hier.lowest_common_ancestors(cent[i], cent[j], proxies, c=c)
    # depths equal up to float residue (every proxy clipped to the rim) must tie, not rank
    scores["LCA depth"] = np.round(np.asarray(depth), 3)
  out = {}
  for name, s in scores.items():
    out[f"{name} middle"] = auc(s[middle], s[~middle])
    cross = ~middle
    out[f"{name} coarse"] = auc(s[cross & coarse], s[cross & ~coarse])
  return out


def run_row(name: str, seed: int, images_per_class: int = 10, epochs: int = 10) -> dict:
  from jaxdml.app import build
  from jaxdml.app.config import Config, apply_overrides
  from jaxdml.app.experiment import run
  from jaxdml.data import make_digit_pairs
  from jaxdml.methods import hier
  from jaxdml.train.evaluate import Embedder

  config = apply_overrides(Config(name=name), [f"seed={seed}",
                                               f"data.train_images_per_class={images_per_class}",
                                               f"loop.epochs={epochs}", *COMMON, *ROWS[name]])
  t0 = time.perf_counter()
  out = run(config, progress=False, verbose=False)
  m = out["metrics"]["trained"]
  row = {"map@r": m["map@r"], "recall@1": m["recall@1"], "seconds": time.perf_counter() - t0}
  ball = config.model.ball
  if ball is not None:
    c, clip_r = ball
    data = make_digit_pairs(config.data.data_seed, train_images_per_class=images_per_class)
    model, _ = build.build_model(config)
    state = out["state"]
    emb = Embedder(model, build.build_mesh(config)).arrays(state.params, state.model_state,
                                                           data.test_images)
    proxies = None
    if "hier" in config.objective.methods:
      raw = np.asarray(state.params["loss"]["hier"])
      proxies = hier.proxies_in_ball(raw, c=c, clip_r=clip_r)
      # proxies whose parameters outgrow the clipping radius all map to the same depth
      row["proxies off rim"] = float(np.mean(np.linalg.norm(raw, axis=1) < clip_r))
    row.update(hierarchy_agreement(emb, data.test_labels, c, proxies))
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
  parser.add_argument("--images-per-class", type=int, default=10,
                      help="training images per class (the benchmark's default recipe: 40)")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--out", help="write the per-seed results as JSON here")
  args = parser.parse_args()

  results: dict[str, list[dict]] = {}
  for name in args.rows:
    for seed in args.seeds:
      row = run_row(name, seed, args.images_per_class, args.epochs)
      results.setdefault(name, []).append(row)
      print(f"{name:24s} seed {seed}: MAP@R {row['map@r']:.4f}  R@1 {row['recall@1']:.4f}  "
            f"({row['seconds']:.1f} s)", flush=True)

  fmt = lambda v: f"{np.mean(v):.3f} +- {np.std(v):.3f}"
  print(f"\n{args.images_per_class} training images per class, {args.epochs} epochs, "
        f"{len(args.seeds)} seeds; mean +- standard deviation\n")
  print("| objective | MAP@R | R@1 |")
  print("|---|---|---|")
  for name, rows in results.items():
    print(f"| {name} | {fmt([r['map@r'] for r in rows])} | "
          f"{fmt([r['recall@1'] for r in rows])} |")
  keys = sorted({k for rows in results.values() for r in rows for k in r
                 if k.endswith(("middle", "coarse", "off rim"))})
  if keys:
    print("\nagreement with the label hierarchy on the unseen classes (AUC, 0.5 = none), and "
          "the fraction of HIER proxies off the rim\n")
    print("| objective | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, rows in results.items():
      if keys[0] in rows[0] or any(k in rows[0] for k in keys):
        print(f"| {name} | " + " | ".join(fmt([r[k] for r in rows]) if k in rows[0] else "-"
                                         for k in keys) + " |")
  if args.out:
    setting = {"train_images_per_class": args.images_per_class, "epochs": args.epochs,
               "seeds": args.seeds}
    with open(args.out, "w") as f:
      json.dump({"setting": setting, "rows": results}, f, indent=1)


if __name__ == "__main__":
  main()
