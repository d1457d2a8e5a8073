"""Command line.

  jaxdml train [--config NAME|FILE] [flags] [--set path=value ...]  train + evaluate
  jaxdml train --list-configs                                        the configs found by name
  jaxdml eval --workdir DIR [--step N] [--log]                       evaluate a run's checkpoint
  jaxdml embed / index / search                                      use a trained model

A training run writes its config, checkpoints (every epoch and every 10 minutes by default),
metrics.jsonl, TensorBoard events, curves.png and retrieval.png to its work directory (default
runs/<config name>-<time>). Running the same command with `--workdir` of an interrupted run
resumes it from its newest readable checkpoint; a workdir holding a run of another config is
refused (`--restart` starts over there). Ctrl-C or SIGTERM saves a checkpoint and prints the
command that resumes.

Exit status: 0 done, 2 bad input (one line on stderr), 3 training diverged (NaN or infinite
values), 130 / 143 interrupted by SIGINT / SIGTERM (a checkpoint was saved).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
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

#: command-line flag -> (its type, its help text); the default is the config's
FLAG_HELP = {
    "loss": (str, "loss name, e.g. multi_similarity, contrastive, triplet, proxy_anchor, arcface"),
    "miner": (str, "batch_hard, semihard, multi_similarity, distance_weighted"),
    "epochs": (int, "passes over the training set"),
    "embedding_dim": (int, "embedding size"),
    "classes_per_batch": (int, "classes in a batch"),
    "per_class": (int, "images per class in a batch"),
    "learning_rate": (float, "base learning rate"),
    "seed": (int, "parameters, batches and keys"),
    "dataset": (str, "digit_pairs, glyphs, cub200, cars196, sop, inshop, image_folder, "
                "dyml_vehicle, dyml_animal, dyml_product"),
    "data_dir": (str, "TFDS data dir, or an image folder root with train/ and test/"),
    "manual_dir": (str, "manually downloaded archives (In-shop, DyML)"),
    "model": (str, "small_cnn, res_cnn, resnet18/34/50/101, bn_inception, vit_small_patch16, "
              "deit_small_patch16"),
    "pretrained": (str, "backbone weight file (.pth, .safetensors, .npz)"),
    "image_size": (int, "training crop size"),
    "num_devices": (int, "data-parallel devices, None = all"),
    "num_workers": (int, "input pipeline worker processes"),
}

EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def _version() -> str:
  from importlib import metadata  # noqa: PLC0415
  try:
    return metadata.version("jaxdml")
  except metadata.PackageNotFoundError:
    return "unknown (not installed)"


def _errors():
  import pydantic  # noqa: PLC0415
  return (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError,
          pydantic.ValidationError)


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


def check_output_path(path: str | None) -> None:
  """Creates the folder of an `--output` file and checks it can be written, before any work."""
  if not path:
    return
  target = pathlib.Path(path)
  if target.is_dir():
    raise IsADirectoryError(f"--output {path}: is a folder; give a file name, e.g. "
                            f"{target / 'metrics.json'}.")
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise NotADirectoryError(f"--output {path}: cannot create its folder ({e}).") from None
  if not os.access(target.parent, os.W_OK):
    raise PermissionError(f"--output {path}: its folder {target.parent} is not writable.")


def resume_command(argv: list[str], workdir: str) -> str:
  """The command that resumes the run of `argv` in `workdir` (`argv` with `--workdir` set)."""
  out, skip = [], False
  for i, a in enumerate(argv):
    if skip:
      skip = False
      continue
    if a in ("--workdir", "--restart", "--no-workdir") or a.startswith("--workdir="):
      skip = a == "--workdir" and i + 1 < len(argv)
      continue
    out.append(a)
  if not out or out[0] != "train":
    out = ["train", *out]
  return shlex.join(["jaxdml", *out, "--workdir", workdir])


def _train(args, argv: list[str]) -> int:
  from jaxdml.app.config import available_configs  # noqa: PLC0415
  if args.list_configs:
    found = available_configs()
    width = max(map(len, found)) + 2
    for name, description in found.items():
      print(name.ljust(width) + description)
    return 0
  from jaxdml.app.experiment import run  # noqa: PLC0415
  from jaxdml.train import NonFiniteLossError, TrainingInterrupted  # noqa: PLC0415
  config = None
  try:
    check_output_path(args.output)
    config = _config_from_args(args)
    result = run(config, progress=not args.no_progress, restart=args.restart)
  except NonFiniteLossError as e:
    print(f"training stopped: {e}", file=sys.stderr)
    return EXIT_DIVERGED
  except TrainingInterrupted as e:
    print(f"\n{e}", file=sys.stderr)
    if e.checkpoint_step is not None:
      print(f"resume with:\n  {resume_command(argv, config.loop.workdir)}", file=sys.stderr)
    return EXIT_SIGNAL.get(e.signal_name, 1)
  except (*_errors(), OSError) as e:
    print(f"error: {_message(e)}", file=sys.stderr)
    return EXIT_BAD_INPUT
  _write_output(args.output, result)
  return 0


def _write_output(path, result) -> None:
  if path:
    keys = ("metrics", "final", "train_seconds", "compile_seconds", "config", "resumed_from",
            "step")
    out = {k: result[k] for k in keys if k in result}
    pathlib.Path(path).write_text(json.dumps(out, indent=2))


def _eval(args) -> int:
  from jaxdml.app import config as cfg  # noqa: PLC0415
  from jaxdml.app.experiment import load_run_config  # noqa: PLC0415
  from jaxdml.app.inference import evaluate  # noqa: PLC0415
  try:
    check_output_path(args.output)
    config = cfg.apply_overrides(load_run_config(args.workdir), list(args.set or []))
    config = cfg.set_value(config, "loop.workdir", args.workdir)
    result = evaluate(config, step=args.step, log=args.log)
  except (*_errors(), OSError) as e:
    print(f"error: {_message(e)}", file=sys.stderr)
    return EXIT_BAD_INPUT
  _write_output(args.output, result)
  return 0


def _defaults() -> dict:
  """The default config's values by dotted path (for the help texts)."""
  from jaxdml.app.config import Config, to_dict  # noqa: PLC0415
  out = {}

  def rec(node, prefix):
    for key, value in node.items():
      path = f"{prefix}.{key}" if prefix else key
      if isinstance(value, dict) and key not in ("loss_kwargs", "miner_kwargs", "methods"):
        rec(value, path)
      else:
        out[path] = value

  rec(to_dict(Config()), "")
  return out


