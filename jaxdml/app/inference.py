"""A trained run, loaded for use: its config, model and weights, and embedding images with it.

    run = jaxdml.load("runs/digits-20260101-120000")   # the newest checkpoint of a run directory
    z = run.embed(images)                               # [N, d] NumPy, eval mode, in batches

`load` reads the run's `config.json`, builds its model and restores the checkpoint's arrays as
saved, taking only the model's parts (parameters, and state such as batch-norm statistics): the
objective is never built, so a run trained with a user's own loss loads like any other.
`Run.embed` transforms raw images exactly as the run's evaluation does (`Run.preprocess`) and runs
the model's jitted eval-mode embedding over a mesh; `jaxdml.Index.from_run` makes a searchable
gallery of them with the run's similarity (`Run.similarity`, `Run.c`).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Sequence

import jax
import numpy as np

from jaxdml import _checks
from jaxdml.app import build, tasks
from jaxdml.app.config import Config, ConfigError, from_dict, set_run_loader
from jaxdml.app.experiment import CONFIG_FILE, load_run_config
from jaxdml.data import transforms
from jaxdml.train.evaluate import Embedder
from jaxdml.train.sharding import make_mesh, replicated

CHECKPOINTS = "checkpoints"


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _run_config(workdir: str) -> tuple[Config, dict | None]:
  """The run's `Config` and its saved objective section (as plain data).

  The model and the data do not depend on the objective: when the saved objective cannot be
  rebuilt in this process (a loss that only the training script knew), the config is read with a
  stand-in objective and a warning says so.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    config = load_run_config(workdir)
  except ConfigError as error:
    with open(path) as f:
      raw = json.load(f)
    saved = raw.get("objective") if isinstance(raw, dict) else None
    if not isinstance(saved, dict):
      raise
    stand_in = {**raw, "objective": {"loss": "proxy_anchor"}}  # fits any batch and head
    stand_in.pop("plugins", None)  # the files that defined the objective's own parts
    try:
      config = from_dict(stand_in)
    except ConfigError:
      raise error from None
    warnings.warn(f"{path}: the run's objective cannot be rebuilt here ({error}); its model and "
                  "data load without it (Run.config.objective is a stand-in, the saved section "
                  "is Run.saved_objective).", stacklevel=3)
    return config, saved
  with open(path) as f:
    return config, json.load(f).get("objective")


def _checkpoint_steps(workdir: str) -> tuple[Any, list[int]]:
  directory = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint in {workdir!r}: it has no {CHECKPOINTS}/ folder (a "
                            "run saves one when it finishes or every checkpoint_every_epochs).")
  from jaxdml.train.checkpoint import Checkpointer  # noqa: PLC0415 - orbax loads slowly
  ckpt = Checkpointer(directory)
  steps = sorted(ckpt.all_steps())
  if not steps:
    ckpt.close()
    raise FileNotFoundError(f"no checkpoint in {directory!r} (the folder is empty).")
  return ckpt, steps


def _sample(config: Config) -> np.ndarray:
  """A one-image input batch of the run's shape (float32 zeros)."""
  d = config.data
  bench = tasks.builtin(d.dataset)
  if bench is not None:
    return np.zeros((1, *bench.input_shape(config)), np.float32)
  return np.zeros((1, d.image_size, d.image_size, 3), np.float32)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _check_fits(model, config: Config, variables: dict, where: str) -> None:
  """Raises ValueError when the restored variables are not those of the config's model."""
  key = jax.random.PRNGKey(0)
  expected = jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x,
                                                 train=False), _sample(config))
  want, got = _shapes(dict(expected)), _shapes(variables)
  if want == got:
    return
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
            else f"{wrong[0]} has shape {got[wrong[0]]}, the model's is {want[wrong[0]]}")
  raise ValueError(f"{where} does not fit the model of its config.json (model.name="
                   f"{config.model.name!r}, embedding_dim={config.model.embedding_dim}): {detail}.")


class _SourceImages:
  """The images of a data source as a sequence (decoded on access, `len` and slices)."""

  def __init__(self, source: Any):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self.source[i]["image"] for i in range(*index.indices(len(self)))]
    return self.source[int(index)]["image"]


