"""Training: objectives, the jitted epoch loop, and the digit-pairs run."""

from jaxdml.train.config import TrainConfig
from jaxdml.train.loop import NonFiniteLossError, TrainState, embed, evaluate, fit
from jaxdml.train.objectives import make_objective
from jaxdml.train.run import run_digits

__all__ = ["TrainConfig", "NonFiniteLossError", "TrainState", "embed", "evaluate", "fit",
           "make_objective", "run_digits"]
