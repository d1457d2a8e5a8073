"""A whole run from a `Config`: the task's data, the model, objective and optimiser, training,
evaluation and the report.

`run(config)` builds a task (`digit_pairs` and `glyphs` for the built-in benchmarks,
`image_datasets` for the others) and trains through the training library
(`jaxdml.train.loop.train`): sharded steps, checkpoints and resumption in `config.loop.workdir`,
metrics logs and plots.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Callable

import jax

from jaxdml.app import build, tasks
from jaxdml.app.config import Config, ConfigError, diff, from_dict, to_dict
from jaxdml.app.tasks import Task
from jaxdml.train.evaluate import Embedder
from jaxdml.train.loop import train

REPORT_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@10", "recall@20", "map@r",
               "r_precision", "nmi")
CONFIG_FILE = "config.json"


def format_table(rows: dict[str, dict[str, float]], keys=REPORT_KEYS) -> str:
  """The report table: one row per model (or level), the metrics of `keys` it has. Rows with
  none of `keys` (e.g. the landmark protocol's "easy/map", ...) follow in a table of their own
  metrics, in the order they first appear."""
  other = {n: r for n, r in rows.items() if not any(k in r for k in keys)}
  rows = {n: r for n, r in rows.items() if n not in other}
  parts = [_table(rows, keys)] if rows else []
  if other:
    parts.append(_table(other, list(dict.fromkeys(k for r in other.values() for k in r))))
  return "\n\n".join(parts)


def _table(rows: dict[str, dict[str, float]], keys) -> str:
  keys = [k for k in keys if any(k in r for r in rows.values())]
  width = max(len(n) for n in rows) + 2
  head = "model".ljust(width) + "".join(k.rjust(12) for k in keys)
  lines = [head, "-" * len(head)]
  for name, r in rows.items():
    lines.append(name.ljust(width) + "".join(f"{r.get(k, float('nan')):12.4f}" for k in keys))
  return "\n".join(lines)


def _say(verbose: bool) -> Callable[..., None]:
  return print if verbose else (lambda *a, **k: None)


def make_task(config: Config, mesh) -> Task:
  """The `Task` of `config`'s data set: a built-in benchmark (`jaxdml.app.tasks.BUILTIN`) or an
  image data set."""
  bench = tasks.builtin(config.data.dataset)
  if bench is not None:
    return bench.make_task(config, mesh)
  from jaxdml.app.image_datasets import make_task as make  # noqa: PLC0415 - needs grain
  return make(config, mesh)


def load_run_config(workdir: str | os.PathLike) -> Config:
  """The `Config` a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a jaxdml run directory?")
  with open(path) as f:
    raw = json.load(f)
  try:
    return from_dict(raw)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None


#: config fields that may differ between a run and the command resuming it: where things are
#: read from or written to, how often to log, save and evaluate, and how to evaluate. Everything
#: else (including loop.epochs, which sets the learning-rate schedule) must match.
RESUMABLE_CHANGES = ("loop.workdir", "loop.num_devices", "loop.log_every", "loop.tensorboard",
                     "loop.eval_every_epochs", "loop.checkpoint_every_epochs",
                     "loop.checkpoint_every_minutes", "loop.keep_checkpoints", "data.data_dir",
                     "data.manual_dir", "data.num_workers", "data.undecodable", "eval.")


class ConfigMismatchError(ValueError):
  """The workdir holds a run of another config; it is not resumed (nor overwritten)."""

  def __init__(self, message: str, fields: list[str]):
    super().__init__(message)
    self.fields = fields


def _resumable(path: str) -> bool:
  return any(path == f or (f.endswith(".") and path.startswith(f)) for f in RESUMABLE_CHANGES)


def _value_at(config: Config, path: str):
  node = to_dict(config)
  for part in path.split("."):
    if not isinstance(node, dict) or part not in node:
      return "<unset>"
    node = node[part]
  return node


def config_changes(saved: Config, config: Config) -> list[str]:
  """The fields in which `config` differs from the run `saved` in a way resuming cannot honour,
  as "path: saved -> new" lines."""
  return [f"{path}: {_value_at(saved, path)!r} -> {_value_at(config, path)!r}"
          for path in diff(saved, config) if not _resumable(path)]


def _has_checkpoints(workdir: str) -> bool:
  root = os.path.join(workdir, "checkpoints")
  return os.path.isdir(root) and any(name.isdigit() for name in os.listdir(root))


def _move_previous_run(workdir: str) -> str:
  """Moves a run's files in `workdir` into a new `workdir/replaced-<time>-<suffix>/`; returns
  that folder (earlier replaced runs stay where they are)."""
  target = tempfile.mkdtemp(prefix="replaced-" + time.strftime("%Y%m%d-%H%M%S-"), dir=workdir)
  for name in os.listdir(workdir):
    if not name.startswith("replaced-"):
      shutil.move(os.path.join(workdir, name), os.path.join(target, name))
  return target


def prepare_workdir(config: Config, *, restart: bool = False,
                    say: Callable[..., None] = print) -> None:
  """Checks that `config` may continue the run in its workdir, then writes config.json.

  A workdir that holds checkpoints of a differing config is refused with `ConfigMismatchError`
  listing the differing fields (`RESUMABLE_CHANGES` may differ); `restart` moves the previous
  run's files into `workdir/replaced-<time>/` and starts over.
  """
  workdir = config.loop.workdir
  if not workdir:
    return
  os.makedirs(workdir, exist_ok=True)
  saved_path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0 and (os.path.exists(saved_path) or _has_checkpoints(workdir)):
    if restart:
      say(f"--restart: the previous run moved to {_move_previous_run(workdir)}")
    elif _has_checkpoints(workdir):
      try:
        changes = config_changes(load_run_config(workdir), config)
      except (ConfigError, FileNotFoundError, ValueError) as e:
        raise ConfigMismatchError(
            f"{workdir} holds checkpoints but its config cannot be read ({e}); pass --restart "
            "to start over there, or choose another --workdir.", ["<unreadable>"]) from None
      if changes:
        raise ConfigMismatchError(
            f"{workdir} holds a run of another config, so it is not resumed. Differing fields:"
            + "".join(f"\n  {c}" for c in changes) + "\nRun the same config to resume it, pass "
            "--restart to start over in this workdir (the old run is moved aside), or choose "
            "another --workdir.", changes)
  if jax.process_index() == 0:
    with open(saved_path, "w") as f:
      json.dump(to_dict(config), f, indent=2)


def run(config: Config, *, progress: bool = True, verbose: bool = True,
        restart: bool = False, handle_signals: bool = True) -> dict:
  """Trains and evaluates the run described by `config`; returns metrics and timings.

  With `config.loop.workdir` set, the config is written to `workdir/config.json` and a run of the
  same config found there is resumed; a run of another config is refused
  (`ConfigMismatchError`) unless `restart`.

  Returns:
    {"metrics": the report's rows ({"trained": {...}} and the baselines, or one row per label
    level), "final": the last evaluation, "train_seconds", "compile_seconds", "losses",
    "state", "evals", "resumed_from", "step", "config": the config as plain data}.

  Raises:
    ConfigMismatchError, jaxdml.train.NonFiniteLossError, jaxdml.train.TrainingInterrupted.
  """
  say = _say(verbose)
  loop = config.loop
  prepare_workdir(config, restart=restart, say=say)
  mesh = build.build_mesh(config)
  model, load_pretrained = build.build_model(config)
  task = make_task(config, mesh)
  objective = build.build_objective(config, task.num_classes)
  k = int(getattr(task.batches, "steps_per_item", 1))
  total = build.epochs_to_steps(loop.epochs, task.steps_per_epoch, k)
  tx = build.build_optimizer(config, task.steps_per_epoch, objective)
  say(task.summary)
  miner = f" + miner {config.objective.miner}" if config.objective.miner else ""
  batch = (f"{config.data.batch_size} random images" if config.data.sampler == "random" else
           f"{config.data.classes_per_batch}x{config.data.per_class}")
  say(f"objective {objective.name}{miner}, {loop.epochs} epochs of {task.steps_per_epoch} "
      f"batches of {batch} on {mesh.size} device(s)")

  embedder = Embedder(model, mesh)
  rows = {}
  if config.eval.baselines and task.baselines is not None:
    rows.update(task.baselines(embedder, model))
  every = lambda epochs: build.epochs_to_steps(epochs, task.steps_per_epoch, k)
  minutes = loop.checkpoint_every_minutes
  result = train(model=model, objective=objective, tx=tx, batches=task.batches,
                 total_steps=total, sample=task.sample, seed=config.seed, mesh=mesh,
                 workdir=loop.workdir, checkpoint_every=every(loop.checkpoint_every_epochs),
                 checkpoint_every_seconds=None if minutes is None else 60.0 * minutes,
                 keep_checkpoints=loop.keep_checkpoints,
                 eval_fn=lambda state: task.evaluate(embedder, state),
                 eval_every=every(loop.eval_every_epochs), log_every=loop.log_every,
                 progress=progress, steps_per_epoch=task.steps_per_epoch,
                 tensorboard=loop.tensorboard, load_pretrained=load_pretrained,
                 handle_signals=handle_signals, say=say)
  final = result.evals[-1][1]
  step = int(result.state.step)
  rows.update(task.rows(final))
  say(f"\nretrieval on the test classes (step {step})")
  say(format_table(rows))
  final_loss = f", final loss {result.losses[-1]:.4f}" if len(result.losses) else ""
  start = result.resumed_from or 0
  if step > start:
    say(f"\ntraining time {result.seconds:.1f} s for steps {start}-{step} "
        f"({result.compile_seconds:.1f} s of it compiling){final_loss}")
  else:
    say(f"\nnothing to train: the run in {loop.workdir} had finished all {step} steps")
  if loop.workdir and jax.process_index() == 0 and task.save_retrieval is not None:
    task.save_retrieval(os.path.join(loop.workdir, "retrieval.png"), embedder, result.state)
    say(f"checkpoints, metrics.jsonl, TensorBoard events, curves.png and retrieval.png in "
        f"{os.path.abspath(loop.workdir)}")
  return {"metrics": rows, "final": final, "train_seconds": result.seconds,
          "compile_seconds": result.compile_seconds, "losses": result.losses,
          "state": result.state, "evals": result.evals, "resumed_from": result.resumed_from,
          "step": step, "config": to_dict(config)}
