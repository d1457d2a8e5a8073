"""The image-data-set task: a grain pipeline of training batches, evaluated exactly.

Datasets (`config.data.dataset`):
  - "cub200", "cars196", "sop": class-disjoint train / test, test evaluated leave-one-out;
  - "inshop": test queries against the gallery;
  - "dyml_vehicle", "dyml_animal": queries against the gallery at each label level (fine, middle,
    coarse), "dyml_product": each level leave-one-out on the test set; metrics per level and
    their mean under "overall/";
  - "image_folder": `data_dir/train/<class>/*` and `data_dir/test/<class>/*`, test leave-one-out.
With several JAX processes each process reads its own part of every global batch.

Every image of every split is decoded once when the task is built (`jaxdml.data.verify`), so a
corrupt file is reported, with its path, before training rather than when a batch first holds
it; `data.undecodable="skip"` leaves such images out instead (and says how many). With a
workdir the check's result is kept in `workdir/data_check.json`, keyed by the files' names,
sizes and modification times: a resumed run reads it instead of decoding everything again.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxdml.app.build import default_normalization, eval_similarity
from jaxdml.app.config import Config
from jaxdml.app.tasks import Task
from jaxdml.data import transforms
from jaxdml.train.batches import Stacked
from jaxdml.train.evaluate import leave_one_out_metrics, query_gallery_metrics

LEVELS = ("fine", "middle", "coarse")
CHECK_FILE = "data_check.json"  # in the workdir: which images were found not to decode


def _note(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr)


def _source(config: Config, split: str) -> Any:
  """The source of a split, once its images are known to decode (see the module docstring)."""
  from jaxdml.data import ImageFolderSource, dml_split, verify_images  # noqa: PLC0415
  d = config.data
  if d.dataset == "image_folder":
    if not d.data_dir:
      raise ValueError("dataset='image_folder' needs data.data_dir (with train/ and test/).")
    source = ImageFolderSource(os.path.join(d.data_dir, split))
  else:
    source = dml_split(d.dataset, split, d.data_dir, d.manual_dir)
  workdir = config.loop.workdir
  return verify_images(
      source, mode=d.undecodable, name=f"{d.dataset} {split!r}",
      cache=os.path.join(workdir, CHECK_FILE) if workdir else None, log=_note,
      hint="Replace or remove these files, or set data.undecodable=skip to train and evaluate "
           "without them.")


def eval_plan(dataset: str) -> list[tuple[str, str, tuple[str, ...]]]:
  """[(level name or "", "loo" | "query_gallery", splits)] of a dataset's test protocol."""
  if dataset == "inshop":
    return [("", "query_gallery", ("query", "gallery"))]
  if dataset in ("dyml_vehicle", "dyml_animal"):
    return [(lv, "query_gallery", (f"query_{lv}", f"gallery_{lv}")) for lv in LEVELS]
  if dataset == "dyml_product":
    return [(lv, "loo", (f"test_{lv}",)) for lv in LEVELS]
  return [("", "loo", ("test",))]


def make_task(config: Config, mesh: Mesh) -> Task:
  """The `Task` of an image data set (see the module docstring)."""
  from jaxdml.data import make_eval_loader, make_train_loader  # noqa: PLC0415
  d = config.data
  norm = default_normalization(config)
  train_source = _source(config, "train")
  num_classes = int(np.max(train_source.labels)) + 1
  shard_count, shard_index = jax.process_count(), jax.process_index()
  batch = d.classes_per_batch * d.per_class
  steps_per_epoch = max(-(-len(train_source) // (batch * shard_count)), 1)
  loader = make_train_loader(train_source, classes_per_batch=d.classes_per_batch,
                             per_class=d.per_class, image_size=d.image_size,
                             normalization=norm, seed=config.seed, num_workers=d.num_workers,
                             shard_index=shard_index, shard_count=shard_count)
  k = config.loop.steps_per_call or 1
  batches = Stacked(loader, k) if k > 1 else loader
  plan = eval_plan(d.dataset)
  sources = {split: _source(config, split) for _, _, splits in plan for split in splits}
  ks = config.eval.recall_ks
  similarity = eval_similarity(config)
  last: dict[str, Any] = {}

  def embed(embedder, state, split):
    it = make_eval_loader(sources[split], batch_size=config.eval.batch_size,
                          image_size=d.image_size, resize_size=d.resize_size,
                          normalization=norm, num_workers=d.num_workers)
    return embedder.loader(state.params, state.model_state, it)

  def evaluate(embedder, state):
    metrics = {}
    for level, kind, splits in plan:
      prefix = f"{level}/" if level else ""
      if kind == "loo":
        emb, lab = embed(embedder, state, splits[0])
        m = leave_one_out_metrics(emb, lab, ks=ks, seed=config.seed, mesh=mesh,
                                  clustering=len(lab) <= 20_000, **similarity)
        last[level] = (emb, lab, emb, lab, splits[0], splits[0])
      else:
        q, ql = embed(embedder, state, splits[0])
        g, gl = embed(embedder, state, splits[1])
        m = query_gallery_metrics(q, ql, g, gl, ks=ks, mesh=mesh, **similarity)
        last[level] = (q, ql, g, gl, splits[0], splits[1])
      metrics.update({prefix + key: v for key, v in m.items()})
    if len(plan) > 1:
      keys = {key.split("/", 1)[1] for key in metrics}
      for key in keys:
        values = [metrics[f"{lv}/{key}"] for lv, _, _ in plan if f"{lv}/{key}" in metrics]
        metrics[f"overall/{key}"] = float(np.mean(values))
    return metrics

  def rows(final):
    if len(plan) == 1:
      return {"trained": dict(final)}
    out = {}
    for level in [lv for lv, _, _ in plan] + ["overall"]:
      prefix = f"{level}/"
      out[level] = {key[len(prefix):]: v for key, v in final.items() if key.startswith(prefix)}
    return out

  def save_retrieval(path, embedder, state):
    from jaxdml.train.plots import save_retrieval_grid  # noqa: PLC0415
    level = plan[0][0]
    if level not in last:
      evaluate(embedder, state)
    getter = lambda src: lambda i: transforms.resize_center_crop(
        transforms.as_rgb_uint8(src[i]["image"]), d.image_size, d.resize_size)
    return save_retrieval_grid(path, *last[level][:4], getter(sources[last[level][4]]),
                               getter(sources[last[level][5]]), same_set=plan[0][1] == "loo",
                               **similarity)

  summary = (f"{d.dataset}: {len(train_source)} training images of {num_classes} classes; "
             f"{config.model.name} -> {config.model.embedding_dim}-d, "
             f"{steps_per_epoch} steps an epoch of {d.classes_per_batch}x{d.per_class} per "
             f"process, {shard_count} process(es)")
  return Task(summary=summary, num_classes=num_classes, batches=batches,
              steps_per_epoch=steps_per_epoch,
              sample=np.zeros((2, d.image_size, d.image_size, 3), np.float32), evaluate=evaluate,
              rows=rows, save_retrieval=save_retrieval)
