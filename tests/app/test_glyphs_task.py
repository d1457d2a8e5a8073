"""The glyphs task: its evaluation subset, per-level metrics, configs and a tiny run end to end."""

import dataclasses

import numpy as np
import pytest

import jaxdml
from jaxdml.app import glyphs as task
from jaxdml.app.config import Config, GlyphsConfig, apply_overrides
from jaxdml.configs import glyphs, recipes
from jaxdml.data import class_balanced_batches
from jaxdml.evaluation import retrieval_metrics

TINY = ["data.glyphs.max_classes=40", "data.glyphs.images_per_class=4",
        "data.glyphs.eval_images_per_class=3", "data.classes_per_batch=8", "data.per_class=2",
        "loop.epochs=2", "loop.tensorboard=false", "model.embedding_dim=16",
        "eval.recall_ks=[1,2]"]


INSTANCES = ["data.glyphs.instance_landmarks=6", "data.glyphs.instance_views=4",
             "data.glyphs.instance_distractors=5"]


def test_instance_metrics_of_an_oracle_are_perfect_and_of_a_shuffle_are_not():
  """An embedding that maps every image to its landmark's one-hot vector (distractors to a
  vector of their own) ranks all positives first, so Easy / Medium / Hard mAP are 1; the same
  with the landmarks of the views shuffled is far from it."""
  config = apply_overrides(glyphs.get_config(), ["data.glyphs.max_classes=40", *INSTANCES])
  inst = task.load_instances(config)
  labels = {img.tobytes(): lab for img, lab in zip(inst.query_images, inst.query_labels,
                                                    strict=True)}
  labels.update({img.tobytes(): lab for img, lab in zip(
      inst.database_images, inst.database_labels, strict=True)})
  ids = {lab: i for i, lab in enumerate(sorted(set(labels.values())))}

  def oracle(x, perm=None):
    lab = np.array([ids[labels[(np.asarray(img) * 255).round().astype(np.uint8).tobytes()]]
                    for img in x])
    if perm is not None and len(x) == len(inst.database_images):
      lab = lab[perm]
    return np.eye(len(ids), dtype=np.float32)[lab] + 1e-3

  m = task.instance_metrics(oracle, inst)
  for protocol in ("easy", "medium", "hard"):
    assert m[f"instances/{protocol}/map"] == pytest.approx(1.0), protocol
  perm = np.random.default_rng(0).permutation(len(inst.database_images))
  assert task.instance_metrics(lambda x: oracle(x, perm), inst)["instances/medium/map"] < 0.6


def test_instance_landmarks_must_not_be_training_classes(monkeypatch):
  config = apply_overrides(glyphs.get_config(), ["data.glyphs.max_classes=40", *INSTANCES])
  inst = task.load_instances(config)
  data = task.load(config)
  fake = dataclasses.replace(data, code_points=inst.code_points,
                             train_labels=np.asarray(inst.query_labels[:1]))
  monkeypatch.setattr(task, "load", lambda c: fake)
  with pytest.raises(ValueError, match="1 of the 6 landmarks are training classes"):
    task.load_instances(config)
  with pytest.raises(ValueError, match="instance_landmarks: the landmark protocol ranks by"):
    apply_overrides(recipes.glyph_hier("hyperbolic", None), INSTANCES)


def test_the_report_puts_the_instance_rows_in_a_table_of_their_own():
  from jaxdml.app.experiment import format_table

  text = format_table({"trained, code point": {"recall@1": 0.5, "map@r": 0.25},
                       "trained, instances": {"easy/map": 0.75, "medium/map": 0.5}})
  first, second = text.split("\n\n")
  assert "recall@1" in first and "easy/map" not in first and "nan" not in text
  assert second.splitlines()[0].split() == ["model", "easy/map", "medium/map"]
  assert second.splitlines()[2].split() == ["trained,", "instances", "0.7500", "0.5000"]


def test_eval_subset_keeps_the_first_images_of_each_class_in_order():
  labels = np.array([3, 1, 3, 3, 1, 2, 3, 1, 1])
  np.testing.assert_array_equal(task.eval_subset(labels, 2), [0, 1, 2, 4, 5])
  np.testing.assert_array_equal(task.eval_subset(labels, 3), [0, 1, 2, 3, 4, 5, 7])
  np.testing.assert_array_equal(task.eval_subset(labels, None), np.arange(9))
  np.testing.assert_array_equal(task.eval_subset(labels, 10), np.arange(9))


