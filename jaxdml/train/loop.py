"""The training loop: sharded steps, periodic evaluation, logging, checkpoints and resumption.

`train` drives any model/objective/optimiser over any batch stream with a checkpointable position
(`jaxdml.train.batches`, or a grain iterator). With a `workdir` it

  - resumes from the newest checkpoint there (train state and input position), so a killed run
    continues with nothing lost: N steps, a kill, and a resume to 2N steps give the same
    parameters as 2N uninterrupted steps;
  - saves a checkpoint every `checkpoint_every` steps and at the end, keeping the newest
    `keep_checkpoints`;
  - logs the loss (and the evaluation metrics) to metrics.jsonl and TensorBoard event files, and
    draws loss / Recall@1 curves to curves.png at the end.

A non-finite loss stops the run with `NonFiniteLossError` naming the step; no checkpoint is
written after it, so the newest checkpoint is the last good state.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxdml.train.sharding import make_mesh, put_batch
from jaxdml.train.state import TrainState, init_state
from jaxdml.train.step import make_train_step


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; training stopped.

  Attributes:
    step: the step whose loss was not finite.
    state: the `TrainState` after the last step with a finite loss.
  """

  def __init__(self, message: str, *, step: int, state: TrainState):
    super().__init__(message)
    self.step = step
    self.state = state


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    state: the final train state.
    losses: loss of every step run by this call, in order.
    evals: `[(step, metrics dict), ...]` of the evaluations run by this call.
    seconds: wall time of the loop (compilation included; evaluations excluded).
    compile_seconds: estimated compilation time (first call minus a typical call).
    resumed_from: the checkpoint step this call resumed from, or None.
  """

  state: TrainState
  losses: np.ndarray
  evals: list[tuple[int, dict[str, float]]]
  seconds: float
  compile_seconds: float
  resumed_from: int | None


def _check_finite(state: TrainState) -> None:
  bad = int(state.bad_step)
  if bad >= 0:
    raise NonFiniteLossError(
        f"the loss became NaN or infinite at step {bad}; training stopped. The returned state "
        "(and the newest checkpoint) hold the parameters of the last finite step. Lower the "
        "learning rate, clip gradients, or check the loss hyperparameters.", step=bad,
        state=state)


def train(*, model: nn.Module, objective, tx: optax.GradientTransformation, batches: Any,
          total_steps: int, sample: np.ndarray, seed: int = 0, mesh: Mesh | None = None,
          workdir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          keep_checkpoints: int = 3, eval_fn: Callable[[TrainState], dict] | None = None,
          eval_every: int | None = None, log_every: int = 50, progress: bool = True,
          steps_per_epoch: int | None = None, tensorboard: bool = True,
          load_pretrained: Callable[[Any], Any] | None = None) -> TrainResult:
  """Trains until `total_steps` updates, resuming from `workdir` when it holds a checkpoint.

  Args:
    model: Flax module, `apply(variables, images, train=...)` -> embeddings.
    objective: `jaxdml.objectives.Objective`.
    tx: optimiser over `{"model": ..., "loss": ...}` (see `jaxdml.train.optim`).
    batches: iterator of host batches `{"image": [B, ...], "label": [B]}` (this process's part
      of the global batch), or stacked `[k, B, ...]` when it has `steps_per_item = k > 1`; with
      `get_state()` / `set_state()` for resumption.
    total_steps: number of updates of the whole run (a multiple of `steps_per_item`).
    sample: a small input batch for initialisation.
    seed: seeds the parameters, proxies and the loss/dropout keys.
    mesh: data-parallel mesh; default: all devices.
    workdir: where checkpoints (`workdir/checkpoints`), metrics.jsonl, TensorBoard events and
      curves.png go; None: nothing is written and nothing resumed.
    checkpoint_every: save every this many steps (None: only at the end).
    keep_checkpoints: newest checkpoints kept.
    eval_fn: `state -> {metric: value}`; run every `eval_every` steps and at the end.
    eval_every: steps between evaluations (None: only at the end).
    log_every: steps between loss logs (and non-finite checks).
    progress: show a progress bar.
    steps_per_epoch: for the progress bar and logs (epoch numbers).
    tensorboard: also write TensorBoard event files.
    load_pretrained: `variables -> variables` applied to the fresh model variables (imported
      backbone weights); not used when resuming from a checkpoint.

  Returns:
    `TrainResult`.

  Raises:
    NonFiniteLossError: the loss became NaN or infinite.
  """
  k = int(getattr(batches, "steps_per_item", 1))
  if total_steps % k:
    raise ValueError(f"total_steps ({total_steps}) must be a multiple of the steps per input "
                     f"item ({k}).")
  for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
    if value is not None and (value <= 0 or value % k):
      raise ValueError(f"{name} must be a positive multiple of {k}, got {value}.")
  mesh = make_mesh() if mesh is None else mesh
  state = init_state(jax.random.PRNGKey(seed), model, objective, jax.numpy.asarray(sample), tx,
                     mesh, load_pretrained)
  ckpt = logger = None
  resumed_from = None
  if workdir is not None:
    from jaxdml.train.checkpoint import Checkpointer  # noqa: PLC0415 - orbax loads slowly
    from jaxdml.train.metric_writers import MetricsLogger  # noqa: PLC0415
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
    if ckpt.latest_step() is not None:
      state, data_state = ckpt.restore(state)
      resumed_from = int(state.step)
      if data_state is not None:
        batches.set_state(data_state)
    logger = MetricsLogger(workdir, tensorboard=tensorboard)

  step_fn = make_train_step(model, objective, tx, mesh=mesh, steps_per_call=k)
  start = int(state.step)
  if start % k:
    raise ValueError(f"checkpoint step {start} is not a multiple of {k} steps per call.")
  losses, evals, call_times = [], [], []
  pending: list[Any] = []  # (step, device metrics) not yet read back
  log_every = max(k, (log_every // k) * k)
  step = start
  t0 = time.perf_counter()
  eval_seconds = 0.0

  def flush():
    nonlocal pending
    if not pending:
      return
    values = np.concatenate([np.atleast_1d(np.asarray(m["loss"])) for _, m in pending])
    losses.append(values)
    if logger is not None:
      last_step = pending[-1][0]
      parts = {f"loss/{name}": float(np.nanmean(np.concatenate(
          [np.atleast_1d(np.asarray(m[name])) for _, m in pending])))
               for name in pending[-1][1] if name not in ("loss", "grad_norm")}
      logger.log(last_step, loss=float(np.mean(values[np.isfinite(values)]))
                 if np.isfinite(values).any() else float("nan"), **parts)
    pending = []

  def run_eval():
    nonlocal eval_seconds
    te = time.perf_counter()
    metrics = {k_: float(v) for k_, v in eval_fn(state).items()}
    evals.append((step, metrics))
    if logger is not None:
      logger.log(step, **{f"eval/{k_}": v for k_, v in metrics.items()})
    eval_seconds += time.perf_counter() - te
    return metrics

  try:
    with tqdm(total=total_steps, initial=start, desc="train", unit="step",
              disable=not progress) as bar:
      while step < total_steps:
        tc = time.perf_counter()
        batch = put_batch(next(batches), mesh, stacked=k > 1)
        state, metrics = step_fn(state, batch)
        step += k
        pending.append((step, metrics))
        due_eval = eval_fn is not None and eval_every and step % eval_every == 0
        due_ckpt = ckpt is not None and checkpoint_every and step % checkpoint_every == 0
        if step % log_every == 0 or due_eval or due_ckpt or step >= total_steps:
          flush()
          _check_finite(state)
          if losses:
            bar.set_postfix(loss=f"{float(np.mean(losses[-1])):.4f}",
                            epoch=(step // steps_per_epoch) if steps_per_epoch else None)
        call_times.append(time.perf_counter() - tc)
        bar.update(k)
        if due_ckpt:
          ckpt.save(step, state, batches.get_state())
        if due_eval and step < total_steps:
          run_eval()
    flush()
    _check_finite(state)
    seconds = time.perf_counter() - t0 - eval_seconds
    if ckpt is not None:
      ckpt.save(step, state, batches.get_state())
    if eval_fn is not None and (not evals or evals[-1][0] != step):
      run_eval()
  finally:
    if logger is not None:
      logger.close()
    if ckpt is not None:
      ckpt.close()
  if workdir is not None:
    _draw_curves(workdir)
  typical = float(np.median(call_times[1:])) if len(call_times) > 1 else 0.0
  compile_seconds = max(call_times[0] - typical, 0.0) if call_times else 0.0
  return TrainResult(state, np.concatenate(losses) if losses else np.zeros((0,), np.float32),
                     evals, seconds, compile_seconds, resumed_from)


def _draw_curves(workdir) -> None:
  from jaxdml.train.metric_writers import read_metrics  # noqa: PLC0415
  from jaxdml.train.plots import plot_curves  # noqa: PLC0415
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    records = read_metrics(path)
    if records:
      plot_curves(records, os.path.join(workdir, "curves.png"))
