"""The jitted, data-parallel train step, and the model seam it gives every objective.

The global batch is one array sharded over the mesh axis "data", parameters and state are
replicated (`jaxdml.train.sharding`), and XLA inserts the collectives (gradient all-reduce, the
all-gather that lets a pair loss compare every example with every other one). The loss therefore
sees the *global* batch, as in the literature, and 8 devices compute the same loss and update as
1 (up to float summation order). Batch-norm statistics are computed over the global batch too
(synchronised batch norm).

The model seam: the step computes the batch's embeddings (through `model.features` and
`model.embed_features` when the model is split at its last feature map, so the feature maps are
at hand) and calls `objective.apply(params, state, Batch(embeddings, labels, inputs, features,
model=ModelFns(...)), key)`. `ModelFns` are the network's functions bound to the current
parameters: each call is one more forward pass in training mode that threads the model's mutable
state (batch-norm statistics) on to the next and draws its own dropout masks (the clean pass,
whole or split at the feature map, draws one set). An objective that needs the network (Metrix's
input or feature mixup, a teacher, a refiner) uses them; the step knows nothing of methods.

Several steps can run in one call (`steps_per_call`, a `lax.scan` over stacked batches): on a CPU
with small models this removes the per-step dispatch cost; on accelerators it plays the role of
host-side training loops.

A step whose loss, gradient norm, updated parameters, model state (batch-norm statistics), loss
state or optimiser state is not finite changes nothing and records its step number in
`bad_step`; every later step then leaves the state as it is. A loss can stay finite while its
gradients are NaN (a distance at a NaN embedding), so the loss alone is not enough. The host loop
checks `bad_step` when it logs or saves and stops with a clear message, so a non-finite value
never trains on and never reaches a checkpoint, without a device-to-host sync on every step.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxdml import objectives
from jaxdml.train.sharding import replicated
from jaxdml.train.state import TrainState, model_variables

Array = jax.Array


def is_split(model: nn.Module) -> bool:
  """Whether `model` is split at its last feature map (`features` and `embed_features`)."""
  return callable(getattr(model, "features", None)) and callable(
      getattr(model, "embed_features", None))


def forward_with_seam(model: nn.Module, params: Any, model_state: Any, images: Array,
                      labels: Array, key: Array) -> tuple[objectives.Batch, Callable[[], Any]]:
  """The clean forward pass of a training step and the model seam around it.

  Returns:
    (batch, final_state): the `objectives.Batch` an objective sees, and a function giving the
    model state after every pass run so far (call it after the objective).
  """
  names = list(model_state.keys())
  current = {"model_state": model_state, "passes": 0}

  def run(method, args, dropout_pass):
    variables = model_variables(params, current["model_state"])
    kwargs = {"train": True, "rngs": {"dropout": jax.random.fold_in(key, dropout_pass)}}
    if method is not None:
      kwargs["method"] = method
    if not names:
      return model.apply(variables, *args, **kwargs)
    out, new_state = model.apply(variables, *args, mutable=names, **kwargs)
    current["model_state"] = dict(new_state)
    return out

  def call(method, *args):  # one more forward pass: new dropout masks
    current["passes"] += 1
    return run(method, args, current["passes"])

  split = is_split(model)
  if split:  # the clean pass, split at the feature map: one set of dropout masks
    features = run("features", (images,), 0)
    z = run("embed_features", (features,), 0)
  else:
    features = None
    z = run(None, (images,), 0)
  fns = objectives.ModelFns(
      embed=lambda x: call(None, x).astype(jnp.float32),
      features=(lambda x: call("features", x)) if split else None,
      head=(lambda f: call("embed_features", f).astype(jnp.float32)) if split else None,
      call=call)
  batch = objectives.Batch(z.astype(jnp.float32), labels, images, features, fns)
  return batch, lambda: current["model_state"]


def all_finite(tree: Any) -> Array:
  """Whether every floating-point entry of `tree` is finite (one boolean, computed on device)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(model: nn.Module, objective: objectives.Objective,
                    tx: optax.GradientTransformation, *, mesh: Mesh, steps_per_call: int = 1,
                    donate: bool = True) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns the jitted `step(state, batch) -> (state, metrics)`.

  Args:
    model: Flax module; `apply(variables, images, train=True, mutable=[...], rngs=...)`, and
      `features` / `embed_features` methods if it is split at its last feature map.
    objective: `jaxdml.objectives.Objective`; it gets the model seam (see the module docstring).
    tx: optimiser over `state.params`.
    mesh: the data-parallel mesh (`jaxdml.train.sharding.make_mesh`).
    steps_per_call: > 1: the batch arrays are stacked [steps_per_call, B, ...] and the call runs
      that many steps in a `lax.scan`.
    donate: donate the input state's buffers (the caller must not reuse `state`).

  Returns:
    `step`; metrics are `{"loss": [steps_per_call] or scalar, "grad_norm": ..., **aux}` (device
    arrays; `aux` are the objective's diagnostics, e.g. "hier_loss").
  """

  def loss_fn(params, model_state, loss_state, images, labels, key):
    k_drop, k_loss = jax.random.split(key)
    batch, final_model_state = forward_with_seam(model, params, model_state, images, labels,
                                                 k_drop)
    loss, new_loss_state, aux = objective.apply(params["loss"], loss_state, batch, k_loss)
    return loss, (final_model_state(), new_loss_state, aux)

  def one_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key, sub = jax.random.split(state.key)
    (loss, (new_model_state, new_loss_state, aux)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state.model_state, state.loss_state,
                               batch["image"], batch["label"], sub)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & all_finite((params, new_model_state, new_loss_state, opt_state)))
    ok = finite & (state.bad_step < 0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    new = TrainState(keep(params, state.params), keep(new_model_state, state.model_state),
                     keep(new_loss_state, state.loss_state), keep(opt_state, state.opt_state),
                     state.step + ok.astype(jnp.int32), jnp.where(ok, key, state.key), bad_step)
    return new, {"loss": loss, "grad_norm": grad_norm, **aux}

  def call(state, batch):
    if steps_per_call == 1:
      return one_step(state, batch)
    return jax.lax.scan(one_step, state, batch)

  return jax.jit(call, out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def make_embed_fn(model: nn.Module, mesh: Mesh) -> Callable[[Any, Any, Array], Array]:
  """Jitted `embed(params, model_state, images) -> embeddings` (eval mode, batch sharded)."""

  def embed(params, model_state, images):
    z = model.apply(model_variables(params, model_state), images, train=False)
    return z.astype(jnp.float32)

  return jax.jit(embed, out_shardings=replicated(mesh))
