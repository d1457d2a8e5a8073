"""The data-parallel train step on 8 host CPU devices gives the loss and update of 1 device.

The host device count must be set before JAX starts, so the comparison runs in a child
interpreter with XLA_FLAGS=--xla_force_host_platform_device_count=8 and reports JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from jaxdml.objectives import core
    from jaxdml.train import OptimizerSpec, init_state, make_mesh, make_optimizer, put_batch
    from jaxdml.train.step import make_train_step

    assert len(jax.devices()) == 8, jax.devices()

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, *, train=False):
        # no bias before batch norm: its true gradient is 0, and Adam would turn float noise of
        # either sign into a full-size step, differently on 1 and 8 devices
        h = nn.Dense(16, use_bias=False)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(8)(nn.relu(h))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 32, 10)).astype(np.float32)   # 3 steps of a 32-example batch
    y = np.tile(np.repeat(np.arange(8), 4), (3, 1)).astype(np.int32)
    out = {}
    for loss in ("multi_similarity", "proxy_anchor"):
      obj = core(loss, num_classes=8, dim=8)
      tx = make_optimizer(OptimizerSpec(learning_rate=1e-2))
      results = {}
      for n in (1, 8):
        mesh = make_mesh(n)
        state = init_state(jax.random.PRNGKey(0), Net(), obj, jnp.asarray(x[0, :2]), tx, mesh)
        step = make_train_step(Net(), obj, tx, mesh=mesh, steps_per_call=3)
        batch = put_batch({"image": x, "label": y}, mesh, stacked=True)
        shards = len(batch["image"].sharding.device_set)
        state, metrics = step(state, batch)
        results[n] = (np.asarray(metrics["loss"]), jax.tree.map(np.asarray, state.params),
                      jax.tree.map(np.asarray, state.model_state), shards)
      (l1, p1, s1, d1), (l8, p8, s8, d8) = results[1], results[8]
      diff = lambda a, b: max(float(np.max(np.abs(u - v)))
                              for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      moved = diff(p1, jax.tree.map(np.asarray, init_state(
          jax.random.PRNGKey(0), Net(), obj, jnp.asarray(x[0, :2]), tx).params))
      out[loss] = dict(loss_1=l1.tolist(), loss_8=l8.tolist(), params=diff(p1, p8),
                       stats=diff(s1, s8), moved=moved, devices=[d1, d8])
    print("RESULT" + json.dumps(out))
""")


def child_result():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_eight_devices_match_one():
  # one test (one child process): under xdist a module fixture would run once per worker
  results = child_result()
  for loss in ("multi_similarity", "proxy_anchor"):
    _check(results[loss])


def _check(r):
  assert r["devices"] == [1, 8]  # the batch really is split over 8 devices
  # the same loss at every step (the pair loss sees the global batch), the same update
  assert max(abs(a - b) for a, b in zip(r["loss_1"], r["loss_8"], strict=True)) < 1e-5
  assert r["moved"] > 1e-3  # training did change the parameters ...
  assert r["params"] < 1e-5  # ... identically on 1 and 8 devices
  assert r["stats"] < 1e-5  # batch-norm statistics over the global batch (synchronised)
