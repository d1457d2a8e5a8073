"""Command line.

  jaxdml train [--config FILE|NAME] [flags] [--set key=value ...]   train + evaluate
  jaxdml eval --workdir DIR                                          evaluate a run's checkpoint

A training run writes its config, checkpoints, metrics.jsonl, TensorBoard events, curves.png and
retrieval.png to its work directory (default runs/<config name>-<time>); running the same command
with `--workdir` of an interrupted run resumes it from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def load_config(spec: str | None):
  """Loads `get_config()` from a file path, or a name in experiments/ ("digits")."""
  from jaxdml.train import TrainConfig
  if spec is None:
    return TrainConfig()
  path = pathlib.Path(spec)
  if not path.suffix:
    path = CONFIG_DIR / f"{spec}.py"
  if not path.exists():
    raise SystemExit(f"config {spec!r} not found (looked for {path}).")
  module_spec = importlib.util.spec_from_file_location(f"jaxdml_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise SystemExit(f"{path} defines no get_config().")
  return module.get_config()


FLAGS = ("loss", "miner", "epochs", "embedding_dim", "classes_per_batch", "per_class", "seed",
         "learning_rate", "dataset", "data_dir", "manual_dir", "model", "pretrained",
         "image_size", "num_devices", "num_workers", "workdir")


def _train(args) -> int:
  from jaxdml.train import NonFiniteLossError, run
  config = load_config(args.config)
  overrides = []
  if args.loss is not None and args.loss != config.loss:
    # the config's loss hyperparameters belong to its own loss; start the new one from its
    # defaults (a --set loss_kwargs=... below still applies)
    overrides.append("loss_kwargs={}")
  overrides += list(args.set or [])
  for flag in FLAGS:
    value = getattr(args, flag)
    if value is not None:
      overrides.append(f"{flag}={json.dumps(value)}")
  try:
    config = config.override(overrides)
    if config.workdir is None and not args.no_workdir:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      config = config.override([f"workdir={json.dumps(f'runs/{config.name}-{stamp}')}"])
    result = run(config, progress=not args.no_progress)
  except (ValueError, TypeError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"training stopped: {e}", file=sys.stderr)
    return 3
  _write_output(args.output, result)
  return 0


def _write_output(path, result) -> None:
  if path:
    out = {"metrics": result["metrics"], "train_seconds": result["train_seconds"],
           "compile_seconds": result["compile_seconds"], "config": result["config"],
           "resumed_from": result["resumed_from"]}
    pathlib.Path(path).write_text(json.dumps(out, indent=2))


def _eval(args) -> int:
  from jaxdml.train import run
  from jaxdml.train.run import load_run_config
  try:
    config = load_run_config(args.workdir).override(list(args.set or []))
    config = config.override([f"workdir={json.dumps(args.workdir)}"])
    result = run(config, progress=False, eval_only=True)
  except (ValueError, TypeError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
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
  train.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config field (JSON values), e.g. "
                     "--set 'loss_kwargs={\"margin\": 0.2}'")
  train.add_argument("--output", help="write metrics and timings as JSON to this file")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  ev = sub.add_parser("eval", help="evaluate the newest checkpoint of a run directory")
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                  help="override config fields (e.g. data_dir, eval_batch_size)")
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
