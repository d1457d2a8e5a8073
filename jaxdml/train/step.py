"""The train state pytree and the jitted, data-parallel train step.

Data parallelism follows the jit-with-shardings model: the global batch is one array sharded over
the mesh axis "data", parameters and state are replicated, and XLA inserts the collectives
(gradient all-reduce, the all-gather that lets a pair loss compare every example with every other
one). The loss therefore sees the *global* batch, as in the literature, and 8 devices compute the
same loss and update as 1 (up to float summation order). The mesh uses `AxisType.Auto` axes so
that losses written for one device run unchanged on a sharded batch. Batch-norm statistics are
computed over the global batch too (synchronised batch norm).

Several steps can run in one call (`steps_per_call`, a `lax.scan` over stacked batches): on a CPU
with small models this removes the per-step dispatch cost; on accelerators it plays the role of
host-side training loops.

A step whose loss is not finite changes nothing and records its step number in `bad_step`; every
later step then leaves the state as it is. The host loop checks `bad_step` when it logs or saves
and stops with a clear message, so a non-finite loss never trains on and never reaches a
checkpoint, without a device-to-host sync on every step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdml.methods import metrix

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


def make_mesh(num_devices: int | None = None, axis: str = "data") -> Mesh:
  """A 1-D data-parallel mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
  return jax.make_mesh((n,), (axis,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of a batch: leading (batch) axis over "data"; `stacked`: [steps, batch, ...]."""
  axis = mesh.axis_names[0]
  return NamedSharding(mesh, P(None, axis) if stacked else P(axis))


def model_variables(params: Any, model_state: Any) -> dict:
  return {"params": params["model"], **model_state}


def init_state(key: Array, model: nn.Module, objective, sample: Array,
               tx: optax.GradientTransformation, mesh: Mesh | None = None,
               load_pretrained: Callable[[Any], Any] | None = None) -> TrainState:
  """A fresh train state (replicated over `mesh` when given).

  Args:
    key: PRNG key; split into model init, loss init and the run's key.
    model: Flax module called as `model.apply(variables, x, train=...)`.
    objective: `jaxdml.train.objectives.Objective`.
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


def make_train_step(model: nn.Module, objective, tx: optax.GradientTransformation, *,
                    mesh: Mesh, steps_per_call: int = 1, donate: bool = True
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns the jitted `step(state, batch) -> (state, metrics)`.

  Args:
    model: Flax module; `apply(variables, images, train=True, mutable=[...], rngs=...)`.
    objective: `jaxdml.train.objectives.Objective`: `apply(loss_params, loss_state, embeddings,
      labels, key, embed_mixed)` gives the loss, the new loss state and diagnostics. When
      `objective.mixup` is "input" or "feature" the step gives it `embed_mixed(pairs)`, the
      embeddings of mixed images or mixed feature maps (`model.features` /
      `model.embed_features`); every forward pass of the step threads the model's mutable
      state (batch-norm statistics) on to the next.
    tx: optimiser over `state.params`.
    mesh: the data-parallel mesh (see `make_mesh`).
    steps_per_call: > 1: the batch arrays are stacked [steps_per_call, B, ...] and the call runs
      that many steps in a `lax.scan`.
    donate: donate the input state's buffers (the caller must not reuse `state`).

  Returns:
    `step`; metrics are `{"loss": [steps_per_call] or scalar, "grad_norm": ..., **aux}` (device
    arrays; `aux` are the objective's diagnostics, e.g. "hier_loss").
  """
  mixup = getattr(objective, "mixup", None)
  if mixup not in (None, "embedding", "input", "feature"):
    raise ValueError(f"objective.mixup must be None, 'embedding', 'input' or 'feature', got "
                     f"{mixup!r}.")

  def loss_fn(params, model_state, loss_state, images, labels, key):
    k_drop, k_loss = jax.random.split(key)
    names = list(model_state.keys())
    # threaded through every forward pass of the step; each pass draws its own dropout masks
    current = {"model_state": model_state, "passes": 0}

    def forward(x, method=None, new_pass=True):
      variables = model_variables(params, current["model_state"])
      if not new_pass:  # the second half of a pass split at the feature map: the same masks
        current["passes"] -= 1
      kwargs = {"train": True, "rngs": {"dropout": jax.random.fold_in(k_drop, current["passes"])}}
      current["passes"] += 1
      if method is not None:
        kwargs["method"] = method
      if not names:
        return model.apply(variables, x, **kwargs)
      out, new_state = model.apply(variables, x, mutable=names, **kwargs)
      current["model_state"] = dict(new_state)
      return out

    embed_mixed = None
    if mixup == "feature":
      features = forward(images, "features")
      z = forward(features, "embed_features", new_pass=False)
      embed_mixed = lambda pairs: forward(metrix.mix_pairs(features, pairs), "embed_features")
    else:
      z = forward(images)
      if mixup == "input":
        embed_mixed = lambda pairs: forward(metrix.mix_pairs(images, pairs))
    z = z.astype(jnp.float32)
    if embed_mixed is not None:
      embed = embed_mixed
      embed_mixed = lambda pairs: embed(pairs).astype(jnp.float32)
    loss, new_loss_state, aux = objective.apply(params["loss"], loss_state, z, labels, k_loss,
                                                embed_mixed=embed_mixed)
    return loss, (current["model_state"], new_loss_state, aux)

  def one_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key, sub = jax.random.split(state.key)
    (loss, (new_model_state, new_loss_state, aux)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.model_state, state.loss_state,
                               batch["image"], batch["label"], sub)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    ok = finite & (state.bad_step < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    new = TrainState(keep(params, state.params), keep(new_model_state, state.model_state),
                     keep(new_loss_state, state.loss_state), keep(opt_state, state.opt_state),
                     state.step + ok.astype(jnp.int32), jnp.where(ok, key, state.key), bad_step)
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

  def call(state, batch):
    if steps_per_call == 1:
      return one_step(state, batch)
    return jax.lax.scan(one_step, state, batch)

  return jax.jit(call, out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def put_batch(batch: dict, mesh: Mesh, stacked: bool = False) -> dict:
  """Host batch (this process's part) -> global device arrays sharded over the mesh."""
  sharding = batch_sharding(mesh, stacked)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if jax.process_count() == 1:
      out[k] = jax.device_put(v, sharding)
    else:
      out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def make_embed_fn(model: nn.Module, mesh: Mesh) -> Callable[[Any, Any, Array], Array]:
  """Jitted `embed(params, model_state, images) -> embeddings` (eval mode, batch sharded)."""

  def embed(params, model_state, images):
    z = model.apply(model_variables(params, model_state), images, train=False)
    return z.astype(jnp.float32)

  return jax.jit(embed, out_shardings=replicated(mesh))
