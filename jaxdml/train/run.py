"""The digit-pairs run: data, model, objective, training, evaluation, report."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdml.data import make_digit_pairs
from jaxdml.models import SmallCNN
from jaxdml.train import loop
from jaxdml.train.config import TrainConfig
from jaxdml.train.objectives import make_objective

REPORT_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")


def format_table(rows: dict[str, dict[str, float]], keys=REPORT_KEYS) -> str:
  keys = [k for k in keys if any(k in r for r in rows.values())]
  width = max(len(n) for n in rows) + 2
  head = "model".ljust(width) + "".join(k.rjust(12) for k in keys)
  lines = [head, "-" * len(head)]
  for name, r in rows.items():
    lines.append(name.ljust(width) + "".join(f"{r.get(k, float('nan')):12.4f}" for k in keys))
  return "\n".join(lines)


def run_digits(config: TrainConfig, *, progress: bool = True, verbose: bool = True) -> dict:
  """Trains and evaluates on the digit-pairs benchmark; returns metrics and timings."""
  config.validate()
  data = make_digit_pairs(config.data_seed, digits_per_image=config.digits_per_image,
                          train_images_per_class=config.train_images_per_class,
                          test_images_per_class=config.test_images_per_class)
  classes, train_labels = np.unique(data.train_labels, return_inverse=True)
  train_labels = train_labels.astype(np.int32)
  model = SmallCNN(embedding_dim=config.embedding_dim, conv_impl=config.conv_impl)
  objective = make_objective(config.loss, num_classes=len(classes), dim=config.embedding_dim,
                             loss_kwargs=config.loss_kwargs, miner=config.miner,
                             miner_kwargs=config.miner_kwargs)
  tx = loop.make_optimizer(config.learning_rate, config.weight_decay, config.loss_param_lr)
  say = print if verbose else (lambda *a, **k: None)
  say(f"digit pairs: {len(data.train_images)} train images of {len(classes)} classes, "
      f"{len(data.test_images)} test images of {len(np.unique(data.test_labels))} unseen classes")
  batches = len(data.train_images) // (config.classes_per_batch * config.per_class)
  say(f"loss {objective.name}" + (f" + miner {config.miner}" if config.miner else "") +
      f", {config.epochs} epochs of {batches} batches of "
      f"{config.classes_per_batch}x{config.per_class}")

  rows = {}
  if config.eval_baselines:
    raw = data.test_images.reshape(len(data.test_images), -1)
    rows["raw pixels"] = loop.evaluate(raw, data.test_labels, ks=config.recall_ks)
    import jax
    init = model.init(jax.random.PRNGKey(config.seed), data.test_images[:2])
    rows["untrained"] = loop.evaluate(loop.embed(model, init, data.test_images),
                                      data.test_labels, ks=config.recall_ks)
  result = loop.fit(model, objective, data.train_images, train_labels, epochs=config.epochs,
                    classes_per_batch=config.classes_per_batch, per_class=config.per_class,
                    tx=tx, seed=config.seed, progress=progress)
  emb = loop.embed(model, result.state.params["model"], data.test_images)
  rows["trained"] = loop.evaluate(emb, data.test_labels, ks=config.recall_ks)
  say("\nleave-one-out retrieval on the unseen test classes")
  say(format_table(rows))
  say(f"\ntraining time {result.seconds:.1f} s ({result.compile_seconds:.1f} s of it compiling), "
      f"final loss {result.losses[-1]:.4f}")
  return {"metrics": rows, "train_seconds": result.seconds,
          "compile_seconds": result.compile_seconds, "losses": result.losses,
          "state": result.state, "config": dataclasses.asdict(config)}
