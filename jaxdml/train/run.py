"""A whole run from a `TrainConfig`: data, model, objective, training, evaluation, report.

`run(config)` dispatches on `config.dataset`: the built-in digit-pairs benchmark (in memory, one
jitted call per epoch) or an image dataset through the grain pipeline. Both go through the same
trainer (`jaxdml.train.trainer.train`): sharded steps, checkpoints and resumption in
`config.workdir`, metrics logs and plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import numpy as np

from jaxdml.train import builders
from jaxdml.train.config import TrainConfig
from jaxdml.train.evaluate import Embedder, leave_one_out_metrics
from jaxdml.train.inputs import ArrayBatches, Stacked
from jaxdml.train.trainer import train

REPORT_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@10", "recall@20", "map@r",
               "r_precision", "nmi")


def format_table(rows: dict[str, dict[str, float]], keys=REPORT_KEYS) -> str:
  keys = [k for k in keys if any(k in r for r in rows.values())]
  width = max(len(n) for n in rows) + 2
  head = "model".ljust(width) + "".join(k.rjust(12) for k in keys)
  lines = [head, "-" * len(head)]
  for name, r in rows.items():
    lines.append(name.ljust(width) + "".join(f"{r.get(k, float('nan')):12.4f}" for k in keys))
  return "\n".join(lines)


def _say(verbose: bool) -> Callable[..., None]:
  return print if verbose else (lambda *a, **k: None)


def run(config: TrainConfig, *, progress: bool = True, verbose: bool = True,
        eval_only: bool = False) -> dict:
  """Trains and evaluates the run described by `config`; returns metrics and timings.

  With `config.workdir` set, the config is written to `workdir/config.json` and a run found there
  is resumed. `eval_only`: evaluate the newest checkpoint in `config.workdir` without training.
  """
  config.validate()
  if config.dataset == "digit_pairs":
    return run_digits(config, progress=progress, verbose=verbose, eval_only=eval_only)
  from jaxdml.train.run_images import run_images  # noqa: PLC0415 - needs the image pipeline
  return run_images(config, progress=progress, verbose=verbose, eval_only=eval_only)


def load_run_config(workdir: str | os.PathLike) -> TrainConfig:
  """The `TrainConfig` a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a jaxdml run directory?")
  with open(path) as f:
    raw = json.load(f)
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  for key in ("recall_ks", "lr_decay_epochs"):
    if key in raw:
      raw[key] = tuple(raw[key])
  return TrainConfig(**{k: v for k, v in raw.items() if k in fields})


def prepare_workdir(config: TrainConfig, eval_only: bool) -> int | None:
  """Writes config.json; for `eval_only` returns the newest checkpoint step (the run's length)."""
  if not config.workdir:
    if eval_only:
      raise ValueError("evaluation of a checkpoint needs config.workdir.")
    return None
  os.makedirs(config.workdir, exist_ok=True)
  if jax.process_index() == 0 and not eval_only:
    with open(os.path.join(config.workdir, "config.json"), "w") as f:
      json.dump(dataclasses.asdict(config), f, indent=2)
  if not eval_only:
    return None
  from jaxdml.train.checkpoint import Checkpointer  # noqa: PLC0415
  with Checkpointer(os.path.join(config.workdir, "checkpoints")) as ckpt:
    step = ckpt.latest_step()
  if step is None:
    raise ValueError(f"no checkpoint in {config.workdir} to evaluate.")
  return step


def train_from_config(config: TrainConfig, *, model, objective, tx, batches, total_steps: int,
                      sample, mesh, steps_per_epoch: int, eval_fn, progress: bool,
                      load_pretrained=None):
  """`trainer.train` with the run settings of `config` (checkpoints, evaluation, logging)."""
  k = getattr(batches, "steps_per_item", 1)
  every = lambda epochs: builders.epochs_to_steps(epochs, steps_per_epoch, k)
  return train(model=model, objective=objective, tx=tx, batches=batches,
               total_steps=total_steps, sample=sample, seed=config.seed, mesh=mesh,
               workdir=config.workdir, checkpoint_every=every(config.checkpoint_every_epochs),
               keep_checkpoints=config.keep_checkpoints, eval_fn=eval_fn,
               eval_every=every(config.eval_every_epochs), log_every=config.log_every,
               progress=progress, steps_per_epoch=steps_per_epoch,
               tensorboard=config.tensorboard, load_pretrained=load_pretrained)