def test_eval_images_per_class_is_validated():
  with pytest.raises(ValueError, match="eval_images_per_class must be >= 2"):
    GlyphsConfig(eval_images_per_class=1)
  assert GlyphsConfig().eval_images_per_class == 8
  assert GlyphsConfig(eval_images_per_class=None).eval_images_per_class is None


class _Levels:
  """A stand-in for `Glyphs.levels`: fine label k has middle k // 2 and coarse k // 4."""

  @staticmethod
  def levels(labels):
    labels = np.asarray(labels)
    return {"fine": labels, "middle": labels // 2, "coarse": labels // 4}


def test_level_metrics_scores_each_level_as_its_own_labels():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(8), 5)
  emb = rng.normal(size=(40, 6)).astype(np.float32) + labels[:, None] * 0.3
  out = task.level_metrics(emb, _Levels, labels, ks=(1, 2))
  for level, lab in _Levels.levels(labels).items():
    ref = retrieval_metrics(emb, lab, ks=(1, 2), full_map=level == "fine")
    prefix = "" if level == "fine" else f"{level}/"
    for k, v in ref.items():
      assert out[prefix + k] == pytest.approx(v, abs=1e-6), (level, k)
  assert "middle/map" not in out and "coarse/map" not in out and "map" in out
  assert "nmi" in out and "middle/nmi" not in out
  assert out["mean/map@r"] == pytest.approx(
      np.mean([out["map@r"], out["middle/map@r"], out["coarse/map@r"]]))
  rows = task.level_rows("trained", out)
  assert list(rows) == ["trained, code point", "trained, base", "trained, script",
                        "trained, mean"]
  assert rows["trained, script"]["map@r"] == out["coarse/map@r"]
  assert rows["trained, mean"] == {"map@r": out["mean/map@r"], "recall@1": out["mean/recall@1"]}


def test_the_glyphs_recipe():
  c = glyphs.get_config()
  assert (c.data.dataset, c.model.name, c.objective.loss) == ("glyphs", "res_cnn",
                                                              "multi_similarity")
  assert dict(c.objective.loss_kwargs) == {"alpha": 2.0, "beta": 50.0, "base": 0.5}
  assert (c.data.classes_per_batch, c.data.per_class, c.loop.epochs) == (32, 4, 8)
  assert (c.optim.optimizer, c.optim.learning_rate, c.optim.weight_decay) == ("adamw", 1e-3,
                                                                              1e-4)


def test_the_method_runs_at_their_published_settings():
  base = glyphs.get_config()
  off, on, none = (recipes.glyph_das(m) for m in ("off", "on", "none"))
  for c in (off, on, none):  # Table 1's MS with its miner, 2 images per class, batch 128
    assert dict(c.objective.loss_kwargs) == {"alpha": 2.0, "beta": 40.0, "base": 0.5}
    assert (c.objective.miner, dict(c.objective.miner_kwargs)) == ("multi_similarity",
                                                                   {"epsilon": 0.1})
    assert (c.data.classes_per_batch, c.data.per_class) == (64, 2)
    assert (c.model, c.optim, c.loop) == (base.model, base.optim, base.loop)
  assert none.objective.methods == {}
  assert on.objective.methods["das"].generation == "on"
  assert off.objective.methods["das"] == dataclasses.replace(on.objective.methods["das"],
                                                             generation="off")
  assert on.objective.methods["das"].num_scaled_dims == 8

  for loc in recipes.GLYPH_METRIX_LOCATIONS:
    c = recipes.glyph_metrix(loc)
    assert dict(c.objective.loss_kwargs) == {"alpha": 17.97, "beta": 75.66, "base": 0.77}
    assert dict(c.objective.miner_kwargs) == {"epsilon": 0.39}
    assert (c.data.sampler, c.data.train_batch_size) == ("random", 100)
    assert (c.objective.methods["metrix"].location if loc else None) == loc

  plain, ball, hier = (recipes.glyph_hier("linear", None), recipes.glyph_hier("hyperbolic",
                       None), recipes.glyph_hier("hyperbolic", 5.0))
  for c in (plain, ball, hier):  # HIER's optimiser, at the official absolute rates
    o = c.optim
    assert (o.eps, o.weight_decay, o.loss_weight_decay, o.clip_value) == (1e-4, 1e-2, None, 10)
    assert o.learning_rate * o.loss_lr_mult == pytest.approx(1.0)  # 1e-4 x 1e4
  s = hier.objective.methods["hier"]
  assert (s.num_proxies, s.lambda2, s.weight_decay) == (512, 5.0, 1e-2)
  assert hier.optim.learning_rate * s.lr_mult == pytest.approx(5e-3)  # 1e-4 x 50
  assert (plain.model.head, ball.model.head) == ("linear", "hyperbolic")
  assert ball.objective.methods == {}

  with pytest.raises(ValueError, match="method must be one of"):
    recipes.glyph_das("half")
  with pytest.raises(ValueError, match="location must be one of"):
    recipes.glyph_metrix("pixels")
  with pytest.raises(ValueError, match="Poincare ball"):
    recipes.glyph_hier("linear", 0.5)


