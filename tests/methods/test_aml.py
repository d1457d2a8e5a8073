"""AML's losses against ports of the released code's (PyTorch) definitions, hand cases, the
mining walk against a plain loop, and the asymmetric primitive with a core loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.losses import multi_similarity_from_sim
from jaxdml.methods import aml

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _unit(rng, *shape):
  x = rng.normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def test_regression_is_half_the_squared_distance():
  s = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
  assert float(aml.regression_loss(s, s)) == 0.0
  t = np.array([[0.0, 1.0], [0.6, 0.8]], np.float32)
  assert float(aml.regression_loss(s, t)) == pytest.approx(1.0)
  assert float(aml.regression_loss(s, t, reduction="mean")) == pytest.approx(0.5)
  g = jax.grad(lambda t: aml.regression_loss(jnp.asarray(s), t))(jnp.asarray(t))
  assert not np.any(np.asarray(g))  # the teacher is frozen


def test_contrastive_hand_cases():
  q = np.array([[1.0, 0.0]], np.float32)
  items = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
  assert float(aml.contrastive_loss(q, items, np.array([[1.0, 0.0]]))) == pytest.approx(
      0.0, abs=1e-10)  # d_n = sqrt 2 > 0.7
  near = np.array([[[0.0, 1.0], [0.8, 0.6]]], np.float32)  # d_n = ||(0.2, -0.6)|| = 0.6325
  d = np.sqrt(0.2 ** 2 + 0.6 ** 2)
  expect = 0.5 * 2.0 + 0.5 * (0.7 - d) ** 2  # positive at distance sqrt 2, negative inside m
  assert float(aml.contrastive_loss(q, near, np.array([[1.0, 0.0]]))) == pytest.approx(
      expect, abs=1e-5)
  # label -1 leaves an item out
  assert float(aml.contrastive_loss(q, near, np.array([[-1.0, 0.0]]))) == pytest.approx(
      0.5 * (0.7 - d) ** 2, abs=1e-5)


def _torch_contrastive(q, items, labels, margin):
  """cirtorch / AML functional.contrastive_loss, one tuple at a time, summed."""
  total = 0.0
  for b in range(q.shape[0]):
    x1 = _t(q[b])[None].expand(items.shape[1], -1)
    dif = x1 - _t(items[b]) + 1e-6  # F.pairwise_distance's eps
    d = torch.sqrt(torch.sum(dif ** 2, dim=1))
    lbl = _t(labels[b])
    y = 0.5 * lbl * d ** 2 + 0.5 * (1 - lbl) * torch.clamp(margin - d, min=0) ** 2
    total += float(torch.sum(y))
  return total


@pytest.mark.parametrize("with_query", [False, True])
def test_contrastive_matches_the_code_on_contr_and_contr_plus_tuples(with_query):
  rng = np.random.default_rng(0)
  q, tq, tp, tn = _unit(rng, 4, 8), _unit(rng, 4, 8), _unit(rng, 4, 8), _unit(rng, 4, 5, 8)
  items, labels = aml.tuple_items(tq, tp, tn, with_query=with_query)
  assert items.shape == (4, 7 if with_query else 6, 8)
  assert labels[0].tolist() == [1.0] * (2 if with_query else 1) + [0.0] * 5
  ref = _torch_contrastive(q, np.asarray(items), np.asarray(labels), 0.7)
  assert float(aml.contrastive_loss(q, items, labels)) == pytest.approx(ref, rel=1e-5)


def test_triplet_matches_squared_distances_summed():
  rng = np.random.default_rng(1)
  q, p, n = _unit(rng, 3, 6), _unit(rng, 3, 6), _unit(rng, 3, 4, 6)
  ref = sum(max(np.sum((q[b] - p[b]) ** 2) - np.sum((q[b] - n[b, j]) ** 2) + 0.7, 0.0)
            for b in range(3) for j in range(4))
  assert float(aml.triplet_loss(q, p, n)) == pytest.approx(ref, rel=1e-5)
  assert float(aml.triplet_loss(q, p, n, reduction="mean")) == pytest.approx(ref / 3, rel=1e-5)


def test_multi_similarity_on_the_query_row():
  rng = np.random.default_rng(2)
  q, tq, tp, tn = _unit(rng, 3, 6), _unit(rng, 3, 6), _unit(rng, 3, 6), _unit(rng, 3, 5, 6)
  items, labels = aml.tuple_items(tq, tp, tn, with_query=True)
  items, labels = np.asarray(items), np.asarray(labels)
  ref = 0.0
  for b in range(3):
    s = items[b] @ q[b]
    pos, neg = s[labels[b] == 1], s[labels[b] == 0]
    ref += (np.log1p(np.sum(np.exp(-2 * (pos - 0.5)))) / 2
            + np.log1p(np.sum(np.exp(40 * (neg - 0.5)))) / 40)
  assert float(aml.multi_similarity_loss(q, items, labels)) == pytest.approx(ref, rel=1e-5)


def _torch_pdist(e, eps=1e-12):
  sq = e.pow(2).sum(dim=1)
  res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
  res[range(len(e)), range(len(e))] = 0
  return res


def _torch_rkd(student, teacher):
  """The RKD reference implementation (distance + angle, smooth L1), 1 x dist + 2 x angle."""
  with torch.no_grad():
    t_d = _torch_pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
  d = _torch_pdist(student)
  d = d / d[d > 0].mean()
  loss_d = F.smooth_l1_loss(d, t_d)
  with torch.no_grad():
    td = F.normalize(teacher.unsqueeze(0) - teacher.unsqueeze(1), p=2, dim=2)
    t_angle = torch.bmm(td, td.transpose(1, 2)).view(-1)
  sd = F.normalize(student.unsqueeze(0) - student.unsqueeze(1), p=2, dim=2)
  s_angle = torch.bmm(sd, sd.transpose(1, 2)).view(-1)
  return loss_d + 2 * F.smooth_l1_loss(s_angle, t_angle)


def test_rkd_matches_the_reference_value_and_gradient():
  rng = np.random.default_rng(3)
  s, t = _unit(rng, 7, 5), _unit(rng, 7, 9) * 3.0  # different dimensions and scales
  st = _t(s).requires_grad_(True)
  ref = _torch_rkd(st, _t(t))
  ref.backward()
  value, grad = jax.value_and_grad(aml.rkd_loss)(jnp.asarray(s), jnp.asarray(t))
  assert float(value) == pytest.approx(float(ref.detach()), rel=1e-5)
  np.testing.assert_allclose(grad, st.grad.numpy(), rtol=1e-4, atol=1e-6)
  # scale-invariant in each space: the distances are normalised by their mean, angles are angles
  assert float(aml.rkd_loss(2.0 * s, t)) == pytest.approx(float(value), rel=1e-5)
  assert float(aml.rkd_loss(s, s)) == pytest.approx(0.0, abs=1e-6)


def _torch_dark_rank(student, teacher, alpha=3.0, beta=3.0, permute_len=4):
  """HardDarkRank as in the RKD repository: teacher order, student scores."""
  score_t = -alpha * _torch_pdist(teacher).pow(beta)
  score_s = -alpha * _torch_pdist(student).pow(beta)
  idx = score_t.sort(dim=1, descending=True)[1][:, 1:permute_len + 1]
  ordered = torch.gather(score_s, 1, idx)
  log_prob = (ordered - torch.stack([torch.logsumexp(ordered[:, i:], dim=1)
                                     for i in range(idx.size(1))], dim=1)).sum(dim=1)
  return (-log_prob).mean()


def test_dark_rank_matches_the_reference_and_needs_the_teacher():
  rng = np.random.default_rng(4)
  s, t = _unit(rng, 8, 6), _unit(rng, 8, 10)
  ref = float(_torch_dark_rank(_t(s), _t(t)))
  assert float(aml.dark_rank_loss(jnp.asarray(s), jnp.asarray(t))) == pytest.approx(ref,
                                                                                   rel=1e-5)
  # a student that reproduces the teacher's geometry scores the teacher's order best
  perfect = float(aml.dark_rank_loss(jnp.asarray(t), jnp.asarray(t)))
  shuffled = float(aml.dark_rank_loss(jnp.asarray(t[rng.permutation(8)]), jnp.asarray(t)))
  assert perfect < shuffled
  with pytest.raises(ValueError, match="permute_len"):
    aml.dark_rank_loss(jnp.asarray(s), jnp.asarray(t), permute_len=8)


def _naive_mine(q, pool, qc, pc, n):
  """cirtorch's walk: rank the pool, skip the query's cluster and taken clusters."""
  out = []
  for i in range(len(q)):
    ranks = np.argsort(-(pool @ q[i]), kind="stable")
    taken, chosen = {qc[i]}, []
    for r in ranks:
      if len(chosen) == n:
        break
      if pc[r] in taken:
        continue
      taken.add(pc[r])
      chosen.append(int(r))
    out.append(chosen)
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_walks_the_ranking_like_the_code(seed):
  rng = np.random.default_rng(seed)
  q, pool = _unit(rng, 6, 4), _unit(rng, 40, 4)
  qc, pc = rng.integers(0, 8, 6), rng.integers(0, 8, 40)
  idx, valid = jax.jit(aml.mine_negatives, static_argnames="num_negatives")(
      q, pool, jnp.asarray(qc), jnp.asarray(pc), num_negatives=5)
  for i, chosen in enumerate(_naive_mine(q, pool, qc, pc, 5)):
    assert np.asarray(idx[i])[np.asarray(valid[i])].tolist() == chosen
    assert len({pc[j] for j in chosen}) == len(chosen) and qc[i] not in {pc[j] for j in chosen}


def test_mining_with_too_few_clusters_marks_the_missing_slots():
  q = np.array([[1.0, 0.0]], np.float32)
  pool = _unit(np.random.default_rng(0), 6, 2)
  idx, valid = aml.mine_negatives(q, pool, jnp.array([0]), jnp.array([0, 1, 1, 2, 0, 2]),
                                  num_negatives=3)
  assert valid.tolist() == [[True, True, False]] and int(idx[0, 2]) == 0
  with pytest.raises(ValueError, match="num_negatives"):
    aml.mine_negatives(q, pool, jnp.array([0]), jnp.zeros(6, int), num_negatives=0)


def test_the_asymmetric_similarity_feeds_a_core_loss_and_freezes_the_teacher():
  rng = np.random.default_rng(5)
  s, t = jnp.asarray(_unit(rng, 4, 6)), jnp.asarray(_unit(rng, 5, 6))
  ys, yt = jnp.array([0, 1, 2, 3]), jnp.array([0, 1, 2, 3, 0])
  target = (ys[:, None] == yt[None, :]).astype(jnp.float32)

  def loss(s, t):
    return multi_similarity_from_sim(aml.asymmetric_similarity(s, t), target)

  gs, gt = jax.grad(loss, argnums=(0, 1))(s, t)
  assert np.any(np.asarray(gs)) and not np.any(np.asarray(gt))
  np.testing.assert_allclose(aml.asymmetric_similarity(s, t), s @ t.T, rtol=1e-6)
  with pytest.raises(ValueError, match="project to the teacher's dimension"):
    aml.asymmetric_similarity(s, t[:, :4])


def test_epoch_decay_is_the_codes():
  assert aml.EPOCH_DECAY == pytest.approx(np.exp(-0.01))
