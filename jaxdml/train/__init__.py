"""The training library: it takes objects (a model, an objective, an optimiser, a batch stream),
never a config.

  - `state`: the train state pytree and its initialisation;
  - `sharding`: the data-parallel mesh and the shardings of state and batches;
  - `step`: the jitted, sharded train step and the model seam it gives the objective;
  - `loop`: the loop (`train`): periodic evaluation, logging, checkpoints and resumption;
  - `optim`: optimiser parameter groups, schedules, frozen warm-up, clipping;
  - `checkpoint`, `metric_writers`, `plots`: orbax checkpoints, metrics.jsonl / TensorBoard,
    curves and retrieval grids;
  - `batches`, `evaluate`: in-memory batch streams; embedding a data set and scoring it.
"""

from jaxdml.train.loop import NonFiniteLossError, TrainingInterrupted, TrainResult, train
from jaxdml.train.optim import OptimizerSpec, make_optimizer
from jaxdml.train.sharding import make_mesh, put_batch
from jaxdml.train.state import TrainState, init_state
from jaxdml.train.step import make_train_step

_LAZY = {"Checkpointer": "checkpoint", "MetricsLogger": "metric_writers",
         "read_metrics": "metric_writers", "plot_curves": "plots", "retrieval_grid": "plots"}


def __getattr__(name):  # orbax, tensorboardX and matplotlib load on first use
  if name in _LAZY:
    import importlib  # noqa: PLC0415
    return getattr(importlib.import_module(f"jaxdml.train.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'jaxdml.train' has no attribute {name!r}")


__all__ = ["OptimizerSpec", "make_optimizer", "make_mesh", "put_batch", "TrainState",
           "init_state", "make_train_step", "NonFiniteLossError", "TrainingInterrupted",
           "TrainResult", "train", *_LAZY]