def test_the_glam_recipes_switch_exactly_their_branches():
  branches = ("local_channel", "local_spatial", "global_channel", "global_spatial")
  base = recipes.glyph_glam("baseline")
  assert base.model.neck is None and base.model.pooling == "gem"
  assert (base.model.embedding_dim, base.data.glyphs.size) == (512, 64)
  assert (base.objective.loss, base.objective.loss_kwargs) == ("arcface",
                                                               {"margin": 0.3, "scale": 30.0})
  assert base.data.glyphs.instance_landmarks == 200 and base.data.sampler == "random"
  for variant, on in recipes.GLYPH_GLAM_VARIANTS.items():
    c = recipes.glyph_glam(variant)
    assert dataclasses.replace(c, name=base.name, model=base.model) == base, variant
    if on:
      assert c.model.neck == "glam" and {b for b in branches if c.model.neck_kwargs[b]} == set(on)
  assert len(recipes.GLYPH_GLAM_VARIANTS["global_local"]) == 4
  with pytest.raises(ValueError, match="variant must be one of"):
    recipes.glyph_glam("everything")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from jaxdml.app.experiment import run

  mp = pytest.MonkeyPatch()
  mp.setenv("JAXDML_CACHE", str(tmp_path_factory.mktemp("glyph-cache")))
  workdir = tmp_path_factory.mktemp("glyph-run")
  config = apply_overrides(glyphs.get_config(), [*TINY, f"loop.workdir={workdir}", *INSTANCES])
  try:
    yield config, run(config, progress=False, verbose=False)
  finally:
    mp.undo()


def test_a_tiny_glyphs_run_reports_every_level_and_its_baselines(trained):
  config, out = trained
  final = out["final"]
  data = task.load(config)
  keep = task.eval_subset(data.test_labels, 3)
  assert len(keep) == 3 * len(np.unique(data.test_labels))
  for key in ("map@r", "middle/map@r", "coarse/map@r", "recall@2", "nmi", "mean/map@r"):
    assert 0.0 <= final[key] <= 1.0, key
  rows = out["metrics"]
  for name in ("raw pixels", "untrained", "trained"):
    for level in ("code point", "base", "script", "mean", "instances"):
      assert f"{name}, {level}" in rows
  for protocol in ("easy", "medium", "hard"):
    assert 0.0 < final[f"instances/{protocol}/map"] <= 1.0
    assert rows["trained, instances"][f"{protocol}/map"] == final[f"instances/{protocol}/map"]
  _, train_labels = np.unique(data.train_labels, return_inverse=True)
  per_epoch = len(class_balanced_batches(train_labels, 8, 2, seed=0))
  assert out["step"] == 2 * per_epoch  # the run finished its epochs
  assert np.isfinite(out["losses"]).all()


def test_a_glyphs_run_loads_and_embeds_as_its_evaluation(trained):
  config, out = trained
  run = jaxdml.load(config.loop.workdir)
  images, labels, _ = run.split("test")
  data = task.load(config)
  np.testing.assert_array_equal(labels, data.test_labels)
  keep = task.eval_subset(labels, 3)
  emb = run.embed(images[keep])
  again = task.level_metrics(emb, data, labels[keep], ks=(1, 2))
  for key in ("map@r", "middle/map@r", "coarse/map@r", "recall@1"):
    assert again[key] == pytest.approx(out["final"][key], abs=1e-5), key


def test_glyphs_needs_a_small_model():
  with pytest.raises(ValueError, match="res_cnn|small"):
    apply_overrides(Config(), ["data.dataset=glyphs", "model.name=resnet50"])
