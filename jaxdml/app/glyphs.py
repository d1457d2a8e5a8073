"""The glyphs task (shared/design/glyphs_benchmark.md): in-memory images of real typefaces,
one jitted call per epoch, leave-one-out retrieval on the unseen test classes scored at each
level of the label hierarchy (code point, decomposition base, script) and their mean, raw pixels
and the untrained network as baselines.

The metrics of an evaluation are the fine level's under their plain names ("map@r",
"recall@1", ...), the other levels' under "middle/..." and "coarse/...", and the means over the
three levels of MAP@R and Recall@1 under "mean/map@r" and "mean/recall@1". Clustering (NMI) and
the full-ranking mAP ("map") are scored at the fine level only (the latter costs minutes at the
script level, whose classes hold thousands of images). The evaluation uses the first
`data.glyphs.eval_images_per_class` test images of each class (`eval_subset`). With
`data.glyphs.instance_landmarks` the instance-retrieval variant is scored too, by the Revisited
Oxford / Paris protocol: "instances/easy/map", "instances/medium/map", "instances/hard/map" and
their mP@k.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from jaxdml.app.build import eval_similarity
from jaxdml.app.config import Config
from jaxdml.app.digit_pairs import training_batches
from jaxdml.app.tasks import Task
from jaxdml.train.evaluate import leave_one_out_metrics

#: what the images are called in error messages
IMAGES = "glyph"
#: the hierarchy's levels, fine to coarse, and their names in the report
LEVELS = {"fine": "code point", "middle": "base", "coarse": "script"}
MEAN_KEYS = ("map@r", "recall@1")


def load(config: Config):
  """The `jaxdml.data.Glyphs` of `config` (built once per process, then from the disk cache)."""
  g = config.data.glyphs
  return _load(config.data.data_seed, g.size, g.min_faces, g.images_per_class, g.unseen_faces,
               g.pool_fraction, g.max_classes)


@functools.lru_cache(maxsize=2)
def _load(seed, size, min_faces, images_per_class, unseen_faces, pool_fraction, max_classes):
  from jaxdml.data.glyphs import make_glyphs  # noqa: PLC0415
  return make_glyphs(seed, size=size, min_faces=min_faces, images_per_class=images_per_class,
                     unseen_faces=unseen_faces, pool_fraction=pool_fraction,
                     max_classes=max_classes)


def load_instances(config: Config):
  """The `jaxdml.data.GlyphInstances` of `config` (None when `data.glyphs.instance_landmarks`
  is 0), after checking that its landmarks are classes the run does not train on."""
  g = config.data.glyphs
  if not g.instance_landmarks:
    return None
  inst = _load_instances(config.data.data_seed, g.size, g.instance_landmarks, g.instance_views,
                         g.instance_distractors, g.min_faces)
  data = load(config)
  trained = set(np.asarray(data.code_points)[np.unique(data.train_labels)].tolist())
  landmarks = set(np.asarray(inst.code_points)[np.asarray(inst.query_labels)].tolist())
  if trained & landmarks:
    raise ValueError(f"data.glyphs.instance_landmarks: {len(trained & landmarks)} of the "
                     f"{len(landmarks)} landmarks are training classes of this run (its "
                     "data.glyphs settings split the classes differently from the instance "
                     "variant's, which uses all faces and no pool); unset pool_fraction / "
                     "max_classes or turn the instance evaluation off.")
  return inst


@functools.lru_cache(maxsize=2)
def _load_instances(seed, size, num_landmarks, views, distractors, min_faces):
  from jaxdml.data.glyphs import make_glyph_instances  # noqa: PLC0415
  return make_glyph_instances(seed, size=size, num_landmarks=num_landmarks,
                              views_per_landmark=views, num_distractors=distractors,
                              min_faces=min_faces)


def instance_metrics(embed, inst, *, mesh=None) -> dict[str, float]:
  """Easy / Medium / Hard mAP and mP@k of the instance variant under "instances/...";
  `embed(images) -> [N, d]` embeds float images (`to_inputs`). Cosine similarity."""
  from jaxdml.evaluation import landmark_metrics  # noqa: PLC0415
  queries = embed(to_inputs(inst.query_images))
  database = embed(to_inputs(inst.database_images))
  m = landmark_metrics(queries, database, inst.ground_truth(), similarity="cosine", mesh=mesh)
  return {f"instances/{k}": float(v) for k, v in m.items()}


def input_shape(config: Config) -> tuple[int, int]:
  """One model input's shape: [size, size]."""
  size = config.data.glyphs.size
  return (size, size)


def split(config: Config, name: str):
  """(uint8 images, fine labels, ids) of the "train", "test" or "pool" split."""
  if name not in ("train", "test", "pool"):
    raise ValueError(f"the glyphs have splits 'train', 'test' and 'pool', got {name!r}.")
  data = load(config)
  images, labels = getattr(data, f"{name}_images"), getattr(data, f"{name}_labels")
  return images, np.asarray(labels), np.arange(len(labels))


def to_inputs(images: np.ndarray) -> np.ndarray:
  """uint8 [N, S, S] -> float32 in [0, 1], the network's inputs."""
  return np.asarray(images, np.float32) / np.float32(255.0)


