"""The digit-pairs recipe in jaxdml and in PyTorch + pytorch-metric-learning, in one run.

Both sides train the same small CNN (conv3x3 32, ReLU, conv3x3 64, ReLU, maxpool 2x2, linear 128,
L2 normalisation) with multi-similarity loss (alpha 2, beta 50, base 0.5), AdamW lr 1e-3, weight
decay 1e-4, 20 epochs of 31 batches of 16 classes x 4 images, on the same batches (jaxdml's
class-balanced sampler with the same seeds), and are evaluated with the same leave-one-out
metrics on the 1,000 test images of the 50 unseen classes.

    pip install -e ".[bench]" && python benchmarks/digits.py --seeds 0 1

Prints MAP@R and Recall@1 of both, and training wall times: PyTorch, jaxdml including the first
compilation, and jaxdml without it. jaxdml runs on JAX's default device; PyTorch on the CPU unless
`--torch-device cuda` (or `auto`, CUDA when available), where the time ends on
`torch.cuda.synchronize()`. `--json PATH` appends one record per figure to PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def torch_run(data, train_labels, args, seed):
  import torch
  import torch.nn as tnn
  import torch.nn.functional as F
  from pytorch_metric_learning import losses as pml_losses

  from jaxdml.data import class_balanced_batches

  torch.manual_seed(seed)
  torch.set_num_threads(args.threads)
  device = torch_device(args.torch_device)

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      self.c1 = tnn.Conv2d(1, 32, 3, padding=1)
      self.c2 = tnn.Conv2d(32, 64, 3, padding=1)
      h, w = data.train_images.shape[1:]
      self.fc = tnn.Linear(64 * (h // 2) * (w // 2), args.dim)

    def forward(self, x):
      x = F.relu(self.c1(x[:, None]))
      x = F.max_pool2d(F.relu(self.c2(x)), 2)
      return F.normalize(self.fc(x.flatten(1)), dim=1)

  net = Net().to(device)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
  loss_fn = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
  x_all = torch.from_numpy(data.train_images).to(device)
  y_all = torch.from_numpy(train_labels.astype(np.int64)).to(device)
  t0 = time.perf_counter()
  for e in range(args.epochs):
    batches = class_balanced_batches(train_labels, 16, 4, seed=seed * 100003 + e)
    for b in batches:
      idx = torch.from_numpy(b.astype(np.int64)).to(device)
      loss = loss_fn(net(x_all[idx]), y_all[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
  if device.startswith("cuda"):
    torch.cuda.synchronize()
  seconds = time.perf_counter() - t0
  with torch.no_grad():
    emb = net(torch.from_numpy(data.test_images).to(device)).cpu().numpy()
  return emb, seconds


def torch_device(name: str) -> str:
  """The torch device for a --torch-device name: "auto" is CUDA when torch sees a GPU, else CPU."""
  import torch
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return name


def write_records(path: str | None, row: dict, args) -> None:
  """Appends the row's figures to `path` as JSON lines (one per implementation)."""
  if not path:
    return
  import jax
  case = f"digit pairs, {args.epochs} epochs, seed {row['seed']}"
  recs = [{"part": "digits", "case": case, "impl": "jaxdml", "value": row["jax_s"],
           "unit": "s train", "seconds": row["jax_s"],
           "first_call_s": row["jax_s"] - row["jax_warm_s"],
           "extra": f"{row['jax_warm_s']:.1f} s without compilation; MAP@R "
                    f"{row['jax_map']:.4f}, R@1 {row['jax_r1']:.4f}",
           "device": f"{jax.devices()[0].device_kind} ({args.conv_impl} convs)",
           "group": case}]
  if "torch_s" in row:
    import torch
    device = torch_device(args.torch_device)
    kind = torch.cuda.get_device_name(device) if device.startswith("cuda") else (
        f"{args.threads} threads")
    recs.append({"part": "digits", "case": case, "impl": "PyTorch + PML",
                 "value": row["torch_s"], "unit": "s train", "seconds": row["torch_s"],
                 "extra": f"MAP@R {row['torch_map']:.4f}, R@1 {row['torch_r1']:.4f}",
                 "device": f"{device} ({kind})", "group": case})
  if "torch_error" in row:
    recs.append({"part": "digits", "case": case, "impl": "PyTorch + PML",
                 "skipped": f"FAILED: {row['torch_error']}", "group": case})
  with open(path, "a") as f:
    for r in recs:
      f.write(json.dumps(r) + "\n")


