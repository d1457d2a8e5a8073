"""A run on an image dataset: a grain pipeline feeding the sharded trainer, evaluated exactly.

Datasets (`config.dataset`):
  - "cub200", "cars196", "sop": class-disjoint train / test, test evaluated leave-one-out;
  - "inshop": test queries against the gallery;
  - "dyml_vehicle", "dyml_animal": queries against the gallery at each label level (fine, middle,
    coarse), "dyml_product": each level leave-one-out on the test set; metrics per level and
    their mean under "overall/";
  - "image_folder": `data_dir/train/<class>/*` and `data_dir/test/<class>/*`, test leave-one-out.
With several JAX processes each process reads its own part of every global batch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from jaxdml import evaluation
from jaxdml.data import transforms
from jaxdml.train import builders
from jaxdml.train.config import TrainConfig
from jaxdml.train.evaluate import Embedder, leave_one_out_metrics, query_gallery_metrics
from jaxdml.train.inputs import Stacked
from jaxdml.train.run import _say, format_table, prepare_workdir, train_from_config

LEVELS = ("fine", "middle", "coarse")


def _source(config: TrainConfig, split: str) -> Any:
  from jaxdml.data import ImageFolderSource, dml_split  # noqa: PLC0415
  if config.dataset == "image_folder":
    if not config.data_dir:
      raise ValueError("dataset='image_folder' needs config.data_dir (with train/ and test/).")
    return ImageFolderSource(os.path.join(config.data_dir, split))
  return dml_split(config.dataset, split, config.data_dir, config.manual_dir)


def eval_plan(dataset: str) -> list[tuple[str, str, tuple[str, ...]]]:
  """[(level name or "", "loo" | "query_gallery", splits)] of a dataset's test protocol."""
  if dataset == "inshop":
    return [("", "query_gallery", ("query", "gallery"))]
  if dataset in ("dyml_vehicle", "dyml_animal"):
    return [(lv, "query_gallery", (f"query_{lv}", f"gallery_{lv}")) for lv in LEVELS]
  if dataset == "dyml_product":
    return [(lv, "loo", (f"test_{lv}",)) for lv in LEVELS]
  return [("", "loo", ("test",))]


