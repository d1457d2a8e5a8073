"""A training process killed with SIGKILL resumes from its newest checkpoint with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxdml.train.checkpoint import Checkpointer

ARGS = ["--no-progress", "--epochs", "3", "--embedding-dim", "32", "--set", "eval.baselines=false",
        "--set", "loop.checkpoint_every_epochs=1", "--set", "loop.keep_checkpoints=10", "--set",
        "loop.tensorboard=false"]


def _cli(workdir, out):
  return [sys.executable, "-m", "jaxdml.cli", "train", "--workdir", str(workdir), "--output",
          str(out), *ARGS]


def _final(workdir):
  with Checkpointer(workdir / "checkpoints") as ckpt:
    state, _ = ckpt.restore()  # the saved arrays, no model needed
    return ckpt.latest_step(), state


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  # the three runs compile the same programs: share them through JAX's persistent cache
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_cli(full_dir, tmp_path / "full.json"), env=env, check=True, timeout=600)

  proc = subprocess.Popen(_cli(killed_dir, tmp_path / "k.json"), env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpts = killed_dir / "checkpoints"
  while time.time() < deadline:  # wait for the first complete checkpoint, then kill
    done = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
    if done:
      break
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not (tmp_path / "k.json").exists()

  subprocess.run(_cli(killed_dir, tmp_path / "resumed.json"), env=env, check=True, timeout=600)
  resumed = json.loads((tmp_path / "resumed.json").read_text())
  full = json.loads((tmp_path / "full.json").read_text())
  assert resumed["resumed_from"] is not None and resumed["resumed_from"] < 3 * 31
  assert resumed["metrics"]["trained"] == full["metrics"]["trained"]
  (s1, a), (s2, b) = _final(full_dir), _final(killed_dir)
  assert s1 == s2 == 3 * 31
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