def jax_run(data, train_labels, args, seed):
  """The `jaxdml train` path (`jaxdml.app.experiment.run`): test embeddings and training times."""
  del data, train_labels  # the run builds the same benchmark from its config
  from jaxdml.app import build
  from jaxdml.app.config import Config, apply_overrides
  from jaxdml.app.experiment import run
  from jaxdml.data import make_digit_pairs
  from jaxdml.train.evaluate import Embedder

  config = apply_overrides(Config(), [f"seed={seed}", f"loop.epochs={args.epochs}",
                                      f"model.embedding_dim={args.dim}",
                                      f"model.conv_impl={args.conv_impl}",
                                      "eval.baselines=false"])
  result = run(config, progress=False, verbose=False)
  model, _ = build.build_model(config)
  test = make_digit_pairs(config.data.data_seed).test_images
  state = result["state"]
  emb = Embedder(model, build.build_mesh(config)).arrays(state.params, state.model_state, test)
  return emb, result["train_seconds"], result["train_seconds"] - result["compile_seconds"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--conv-impl", default="im2col", choices=["im2col", "xla"])
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--torch-device", default="cpu", help="cpu, cuda, or auto (cuda if seen)")
  parser.add_argument("--json", default=None, help="append one JSON record per figure here")
  args = parser.parse_args()

  from jaxdml.data import make_digit_pairs
  from jaxdml.train.evaluate import leave_one_out_metrics as evaluate

  data = make_digit_pairs(0)
  _, train_labels = np.unique(data.train_labels, return_inverse=True)
  train_labels = train_labels.astype(np.int32)
  rows = []
  for seed in args.seeds:
    emb, t_jax, t_jax_warm = jax_run(data, train_labels, args, seed)
    m_jax = evaluate(emb, data.test_labels)
    row = {"seed": seed, "jax_map": m_jax["map@r"], "jax_r1": m_jax["recall@1"],
           "jax_s": t_jax, "jax_warm_s": t_jax_warm}
    if not args.skip_torch:
      try:  # a failing PyTorch side (no CUDA, say) must not lose jaxdml's figures
        emb, t_torch = torch_run(data, train_labels, args, seed)
      except Exception as e:  # noqa: BLE001
        if not args.json:
          raise
        row["torch_error"] = f"{type(e).__name__}: {e}"[:300]
      else:
        m_torch = evaluate(emb, data.test_labels)
        row.update(torch_map=m_torch["map@r"], torch_r1=m_torch["recall@1"], torch_s=t_torch)
    rows.append(row)
    print(row, flush=True)
    write_records(args.json, row, args)

  print(f"\ndigit pairs, {args.epochs} epochs, conv impl {args.conv_impl}")
  print(f"{'seed':>4} {'jaxdml MAP@R':>13} {'torch MAP@R':>12} {'jaxdml R@1':>11} "
        f"{'torch R@1':>10} {'jaxdml s':>9} {'jaxdml s (no compile)':>21} {'torch s':>8} "
        f"{'ratio':>6}")
  for r in rows:
    ratio = r["jax_s"] / r["torch_s"] if "torch_s" in r else float("nan")
    print(f"{r['seed']:>4} {r['jax_map']:13.4f} {r.get('torch_map', float('nan')):12.4f} "
          f"{r['jax_r1']:11.4f} {r.get('torch_r1', float('nan')):10.4f} {r['jax_s']:9.1f} "
          f"{r['jax_warm_s']:21.1f} {r.get('torch_s', float('nan')):8.1f} {ratio:6.2f}")
  print("ratio = jaxdml time with compilation / PyTorch time (lower is better for jaxdml)")


if __name__ == "__main__":
  main()
