"""The digit-pairs task (shared/design/digits_benchmark.md): in-memory images, one jitted call
per epoch, leave-one-out retrieval on the unseen test classes, raw pixels and the untrained
network as baselines."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from jaxdml.app.build import eval_similarity
from jaxdml.app.config import Config
from jaxdml.app.tasks import Task
from jaxdml.train.batches import ArrayBatches, Stacked
from jaxdml.train.evaluate import leave_one_out_metrics

#: what the images are called in error messages
IMAGES = "digit-pair"


def load(config: Config):
  """The `DigitPairs` of `config`'s data section."""
  from jaxdml.data import make_digit_pairs  # noqa: PLC0415
  d = config.data
  return make_digit_pairs(d.data_seed, digits_per_image=d.digits_per_image,
                          train_images_per_class=d.train_images_per_class,
                          test_images_per_class=d.test_images_per_class)


def input_shape(config: Config) -> tuple[int, int]:
  """One model input's shape: [8, 8 * digits per image]."""
  return (8, 8 * config.data.digits_per_image)


def split(config: Config, name: str):
  """(images, labels, ids) of the "train" or "test" split."""
  if name not in ("train", "test"):
    raise ValueError(f"the digit pairs have splits 'train' and 'test', got {name!r}.")
  data = load(config)
  images, labels = ((data.train_images, data.train_labels) if name == "train"
                    else (data.test_images, data.test_labels))
  return images, np.asarray(labels), np.arange(len(labels))


def training_batches(config: Config, images: np.ndarray, labels: np.ndarray):
  """The training stream of an in-memory benchmark: (batches, steps per epoch).

  A whole epoch per item (one jitted `lax.scan` call) unless `loop.steps_per_call` is set; the
  sampler is `data.sampler` (P x M classes, or plain random batches).
  """
  d = config.data
  stack = config.loop.steps_per_call is None
  extra = {"sampler": "random", "batch_size": d.train_batch_size} if d.sampler == "random" else {}
  batches = ArrayBatches(images, labels.astype(np.int32), classes_per_batch=d.classes_per_batch,
                         per_class=d.per_class, seed=config.seed, stack_epoch=stack, **extra)
  steps_per_epoch = batches.steps_per_epoch
  if not stack and config.loop.steps_per_call > 1:
    batches = Stacked(batches, config.loop.steps_per_call)
  return batches, steps_per_epoch


def make_task(config: Config, mesh: Mesh) -> Task:
  """The digit-pairs `Task` of `config` (its `data` section sets the benchmark's sizes)."""
  data = load(config)
  classes, train_labels = np.unique(data.train_labels, return_inverse=True)
  batches, steps_per_epoch = training_batches(config, data.train_images, train_labels)
  ks = config.eval.recall_ks
  similarity = eval_similarity(config)

  def evaluate(embedder, state):
    emb = embedder.arrays(state.params, state.model_state, data.test_images)
    return leave_one_out_metrics(emb, data.test_labels, ks=ks, mesh=mesh, **similarity)

  def baselines(embedder, model):
    raw = data.test_images.reshape(len(data.test_images), -1)
    variables = dict(model.init(jax.random.PRNGKey(config.seed), data.test_images[:2]))
    params = {"model": variables.pop("params")}
    untrained = embedder.arrays(params, variables, data.test_images)
    return {"raw pixels": leave_one_out_metrics(raw, data.test_labels, ks=ks),
            "untrained": leave_one_out_metrics(untrained, data.test_labels, ks=ks,
                                               **similarity)}

  def save_retrieval(path, embedder, state):
    from jaxdml.train.plots import save_retrieval_grid  # noqa: PLC0415
    emb = embedder.arrays(state.params, state.model_state, data.test_images)
    gray = np.clip(data.test_images * 255, 0, 255).astype(np.uint8)
    image = lambda i: np.repeat(gray[i][..., None], 3, -1)
    return save_retrieval_grid(path, emb, data.test_labels, emb, data.test_labels, image, image,
                               same_set=True, **similarity)

  summary = (f"digit pairs: {len(data.train_images)} train images of {len(classes)} classes, "
             f"{len(data.test_images)} test images of {len(np.unique(data.test_labels))} "
             "unseen classes")
  return Task(summary=summary, num_classes=len(classes), batches=batches,
              steps_per_epoch=steps_per_epoch, sample=data.train_images[:2], evaluate=evaluate,
              rows=lambda final: {"trained": final}, baselines=baselines,
              save_retrieval=save_retrieval)
