"""Images per second of the ResNet-50 metric-learning train step, jaxdml against PyTorch.

The step of the standard recipe: 224 x 224 images, ResNet-50 (batch norm in train mode), avg+max
pooling, linear 512 embedding, Proxy-Anchor loss over 100 classes, AdamW with proxies at 100x.
jaxdml: `jaxdml.train.make_train_step` (one jitted call per step, data-parallel over all local
devices). PyTorch (where torch is installed): the same network (torchvision's layout), PML's
ProxyAnchorLoss, AdamW, `loss.backward(); opt.step()`. Both use float32 unless --bf16 (jaxdml
only). Prints the median step time and images/s of each and the ratio, in one run.

    pip install -e ".[bench]" && python benchmarks/train_step.py --batch-sizes 16 32
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _median_step(fn, steps, warmup=2):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def jax_step_time(batch, args):
  import jax
  import jax.numpy as jnp

  from jaxdml import models, objectives
  from jaxdml.train import OptimizerSpec, init_state, make_mesh, make_optimizer, put_batch
  from jaxdml.train.step import make_train_step

  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  model = models.EmbeddingModel(backbone=models.resnet50(dtype=dtype), pooling="avg+max",
                                embedding_dim=512)
  objective = objectives.core("proxy_anchor", num_classes=100, dim=512)
  tx = make_optimizer(OptimizerSpec(learning_rate=1e-4, lr_mult={"loss": 100.0}))
  mesh = make_mesh()
  if batch % mesh.size:
    raise SystemExit(f"batch {batch} is not a multiple of the {mesh.size} devices.")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, args.size, args.size, 3)).astype(np.float32)
  y = (np.arange(batch) % 100).astype(np.int32)
  state = init_state(jax.random.PRNGKey(0), model, objective, jnp.asarray(x[:2]), tx, mesh)
  step = make_train_step(model, objective, tx, mesh=mesh)
  data = put_batch({"image": x, "label": y}, mesh)
  holder = {"state": state}
  t = time.perf_counter()
  holder["state"], m = step(holder["state"], data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t

  def run():
    holder["state"], metrics = step(holder["state"], data)
    jax.block_until_ready(metrics["loss"])

  return _median_step(run, args.steps), compile_s, jax.devices()[0].device_kind, mesh.size


def torch_step_time(batch, args):
  import torch
  from pytorch_metric_learning import losses as P
  spec = importlib.util.spec_from_file_location("torch_reference",
                                                ROOT / "tests" / "models" / "torch_reference.py")
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  device = "cuda" if torch.cuda.is_available() else "cpu"

  class Net(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = ref.torch_resnet(50)
      self.backbone.fc = torch.nn.Identity()
      self.embedding = torch.nn.Linear(2048, 512)

    def forward(self, x):
      b = self.backbone
      x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
      x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
      x = torch.nn.functional.adaptive_avg_pool2d(x, 1) + torch.nn.functional.adaptive_max_pool2d(
          x, 1)
      return self.embedding(x.flatten(1))

  net = Net().to(device).train()
  loss_fn = P.ProxyAnchorLoss(100, 512).to(device)
  opt = torch.optim.AdamW([{"params": net.parameters()},
                           {"params": loss_fn.parameters(), "lr": 1e-2}], lr=1e-4,
                          weight_decay=1e-4)
  x = torch.randn(batch, 3, args.size, args.size, device=device)
  y = torch.arange(batch, device=device) % 100

  def run():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()

  return _median_step(run, args.steps), device


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--bf16", action="store_true", help="jaxdml in bfloat16 compute")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  have_torch = importlib.util.find_spec("torch") is not None and not args.skip_torch
  if have_torch:
    import torch
    torch.set_num_threads(args.threads)
  print(f"{'batch':>6}{'jaxdml s/step':>15}{'img/s':>9}{'compile s':>11}"
        f"{'torch s/step':>14}{'img/s':>9}{'torch/jaxdml':>14}")
  for b in args.batch_sizes:
    t_j, c_j, kind, n = jax_step_time(b, args)
    line = f"{b:>6}{t_j:>15.3f}{b / t_j:>9.1f}{c_j:>11.1f}"
    if have_torch:
      t_t, device = torch_step_time(b, args)
      line += f"{t_t:>14.3f}{b / t_t:>9.1f}{t_t / t_j:>14.2f}"
    print(line, flush=True)
  print(f"jaxdml on {n} x {kind}" + (" (bf16)" if args.bf16 else "") +
        (f"; torch on {device}" if have_torch else ""))


if __name__ == "__main__":
  main()