def run_images(config: TrainConfig, *, progress: bool = True, verbose: bool = True,
               eval_only: bool = False) -> dict:
  """Trains and evaluates `config` on an image dataset (see the module docstring)."""
  from jaxdml.data import make_eval_loader, make_train_loader  # noqa: PLC0415
  config.validate()
  if config.model == "small_cnn":
    raise ValueError("image datasets need an image backbone (config.model, e.g. 'resnet50').")
  say = _say(verbose)
  norm = builders.default_normalization(config)
  train_source = _source(config, "train")
  num_classes = int(np.max(train_source.labels)) + 1
  shard_count, shard_index = jax.process_count(), jax.process_index()
  batch = config.classes_per_batch * config.per_class
  steps_per_epoch = max(-(-len(train_source) // (batch * shard_count)), 1)
  loader = make_train_loader(train_source, classes_per_batch=config.classes_per_batch,
                             per_class=config.per_class, image_size=config.image_size,
                             normalization=norm, seed=config.seed,
                             num_workers=config.num_workers, shard_index=shard_index,
                             shard_count=shard_count)
  k = config.steps_per_call or 1
  batches = Stacked(loader, k) if k > 1 else loader
  mesh = builders.build_mesh(config)
  model, load_pretrained = builders.build_model(config)
  objective = builders.build_objective(config, num_classes)
  tx = builders.build_optimizer(config, steps_per_epoch)
  total = builders.epochs_to_steps(config.epochs, steps_per_epoch, k)
  total = prepare_workdir(config, eval_only) or total
  say(f"{config.dataset}: {len(train_source)} training images of {num_classes} classes; "
      f"{config.model} -> {config.embedding_dim}-d, loss {objective.name}, {config.epochs} epochs "
      f"of {steps_per_epoch} steps of {config.classes_per_batch}x{config.per_class} per process, "
      f"{mesh.size} device(s), {shard_count} process(es)")

  plan = eval_plan(config.dataset)
  sources = {split: _source(config, split) for _, _, splits in plan for split in splits}
  embedder = Embedder(model, mesh)
  ks = config.recall_ks
  last: dict[str, Any] = {}

  def embed(state, split):
    it = make_eval_loader(sources[split], batch_size=config.eval_batch_size,
                          image_size=config.image_size, resize_size=config.resize_size,
                          normalization=norm, num_workers=config.num_workers)
    return embedder.loader(state.params, state.model_state, it)

  similarity = builders.eval_similarity(config)

  def eval_fn(state):
    metrics = {}
    for level, kind, splits in plan:
      prefix = f"{level}/" if level else ""
      if kind == "loo":
        emb, lab = embed(state, splits[0])
        m = leave_one_out_metrics(emb, lab, ks=ks, seed=config.seed, mesh=mesh,
                                  clustering=len(lab) <= 20_000, **similarity)
        last[level] = (emb, lab, emb, lab, splits[0], splits[0])
      else:
        q, ql = embed(state, splits[0])
        g, gl = embed(state, splits[1])
        m = query_gallery_metrics(q, ql, g, gl, ks=ks, mesh=mesh, **similarity)
        last[level] = (q, ql, g, gl, splits[0], splits[1])
      metrics.update({prefix + key: v for key, v in m.items()})
    if len(plan) > 1:
      keys = {key.split("/", 1)[1] for key in metrics}
      for key in keys:
        values = [metrics[f"{lv}/{key}"] for lv, _, _ in plan if f"{lv}/{key}" in metrics]
        metrics[f"overall/{key}"] = float(np.mean(values))
    return metrics

  result = train_from_config(
      config, model=model, objective=objective, tx=tx, batches=batches, total_steps=total,
      sample=np.zeros((2, config.image_size, config.image_size, 3), np.float32), mesh=mesh,
      steps_per_epoch=steps_per_epoch, eval_fn=eval_fn, progress=progress,
      load_pretrained=load_pretrained)
  final = result.evals[-1][1]
  rows = {}
  for level, _, _ in plan or [("", "", ())]:
    prefix = f"{level}/" if level else ""
    rows[level or "trained"] = {key[len(prefix):]: v for key, v in final.items()
                                if key.startswith(prefix) and "/" not in key[len(prefix):]}
  say(format_table(rows))
  if config.workdir and jax.process_index() == 0 and last:
    level = plan[0][0]
    path = os.path.join(config.workdir, "retrieval.png")
    getter = lambda src: lambda i: transforms.resize_center_crop(
        transforms.as_rgb_uint8(src[i]["image"]), config.image_size, config.resize_size)
    save_retrieval_grid(path, *last[level][:4], getter(sources[last[level][4]]),
                        getter(sources[last[level][5]]), same_set=plan[0][1] == "loo",
                        **similarity)
    say(f"retrieval examples in {path}")
  return {"metrics": final, "train_seconds": result.seconds,
          "compile_seconds": result.compile_seconds, "losses": result.losses,
          "state": result.state, "evals": result.evals, "resumed_from": result.resumed_from,
          "config": dataclasses.asdict(config)}


def save_retrieval_grid(path, q_emb, q_lab, g_emb, g_lab, q_image, g_image, *, same_set: bool,
                        num_queries: int = 8, k: int = 5, similarity: str = "cosine",
                        c: float = 0.1) -> str:
  """Draws queries and their top-k retrievals (green right, red wrong).

  Args:
    path: PNG file to write.
    q_emb, q_lab, g_emb, g_lab: query and gallery embeddings and labels.
    q_image, g_image: `index -> image` (uint8 [H, W, 3], all the same size) of each set.
    same_set: leave-one-out (the gallery is the query set; the query is left out of its list).
    num_queries: rows, spread evenly over the queries.
    k: neighbours per row.
    similarity, c: "cosine", or "poincare" (hyperbolic distance in the ball of parameter c).
  """
  from jaxdml.train.plots import retrieval_grid  # noqa: PLC0415
  k = min(k, len(g_lab) - (1 if same_set else 0))
  qi = np.linspace(0, len(q_lab) - 1, min(num_queries, len(q_lab))).astype(int)
  q = np.asarray(q_emb, np.float32)[qi]
  g = np.asarray(g_emb, np.float32)
  if similarity == "poincare":
    from jaxdml.geometry import poincare  # noqa: PLC0415
    _, nn_idx = poincare.hyperbolic_knn(q, g, k + (1 if same_set else 0), c=c)
  else:
    _, nn_idx = evaluation.knn(q, g, k=k + (1 if same_set else 0), similarity=similarity)
  nn_idx = np.asarray(nn_idx)
  if same_set:  # leave-one-out: drop the query itself from its list
    nn_idx = np.stack([row[row != i][:k] for row, i in zip(nn_idx, qi, strict=True)])
  queries = np.stack([q_image(int(i)) for i in qi])
  needed = np.unique(nn_idx)
  remap = {int(g): j for j, g in enumerate(needed)}
  gallery = np.stack([g_image(int(i)) for i in needed])
  neighbours = np.vectorize(remap.get)(nn_idx)
  return retrieval_grid(queries, gallery, np.asarray(q_lab)[qi], np.asarray(g_lab)[needed],
                        neighbours, path, num_queries=len(qi), k=k)