def run_digits(config: TrainConfig, *, progress: bool = True, verbose: bool = True,
               eval_only: bool = False) -> dict:
  """Trains and evaluates on the digit-pairs benchmark (shared/design/digits_benchmark.md)."""
  from jaxdml.data import make_digit_pairs  # noqa: PLC0415
  config.validate()
  if config.model != "small_cnn":
    raise ValueError("the digit-pairs benchmark is defined with model='small_cnn'.")
  say = _say(verbose)
  data = make_digit_pairs(config.data_seed, digits_per_image=config.digits_per_image,
                          train_images_per_class=config.train_images_per_class,
                          test_images_per_class=config.test_images_per_class)
  classes, train_labels = np.unique(data.train_labels, return_inverse=True)
  train_labels = train_labels.astype(np.int32)
  mesh = builders.build_mesh(config)
  model, _ = builders.build_model(config)
  objective = builders.build_objective(config, len(classes))
  stack = config.steps_per_call is None
  batches = ArrayBatches(data.train_images, train_labels,
                         classes_per_batch=config.classes_per_batch, per_class=config.per_class,
                         seed=config.seed, stack_epoch=stack)
  steps_per_epoch = batches.steps_per_epoch
  if not stack and config.steps_per_call > 1:
    batches = Stacked(batches, config.steps_per_call)
  k = getattr(batches, "steps_per_item", 1)
  total = builders.epochs_to_steps(config.epochs, steps_per_epoch, k)
  total = prepare_workdir(config, eval_only) or total
  tx = builders.build_optimizer(config, steps_per_epoch)
  say(f"digit pairs: {len(data.train_images)} train images of {len(classes)} classes, "
      f"{len(data.test_images)} test images of {len(np.unique(data.test_labels))} unseen classes")
  say(f"objective {objective.name}" + (f" + miner {config.miner}" if config.miner else "") +
      f", {config.epochs} epochs of {steps_per_epoch} batches of "
      f"{config.classes_per_batch}x{config.per_class} on {mesh.size} device(s)")

  embedder = Embedder(model, mesh)
  ks = config.recall_ks
  rows = {}
  if config.eval_baselines and not eval_only:
    raw = data.test_images.reshape(len(data.test_images), -1)
    rows["raw pixels"] = leave_one_out_metrics(raw, data.test_labels, ks=ks)
    variables = dict(model.init(jax.random.PRNGKey(config.seed), data.test_images[:2]))
    params = {"model": variables.pop("params")}
    rows["untrained"] = leave_one_out_metrics(
        embedder.arrays(params, variables, data.test_images), data.test_labels, ks=ks,
        **builders.eval_similarity(config))

  def eval_fn(state):
    emb = embedder.arrays(state.params, state.model_state, data.test_images)
    return leave_one_out_metrics(emb, data.test_labels, ks=ks, mesh=mesh,
                                 **builders.eval_similarity(config))

  result = train_from_config(config, model=model, objective=objective, tx=tx, batches=batches,
                             total_steps=total, sample=data.train_images[:2], mesh=mesh,
                             steps_per_epoch=steps_per_epoch, eval_fn=eval_fn, progress=progress)
  rows["trained"] = result.evals[-1][1]
  say("\nleave-one-out retrieval on the unseen test classes")
  say(format_table(rows))
  final_loss = f", final loss {result.losses[-1]:.4f}" if len(result.losses) else ""
  say(f"\ntraining time {result.seconds:.1f} s ({result.compile_seconds:.1f} s of it "
      f"compiling){final_loss}")
  if config.workdir and jax.process_index() == 0:
    from jaxdml.train.run_images import save_retrieval_grid  # noqa: PLC0415
    emb = embedder.arrays(result.state.params, result.state.model_state, data.test_images)
    gray = np.clip(data.test_images * 255, 0, 255).astype(np.uint8)
    image = lambda i: np.repeat(gray[i][..., None], 3, -1)
    save_retrieval_grid(os.path.join(config.workdir, "retrieval.png"), emb, data.test_labels,
                        emb, data.test_labels, image, image, same_set=True,
                        **builders.eval_similarity(config))
    say(f"checkpoints, metrics.jsonl, TensorBoard events and curves.png in "
        f"{os.path.abspath(config.workdir)}")
  return {"metrics": rows, "train_seconds": result.seconds,
          "compile_seconds": result.compile_seconds, "losses": result.losses,
          "state": result.state, "evals": result.evals, "resumed_from": result.resumed_from,
          "config": dataclasses.asdict(config)}
