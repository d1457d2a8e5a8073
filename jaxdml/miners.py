"""Miners: pure functions that select pairs, returned as boolean masks.

A miner takes the same `(sim | dist, target, mask)` primitive as the losses and returns a [Q, R]
bool mask of the pairs to keep; pass it to a loss as `mask=` (wrappers AND it with their own
validity mask). Masks instead of index lists keep shapes static, so mining is jit-friendly and
composes with any loss. A pair counts as positive when `target > 0` and as negative when
`target < 1`.

NaN: every miner keeps the valid pairs whose value (similarity or distance) is NaN, on top of
what it selects, so that a NaN embedding reaches the loss (and makes it NaN) instead of being
mined away. Hyperparameters given as numbers are checked (an error names the argument).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml import _checks
from jaxdml._sort import argsort_rows
from jaxdml.targets import pair_weights

Array = jax.Array


def _weights(x, target, mask, name):
  _checks.matrix_triple(x, target, mask, name)
  pos_w, neg_w = pair_weights(target, mask)
  return pos_w > 0, neg_w > 0


def _keep_nan(mined: Array, x: Array, pos: Array, neg: Array) -> Array:
  """`mined`, plus every valid pair whose value is NaN (so that the loss sees it)."""
  return mined | ((pos | neg) & jnp.isnan(x))


def batch_hard_miner(dist: Array, target: Array, mask: Array | None = None) -> Array:
  """Batch-hard mining (Hermans et al., 2017): per anchor, its farthest positive and nearest
  negative.

  Every row of the mask holds either exactly one positive and one negative, or nothing: an anchor
  that lacks a positive or a negative forms no triplet and is dropped, as PML's BatchHardMiner.
  With `triplet_margin_from_dist(..., triplets="all")` the mask gives the batch-hard triplet loss.
  Ties are broken towards the lowest reference index. Pairs at a NaN distance are kept as well
  (see the module docstring), so such a row may hold more than two pairs.
  """
  pos, neg = _weights(dist, target, mask, "dist")
  d = jax.lax.stop_gradient(dist)
  i_p = jnp.argmax(jnp.where(pos, d, -jnp.inf), axis=1)
  i_n = jnp.argmin(jnp.where(neg, d, jnp.inf), axis=1)
  r = dist.shape[1]
  pick_p = jax.nn.one_hot(i_p, r, dtype=bool) & pos
  pick_n = jax.nn.one_hot(i_n, r, dtype=bool) & neg
  both = jnp.any(pos, axis=1, keepdims=True) & jnp.any(neg, axis=1, keepdims=True)
  return _keep_nan((pick_p | pick_n) & both, dist, pos, neg)


def semihard_miner(dist: Array, target: Array, mask: Array | None = None, *,
                   margin: float = 0.2) -> Array:
  """Pair-level semi-hard mining: all positives, and the negatives that are semi-hard for at
  least one positive of their anchor, i.e. `d_ap < d_an < d_ap + margin` for some p, which is
  `min_p d_ap < d_an < max_p d_ap + margin` restricted to the union of those intervals.

  The exact per-triplet semi-hard selection (FaceNet; PML's TripletMarginMiner "semihard") is
  `triplet_margin_from_dist(..., triplets="semihard")`; this mask is its pair-level projection, so
  that semi-hard negatives can feed any pair loss. Margin 0.2 as PML's TripletMarginMiner;
  finite, >= 0 (0 keeps no negative).
  """
  pos, neg = _weights(dist, target, mask, "dist")
  _checks.number(margin, "margin", ge=0.0)
  # negative n is kept if some positive distance lies in (d_an - margin, d_an): count them with
  # two binary searches in each anchor's sorted positive distances (O(QR log R), no [Q, R, R]).
  d = jax.lax.stop_gradient(dist)
  pos_keys = jnp.where(pos, d, jnp.inf)
  pos_sorted = jnp.take_along_axis(pos_keys, argsort_rows(pos_keys), axis=1)
  search = lambda side: jax.vmap(lambda a, v: jnp.searchsorted(a, v, side=side))
  below = search("left")(pos_sorted, d)  # positives with d_ap < d_an
  at_most = search("right")(pos_sorted, d - margin)  # positives with d_ap <= d_an - margin
  return _keep_nan(pos | (neg & (below > at_most)), dist, pos, neg)


def multi_similarity_miner(sim: Array, target: Array, mask: Array | None = None, *,
                           epsilon: float = 0.1) -> Array:
  """Multi-similarity pair mining (Wang et al., CVPR 2019) on similarities.

  Keeps a negative pair if `s_an + epsilon > min_p s_ap` and a positive pair if
  `s_ap - epsilon < max_n s_an` (epsilon 0.1, as the paper and PML). An anchor without negatives
  keeps no positives, and one without positives keeps no negatives (as PML). A row whose bound
  is NaN (it has a NaN pair) keeps all its pairs. `epsilon` must be finite.
  """
  pos, neg = _weights(sim, target, mask, "sim")
  _checks.number(epsilon, "epsilon")
  min_pos = jnp.min(jnp.where(pos, sim, jnp.inf), axis=1, keepdims=True)
  max_neg = jnp.max(jnp.where(neg, sim, -jnp.inf), axis=1, keepdims=True)
  # Written as "not beyond the bound" so that a NaN bound (a NaN pair in the row) keeps the pairs.
  keep_neg = neg & ~(sim + epsilon <= min_pos)
  keep_pos = pos & ~(sim - epsilon >= max_neg)
  return _keep_nan(keep_pos | keep_neg, sim, pos, neg)


def distance_weighted_miner(dist: Array, target: Array, mask: Array | None, key: Array, *,
                            dim: int, cutoff: float = 0.5,
                            nonzero_loss_cutoff: float = 1.4) -> Array:
  """Distance-weighted sampling (Wu et al., ICCV 2017) of negatives, as a mask.

  On the unit sphere in `dim` dimensions, pairwise distances of uniform points have density
  `q(d) ~ d^{dim-2} (1 - d^2/4)^{(dim-3)/2}`. For every positive pair (a, p), one negative of a
  is drawn with probability proportional to `1 / q(max(d, cutoff))`, restricted to
  `d < nonzero_loss_cutoff` (farther negatives would give zero loss). Returns all positives plus
  the drawn negatives. Defaults (cutoff 0.5, nonzero_loss_cutoff 1.4) are the paper's and PML's.
  `dist` must be Euclidean distances of L2-normalised embeddings. An anchor whose negatives all
  lie at or beyond `nonzero_loss_cutoff` falls back to drawing uniformly among its negatives.
  Draws that hit the same negative merge into one mask entry. Needs `key` (a `jax.random` key);
  the same key gives the same mask. Valid: an int `dim >= 3`, `cutoff >= 0`,
  `nonzero_loss_cutoff > 0`.

  Differences from PML's DistanceWeightedMiner, which returns triplets: PML draws, per anchor,
  as many positives as its class has members (with replacement) and drops anchors with no
  negative under `nonzero_loss_cutoff`; this follows the original code of Wu et al. (every
  positive pair once, uniform fallback).
  """
  pos, neg = _weights(dist, target, mask, "dist")
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 3:
    raise ValueError(f"`dim` must be an int: distance-weighted sampling needs dim >= 3, got "
                     f"{dim!r}.")
  _checks.number(cutoff, "cutoff", ge=0.0)
  _checks.number(nonzero_loss_cutoff, "nonzero_loss_cutoff", gt=0.0)
  d = jnp.maximum(jax.lax.stop_gradient(dist), cutoff)
  log_q = (dim - 2.0) * jnp.log(d) + 0.5 * (dim - 3.0) * jnp.log(
      jnp.maximum(1.0 - 0.25 * jnp.square(d), 1e-8))
  logits = -log_q
  logits = logits - jnp.max(jnp.where(neg, logits, -jnp.inf), axis=1, keepdims=True)
  allowed = neg & (dist < nonzero_loss_cutoff)
  fallback = ~jnp.any(allowed, axis=1, keepdims=True)
  allowed = jnp.where(fallback, neg, allowed)
  logits = jnp.where(allowed, jnp.where(fallback, 0.0, logits), -jnp.inf)
  q, r = dist.shape
  draws = jax.random.categorical(key, logits, axis=1, shape=(r, q)).T  # [Q, R]: a draw per slot
  rows = jnp.broadcast_to(jnp.arange(q)[:, None], (q, r))
  has_neg = jnp.any(neg, axis=1, keepdims=True)
  take = pos & has_neg
  chosen = jnp.zeros((q, r), bool).at[rows, draws].max(take)
  return _keep_nan(pos | (chosen & neg), dist, pos, neg)


MINERS = {
    "batch_hard": batch_hard_miner,
    "semihard": semihard_miner,
    "multi_similarity": multi_similarity_miner,
    "distance_weighted": distance_weighted_miner,
}
