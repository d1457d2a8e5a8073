"""Command line: `jaxdml train [--config FILE|NAME] [overrides]`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

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


def _train(args) -> int:
  from jaxdml.train import NonFiniteLossError, run
  from jaxdml.train.objectives import ALIASES, names
  config = load_config(args.config)
  overrides = []
  if args.loss is not None and args.loss != config.loss:
    # the config's loss hyperparameters belong to its own loss; start the new one from its
    # defaults (a --set loss_kwargs=... below still applies)
    overrides.append("loss_kwargs={}")
  overrides += list(args.set or [])
  for flag in ("loss", "miner", "epochs", "embedding_dim", "classes_per_batch", "per_class",
               "seed", "learning_rate"):
    value = getattr(args, flag)
    if value is not None:
      overrides.append(f"{flag}={json.dumps(value)}")
  try:
    config = config.override(overrides)
    if config.loss not in names() and config.loss not in ALIASES:
      raise ValueError(f"unknown loss {config.loss!r}; choose from {names()}.")
    result = run(config, progress=not args.no_progress)
  except (ValueError, TypeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"training stopped: {e}", file=sys.stderr)
    return 3
  if args.output:
    out = {"metrics": result["metrics"], "train_seconds": result["train_seconds"],
           "compile_seconds": result["compile_seconds"], "config": result["config"]}
    pathlib.Path(args.output).write_text(json.dumps(out, indent=2))
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="jaxdml", description="Deep metric learning in JAX.")
  sub = parser.add_subparsers(dest="command")
  train = sub.add_parser("train", help="train and evaluate on the digit-pairs benchmark")
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
  train.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override any config field (JSON values), e.g. "
                     "--set 'loss_kwargs={\"margin\": 0.2}'")
  train.add_argument("--output", help="write metrics and timings as JSON to this file")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  if args.command is None:
    args = parser.parse_args(["train"] + (argv or []))
  if args.command == "train":
    if args.config is None:
      args.config = "digits"
    return _train(args)
  parser.print_help()
  return 1


if __name__ == "__main__":
  sys.exit(main())
