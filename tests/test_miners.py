"""Miners: hand cases, loops over their documented definitions, and PML's miners as pair sets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L
from jaxdml import miners
from jaxdml import pairs as _inputs

bh = jax.jit(miners.batch_hard_miner)
semihard = jax.jit(miners.semihard_miner, static_argnames="margin")
ms = jax.jit(miners.multi_similarity_miner, static_argnames="epsilon")
dw = jax.jit(miners.distance_weighted_miner, static_argnames=("dim", "cutoff",
                                                              "nonzero_loss_cutoff"))
dist_inputs = jax.jit(_inputs.dist_inputs)
sim_inputs = jax.jit(_inputs.sim_inputs)


def pair_sets(mask, target):
  """(positive pairs, negative pairs) of a bool mask, as sets of (i, j)."""
  mask, target = np.asarray(mask), np.asarray(target)
  pos = {(int(i), int(j)) for i, j in np.argwhere(mask & (target > 0))}
  neg = {(int(i), int(j)) for i, j in np.argwhere(mask & (target < 1))}
  return pos, neg


def random_problem(rng, q=6, r=9, classes=3):
  dist = rng.uniform(0.0, 1.5, size=(q, r)).astype(np.float32)
  target = (rng.integers(classes, size=(q, 1)) == rng.integers(classes, size=(1, r)))
  mask = rng.uniform(size=(q, r)) > 0.15
  return dist, target.astype(np.float32), mask


# --------------------------------------------------------------------------- batch hard


def test_batch_hard_hand_case():
  dist = jnp.array([[0.5, 0.9, 0.3, 0.7],
                    [0.2, 0.4, 0.4, 0.1],
                    [0.6, 0.6, 0.8, 0.8],
                    [0.3, 0.2, 0.1, 0.5]])
  target = jnp.array([[1.0, 1.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0],   # no negative: row dropped
                      [1.0, 1.0, 0.0, 0.0],   # ties: lowest index
                      [0.0, 0.0, 0.0, 0.0]])  # no positive: row dropped
  expected = np.array([[False, True, True, False],
                       [False, False, False, False],
                       [True, False, True, False],
                       [False, False, False, False]])
  np.testing.assert_array_equal(bh(dist, target), expected)
  # the mask argument removes pairs before mining
  mask = jnp.ones((4, 4), bool).at[0, 1].set(False)
  assert bool(bh(dist, target, mask)[0, 0]) and not bool(bh(dist, target, mask)[0, 1])


@pytest.mark.parametrize("refs", [False, True])
def test_batch_hard_matches_pml(refs, batch, pml):
  torch = pml.torch
  e, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  args = (jnp.asarray(batch.ref_emb), jnp.asarray(batch.ref_labels)) if refs else ()
  d, t, m = dist_inputs(e, y, *args)
  pos, neg = pair_sets(bh(d, t, m), t)
  te = lambda x: torch.tensor(np.asarray(x, np.float64))
  tl = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)
  targs = (te(batch.ref_emb), tl(batch.ref_labels)) if refs else ()
  a, p, n = pml.pml.miners.BatchHardMiner()(te(batch.emb), tl(batch.labels), *targs)
  assert pos == set(zip(a.tolist(), p.tolist(), strict=True))
  assert neg == set(zip(a.tolist(), n.tolist(), strict=True))
  assert len(pos) == len(neg) > 0


def test_batch_hard_mask_gives_batch_hard_triplet_loss(batch):
  d, t, m = dist_inputs(jnp.asarray(batch.emb), jnp.asarray(batch.labels))
  f = jax.jit(L.triplet_margin_from_dist, static_argnames="triplets")
  mined = f(d, t, bh(d, t, m), triplets="all")
  np.testing.assert_allclose(mined, f(d, t, m, triplets="hard"), rtol=1e-6)
  assert float(mined) > 0


# --------------------------------------------------------------------------- semi-hard


def naive_semihard(dist, target, mask, margin):
  q, r = dist.shape
  out = np.zeros((q, r), bool)
  for a in range(q):
    pos = [p for p in range(r) if mask[a, p] and target[a, p] > 0]
    for p in pos:
      out[a, p] = True
    for n in range(r):
      if mask[a, n] and target[a, n] < 1:
        out[a, n] |= any(dist[a, p] < dist[a, n] < dist[a, p] + margin for p in pos)
  return out


def test_semihard_matches_loop_definition(rng):
  for _ in range(5):
    dist, target, mask = random_problem(rng)
    got = np.asarray(semihard(dist, target, mask, margin=0.2))
    np.testing.assert_array_equal(got, naive_semihard(dist, target, mask, 0.2))
    assert got[target < 1].any()  # some negatives kept, some dropped
    assert not got[(target < 1) & mask].all()


def test_semihard_hand_case():
  dist = jnp.array([[0.5, 0.55, 0.72, 0.4, 0.9, 0.5]])
  target = jnp.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
  # positive at 0.5: semi-hard negatives lie in (0.5, 0.7); 0.5 itself is not (strict)
  np.testing.assert_array_equal(semihard(dist, target, margin=0.2),
                                [[True, True, False, False, False, False]])
  # no positive: nothing is semi-hard
  assert not np.asarray(semihard(dist, jnp.zeros_like(target), margin=0.2)).any()


# --------------------------------------------------------------------------- multi-similarity


def test_multi_similarity_hand_case():
  s = jnp.array([[0.8, 0.5, 0.45, 0.3, 0.65],
                 [0.9, 0.8, 0.1, 0.2, 0.3]])
  t = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0],
                 [1.0, 1.0, 1.0, 1.0, 1.0]])
  # row 0: min positive 0.5 -> negatives with s + 0.1 > 0.5: 0.45 and 0.65; max negative 0.65
  # -> positives with s - 0.1 < 0.65: 0.5 only. Row 1 has no negatives: keeps nothing.
  np.testing.assert_array_equal(ms(s, t, epsilon=0.1),
                                [[False, True, True, False, True], [False] * 5])
  assert not np.asarray(ms(s, jnp.zeros_like(t), epsilon=0.1)).any()


@pytest.mark.parametrize("refs", [False, True])
def test_multi_similarity_matches_pml(refs, batch, batch2, pml):
  torch = pml.torch
  for b in (batch, batch2):
    args = (jnp.asarray(b.ref_emb), jnp.asarray(b.ref_labels)) if refs else ()
    s, t, m = sim_inputs(jnp.asarray(b.emb), jnp.asarray(b.labels), *args)
    pos, neg = pair_sets(ms(s, t, m, epsilon=0.1), t)
    te = lambda x: torch.tensor(np.asarray(x, np.float64))
    tl = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)
    targs = (te(b.ref_emb), tl(b.ref_labels)) if refs else ()
    a1, p, a2, n = pml.pml.miners.MultiSimilarityMiner(epsilon=0.1)(te(b.emb), tl(b.labels),
                                                                    *targs)
    assert pos == set(zip(a1.tolist(), p.tolist(), strict=True))
    assert neg == set(zip(a2.tolist(), n.tolist(), strict=True))
    all_pos, all_neg = pair_sets(m, t)
    assert 0 < len(neg) < len(all_neg)  # the mining did something


# --------------------------------------------------------------------------- distance weighted


def test_distance_weighted_draws_allowed_negatives_and_keeps_positives(rng):
  q, r = 8, 16
  x = rng.normal(size=(q + r, 12)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  dist = np.linalg.norm(x[:q, None] - x[None, q:], axis=-1).astype(np.float32)
  target = (rng.integers(3, size=(q, 1)) == rng.integers(3, size=(1, r))).astype(np.float32)
  target[0] = 1.0  # anchor 0: no negative
  target[1] = 0.0  # anchor 1: no positive
  mask = np.ones((q, r), bool)
  mask[2, :4] = False
  key = jax.random.PRNGKey(0)
  out = np.asarray(dw(dist, target, mask, key, dim=12))
  pos, neg = target > 0, target < 1
  allowed = neg & mask & (dist < 1.4)
  has_allowed = allowed.any(1, keepdims=True)
  assert has_allowed[2:].all()  # the fallback is not exercised here
  np.testing.assert_array_equal(out & pos, pos & mask)  # every positive kept
  assert not (out & neg & ~allowed).any()  # only allowed negatives drawn
  n_drawn = (out & neg).sum(1)
  assert n_drawn[0] == 0 and n_drawn[1] == 0
  assert np.all(n_drawn[2:] >= 1) and np.all(n_drawn <= (pos & mask).sum(1))
  np.testing.assert_array_equal(out, dw(dist, target, mask, key, dim=12))  # deterministic
  other = [np.asarray(dw(dist, target, mask, jax.random.PRNGKey(k), dim=12)) for k in (1, 2)]
  assert any((o != out).any() for o in other)


def test_distance_weighted_fallback_is_uniform_over_negatives():
  dist = jnp.array([[0.3, 1.5, 1.6, 1.7]])
  target = jnp.array([[1.0, 0.0, 0.0, 0.0]])
  keys = jax.random.split(jax.random.PRNGKey(3), 600)
  draws = jax.jit(jax.vmap(lambda k: miners.distance_weighted_miner(dist, target, None, k,
                                                                    dim=8)))(keys)
  counts = np.asarray(draws)[:, 0, 1:].sum(0)
  assert counts.sum() == 600
  assert np.all(np.abs(counts - 200) < 60)  # uniform, 3+ sigma


@pytest.mark.parametrize("dim", [5, 32])
def test_distance_weighted_frequencies_follow_inverse_density(dim):
  """Negatives are drawn with probability ~ 1 / q(max(d, 0.5)), none beyond 1.4."""
  d = np.array([0.3, 0.45, 0.8, 1.0, 1.2, 1.35, 1.5], np.float32)
  dist = jnp.asarray(np.concatenate([[0.1], d])[None])
  target = jnp.asarray(np.eye(1, 8, dtype=np.float32))  # one positive, seven negatives
  n = 4000
  keys = jax.random.split(jax.random.PRNGKey(11), n)
  draws = jax.jit(jax.vmap(lambda k: miners.distance_weighted_miner(dist, target, None, k,
                                                                    dim=dim)))(keys)
  counts = np.asarray(draws)[:, 0, 1:].sum(0)
  assert counts.sum() == n and counts[-1] == 0
  dc = np.maximum(d[:-1].astype(np.float64), 0.5)
  log_q = (dim - 2) * np.log(dc) + (dim - 3) / 2 * np.log(1 - dc ** 2 / 4)
  p = np.exp(-log_q - np.max(-log_q))
  p /= p.sum()
  sigma = np.sqrt(n * p * (1 - p))
  assert np.all(np.abs(counts[:-1] - n * p) <= 4 * sigma + 1), (counts, n * p)
  # closer-than-cutoff negatives share the top weight and are drawn more often than far ones
  assert counts[0] > counts[3] and counts[1] > counts[4]
  if dim == 32:
    assert counts[:2].sum() > 0.99 * n


# --------------------------------------------------------------------------- NaN


def test_every_miner_keeps_the_pairs_at_nan():
  # Row 1 and column 1 are NaN (a NaN embedding); anchor 3 is a singleton class.
  rng = np.random.default_rng(5)
  dist = rng.uniform(0.2, 1.3, size=(4, 4)).astype(np.float32)
  dist = (dist + dist.T) / 2
  np.fill_diagonal(dist, 0.0)
  dist[1, :] = dist[:, 1] = np.nan
  dist[1, 1] = 0.0
  target = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
  valid = ~np.eye(4, dtype=bool)
  nan_pairs = valid & np.isnan(dist)
  masks = {"batch_hard": bh(dist, target, valid),
           "semihard": semihard(dist, target, valid),
           "multi_similarity": ms(1.0 - dist, target, valid),
           "distance_weighted": dw(dist, target, valid, jax.random.PRNGKey(0), dim=8)}
  for name, m in masks.items():
    m = np.asarray(m)
    assert (m[nan_pairs]).all(), name
    assert not m[~valid].any(), name
  # multi-similarity: the rows with a NaN bound keep all their pairs (before, row 0's bound
  # min_p s_ap was NaN, every comparison False, and its pairs were dropped)
  np.testing.assert_array_equal(np.asarray(masks["multi_similarity"])[0], valid[0])


def test_multi_similarity_miner_unchanged_without_nan():
  # "not beyond the bound" equals "within the bound" for numbers, infinite bounds included
  sim = jnp.array([[1.0, 0.7, 0.75, 0.2], [0.7, 1.0, 0.5, 0.65], [0.75, 0.5, 1.0, 0.1],
                   [0.2, 0.65, 0.1, 1.0]])
  target = jnp.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], jnp.float32)
  mask = ~jnp.eye(4, dtype=bool)
  got = np.asarray(ms(sim, target, mask))
  # row 0: min_pos 0.7 -> keep negatives with s + 0.1 > 0.7: col 2 (0.85), not col 3 (0.3);
  #        max_neg 0.75 -> keep positives with s - 0.1 < 0.75: col 1 (0.6).
  # row 1: min_pos 0.7 -> negatives: not col 2 (0.6), col 3 (0.75); max_neg 0.65 -> positive
  #        col 0 (0.6).
  # rows 2, 3 have no positive: nothing kept (min_pos = inf).
  expected = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- errors


def test_miner_errors():
  d, t = jnp.zeros((3, 4)), jnp.zeros((3, 4))
  for f in (miners.batch_hard_miner, miners.semihard_miner):
    with pytest.raises(ValueError, match="`target`"):
      jax.jit(f)(d, t[:, :2])
    with pytest.raises(ValueError, match="`dist`.*rank 2"):
      jax.jit(f)(d[0], t[0])
    with pytest.raises(ValueError, match="`mask`"):
      jax.jit(f)(d, t, jnp.ones((4, 3), bool))
  with pytest.raises(ValueError, match="`sim`"):
    jax.jit(miners.multi_similarity_miner)(d[None], t[None])
  with pytest.raises(ValueError, match="dim >= 3"):
    miners.distance_weighted_miner(d, t, None, jax.random.PRNGKey(0), dim=2)
  with pytest.raises(ValueError, match="`dim`"):
    miners.distance_weighted_miner(d, t, None, jax.random.PRNGKey(0), dim=8.0)
  for kw, name in (({"cutoff": -0.5}, "cutoff"), ({"nonzero_loss_cutoff": 0.0},
                                                   "nonzero_loss_cutoff")):
    with pytest.raises(ValueError, match=f"`{name}`"):
      miners.distance_weighted_miner(d, t, None, jax.random.PRNGKey(0), dim=8, **kw)
  with pytest.raises(ValueError, match="`margin`"):
    miners.semihard_miner(d, t, margin=-0.2)
  with pytest.raises(ValueError, match="`epsilon`"):
    miners.multi_similarity_miner(d, t, epsilon=float("nan"))
  assert set(miners.MINERS) == {"batch_hard", "semihard", "multi_similarity",
                                "distance_weighted"}
