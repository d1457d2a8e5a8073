"""Training and evaluation of an embedding network on in-memory arrays.

One epoch is one jitted call: the batches' indices go in, `lax.scan` runs the steps on device, so
there is no per-step Python dispatch. A step whose loss is not finite leaves the state untouched
and is reported; the loop then stops with `NonFiniteLossError` naming the step, and the returned
(or checkpointed) state is the last good one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxdml import evaluation
from jaxdml.data import class_balanced_batches
from jaxdml.train.objectives import Objective

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; training stopped.

  Attributes:
    step: the global step whose loss was not finite.
    state: the `TrainState` after the last step with a finite loss.
  """

  def __init__(self, message: str, *, step: int, state: "TrainState"):
    super().__init__(message)
    self.step = step
    self.state = state


class TrainState(NamedTuple):
  params: Any  # {"model": ..., "loss": ...}
  opt_state: Any
  step: Array
  key: Array


@dataclasses.dataclass
class FitResult:
  state: TrainState
  losses: np.ndarray  # per step
  seconds: float  # wall time of the training loop, compilation included
  compile_seconds: float  # time of the first epoch call minus an average epoch


def make_optimizer(learning_rate: float, weight_decay: float, loss_param_lr: float
                   ) -> optax.GradientTransformation:
  """AdamW on the network; Adam at `loss_param_lr` on loss parameters (proxies, betas)."""
  return optax.partition(
      {"model": optax.adamw(learning_rate, weight_decay=weight_decay),
       "loss": optax.adam(loss_param_lr)},
      {"model": "model", "loss": "loss"})


def init_state(key: Array, model, objective: Objective, sample: Array,
               tx: optax.GradientTransformation) -> TrainState:
  k_model, k_loss, k_run = jax.random.split(key, 3)
  params = {"model": model.init(k_model, sample), "loss": objective.init(k_loss)}
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), k_run)


def make_epoch_fn(model, objective: Objective, tx: optax.GradientTransformation
                  ) -> Callable[[TrainState, Array, Array, Array], tuple[TrainState, Array]]:
  """Returns jitted `epoch(state, images, labels, batches [S, B]) -> (state, losses [S])`."""

  def loss_fn(params, x, y, key):
    z = model.apply(params["model"], x)
    return objective.apply(params["loss"], z, y, key)

  def step(state: TrainState, idx: Array):
    images, labels, batch = idx
    key, sub = jax.random.split(state.key)
    x, y = images[batch], labels[batch]
    loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y, sub)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new = TrainState(keep(params, state.params), keep(opt_state, state.opt_state),
                     state.step + ok.astype(jnp.int32), key)
    return new, loss

  @jax.jit
  def epoch(state, images, labels, batches):
    def body(carry, batch):
      st, failed = carry
      new, loss = step(st, (images, labels, batch))
      # after a failure, the state stays frozen for the rest of the epoch
      new = jax.tree.map(lambda a, b: jnp.where(failed, b, a), new, st)
      return (new, failed | ~jnp.isfinite(loss)), loss

    (state, _), losses = jax.lax.scan(body, (state, jnp.zeros((), bool)), batches)
    return state, losses

  return epoch


def fit(model, objective: Objective, images: np.ndarray, labels: np.ndarray, *, epochs: int,
        classes_per_batch: int, per_class: int, tx: optax.GradientTransformation, seed: int = 0,
        progress: bool = True) -> FitResult:
  """Trains `model` with class-balanced batches; labels must be 0..C-1 when proxies are used."""
  key = jax.random.PRNGKey(seed)
  state = init_state(key, model, objective, jnp.asarray(images[:2]), tx)
  epoch_fn = make_epoch_fn(model, objective, tx)
  images_d, labels_d = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  all_losses, times = [], []
  t0 = time.perf_counter()
  with tqdm(total=epochs, desc="train", unit="epoch", disable=not progress) as bar:
    for e in range(epochs):
      te = time.perf_counter()
      batches = class_balanced_batches(labels, classes_per_batch, per_class, seed=seed * 100003 + e)
      state, losses = epoch_fn(state, images_d, labels_d, jnp.asarray(batches))
      losses = np.asarray(losses)
      times.append(time.perf_counter() - te)
      all_losses.append(losses)
      bad = np.nonzero(~np.isfinite(losses))[0]
      if len(bad):
        step = e * len(batches) + int(bad[0])
        raise NonFiniteLossError(
            f"loss became {losses[bad[0]]} at step {step} (epoch {e}); training stopped. The "
            "state holds the parameters of the last finite step. Lower the learning rate or "
            "check the loss hyperparameters.", step=step, state=state)
      bar.set_postfix(loss=f"{losses.mean():.4f}")
      bar.update(1)
  seconds = time.perf_counter() - t0
  rest = np.mean(times[1:]) if len(times) > 1 else 0.0
  return FitResult(state, np.concatenate(all_losses), seconds, max(times[0] - rest, 0.0))


def embed(model, model_params, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Embeddings of `images`, in fixed-size jitted batches (the last one padded)."""
  apply = jax.jit(model.apply)
  out = []
  n = len(images)
  for i in range(0, n, batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad and n > batch_size:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(apply(model_params, jnp.asarray(chunk)))[:len(images[i:i + batch_size])])
  return np.concatenate(out)


def evaluate(embeddings: np.ndarray, labels: np.ndarray, *, ks=(1, 2, 4, 8), seed: int = 0
             ) -> dict[str, float]:
  """Leave-one-out retrieval metrics and clustering NMI/F1 of a labelled embedding set."""
  emb = jnp.asarray(embeddings, jnp.float32)
  lab = jnp.asarray(labels, jnp.int32)
  metrics = dict(evaluation.retrieval_metrics(emb, lab, ks=tuple(ks)))
  metrics.update(evaluation.clustering_metrics(emb, lab, seed=seed))
  return {k: float(v) for k, v in metrics.items()}
