"""Command line.

  jaxdml train [--config FILE|NAME] [flags] [--set path=value ...]  train + evaluate
  jaxdml eval --workdir DIR                                          evaluate a run's checkpoint

A training run writes its config, checkpoints, metrics.jsonl, TensorBoard events, curves.png and
retrieval.png to its work directory (default runs/<config name>-<time>); running the same command
with `--workdir` of an interrupted run resumes it from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

#: command-line flag -> the config field it sets
FLAGS = {"loss": "objective.loss", "miner": "objective.miner", "epochs": "loop.epochs",
         "embedding_dim": "model.embedding_dim", "classes_per_batch": "data.classes_per_batch",
         "per_class": "data.per_class", "seed": "seed", "learning_rate": "optim.learning_rate",
         "dataset": "data.dataset", "data_dir": "data.data_dir", "manual_dir": "data.manual_dir",
         "model": "model.name", "pretrained": "model.pretrained", "image_size": "data.image_size",
         "num_devices": "loop.num_devices", "num_workers": "data.num_workers",
         "workdir": "loop.workdir"}


def _errors():
  import pydantic  # noqa: PLC0415
  return (ValueError, TypeError, FileNotFoundError, pydantic.ValidationError)


def _message(e: Exception) -> str:
  import pydantic  # noqa: PLC0415
  if isinstance(e, pydantic.ValidationError):
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]
  return str(e)


def _config_from_args(args):
  from jaxdml.app import config as cfg  # noqa: PLC0415
  config = cfg.load(args.config)
  if args.loss is not None and args.loss != config.objective.loss:
    # the config's loss hyperparameters belong to its own loss; start the new one from its
    # defaults (a --set objective.loss_kwargs... below still applies)
    config = cfg.set_value(config, "objective.loss_kwargs", {})
  flags = {path: getattr(args, flag) for flag, path in FLAGS.items()
           if getattr(args, flag) is not None}
  config = cfg.apply_overrides(config, list(args.set or []), values=flags)
  if config.loop.workdir is None and not args.no_workdir:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = cfg.set_value(config, "loop.workdir", f"runs/{config.name}-{stamp}")
  return config


def _train(args) -> int:
  from jaxdml.app.experiment import run  # noqa: PLC0415
  from jaxdml.train import NonFiniteLossError  # noqa: PLC0415
  try:
    config = _config_from_args(args)
    result = run(config, progress=not args.no_progress)
  except NonFiniteLossError as e:
    print(f"training stopped: {e}", file=sys.stderr)
    return 3
  except _errors() as e:
    print(f"error: {_message(e)}", file=sys.stderr)
    return 2
  _write_output(args.output, result)
  return 0


def _write_output(path, result) -> None:
  if path:
    out = {"metrics": result["metrics"], "final": result["final"],
           "train_seconds": result["train_seconds"],
           "compile_seconds": result["compile_seconds"], "config": result["config"],
           "resumed_from": result["resumed_from"]}
    pathlib.Path(path).write_text(json.dumps(out, indent=2))


def _eval(args) -> int:
  from jaxdml.app import config as cfg  # noqa: PLC0415
  from jaxdml.app.experiment import load_run_config, run  # noqa: PLC0415
  try:
    config = cfg.apply_overrides(load_run_config(args.workdir), list(args.set or []))
    config = cfg.set_value(config, "loop.workdir", args.workdir)
    result = run(config, progress=False, eval_only=True)
  except _errors() as e:
    print(f"error: {_message(e)}", file=sys.stderr)
    return 2
  _write_output(args.output, result)
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="jaxdml", description="Deep metric learning in JAX.")
  sub = parser.add_subparsers(dest="command")
  train = sub.add_parser("train", help="train and evaluate (default: the digit-pairs benchmark)")
  train.add_argument("--config", default=None,
                     help="config file or name in experiments/ (default: digits)")
  train.add_argument("--loss", help="loss name, e.g. multi_similarity, contrastive, triplet, "
                     "proxy_anchor, arcface")
  train.add_argument("--miner", help="batch_hard, semihard, multi_similarity, distance_weighted")
  train.add_argument("--epochs", type=int)
  train.add_argument("--embedding-dim", dest="embedding_dim", type=int)
  train.add_argument("--classes-per-batch", dest="classes_per_batch", type=int)
  train.add_argument("--per-class", dest="per_class", type=int)
  train.add_argument("--learning-rate", dest="learning_rate", type=float)
  train.add_argument("--seed", type=int)
  train.add_argument("--dataset", help="digit_pairs, cub200, cars196, sop, inshop, image_folder, "
                     "dyml_vehicle, dyml_animal, dyml_product")
  train.add_argument("--data-dir", dest="data_dir", help="TFDS data dir, or an image folder "
                     "root with train/ and test/")
  train.add_argument("--manual-dir", dest="manual_dir",
                     help="manually downloaded archives (In-shop, DyML)")
  train.add_argument("--model", help="small_cnn, resnet18/34/50/101, bn_inception, "
                     "vit_small_patch16, deit_small_patch16")
  train.add_argument("--pretrained", help="backbone weight file (.pth, .safetensors, .npz)")
  train.add_argument("--image-size", dest="image_size", type=int)
  train.add_argument("--num-devices", dest="num_devices", type=int)
  train.add_argument("--num-workers", dest="num_workers", type=int)
  train.add_argument("--workdir", help="run directory (resumed when it holds a checkpoint)")
  train.add_argument("--no-workdir", action="store_true",
                     help="write nothing (no checkpoints, logs or plots)")
  train.add_argument("--distributed", action="store_true",
                     help="call jax.distributed.initialize() first (multi-host TPU/GPU)")
  train.add_argument("--set", action="append", metavar="PATH=VALUE",
                     help="override a config field by its dotted path, parsed against the "
                     "field's type, e.g. --set optim.learning_rate=3e-4, --set "
                     "objective.methods=das,hier, --set objective.hier.num_proxies=64, --set "
                     "objective.loss_kwargs.neg_margin=0.5")
  train.add_argument("--output", help="write metrics and timings as JSON to this file")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  ev = sub.add_parser("eval", help="evaluate the newest checkpoint of a run directory")
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--set", action="append", metavar="PATH=VALUE",
                  help="override config fields (e.g. data.data_dir, eval.batch_size)")
  ev.add_argument("--output", help="write metrics as JSON to this file")
  ev.add_argument("--distributed", action="store_true")
  args = parser.parse_args(argv)
  if args.command is None:
    args = parser.parse_args(["train"] + (argv or []))
  if getattr(args, "distributed", False):
    import jax
    jax.distributed.initialize()
  if args.command == "train":
    if args.config is None:
      args.config = "digits"
    return _train(args)
  if args.command == "eval":
    return _eval(args)
  parser.print_help()
  return 1


if __name__ == "__main__":
  sys.exit(main())
