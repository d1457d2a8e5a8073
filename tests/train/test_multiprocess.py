"""Two JAX processes (2 CPU devices each, gloo collectives) train and embed like one process.

This is the multi-host path of `jaxdml train --distributed`: `jax.distributed.initialize`, each
process handing its share of the global batch to `put_batch`, a replicated state, and the
evaluation embedder in which every process contributes its share of an eval batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import json, sys
    pid, count, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    import jax
    if count > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(f"localhost:{port}", num_processes=count, process_id=pid)
    import flax.linen as nn
    import jax.numpy as jnp
    import numpy as np
    from jaxdml.objectives import core
    from jaxdml.train import OptimizerSpec, init_state, make_mesh, make_optimizer, put_batch
    from jaxdml.train.evaluate import Embedder
    from jaxdml.train.step import make_train_step

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, *, train=False):
        return nn.Dense(8)(nn.relu(nn.Dense(16)(x)))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 10)).astype(np.float32)  # 2 steps of a global batch of 16
    y = np.tile(np.repeat(np.arange(4), 4), (2, 1)).astype(np.int32)
    obj = core("multi_similarity", num_classes=4, dim=8)
    tx = make_optimizer(OptimizerSpec(learning_rate=1e-2))
    mesh = make_mesh()
    state = init_state(jax.random.PRNGKey(0), Net(), obj, jnp.asarray(x[0, :2]), tx, mesh)
    step = make_train_step(Net(), obj, tx, mesh=mesh)
    share = 16 // count
    losses = []
    for s in range(2):
      part = slice(pid * share, (pid + 1) * share)
      state, m = step(state, put_batch({"image": x[s, part], "label": y[s, part]}, mesh))
      losses.append(float(np.asarray(m["loss"].addressable_data(0))))
    kernel = np.asarray(state.params["model"]["Dense_0"]["kernel"].addressable_data(0))
    emb = Embedder(Net(), mesh)(state.params, state.model_state, x[0, :8])
    print("RESULT" + json.dumps({"devices": len(jax.devices()), "losses": losses,
                                 "kernel": kernel.tolist(), "emb": emb.tolist()}))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _result(out: str) -> dict:
  return json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT")][-1][6:])


def test_two_processes_match_one(tmp_path):
  base = dict(os.environ, JAX_PLATFORMS="cpu")
  two = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  four = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), "2", port], env=two,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  single = subprocess.run([sys.executable, "-c", WORKER, "0", "1", port], env=four,
                          capture_output=True, text=True, timeout=300)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  ref = _result(single.stdout)
  assert ref["devices"] == 4
  for out, _ in outs:
    r = _result(out)
    assert r["devices"] == 4  # 2 processes x 2 devices form one mesh
    assert max(abs(a - b) for a, b in zip(r["losses"], ref["losses"], strict=True)) < 1e-5
    diff = max(abs(a - b) for ra, rb in zip(r["kernel"], ref["kernel"], strict=True)
               for a, b in zip(ra, rb, strict=True))
    assert diff < 1e-5
    ediff = max(abs(a - b) for ra, rb in zip(r["emb"], ref["emb"], strict=True)
                for a, b in zip(ra, rb, strict=True))
    assert ediff < 1e-5  # each process embedded its share; all got the whole batch back
