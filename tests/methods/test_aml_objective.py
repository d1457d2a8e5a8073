"""AML as an objective: the in-batch tuples against a plain loop, Contr+ against Contr, the
"inner" term against the symmetric loss, the teacher pool, the frozen teacher in the state,
errors, and a student trained from a teacher run through the CLI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdml
from jaxdml import cli, losses, objectives
from jaxdml.index import Index, asymmetric_evaluation, split_queries
from jaxdml.methods import aml


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _linear_teacher(dim_in=8, dim=8, seed=0):
  w = jax.random.normal(jax.random.PRNGKey(seed), (dim_in, dim))
  return aml.Teacher(lambda v, x: _unit(x @ v["w"]), {"w": w}, dim, (dim_in,))


def _case(seed=0, b=12, classes=4, d=8):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(k1, (b, d))
  z = _unit(jax.random.normal(k2, (b, d)))
  y = jnp.arange(b) % classes
  return x, z, y


def _naive_tuple_losses(q, t, y, pos, has_pos, bank, bank_y, n, margin):
  """Contr, Contr+, triplet and MS per tuple by plain loops (float64)."""
  q, t, bank = (np.asarray(a, np.float64) for a in (q, t, bank))
  y, bank_y = np.asarray(y), np.asarray(bank_y)
  out = {"contrastive": 0.0, "contrastive_plus": 0.0, "triplet": 0.0, "multi_similarity": 0.0}
  for i in range(len(q)):
    ranks = np.argsort(-(bank @ q[i]), kind="stable")
    taken, negs = {y[i]}, []
    for r in ranks:
      if len(negs) == n:
        break
      if bank_y[r] < 0 or bank_y[r] in taken:
        continue
      taken.add(bank_y[r])
      negs.append(bank[r])
    positives = [t[int(pos[i])]] if has_pos[i] else []

    def dist(x, i=i):
      return np.linalg.norm(q[i] - x + 1e-6)

    neg_part = sum(0.5 * max(margin - dist(x), 0.0) ** 2 for x in negs)
    out["contrastive"] += sum(0.5 * dist(x) ** 2 for x in positives) + neg_part
    out["contrastive_plus"] += sum(0.5 * dist(x) ** 2 for x in [t[i]] + positives) + neg_part
    if positives:
      dp = np.sum((q[i] - positives[0]) ** 2)
      out["triplet"] += sum(max(dp - np.sum((q[i] - x) ** 2) + margin, 0.0) for x in negs)
    sp = [q[i] @ x for x in positives]
    sn = [q[i] @ x for x in negs]
    out["multi_similarity"] += (np.log1p(sum(np.exp(-2.0 * (s - 0.5)) for s in sp)) / 2.0
                                + np.log1p(sum(np.exp(40.0 * (s - 0.5)) for s in sn)) / 40.0)
  return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_pool", [False, True])
def test_tuple_losses_equal_a_plain_loop(seed, with_pool):
  x, z, y = _case(seed, b=10, classes=4)
  y = y.at[9].set(7)  # a class with one image: no positive in the batch
  t = _unit(x)
  key = jax.random.PRNGKey(seed + 10)
  pool = None
  bank, bank_y = t, y
  if with_pool:
    pool = aml.init_pool(16, 8)
    extra = _unit(jax.random.normal(jax.random.PRNGKey(99), (10, 8)))
    pool = aml.update_pool(pool, extra, jnp.arange(10) % 6 + 2)  # 6 slots stay empty
    bank = jnp.concatenate([t, pool.descriptors])
    bank_y = jnp.concatenate([y, pool.labels])
  pos, has_pos = aml.random_positives(y, key)
  assert not bool(has_pos[9]) and bool(jnp.all(has_pos[:9]))
  assert bool(jnp.all((y[pos] == y) | ~has_pos)) and bool(jnp.all(pos != jnp.arange(10)))
  want = _naive_tuple_losses(z, t, y, pos, has_pos, bank, bank_y, 5, 0.7)
  for loss, value in want.items():
    got = aml.tuple_loss(aml.Settings(loss=loss), z, t, y, key, pool)
    assert float(got) == pytest.approx(value, rel=2e-5, abs=1e-6), loss


def test_contr_plus_is_contr_with_the_teachers_own_vector():
  x, z, y = _case(3)
  t, key = _unit(x), jax.random.PRNGKey(0)
  plus = aml.tuple_loss(aml.Settings(loss="contrastive_plus"), z, t, y, key)
  contr = aml.tuple_loss(aml.Settings(loss="contrastive"), z, t, y, key)
  own = 0.5 * jnp.sum(jnp.sum(jnp.square(z - t + 1e-6), axis=1))
  assert float(plus - contr) == pytest.approx(float(own), rel=1e-5)


def test_random_positives_are_uniform_over_the_class():
  y = jnp.array([0, 0, 0, 1, 1])
  picks = np.stack([np.asarray(aml.random_positives(y, jax.random.PRNGKey(k))[0])
                    for k in range(300)])
  counts = np.bincount(picks[:, 0], minlength=5)  # image 0 takes 1 or 2, about equally
  assert counts[0] == 0 and counts[3:].sum() == 0 and 110 < counts[1] < 190
  assert set(picks[:, 3]) == {4}


def test_inner_term_with_the_teacher_equal_to_the_student_is_the_symmetric_loss():
  _, z, y = _case(4)
  inner = objectives.core("multi_similarity")
  settings = aml.Settings(loss="inner", self_positive=False)
  got = aml.asymmetric_term(settings, z, z, y, jax.random.PRNGKey(0), soft=inner.soft, params={})
  assert float(got) == pytest.approx(float(losses.multi_similarity_loss(z, y)), rel=1e-6)
  # with its own vector as a positive, the diagonal enters as a positive pair
  with_self = aml.asymmetric_term(aml.Settings(loss="inner"), z, z, y, jax.random.PRNGKey(0),
                                  soft=inner.soft, params={})
  sim = z @ z.T
  target = (y[:, None] == y[None, :]).astype(jnp.float32)
  want = losses.multi_similarity_from_sim(sim, target, jnp.ones_like(target, bool))
  assert float(with_self) == pytest.approx(float(want), rel=1e-6)


def test_the_objective_runs_the_frozen_teacher_and_keeps_its_variables():
  teacher = _linear_teacher()
  x, z, y = _case(5)
  obj = aml.wrap(objectives.core("multi_similarity"), aml.Settings(loss="regression"),
                 teacher=teacher)
  assert obj.name == "multi_similarity+aml" and obj.soft is None
  state = obj.init_state()

  def loss_of(z, w):
    st = {"aml": {**state["aml"], "teacher": {"w": w}}}
    return obj.apply({}, st, objectives.Batch(z, y, inputs=x), jax.random.PRNGKey(0))[0]

  want = aml.regression_loss(z, _unit(x @ teacher.variables["w"]))
  assert float(loss_of(z, teacher.variables["w"])) == pytest.approx(float(want), rel=1e-6)
  gz, gw = jax.grad(loss_of, argnums=(0, 1))(z, teacher.variables["w"])
  assert np.any(np.asarray(gz)) and not np.any(np.asarray(gw))
  _, new_state, aux = jax.jit(obj.apply)({}, state, objectives.Batch(z, y, inputs=x),
                                         jax.random.PRNGKey(0))
  np.testing.assert_array_equal(new_state["aml"]["teacher"]["w"], teacher.variables["w"])
  assert sorted(aux) == ["aml_loss"]


def test_inner_weight_adds_the_inner_loss_and_the_pool_fills_cyclically():
  teacher = _linear_teacher()
  x, z, y = _case(6)
  settings = aml.Settings(loss="contrastive", weight=2.0, inner_weight=0.5, pool_size=20)
  obj = aml.wrap(objectives.core("multi_similarity"), settings, teacher=teacher)
  state = obj.init_state()
  batch = objectives.Batch(z, y, inputs=x)
  loss, state, aux = obj.apply({}, state, batch, jax.random.PRNGKey(1))
  assert float(loss) == pytest.approx(2.0 * float(aux["aml_loss"]) + 0.5 * float(
      losses.multi_similarity_loss(z, y)), rel=1e-6)
  pool = state["aml"]["pool"]
  assert int(pool.next) == 12 and pool.labels[:12].tolist() == y.tolist()
  assert pool.labels[12:].tolist() == [-1] * 8
  _, state, _ = obj.apply({}, state, batch, jax.random.PRNGKey(2))
  pool = state["aml"]["pool"]
  assert int(pool.next) == 4 and pool.labels[12:].tolist() == y[:8].tolist()
  with pytest.raises(ValueError, match="pool_size"):
    aml.update_pool(aml.init_pool(4, 8), z, y)


def test_negatives_come_from_the_pool_when_the_batch_has_too_few_classes():
  x, z, y = _case(7, b=6, classes=2)
  t = _unit(x)
  settings = aml.Settings(loss="contrastive", num_negatives=3)
  alone = aml.tuple_loss(settings, z, t, y, jax.random.PRNGKey(0))
  pool = aml.update_pool(aml.init_pool(8, 8), -z[:4], jnp.array([5, 6, 7, 8]))
  more = aml.tuple_loss(settings, z, t, y, jax.random.PRNGKey(0), pool)
  # the pool's negatives point away from the queries: beyond the margin, they add nothing
  assert float(more) == pytest.approx(float(alone), rel=1e-6)
  pool = aml.update_pool(aml.init_pool(8, 8), z[:4], jnp.array([5, 6, 7, 8]))
  closer = aml.tuple_loss(settings, z, t, y, jax.random.PRNGKey(0), pool)
  assert float(closer) > float(alone)


def test_errors_name_what_is_wrong():
  teacher = _linear_teacher()
  x, z, y = _case(8)
  obj = aml.wrap(objectives.core("multi_similarity"), aml.Settings(), teacher=teacher)
  with pytest.raises(ValueError, match="inputs"):
    obj.apply({}, obj.init_state(), objectives.Batch(z, y), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="inputs of shape"):
    obj.apply({}, obj.init_state(), objectives.Batch(z, y, inputs=x[:, :4]),
              jax.random.PRNGKey(0))
  small = aml.Teacher(lambda v, xx: _unit(xx[:, :4]), {}, 4)
  obj = aml.wrap(objectives.core("multi_similarity"), aml.Settings(), teacher=small)
  with pytest.raises(ValueError, match="project to the teacher's dimension"):
    obj.apply({}, obj.init_state(), objectives.Batch(z, y, inputs=x), jax.random.PRNGKey(0))
  proxies = objectives.core("proxy_anchor", num_classes=4, dim=8)
  with pytest.raises(ValueError, match="soft"):
    aml.wrap(proxies, aml.Settings(loss="inner"), teacher=teacher)
  with pytest.raises(TypeError, match="aml.Teacher"):
    aml.wrap(objectives.core("multi_similarity"), aml.Settings(), teacher=lambda x: x)
  for bad in ({"loss": "reg"}, {"pool_size": -1}, {"margin": -0.1}, {"num_negatives": 0},
              {"reduction": "max"}, {"teacher_step": -2}):
    with pytest.raises(ValueError, match="aml"):
      aml.Settings(**bad)
  with pytest.raises(ValueError, match="objective.aml.teacher"):
    aml.build(objectives.core("multi_similarity"), aml.Settings(),
              objectives.Setup(num_classes=4, dim=8))


SMALL = ["--set", "data.train_images_per_class=4", "--set", "data.test_images_per_class=3",
         "--set", "loop.epochs=1", "--set", "loop.tensorboard=false",
         "--set", "eval.baselines=false", "--set", "model.embedding_dim=32", "--no-progress"]


def test_a_student_trains_from_a_teacher_run(tmp_path, capsys):
  """A res_cnn teacher run, then a small-CNN student regressed onto it through the config."""
  teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
  assert cli.main(["train", "--workdir", str(teacher_dir), "--set", "model.name=res_cnn",
                   "--set", "model.widths=[32,64]", "--set", "model.blocks=[1,1]", *SMALL]) == 0
  assert cli.main(["train", "--workdir", str(student_dir), "--set", "objective.methods=aml",
                   "--set", "objective.aml.loss=regression", "--set", "optim.learning_rate=3e-3",
                   "--set", f"objective.aml.teacher={teacher_dir}", *SMALL]) == 0
  student, teacher = jaxdml.load(student_dir), jaxdml.load(teacher_dir)
  assert student.config.objective.methods["aml"].teacher == str(teacher_dir)
  images, _, _ = student.split("test")
  t = teacher.embed(images)
  x = student.preprocess(images)
  fresh = student.model.init(jax.random.PRNGKey(0), x[:1], train=False)
  before = np.asarray(student.model.apply(fresh, x, train=False))
  gap = np.mean(np.sum((student.embed(images) - t) ** 2, axis=1))
  gap_before = np.mean(np.sum((before - t) ** 2, axis=1))
  assert gap < 0.5 * gap_before, (gap, gap_before)
  # a student of another dimension than the teacher is refused, naming the field
  capsys.readouterr()
  assert cli.main(["train", "--no-workdir", "--set", "objective.methods=aml",
                   "--set", f"objective.aml.teacher={teacher_dir}", *SMALL,
                   "--set", "model.embedding_dim=16"]) == 2
  assert "objective.aml.teacher: the teacher gives 32-d" in capsys.readouterr().err


class _Fixed:
  """A stand-in run whose embeddings are given."""

  def __init__(self, z):
    self.z = np.asarray(z, np.float32)

  def embed(self, images):
    return self.z[np.asarray(images)]


def test_asymmetric_evaluation_ranks_one_split_three_ways():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(6), 4)
  centres = rng.normal(size=(6, 8))
  teacher = _Fixed(np.asarray(_unit(jnp.asarray(centres[labels] + 0.1 * rng.normal(
      size=(24, 8))))))
  noise = _Fixed(np.asarray(_unit(jnp.asarray(rng.normal(size=(24, 8))))))
  images = np.arange(24)
  out = asymmetric_evaluation(teacher, teacher, images, labels, ks=(1,))
  assert out["symmetric"] == out["asymmetric"] == out["teacher"]
  assert out["teacher"]["map@r"] == pytest.approx(1.0)
  # a student unrelated to the teacher: asymmetric testing at chance, the teacher unchanged
  bad = asymmetric_evaluation(noise, teacher, images, labels, ks=(1,))
  assert bad["teacher"] == out["teacher"] and bad["asymmetric"]["map@r"] < 0.6
  # the queries are the split's: two a class, the rest the gallery
  q, g = split_queries(labels, 2, seed=0)
  want = Index(teacher.z[g], labels[g]).evaluate(noise.z[q], labels[q], ks=(1,))
  assert bad["asymmetric"] == want
  with pytest.raises(ValueError, match="teacher's dimension"):
    asymmetric_evaluation(_Fixed(noise.z[:, :4]), teacher, images, labels)