class Run:
  """A trained run: config, model, the weights of one checkpoint, and its embedding function.

  Made by `load`. Attributes:
    workdir: the run directory.
    config: its `jaxdml.app.config.Config`.
    model: the Flax model (`model.apply(run.variables, x, train=False)` embeds model inputs).
    params: the model's parameters; model_state: its other collections (e.g. batch_stats; {}).
    step: the checkpoint step loaded; steps: every step the run directory holds.
    saved_objective: the objective section of config.json, as plain data.
    mesh: the devices embedding runs on (the batch is split over them).
  """

  def __init__(self, *, workdir: str, config: Config, model, params: Any, model_state: Any,
               step: int, steps: Sequence[int], saved_objective: dict | None, mesh):
    self.workdir = workdir
    self.config = config
    self.model = model
    self.params = params
    self.model_state = model_state
    self.step = int(step)
    self.steps = list(steps)
    self.saved_objective = saved_objective
    self.mesh = mesh
    self._embedder = Embedder(model, mesh)

  def __repr__(self) -> str:
    return (f"Run({self.workdir!r}, step={self.step}, model={self.config.model.name}, "
            f"dim={self.dim}, similarity={self.similarity!r})")

  @property
  def variables(self) -> dict:
    """`{"params": ..., **model_state}`, the variables of `model.apply`."""
    return {"params": self.params, **self.model_state}

  @property
  def dim(self) -> int:
    return self.config.model.embedding_dim

  @property
  def similarity(self) -> str:
    """How the run's embeddings are compared: "cosine", or "poincare" for a hyperbolic head."""
    return build.eval_similarity(self.config).get("similarity", "cosine")

  @property
  def c(self) -> float:
    """The Poincare ball's curvature parameter (used when `similarity` is "poincare")."""
    return float(self.config.model.poincare_c)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one model input (after `preprocess`)."""
    return _sample(self.config).shape[1:]

  def preprocess(self, images: Any) -> np.ndarray:
    """Raw images -> the model's inputs, as the run's evaluation transforms them.

    The built-in benchmarks (digit pairs, glyphs): float images in [0, 1] (as
    `jaxdml.data.make_digit_pairs` gives them) pass unchanged; uint8 images (as
    `jaxdml.data.make_glyphs` gives them) are scaled by 1/255; a channel axis (grey repeated as
    RGB, e.g. read from a PNG) is averaged away. Image data sets: each image (uint8 [H, W],
    [H, W, 3] or [H, W, 4], any size, as a data source gives it) is resized, centre-cropped and
    normalised by `jaxdml.data.transforms.eval_transform` with the run's `data.image_size`,
    `data.resize_size` and normalisation.

    Args:
      images: [N, ...] array, or a sequence of N images.

    Returns:
      float32 [N, *input_shape].
    """
    d = self.config.data
    bench = tasks.builtin(d.dataset)
    if bench is not None:
      return tasks.grey_inputs(images, self.input_shape, bench.IMAGES)
    norm = build.default_normalization(self.config)
    out = [transforms.eval_transform(image, image_size=d.image_size, resize_size=d.resize_size,
                                     normalization=norm) for image in images]
    if not out:
      return np.zeros((0, *self.input_shape), np.float32)
    return np.stack(out)

  def embed(self, images: Any, batch_size: int | None = None, *,
            preprocess: bool = True) -> np.ndarray:
    """Embeddings of `images` in eval mode, `batch_size` at a time over `mesh`.

    Args:
      images: raw images (see `preprocess`): an array [N, ...] or a sequence with `len` and
        slicing; with `preprocess=False`, model inputs [N, *input_shape] already transformed.
      batch_size: images per step (rounded up to a multiple of the device count; the last batch
        is padded, so one shape compiles); None: the run's `eval.batch_size`.
      preprocess: apply `preprocess` to each batch first.

    Returns:
      float32 [N, dim] NumPy array.
    """
    batch_size = self.config.eval.batch_size if batch_size is None else batch_size
    _checks.positive_int(batch_size, "batch_size")
    n = len(images)
    if n == 0:
      return np.zeros((0, self.dim), np.float32)
    size = _round_up(min(batch_size, n), self.mesh.size)
    params = {"model": self.params}
    out = []
    for start in range(0, n, size):
      chunk = images[start:start + size]
      x = self.preprocess(chunk) if preprocess else np.asarray(chunk)
      if x.shape[1:] != self.input_shape:
        shape = ", ".join(map(str, self.input_shape))
        raise ValueError(f"model inputs must have shape [N, {shape}], got {x.shape}.")
      m = len(x)
      if m < size:
        x = np.concatenate([x, np.zeros((size - m, *x.shape[1:]), x.dtype)])
      out.append(self._embedder(params, self.model_state, x)[:m])
    return np.concatenate(out)

  def split(self, name: str = "test") -> tuple[Any, np.ndarray, np.ndarray]:
    """The images, labels and ids of one split of the run's own data.

    Args:
      name: digit pairs: "train" or "test"; glyphs: "train", "test" or "pool"; an image data
        set: "train" or a split of its test protocol ("test"; "query", "gallery" for In-shop;
        ...).

    Returns:
      (images, labels, ids): the raw images (an array for the built-in benchmarks; for image
      data sets a sequence decoding each image when read), int labels [N], and ids [N] (file
      paths of an image folder, else row numbers).
    """
    d = self.config.data
    bench = tasks.builtin(d.dataset)
    if bench is not None:
      return bench.split(self.config, name)
    from jaxdml.app import image_datasets  # noqa: PLC0415 - needs grain
    names = ["train"] + [s for _, _, splits in image_datasets.eval_plan(d.dataset)
                         for s in splits]
    if name not in names:
      raise ValueError(f"{d.dataset} has splits {names}, got {name!r}.")
    source = image_datasets._source(self.config, name)
    paths = getattr(source, "paths", None)
    ids = np.asarray(paths) if paths is not None else np.arange(len(source))
    return _SourceImages(source), np.asarray(source.labels), ids


def load(workdir: str | os.PathLike, step: int | None = None, *, mesh=None,
         config: Config | None = None) -> Run:
  """The trained run in `workdir` at checkpoint `step` (default: the newest).

  Args:
    workdir: a run directory (`jaxdml train --workdir`): config.json and checkpoints/.
    step: the checkpoint step to load; None: the newest.
    mesh: the devices embedding runs on (default: all devices, `jaxdml.train.make_mesh`).
    config: use this config instead of the run's saved one (the saved one with evaluation or
      data-path overrides, e.g. for `jaxdml eval --set`).

  Returns:
    The `Run`.

  Raises:
    FileNotFoundError: `workdir` is not a run directory, or holds no checkpoint.
    ValueError: no checkpoint of `step` (the message lists the steps there), or a checkpoint
      that does not fit the config's model.
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir!r} is not a directory (expected a jaxdml run directory "
                            f"with {CONFIG_FILE} and {CHECKPOINTS}/).")
  if config is None:
    config, saved_objective = _run_config(workdir)
  else:
    saved_objective = None
  if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
    raise TypeError(f"`step` must be an int or None, got {step!r}.")
  ckpt, steps = _checkpoint_steps(workdir)
  with ckpt:
    if step is not None and step not in steps:
      raise ValueError(f"no checkpoint of step {step} in {ckpt.directory}; available steps: "
                       f"{steps}.")
    step = steps[-1] if step is None else int(step)
    state, _ = ckpt.restore(None, step)  # the arrays as saved: no train state, no objective
  where = f"checkpoint {step} of {workdir}"
  if not (isinstance(state, dict) and isinstance(state.get("params"), dict)
          and "model" in state["params"]):
    raise ValueError(f"{where} holds no model parameters (params/model).")
  model, _ = build.build_model(config)
  params, model_state = state["params"]["model"], dict(state.get("model_state") or {})
  _check_fits(model, config, {"params": params, **model_state}, where)
  mesh = make_mesh() if mesh is None else mesh
  params, model_state = jax.device_put((params, model_state), replicated(mesh))
  return Run(workdir=workdir, config=config, model=model, params=params,
             model_state=model_state, step=step, steps=steps, saved_objective=saved_objective,
             mesh=mesh)


