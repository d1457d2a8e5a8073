"""The training loop: sharded steps, periodic evaluation, logging, checkpoints and resumption.

`train` drives any model/objective/optimiser over any batch stream with a checkpointable position
(`jaxdml.train.batches`, or a grain iterator). With a `workdir` it

  - resumes from the newest readable checkpoint there (train state and input position), so a
    killed run continues with nothing lost: N steps, a kill, and a resume to 2N steps give the
    same parameters as 2N uninterrupted steps. A damaged newest checkpoint is moved aside with a
    warning and the previous kept one is used;
  - saves a checkpoint every `checkpoint_every` steps, every `checkpoint_every_seconds` of wall
    time (whichever comes first) and at the end, keeping the newest `keep_checkpoints`;
  - on SIGINT (Ctrl-C) or SIGTERM finishes the current step, saves a checkpoint and raises
    `TrainingInterrupted` (a second Ctrl-C stops at once);
  - logs the loss (and the evaluation metrics) to metrics.jsonl and TensorBoard event files, and
    draws loss / Recall@1 curves to curves.png at the end.

A non-finite loss, gradient or updated state stops the run with `NonFiniteLossError` naming the
step; no checkpoint is written after it, so the newest checkpoint is the last good state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
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
  """The loss, the gradients or the updated state became NaN or infinite; training stopped.

  Attributes:
    step: the step whose values were not finite.
    state: the `TrainState` after the last step whose values were all finite.
    checkpoint_step: the newest checkpoint on disk (the last good state saved), or None.
  """

  def __init__(self, message: str, *, step: int, state: TrainState,
               checkpoint_step: int | None = None):
    super().__init__(message)
    self.step = step
    self.state = state
    self.checkpoint_step = checkpoint_step


class TrainingInterrupted(Exception):
  """SIGINT or SIGTERM stopped training after a step; a checkpoint of that step was saved.

  Attributes:
    step: the last step completed.
    signal_name: "SIGINT" or "SIGTERM".
    checkpoint_step: the step of the checkpoint written (None without a workdir).
    state: the train state at `step`.
  """

  def __init__(self, message: str, *, step: int, signal_name: str,
               checkpoint_step: int | None, state: TrainState):
    super().__init__(message)
    self.step = step
    self.signal_name = signal_name
    self.checkpoint_step = checkpoint_step
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


def _check_finite(state: TrainState, ckpt, metrics: list[tuple[int, dict]]) -> None:
  bad = int(state.bad_step)
  if bad < 0:
    return
  seen = ""
  for _, m in metrics:  # the step's loss and gradient norm, when still in the unread metrics
    loss = np.atleast_1d(np.asarray(m["loss"]))
    norm = np.atleast_1d(np.asarray(m["grad_norm"]))
    bad_at = np.flatnonzero(~(np.isfinite(loss) & np.isfinite(norm)))
    if bad_at.size:
      i = bad_at[0]
      seen = f" (loss {float(loss[i]):.6g}, gradient norm {float(norm[i]):.6g})"
      break
  saved = None if ckpt is None else ckpt.latest_step()
  where = ("no checkpoint had been saved yet" if saved is None else
           f"the newest checkpoint, step {saved} in {ckpt.directory}, is the last good state saved")
  if ckpt is None:
    where = "nothing was saved (no workdir)"
  raise NonFiniteLossError(
      f"step {bad} produced a NaN or infinite loss, gradient or parameter{seen}; training "
      f"stopped and that step was not applied; {where}. Lower the learning rate, clip "
      "gradients, or check the loss hyperparameters.", step=bad, state=state,
      checkpoint_step=saved)


@contextlib.contextmanager
def _stop_signals(enabled: bool):
  """Turns SIGINT / SIGTERM into a request to stop after the current step (main thread only).

  Yields a dict whose "signal" entry becomes the signal's name when one arrives. A second SIGINT
  falls back to the default behaviour (KeyboardInterrupt at once).
  """
  request: dict[str, str | None] = {"signal": None}
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield request
    return
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

  def handler(signum, frame):
    request["signal"] = signal.Signals(signum).name
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"\n{request['signal']} received: stopping after the current step and saving a "
          "checkpoint (Ctrl-C again to stop at once, without saving).", flush=True)

  for sig in previous:
    signal.signal(sig, handler)
  try:
    yield request
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def _agree(flag: bool) -> bool:
  """The flag of process 0, on every process (saves and stops must happen on all of them)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def train(*, model: nn.Module, objective, tx: optax.GradientTransformation, batches: Any,
          total_steps: int, sample: np.ndarray, seed: int = 0, mesh: Mesh | None = None,
          workdir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          checkpoint_every_seconds: float | None = 600.0, keep_checkpoints: int = 3,
          eval_fn: Callable[[TrainState], dict] | None = None,
          eval_every: int | None = None, log_every: int = 50, progress: bool = True,
          steps_per_epoch: int | None = None, tensorboard: bool = True,
          load_pretrained: Callable[[Any], Any] | None = None,
          handle_signals: bool = True, say: Callable[[str], None] | None = None) -> TrainResult:
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
    checkpoint_every: save every this many steps (None: no step-based saves).
    checkpoint_every_seconds: also save when this much wall time has passed since the last save
      (checked after each call and log; None: no time-based saves). A checkpoint is always
      written at the end.
    keep_checkpoints: newest checkpoints kept.
    eval_fn: `state -> {metric: value}`; run every `eval_every` steps and at the end.
    eval_every: steps between evaluations (None: only at the end).
    log_every: steps between loss logs, non-finite checks and time-based saves (and, with
      several processes, between the checks for a stop signal, which all processes agree on).
    progress: show a progress bar.
    steps_per_epoch: for the progress bar and logs (epoch numbers).
    tensorboard: also write TensorBoard event files.
    load_pretrained: `variables -> variables` applied to the fresh model variables (imported
      backbone weights); not used when resuming from a checkpoint.
    handle_signals: catch SIGINT / SIGTERM (in the main thread) to save and stop cleanly.
    say: called with one-line progress messages ("resumed from step N", a damaged checkpoint
      moved aside); None: silent (warnings still go through `warnings`).

  Returns:
    `TrainResult`.

  Raises:
    NonFiniteLossError: the loss, a gradient or the updated state became NaN or infinite.
    TrainingInterrupted: SIGINT / SIGTERM arrived; a checkpoint of the last step was saved.
  """
  k = int(getattr(batches, "steps_per_item", 1))
  if total_steps % k:
    raise ValueError(f"total_steps ({total_steps}) must be a multiple of the steps per input "
                     f"item ({k}).")
  for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
    if value is not None and (value <= 0 or value % k):
      raise ValueError(f"{name} must be a positive multiple of {k}, got {value}.")
  if checkpoint_every_seconds is not None and not checkpoint_every_seconds > 0:
    raise ValueError(f"checkpoint_every_seconds must be > 0 or None, got "
                     f"{checkpoint_every_seconds}.")
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
    if ckpt.all_steps():
      resumed_from, state, data_state = ckpt.restore_newest_readable(state)
      if data_state is not None:
        batches.set_state(data_state)
      if say is not None:
        say(f"resumed from step {resumed_from} ({ckpt.directory})")
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
  last_save = time.monotonic()
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
    read = pending
    pending = []
    return read

  def check(read):
    _check_finite(state, ckpt, read or [])

  def save():
    nonlocal last_save
    ckpt.save(step, state, batches.get_state())
    last_save = time.monotonic()

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
    with _stop_signals(handle_signals) as stop, tqdm(
        total=total_steps, initial=start, desc="train", unit="step",
        disable=not progress) as bar:
      while step < total_steps:
        tc = time.perf_counter()
        batch = put_batch(next(batches), mesh, stacked=k > 1)
        state, metrics = step_fn(state, batch)
        step += k
        pending.append((step, metrics))
        due_eval = eval_fn is not None and eval_every and step % eval_every == 0
        due_ckpt = ckpt is not None and checkpoint_every and step % checkpoint_every == 0
        due_log = step % log_every == 0 or due_eval or due_ckpt or step >= total_steps
        if due_log and ckpt is not None and checkpoint_every_seconds is not None:
          due_ckpt = due_ckpt or _agree(time.monotonic() - last_save >= checkpoint_every_seconds)
        stopping = stop["signal"] is not None  # several processes agree at logs only (no
        if jax.process_count() > 1:             # collective per step)
          stopping = bool(due_log) and _agree(stopping)
        if due_log or stopping:
          check(flush())
          if losses:
            bar.set_postfix(loss=f"{float(np.mean(losses[-1])):.4f}",
                            epoch=(step // steps_per_epoch) if steps_per_epoch else None)
        call_times.append(time.perf_counter() - tc)
        bar.update(k)
        if stopping:
          if ckpt is not None:
            save()
          name = stop["signal"] or "SIGTERM"
          saved = (f"saved checkpoint {step} in {ckpt.directory}" if ckpt is not None else
                   "nothing saved (no workdir)")
          raise TrainingInterrupted(f"{name}: training stopped after step {step} of "
                                    f"{total_steps}; {saved}.", step=step, signal_name=name,
                                    checkpoint_step=step if ckpt is not None else None,
                                    state=state)
        if due_ckpt and step < total_steps:
          save()
        if due_eval and step < total_steps:
          run_eval()
    check(flush())
    seconds = time.perf_counter() - t0 - eval_seconds
    if ckpt is not None:
      save()
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
