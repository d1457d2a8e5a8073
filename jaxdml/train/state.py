"""The train state: everything a run needs to continue, as one pytree of arrays."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxdml.train.sharding import replicated

Array = jax.Array


class TrainState(NamedTuple):
  """Everything a run needs to continue: a pytree of arrays (checkpointed as a whole).

  Attributes:
    params: `{"model": model params, "loss": loss params (proxies, learnable margins)}`.
    model_state: the model's mutable collections, e.g. `{"batch_stats": ...}` ({} if none).
    loss_state: the objective's state (`objective.init_state()`, e.g. DAS's memory; {} if none).
    opt_state: optimiser state.
    step: number of updates applied.
    key: PRNG key (raw uint32 key data) for the loss, miners and dropout.
    bad_step: -1, or the step whose loss was not finite (the state is frozen from there).
  """

  params: Any
  model_state: Any
  loss_state: Any
  opt_state: Any
  step: Array
  key: Array
  bad_step: Array


def model_variables(params: Any, model_state: Any) -> dict:
  return {"params": params["model"], **model_state}


def init_state(key: Array, model: nn.Module, objective, sample: Array,
               tx: optax.GradientTransformation, mesh: Mesh | None = None,
               load_pretrained: Callable[[Any], Any] | None = None) -> TrainState:
  """A fresh train state (replicated over `mesh` when given).

  Args:
    key: PRNG key; split into model init, loss init and the run's key.
    model: Flax module called as `model.apply(variables, x, train=...)`.
    objective: `jaxdml.objectives.Objective`.
    sample: a small input batch (its shape sets the parameter shapes).
    tx: the optimiser.
    mesh: replicate the state over this mesh.
    load_pretrained: `variables -> variables`, e.g. putting imported weights into the backbone;
      applied on the host before the optimiser state is made.
  """
  k_model, k_loss, k_run = jax.random.split(key, 3)
  variables = jax.jit(lambda s: model.init({"params": k_model, "dropout": k_model}, s,
                                           train=False))(sample)
  if load_pretrained is not None:
    variables = load_pretrained(variables)
  variables = dict(variables)
  params = {"model": variables.pop("params"), "loss": jax.jit(objective.init)(k_loss)}
  state = TrainState(params, variables, jax.jit(objective.init_state)(),
                     jax.jit(tx.init)(params), jnp.zeros((), jnp.int32), k_run,
                     jnp.full((), -1, jnp.int32))
  if mesh is not None:
    state = jax.device_put(state, replicated(mesh))
  return state