def evaluate(config: Config, *, step: int | None = None, log: bool = False,
             verbose: bool = True) -> dict:
  """Evaluates a checkpoint of the run in `config.loop.workdir` as its training evaluated it;
  writes nothing into the run unless `log`.

  Args:
    config: the run's config (`load_run_config`, with any evaluation or data-path overrides).
    step: the checkpoint to evaluate (default: the newest).
    log: also append the metrics to the run's metrics.jsonl (as `eval/...` at that step).
    verbose: print the step evaluated and the metrics table.

  Returns:
    {"metrics": the report's rows, "final": the metrics, "step": the checkpoint step, "config"}.
  """
  from types import SimpleNamespace  # noqa: PLC0415

  from jaxdml.app.config import to_dict  # noqa: PLC0415
  from jaxdml.app.experiment import format_table, make_task  # noqa: PLC0415
  workdir = config.loop.workdir
  if not workdir:
    raise ValueError("evaluation of a checkpoint needs loop.workdir.")
  run = load(workdir, step, config=config, mesh=build.build_mesh(config))
  task = make_task(config, run.mesh)
  state = SimpleNamespace(params={"model": run.params}, model_state=run.model_state)
  final = {k: float(v) for k, v in task.evaluate(Embedder(run.model, run.mesh), state).items()}
  rows = task.rows(final)
  if verbose:
    print(f"checkpoint step {run.step} of {os.path.abspath(workdir)}")
    print(format_table(rows))
  if log and jax.process_index() == 0:
    from jaxdml.train.metric_writers import MetricsLogger  # noqa: PLC0415
    logger = MetricsLogger(workdir, tensorboard=False)
    logger.log(run.step, **{f"eval/{k}": v for k, v in final.items()})
    logger.close()
  return {"metrics": rows, "final": final, "step": run.step, "config": to_dict(config)}


set_run_loader(load)
