"""The glyphs recipe in jaxdml and in PyTorch + pytorch-metric-learning, in one run.

Both sides train the same small residual network (`jaxdml.models.ResCNN`: a 2 x 2 space-to-depth
stem, conv3x3 16 - BN - ReLU - maxpool 2, three basic residual blocks of 16, 32, 64 channels
whose later two start with a 2 x 2 average pool and a 1 x 1 projection shortcut, global average +
global max pooling summed, linear 128 with kaiming fan_out init, L2 normalisation) with
multi-similarity loss (alpha 2, beta 50, base 0.5), AdamW lr 1e-3, weight decay 1e-4, 8 epochs
of 184 batches of 32 classes x 4 images, on the same batches (jaxdml's class-balanced sampler
with the run's epoch seeds), and are scored with the same leave-one-out metrics per level (code
point, decomposition base, script) on the unseen test classes, 8 images of each. The PyTorch
network is written here from the description above, with PyTorch's own initialisers (its
weights are not jaxdml's): the comparison is of two implementations of one recipe, so the
figures agree within seed noise, not to the digit.

    pip install -e ".[bench]" && python benchmarks/glyphs.py --seeds 0 1

Prints MAP@R and Recall@1 per level of both, and training wall times: PyTorch (the better of
the `--threads` counts, each run alone), jaxdml including the first compilation, and jaxdml
without it. `--json PATH` appends one record per figure to PATH.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

LEVEL_KEYS = ("map@r", "middle/map@r", "coarse/map@r", "recall@1", "middle/recall@1",
              "coarse/recall@1")


def torch_net(dim: int = 128, widths=(16, 32, 64)):
  """The PyTorch replica of `ResCNN` (module docstring)."""
  import torch
  import torch.nn as tnn
  import torch.nn.functional as F

  def conv(cin, cout, k=3):
    c = tnn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    tnn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    return c

  class Block(tnn.Module):
    def __init__(self, cin, cout, down):
      super().__init__()
      self.down = down
      self.c1, self.b1 = conv(cin, cout), tnn.BatchNorm2d(cout)
      self.c2, self.b2 = conv(cout, cout), tnn.BatchNorm2d(cout)
      self.proj = tnn.Sequential(conv(cin, cout, 1), tnn.BatchNorm2d(cout)) if cin != cout \
          else None

    def forward(self, x):
      if self.down:
        x = F.avg_pool2d(x, 2)
      y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
      return F.relu(y + (self.proj(x) if self.proj is not None else x))

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      self.stem, self.stem_bn = conv(4, widths[0]), tnn.BatchNorm2d(widths[0])
      blocks, cin = [], widths[0]
      for i, w in enumerate(widths):
        blocks.append(Block(cin, w, down=i > 0))
        cin = w
      self.blocks = tnn.Sequential(*blocks)
      self.fc = tnn.Linear(cin, dim)
      tnn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
      tnn.init.zeros_(self.fc.bias)

    def forward(self, x):
      x = F.pixel_unshuffle(x[:, None], 2)
      x = F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 2)
      x = self.blocks(x)
      x = torch.mean(x, dim=(2, 3)) + torch.amax(x, dim=(2, 3))
      return F.normalize(self.fc(x), dim=1)

  return Net()


def torch_run(train_x, train_labels, test_x, config, seed, threads):
  """Trains the replica on jaxdml's batches; (test embeddings, training seconds)."""
  import torch
  from pytorch_metric_learning import losses as pml_losses

  from jaxdml.data import class_balanced_batches

  torch.manual_seed(seed)
  torch.set_num_threads(threads)
  net = torch_net(config.model.embedding_dim)
  opt = torch.optim.AdamW(net.parameters(), lr=config.optim.learning_rate,
                          weight_decay=config.optim.weight_decay)
  kw = config.objective.loss_kwargs
  loss_fn = pml_losses.MultiSimilarityLoss(alpha=kw["alpha"], beta=kw["beta"], base=kw["base"])
  x_all = torch.from_numpy(train_x)
  y_all = torch.from_numpy(train_labels.astype(np.int64))
  d = config.data
  net.train()
  t0 = time.perf_counter()
  for e in range(config.loop.epochs):
    for b in class_balanced_batches(train_labels, d.classes_per_batch, d.per_class,
                                    seed=seed * 100003 + e):
      idx = torch.from_numpy(b.astype(np.int64))
      loss = loss_fn(net(x_all[idx]), y_all[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
  seconds = time.perf_counter() - t0
  net.eval()
  with torch.no_grad():
    emb = torch.cat([net(torch.from_numpy(test_x[i:i + 512]))
                     for i in range(0, len(test_x), 512)]).numpy()
  return emb, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's (8)")
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                      help="PyTorch thread counts to try; the faster is reported")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--json", default=None, help="append one JSON record per figure here")
  args = parser.parse_args()

  import dataclasses

  from jaxdml.app import glyphs as task
  from jaxdml.app.config import apply_overrides
  from jaxdml.app.experiment import run
  from jaxdml.configs import glyphs

  rows = []
  for seed in args.seeds:
    config = apply_overrides(glyphs.get_config(), [f"seed={seed}", "eval.baselines=false",
                                                   "loop.tensorboard=false"])
    if args.epochs is not None:
      config = dataclasses.replace(config, loop=dataclasses.replace(config.loop,
                                                                    epochs=args.epochs))
    out = run(config, progress=False, verbose=False)
    row = {"seed": seed, "jaxdml": {k: out["final"][k] for k in LEVEL_KEYS},
           "jaxdml_s": out["train_seconds"],
           "jaxdml_warm_s": out["train_seconds"] - out["compile_seconds"]}
    if not args.skip_torch:
      data = task.load(config)
      keep = task.eval_subset(data.test_labels, config.data.glyphs.eval_images_per_class)
      test_labels = np.asarray(data.test_labels)[keep]
      _, train_labels = np.unique(data.train_labels, return_inverse=True)
      train_labels = train_labels.astype(np.int32)
      train_x, test_x = task.to_inputs(data.train_images), task.to_inputs(data.test_images[keep])
      times = {}
      for threads in args.threads:
        emb, times[threads] = torch_run(train_x, train_labels, test_x, config, seed, threads)
      metrics = task.level_metrics(emb, data, test_labels, ks=config.eval.recall_ks)
      best = min(times, key=times.get)
      row.update(torch={k: metrics[k] for k in LEVEL_KEYS}, torch_s=times[best],
                 torch_threads=best, torch_all_s=times)
    rows.append(row)
    print(row, flush=True)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps({"part": "glyphs", **row}) + "\n")

  epochs = args.epochs or glyphs.get_config().loop.epochs
  print(f"\nglyphs, {epochs} epochs; MAP@R and R@1 at the levels code point / base / script\n")
  print("| seed | implementation | MAP@R code point | base | script | R@1 code point | base | "
        "script | training s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    cells = lambda m: " | ".join(f"{m[k]:.4f}" for k in LEVEL_KEYS)
    print(f"| {r['seed']} | jaxdml | {cells(r['jaxdml'])} | {r['jaxdml_s']:.1f} "
          f"({r['jaxdml_warm_s']:.1f} without compiling) |")
    if "torch" in r:
      print(f"| {r['seed']} | PyTorch + PML | {cells(r['torch'])} | {r['torch_s']:.1f} "
            f"({r['torch_threads']} threads) |")


if __name__ == "__main__":
  main()
