"""Forward + backward time of each jaxdml loss against pytorch-metric-learning, in one run.

Same inputs on both sides: B embeddings of dimension d (B/4 classes x 4 images), proxies for
100 classes where the loss has them. jaxdml: one jitted `value_and_grad` with respect to the
embeddings (and the proxies). PyTorch: `loss(embeddings, labels).backward()`. Prints the median
time of each and the ratio PML / jaxdml (above 1: jaxdml faster), and checks the values agree.

    pip install -e ".[bench]" && python benchmarks/losses.py --batch-sizes 128 512 1024 --dim 512
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

NUM_CLASSES = 100


def _median_time(fn, repeats, budget_s=20.0):
  """Median of `repeats` timed calls after a warm-up (compilation); stops early past budget_s."""
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  if first > budget_s:  # one call is already past the budget: report it (nothing to compile)
    return first
  times = []
  start = time.perf_counter()
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
    if time.perf_counter() - start > budget_s:
      break
  return float(np.median(times))


def cases():
  """name -> (jaxdml loss(z, y, proxies|None), PML factory(d), uses proxies)."""
  from pytorch_metric_learning import losses as P

  from jaxdml import losses as L
  return {
      "contrastive": (lambda z, y, w: L.contrastive_loss(z, y), lambda d: P.ContrastiveLoss(),
                      False),
      "triplet (all)": (lambda z, y, w: L.triplet_margin_loss(z, y),
                        lambda d: P.TripletMarginLoss(), False),
      "multi_similarity": (lambda z, y, w: L.multi_similarity_loss(z, y),
                           lambda d: P.MultiSimilarityLoss(), False),
      "margin": (lambda z, y, w: L.margin_loss(z, y), lambda d: P.MarginLoss(), False),
      "lifted_structure": (lambda z, y, w: L.lifted_structure_loss(z, y),
                           lambda d: P.LiftedStructureLoss(), False),
      "generalized_lifted": (lambda z, y, w: L.lifted_structure_loss(z, y, generalized=True),
                             lambda d: P.GeneralizedLiftedStructureLoss(), False),
      "circle": (lambda z, y, w: L.circle_loss(z, y), lambda d: P.CircleLoss(), False),
      "supcon": (lambda z, y, w: L.supcon_loss(z, y), lambda d: P.SupConLoss(), False),
      "ntxent": (lambda z, y, w: L.ntxent_loss(z, y), lambda d: P.NTXentLoss(), False),
      "n_pairs": (lambda z, y, w: L.n_pairs_loss(z, y), lambda d: P.NPairsLoss(), False),
      "proxy_anchor": (lambda z, y, w: L.proxy_anchor_loss(z, y, w),
                       lambda d: P.ProxyAnchorLoss(NUM_CLASSES, d), True),
      "proxy_nca": (lambda z, y, w: L.proxy_nca_loss(z, y, w),
                    lambda d: P.ProxyNCALoss(NUM_CLASSES, d), True),
      "normalized_softmax": (lambda z, y, w: L.normalized_softmax_loss(z, y, w),
                             lambda d: P.NormalizedSoftmaxLoss(NUM_CLASSES, d), True),
      "arcface": (lambda z, y, w: L.arcface_loss(z, y, w, margin=math.radians(28.6)),
                  lambda d: P.ArcFaceLoss(NUM_CLASSES, d), True),
      "cosface": (lambda z, y, w: L.cosface_loss(z, y, w),
                  lambda d: P.CosFaceLoss(NUM_CLASSES, d), True),
      "soft_triple": (lambda z, y, w: L.soft_triple_loss(z, y, w, tau=0.0),
                      lambda d: P.SoftTripleLoss(NUM_CLASSES, d), True),
  }


def _pml_weights(loss):
  for name in ("proxies", "W", "fc"):
    if hasattr(loss, name):
      return getattr(loss, name)
  raise AttributeError(type(loss).__name__)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 1024])
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--only", nargs="*", help="run only these losses")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--pml-limit", type=float, default=10.0,
                      help="skip larger batches of a loss once a PML call takes this long")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import torch
  torch.set_num_threads(args.threads)

  print(f"fwd+bwd median of {args.repeats}, d={args.dim}, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} ({args.threads} threads)")
  print(f"{'loss':<20}{'B':>6}{'jaxdml ms':>11}{'PML ms':>10}{'PML/jaxdml':>12}{'|diff|':>10}")
  table = cases()
  for name, (jfn, pml_factory, has_w) in table.items():
    if args.only and name not in args.only:
      continue
    pml_too_slow = False
    for b in args.batch_sizes:
      if pml_too_slow:
        print(f"{name:<20}{b:>6}   skipped: PML took over {args.pml_limit:.0f} s per call at a "
              "smaller batch", flush=True)
        continue
      rng = np.random.default_rng(0)
      z = rng.standard_normal((b, args.dim)).astype(np.float32)
      y = ((np.arange(b) // 4) % NUM_CLASSES).astype(np.int64)
      pml = pml_factory(args.dim)
      w_t = _pml_weights(pml) if has_w else None
      if has_w:
        w = w_t.detach().numpy().copy()
        if w.shape[0] == args.dim and w.shape[1] != args.dim:
          w = w.T  # PML stores classifier weights as [d, C] (SoftTriple [d, C*K])
        if name == "soft_triple":
          w = w.reshape(NUM_CLASSES, -1, args.dim)  # column c*K + k -> centre k of class c
      else:
        w = None

      zt = torch.tensor(z, requires_grad=True)
      yt = torch.tensor(y)

      def run_torch():
        zt.grad = None
        if w_t is not None:
          w_t.grad = None
        loss = pml(zt, yt)
        loss.backward()
        return loss

      zj, yj = jnp.asarray(z), jnp.asarray(y.astype(np.int32))
      wj = jnp.asarray(w) if w is not None else None
      grad_fn = jax.jit(jax.value_and_grad(jfn, argnums=(0, 2) if has_w else 0))

      def run_jax():
        out = grad_fn(zj, yj, wj)
        jax.block_until_ready(out)
        return out

      t_j = _median_time(run_jax, args.repeats)
      t_t = _median_time(run_torch, args.repeats)
      pml_too_slow = t_t > args.pml_limit
      diff = abs(float(run_jax()[0]) - float(run_torch().item()))
      print(f"{name:<20}{b:>6}{t_j * 1e3:>11.2f}{t_t * 1e3:>10.2f}{t_t / t_j:>12.1f}"
            f"{diff:>10.2e}", flush=True)


if __name__ == "__main__":
  main()