def build_parser() -> argparse.ArgumentParser:
  defaults = _defaults()

  def d(path: str) -> str:
    return f"(default: the config's; {defaults[path]!r} for digits)"

  parser = argparse.ArgumentParser(
      prog="jaxdml", description="Deep metric learning in JAX: train, evaluate, embed, search.",
      epilog="`jaxdml <command> --help` describes a command's options.")
  parser.add_argument("--version", action="version", version=f"jaxdml {_version()}")
  sub = parser.add_subparsers(dest="command", metavar="command")
  train = sub.add_parser(
      "train", help="train and evaluate (the digit-pairs benchmark by default)",
      description="Train and evaluate a run. Flags set config fields; --set sets any field.")
  train.add_argument("--config", default="digits",
                     help="a built-in config name (see --list-configs) or the path of a .py "
                     "file with get_config() (default: digits)")
  train.add_argument("--list-configs", action="store_true",
                     help="list the configs found by name, then exit")
  for dest, (kind, text) in FLAG_HELP.items():
    train.add_argument("--" + dest.replace("_", "-"), dest=dest, type=kind,
                       help=f"{text} {d(FLAGS[dest])}")
  train.add_argument("--workdir", help="run directory; resumed when it holds a checkpoint of "
                     "the same config (default: runs/<config name>-<time>)")
  train.add_argument("--restart", action="store_true",
                     help="start over in --workdir even if it holds a run of another config "
                     "(its files are moved to <workdir>/replaced-<time>/)")
  train.add_argument("--no-workdir", action="store_true",
                     help="write nothing (no checkpoints, logs or plots; nothing to resume)")
  train.add_argument("--distributed", action="store_true",
                     help="call jax.distributed.initialize() first (multi-host TPU/GPU)")
  train.add_argument("--set", action="append", metavar="PATH=VALUE",
                     help="override a config field by its dotted path, parsed against the "
                     "field's type, e.g. --set optim.learning_rate=3e-4, --set "
                     "objective.methods=das,hier, --set objective.hier.num_proxies=64, --set "
                     "objective.loss_kwargs.neg_margin=0.5 (repeatable; default: none)")
  train.add_argument("--output", help="also write metrics and timings as JSON to this file "
                     "(its folder is created; default: none)")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  ev = sub.add_parser("eval", help="evaluate a checkpoint of a run (writes nothing into it)",
                      description="Evaluate a checkpoint of a run directory. Nothing is written "
                      "into the run unless --log.")
  ev.add_argument("--workdir", required=True, help="the run directory")
  ev.add_argument("--step", type=int, help="the checkpoint step (default: the newest)")
  ev.add_argument("--log", action="store_true",
                  help="append the metrics to the run's metrics.jsonl at that step")
  ev.add_argument("--set", action="append", metavar="PATH=VALUE",
                  help="override config fields, e.g. data.data_dir, eval.batch_size (repeatable; "
                  "default: none)")
  ev.add_argument("--output", help="write the metrics as JSON to this file (default: none)")
  ev.add_argument("--distributed", action="store_true",
                  help="call jax.distributed.initialize() first")
  from jaxdml.app import inference_cli  # noqa: PLC0415
  inference_cli.add_commands(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 0
  if getattr(args, "distributed", False):
    import jax  # noqa: PLC0415
    jax.distributed.initialize()
  if args.command == "train":
    return _train(args, argv)
  if args.command == "eval":
    return _eval(args)
  return args.handler(args)


if __name__ == "__main__":
  sys.exit(main())
