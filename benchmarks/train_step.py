"""Images per second of the ResNet-50 metric-learning train step, jaxdml against PyTorch.

The step of the standard recipe: 224 x 224 images, ResNet-50 (batch norm in train mode), avg+max
pooling, linear 512 embedding, Proxy-Anchor loss over 100 classes, AdamW with proxies at 100x.
jaxdml: `jaxdml.train.make_train_step` (one jitted call per step, data-parallel over all local
devices). PyTorch (where torch is installed): the same network (torchvision's layout), PML's
ProxyAnchorLoss, AdamW, `loss.backward(); opt.step()`, on CUDA when it is available (with
`cudnn.benchmark` and channels-last images there) and on the CPU otherwise.

Each precision in --dtypes runs on both sides: "fp32" is float32 at each framework's default
matmul and convolution precision; "bf16" is bfloat16 compute with float32 parameters (jaxdml:
the model's `dtype`; PyTorch: `torch.autocast`, with the loss on the float32 embeddings). Times
are medians over --steps steps after --warmup untimed ones; each step ends on
`jax.block_until_ready` or `torch.cuda.synchronize`. jaxdml's first call (compilation and one
step) is reported apart, as is PyTorch's first step.

    pip install -e ".[bench]" && python benchmarks/train_step.py --batch-sizes 16 32
    python benchmarks/train_step.py --batch-sizes 32 64 128 --dtypes bf16 fp32 --json out.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _median_step(fn, steps, warmup):
  """Median wall seconds of `fn()` over `steps` calls after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def jax_step_time(batch, dtype_name, args):
  """jaxdml: (median s/step, first-call s, device kind, number of devices)."""
  import jax
  import jax.numpy as jnp

  from jaxdml import models, objectives
  from jaxdml.train import OptimizerSpec, init_state, make_mesh, make_optimizer, put_batch
  from jaxdml.train.step import make_train_step

  dtype = jnp.bfloat16 if dtype_name == "bf16" else jnp.float32
  model = models.EmbeddingModel(backbone=models.resnet(args.depth, dtype=dtype),
                                pooling="avg+max", embedding_dim=512)
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

  return (_median_step(run, args.steps, args.warmup), compile_s, jax.devices()[0].device_kind,
          mesh.size)


def _torch_device(name):
  import torch
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return name


def torch_step_time(batch, dtype_name, args):
  """PyTorch + PML: (median s/step, first-step s, device description)."""
  import torch
  from pytorch_metric_learning import losses as P
  spec = importlib.util.spec_from_file_location("torch_reference",
                                                ROOT / "tests" / "models" / "torch_reference.py")
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  device = _torch_device(args.torch_device)
  cuda = device.startswith("cuda")
  torch.backends.cudnn.benchmark = cuda
  memory_format = torch.channels_last if cuda else torch.contiguous_format

  class Net(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = ref.torch_resnet(args.depth)
      self.backbone.fc = torch.nn.Identity()
      self.embedding = torch.nn.Linear(self.backbone.layer4[-1].conv1.in_channels, 512)

    def forward(self, x):
      b = self.backbone
      x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
      x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
      x = torch.nn.functional.adaptive_avg_pool2d(x, 1) + torch.nn.functional.adaptive_max_pool2d(
          x, 1)
      return self.embedding(x.flatten(1))

  torch.manual_seed(0)
  net = Net().to(device, memory_format=memory_format).train()
  loss_fn = P.ProxyAnchorLoss(100, 512).to(device)
  opt = torch.optim.AdamW([{"params": net.parameters()},
                           {"params": loss_fn.parameters(), "lr": 1e-2}], lr=1e-4,
                          weight_decay=1e-4)
  x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(
      memory_format=memory_format)
  y = torch.arange(batch, device=device) % 100
  autocast_type = "cuda" if cuda else "cpu"

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(autocast_type, dtype=torch.bfloat16, enabled=dtype_name == "bf16"):
      emb = net(x)
    loss = loss_fn(emb.float(), y)
    loss.backward()
    opt.step()
    if cuda:
      torch.cuda.synchronize()

  t = time.perf_counter()
  run()
  first_s = time.perf_counter() - t
  kind = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
  return _median_step(run, args.steps, args.warmup), first_s, f"{device} ({kind})"


def _write(path, record):
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
  parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                      help="precisions to run, each on both sides")
  parser.add_argument("--bf16", action="store_true", help="same as --dtypes bf16")
  parser.add_argument("--size", type=int, default=224, help="image side")
  parser.add_argument("--depth", type=int, default=50, help="ResNet depth")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--skip-jax", action="store_true")
  parser.add_argument("--torch-device", default="auto", help="auto (cuda if available), cpu, cuda")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
  parser.add_argument("--json", default=None, help="append one JSON record per result here")
  args = parser.parse_args()
  dtypes = ["bf16"] if args.bf16 else args.dtypes
  have_torch = importlib.util.find_spec("torch") is not None and not args.skip_torch
  if have_torch:
    import torch
    torch.set_num_threads(args.threads)
  print(f"{'dtype':>6}{'batch':>6}{'jaxdml s/step':>15}{'img/s':>9}{'compile s':>11}"
        f"{'torch s/step':>14}{'img/s':>9}{'first s':>9}{'torch/jaxdml':>14}", flush=True)
  case = f"ResNet-{args.depth} Proxy-Anchor step, {args.size}px"
  for dtype_name in dtypes:
    for b in args.batch_sizes:
      line, t_j = f"{dtype_name:>6}{b:>6}", None
      rec = {"part": "train_step", "case": f"{case}, batch {b}, {dtype_name}",
             "group": f"{dtype_name}-{b}"}
      if not args.skip_jax:
        try:  # one failing case (out of memory, say) must not stop the others
          t_j, c_j, kind, n = jax_step_time(b, dtype_name, args)
          line += f"{t_j:>15.3f}{b / t_j:>9.1f}{c_j:>11.1f}"
          _write(args.json, rec | {"impl": "jaxdml", "value": b / t_j, "unit": "images/s",
                                   "seconds": t_j, "first_call_s": c_j,
                                   "device": f"{n} x {kind}"})
        except Exception as e:  # noqa: BLE001
          line += f"{'FAILED':>35}"
          _write(args.json, rec | {"impl": "jaxdml", "skipped": _failed(e)})
      else:
        line += f"{'-':>15}{'-':>9}{'-':>11}"
      if have_torch:
        try:
          t_t, f_t, device = torch_step_time(b, dtype_name, args)
          ratio = f"{t_t / t_j:>14.2f}" if t_j else f"{'-':>14}"
          line += f"{t_t:>14.3f}{b / t_t:>9.1f}{f_t:>9.1f}{ratio}"
          _write(args.json, rec | {"impl": "PyTorch + PML", "value": b / t_t,
                                   "unit": "images/s", "seconds": t_t, "first_call_s": f_t,
                                   "device": device})
        except Exception as e:  # noqa: BLE001
          line += f"{'FAILED':>46}"
          _write(args.json, rec | {"impl": "PyTorch + PML", "skipped": _failed(e)})
      print(line, flush=True)
  print("ratio: torch s/step / jaxdml s/step (above 1: jaxdml is faster)")


def _failed(e: Exception) -> str:
  print(f"  {type(e).__name__}: {e}", flush=True)
  return f"FAILED: {type(e).__name__}: {e}"[:300]


if __name__ == "__main__":
  main()