def level_metrics(embeddings: np.ndarray, data, labels: np.ndarray, *, ks, mesh=None,
                  **similarity) -> dict[str, float]:
  """Leave-one-out metrics of `embeddings` at every level of the glyph hierarchy and their
  means (key names in the module docstring)."""
  out = {}
  for level, lab in data.levels(labels).items():
    fine = level == "fine"
    m = leave_one_out_metrics(embeddings, lab, ks=ks, mesh=mesh, clustering=fine,
                              full_map=fine, **similarity)
    out.update({(k if level == "fine" else f"{level}/{k}"): v for k, v in m.items()})
  for key in MEAN_KEYS:
    if key in out:
      out[f"mean/{key}"] = float(np.mean([out[key if level == "fine" else f"{level}/{key}"]
                                          for level in LEVELS]))
  return out


def eval_subset(labels: np.ndarray, per_class: int | None) -> np.ndarray:
  """Indices (ascending) of the first `per_class` images of each label (None: all)."""
  labels = np.asarray(labels)
  if per_class is None:
    return np.arange(len(labels))
  order = np.argsort(labels, kind="stable")
  sorted_labels = labels[order]
  first = np.searchsorted(sorted_labels, sorted_labels, side="left")
  rank = np.arange(len(labels)) - first  # position of each image within its class
  return np.sort(order[rank < per_class])


def instance_rows(metrics: dict[str, float]) -> dict[str, float]:
  """The instance variant's figures of `metrics` without their "instances/" prefix."""
  return {k[len("instances/"):]: v for k, v in metrics.items() if k.startswith("instances/")}


def level_rows(name: str, metrics: dict[str, float]) -> dict[str, dict[str, float]]:
  """One report row per level ("<name>, code point", ...) and one of the means."""
  rows = {}
  for level, label in LEVELS.items():
    prefix = "" if level == "fine" else f"{level}/"
    rows[f"{name}, {label}"] = {k[len(prefix):]: v for k, v in metrics.items()
                                if k.startswith(prefix) and (prefix or "/" not in k)}
  rows[f"{name}, mean"] = {k[len("mean/"):]: v for k, v in metrics.items()
                           if k.startswith("mean/")}
  return rows


def make_task(config: Config, mesh: Mesh) -> Task:
  """The glyphs `Task` of `config` (its `data.glyphs` section sets the benchmark)."""
  data = load(config)
  keep = eval_subset(data.test_labels, config.data.glyphs.eval_images_per_class)
  test_images, test_labels = data.test_images[keep], np.asarray(data.test_labels)[keep]
  train_x, test_x = to_inputs(data.train_images), to_inputs(test_images)
  classes, train_labels = np.unique(data.train_labels, return_inverse=True)
  batches, steps_per_epoch = training_batches(config, train_x, train_labels)
  ks = config.eval.recall_ks
  similarity = eval_similarity(config)

  inst = load_instances(config)

  def evaluate(embedder, state):
    emb = embedder.arrays(state.params, state.model_state, test_x)
    out = level_metrics(emb, data, test_labels, ks=ks, mesh=mesh, **similarity)
    if inst is not None:
      embed = lambda x: embedder.arrays(state.params, state.model_state, x)  # noqa: E731
      out.update(instance_metrics(embed, inst, mesh=mesh))
    return out

  def baselines(embedder, model):
    raw = test_x.reshape(len(test_x), -1)
    variables = dict(model.init(jax.random.PRNGKey(config.seed), test_x[:2]))
    params = {"model": variables.pop("params")}
    untrained = embedder.arrays(params, variables, test_x)
    rows = {**level_rows("raw pixels", level_metrics(raw, data, test_labels, ks=ks)),
            **level_rows("untrained", level_metrics(untrained, data, test_labels, ks=ks,
                                                    **similarity))}
    if inst is not None:
      flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
      rows["raw pixels, instances"] = instance_rows(instance_metrics(flat, inst))
      rows["untrained, instances"] = instance_rows(instance_metrics(
          lambda x: embedder.arrays(params, variables, x), inst))
    return rows

  def save_retrieval(path, embedder, state):
    from jaxdml.train.plots import save_retrieval_grid  # noqa: PLC0415
    emb = embedder.arrays(state.params, state.model_state, test_x)
    image = lambda i: np.repeat(test_images[i][..., None], 3, -1)
    return save_retrieval_grid(path, emb, test_labels, emb, test_labels, image, image,
                               same_set=True, **similarity)

  num_test = len(np.unique(test_labels))
  pool = (f", an unlabelled pool of {len(data.pool_images)} images"
          if len(data.pool_images) else "")
  summary = (f"glyphs: {len(train_x)} train images of {len(classes)} classes, {len(test_x)} "
             f"test images of {num_test} unseen classes{pool} ({config.data.glyphs.size}x"
             f"{config.data.glyphs.size}, {len(data.faces)} typefaces)")
  return Task(summary=summary, num_classes=len(classes), batches=batches,
              steps_per_epoch=steps_per_epoch, sample=train_x[:2], evaluate=evaluate,
              rows=lambda final: {**level_rows("trained", final),
                                  **({} if inst is None else
                                     {"trained, instances": instance_rows(final)})},
              baselines=baselines,
              save_retrieval=save_retrieval)
