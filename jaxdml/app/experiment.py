"""A whole run from a `Config`: the task's data, the model, objective and optimiser, training,
evaluation and the report.

`run(config)` builds a task (`digit_pairs` for the built-in benchmark, `image_datasets` for the
others) and trains through the training library (`jaxdml.train.loop.train`): sharded steps,
checkpoints and resumption in `config.loop.workdir`, metrics logs and plots.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax

from jaxdml.app import build
from jaxdml.app.config import Config, ConfigError, from_dict, to_dict
from jaxdml.app.tasks import Task
from jaxdml.train.evaluate import Embedder
from jaxdml.train.loop import train

REPORT_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@10", "recall@20", "map@r",
               "r_precision", "nmi")
CONFIG_FILE = "config.json"


def format_table(rows: dict[str, dict[str, float]], keys=REPORT_KEYS) -> str:
  """The report table: one row per model (or level), the metrics of `keys` it has."""
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
  if config.data.dataset == "digit_pairs":
    from jaxdml.app.digit_pairs import make_task as make  # noqa: PLC0415
  else:
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


def prepare_workdir(config: Config, eval_only: bool) -> int | None:
  """Writes config.json; for `eval_only` returns the newest checkpoint step (the run's length)."""
  workdir = config.loop.workdir
  if not workdir:
    if eval_only:
      raise ValueError("evaluation of a checkpoint needs loop.workdir.")
    return None
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0 and not eval_only:
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      json.dump(to_dict(config), f, indent=2)
  if not eval_only:
    return None
  from jaxdml.train.checkpoint import Checkpointer  # noqa: PLC0415
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    step = ckpt.latest_step()
  if step is None:
    raise ValueError(f"no checkpoint in {workdir} to evaluate.")
  return step


def run(config: Config, *, progress: bool = True, verbose: bool = True,
        eval_only: bool = False) -> dict:
  """Trains and evaluates the run described by `config`; returns metrics and timings.

  With `config.loop.workdir` set, the config is written to `workdir/config.json` and a run found
  there is resumed. `eval_only`: evaluate the newest checkpoint in the workdir without training.

  Returns:
    {"metrics": the report's rows ({"trained": {...}} and the baselines, or one row per label
    level), "final": the last evaluation, "train_seconds", "compile_seconds", "losses",
    "state", "evals", "resumed_from", "config": the config as plain data}.
  """
  say = _say(verbose)
  loop = config.loop
  mesh = build.build_mesh(config)
  model, load_pretrained = build.build_model(config)
  task = make_task(config, mesh)
  objective = build.build_objective(config, task.num_classes)
  k = int(getattr(task.batches, "steps_per_item", 1))
  total = build.epochs_to_steps(loop.epochs, task.steps_per_epoch, k)
  total = prepare_workdir(config, eval_only) or total
  tx = build.build_optimizer(config, task.steps_per_epoch, objective)
  say(task.summary)
  miner = f" + miner {config.objective.miner}" if config.objective.miner else ""
  say(f"objective {objective.name}{miner}, {loop.epochs} epochs of {task.steps_per_epoch} "
      f"batches of {config.data.classes_per_batch}x{config.data.per_class} on {mesh.size} "
      "device(s)")

  embedder = Embedder(model, mesh)
  rows = {}
  if config.eval.baselines and not eval_only and task.baselines is not None:
    rows.update(task.baselines(embedder, model))
  every = lambda epochs: build.epochs_to_steps(epochs, task.steps_per_epoch, k)
  result = train(model=model, objective=objective, tx=tx, batches=task.batches,
                 total_steps=total, sample=task.sample, seed=config.seed, mesh=mesh,
                 workdir=loop.workdir, checkpoint_every=every(loop.checkpoint_every_epochs),
                 keep_checkpoints=loop.keep_checkpoints,
                 eval_fn=lambda state: task.evaluate(embedder, state),
                 eval_every=every(loop.eval_every_epochs), log_every=loop.log_every,
                 progress=progress, steps_per_epoch=task.steps_per_epoch,
                 tensorboard=loop.tensorboard, load_pretrained=load_pretrained)
  final = result.evals[-1][1]
  rows.update(task.rows(final))
  say("\nretrieval on the test classes")
  say(format_table(rows))
  final_loss = f", final loss {result.losses[-1]:.4f}" if len(result.losses) else ""
  say(f"\ntraining time {result.seconds:.1f} s ({result.compile_seconds:.1f} s of it "
      f"compiling){final_loss}")
  if loop.workdir and jax.process_index() == 0 and task.save_retrieval is not None:
    task.save_retrieval(os.path.join(loop.workdir, "retrieval.png"), embedder, result.state)
    say(f"checkpoints, metrics.jsonl, TensorBoard events, curves.png and retrieval.png in "
        f"{os.path.abspath(loop.workdir)}")
  return {"metrics": rows, "final": final, "train_seconds": result.seconds,
          "compile_seconds": result.compile_seconds, "losses": result.losses,
          "state": result.state, "evals": result.evals, "resumed_from": result.resumed_from,
          "config": to_dict(config)}
