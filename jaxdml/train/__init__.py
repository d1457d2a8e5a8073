"""Training: config, optimiser, sharded train step, checkpoints, the loop, logs and whole runs."""

from jaxdml.train.config import TrainConfig
from jaxdml.train.objectives import Objective, make_objective
from jaxdml.train.optim import OptimizerSpec, make_optimizer
from jaxdml.train.run import run, run_digits
from jaxdml.train.step import TrainState, init_state, make_mesh, make_train_step
from jaxdml.train.trainer import NonFiniteLossError, TrainResult, train

_LAZY = {"Checkpointer": "checkpoint", "MetricsLogger": "logging", "read_metrics": "logging",
         "plot_curves": "plots", "retrieval_grid": "plots"}


def __getattr__(name):  # orbax, tensorboardX and matplotlib load on first use
  if name in _LAZY:
    import importlib  # noqa: PLC0415
    return getattr(importlib.import_module(f"jaxdml.train.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'jaxdml.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "Objective", "make_objective", "OptimizerSpec", "make_optimizer", "run",
           "run_digits", "TrainState", "init_state", "make_mesh", "make_train_step",
           "NonFiniteLossError", "TrainResult", "train", *_LAZY]
