"""Pair and triplet losses over the (sim | dist, target, mask) primitive.

Distance-based losses (contrastive, triplet, margin, lifted structure) take a distance matrix
`dist [Q, R]`; similarity-based ones (multi-similarity, circle, SupCon, NT-Xent, N-pair) take
`sim [Q, R]`. Wrappers over `(embeddings, labels)` default to what pytorch-metric-learning (PML)
uses: Euclidean distance of L2-normalised embeddings, or cosine similarity.

All losses accept soft targets in [0, 1]: a pair counts as positive with weight `target` and as
negative with weight `1 - target`.

A NaN (or inf) embedding makes every loss NaN: nothing here selects pairs by comparing values in
a way that would drop it. Hyperparameters given as numbers (or concrete arrays) are checked when
the function is called or traced, with an error naming the argument; traced values (learned
margins) are not checked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml import _checks, similarity
from jaxdml._sort import argsort_rows
from jaxdml.losses import _generic
from jaxdml.miners import multi_similarity_miner
from jaxdml.pairs import dist_inputs, sim_inputs
from jaxdml.targets import pair_weights

Array = jax.Array


# --------------------------------------------------------------------------- contrastive


def _check_margins(pos_margin, neg_margin) -> None:
  _checks.number(pos_margin, "pos_margin", ge=0.0)
  _checks.number(neg_margin, "neg_margin")
  if not (_checks.is_traced(pos_margin) or _checks.is_traced(neg_margin)) and not bool(
      np.all(np.asarray(neg_margin) > np.asarray(pos_margin))):
    raise ValueError(f"`neg_margin` must be > `pos_margin`, got neg_margin={neg_margin} and "
                     f"pos_margin={pos_margin}.")


def contrastive_from_dist(dist: Array, target: Array, mask: Array | None = None, *,
                          pos_margin: float = 0.0, neg_margin: float = 1.0) -> Array:
  """Contrastive loss (Hadsell et al., CVPR 2006) on a distance matrix.

  `mean_nz_pos( y [d - m_pos]_+ ) + mean_nz_neg( (1 - y) [m_neg - d]_+ )`, where `mean_nz` averages
  over the pairs whose term is non-zero (PML's AvgNonZeroReducer, applied to positive and negative
  pairs separately). In the sigma/rho form: rho_plus = [d - m_pos]_+, rho_minus = [m_neg - d]_+,
  sigma = identity, reduced over pairs rather than anchors.

  Defaults (PML): pos_margin 0, neg_margin 1, distances not squared. No positive (or negative)
  pair, or all satisfied: that term is 0 (an empty batch gives 0).

  Valid hyperparameters: finite `pos_margin >= 0` and `neg_margin > pos_margin`.
  """
  _checks.matrix_triple(dist, target, mask, "dist")
  _check_margins(pos_margin, neg_margin)
  pos_w, neg_w = pair_weights(target, mask)
  pos = _generic.avg_nonzero(jax.nn.relu(dist - pos_margin), pos_w)
  neg = _generic.avg_nonzero(jax.nn.relu(neg_margin - dist), neg_w)
  return pos + neg


def contrastive_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                     ref_labels: Array | None = None, *, pos_margin: float = 0.0,
                     neg_margin: float = 1.0, distance: str = "euclidean",
                     mask: Array | None = None) -> Array:
  """Contrastive loss over a batch (or against references); see `contrastive_from_dist`.

  Args:
    embeddings: [B, d] float; L2-normalised inside (as PML's default LpDistance).
    labels: [B] int.
    ref_embeddings, ref_labels: optional references [R, d], [R]; default: the batch itself with
      self-pairs excluded.
    pos_margin, neg_margin: margins on the distance, `0 <= pos_margin < neg_margin`.
    distance: "euclidean" (default), "squared_euclidean" or "cosine" (1 - cos).
    mask: optional [B, R] bool of pairs to keep (a miner's output).
  """
  d, t, m = dist_inputs(embeddings, labels, ref_embeddings, ref_labels, distance=distance,
                        mask=mask)
  return contrastive_from_dist(d, t, m, pos_margin=pos_margin, neg_margin=neg_margin)


# --------------------------------------------------------------------------- triplet


_TRIPLETS = ("all", "semihard", "hard")


def _interval_sums(keys: Array, cums: tuple[Array, ...], lo: Array | None, hi: Array
                   ) -> list[Array]:
  """Per row: differences of prefix sums `cums` ([Q, R+1] each) over sorted keys in (lo, hi).

  `lo=None` means no lower bound. Returns [Q, R] sums over the keys with lo < key < hi.
  """
  search = lambda side: jax.vmap(functools.partial(jnp.searchsorted, side=side))
  take = lambda a, k: jnp.take_along_axis(a, k, axis=1)
  k_hi = search("left")(keys, hi)
  if lo is None:
    return [take(c, k_hi) for c in cums]  # the prefix sums start at 0
  k_lo = jnp.minimum(search("right")(keys, lo), k_hi)
  return [take(c, k_hi) - take(c, k_lo) for c in cums]


def _all_triplets(dist, pos_w, neg_w, margin, semihard):
  """Sum and non-zero count of w_p w_n [d_ap - d_an + margin]_+ over triplets, in O(QR log R).

  For a positive pair with x = d_ap + margin, the negatives with a non-zero hinge are those with
  d_an < x; sorting each anchor's negatives by distance turns the sum over them into prefix sums:
  sum_n w_n (x - d_an) = x * W(x) - D(x). Semi-hard keeps d_ap < d_an only.
  """
  active = neg_w > 0
  # A NaN distance leaves the order of its row undefined, but not the result: x = d + margin is
  # NaN at that pair, and the total sums pos_w * per_pair over every pair, so it is NaN.
  keys = jnp.where(active, jax.lax.stop_gradient(dist), jnp.inf)
  order = argsort_rows(keys)
  keys = jnp.take_along_axis(keys, order, axis=1)
  d_sorted = jnp.take_along_axis(dist, order, axis=1)
  w_sorted = jnp.take_along_axis(neg_w, order, axis=1)
  # prefix sums (with a leading 0) of weights, weighted distances and counts
  cum = lambda a: jnp.pad(jnp.cumsum(a, axis=1), ((0, 0), (1, 0)))
  cums = (cum(w_sorted), cum(w_sorted * d_sorted), cum((w_sorted > 0).astype(dist.dtype)))
  x = dist + margin
  lo = jax.lax.stop_gradient(dist) if semihard else None
  w_sum, wd_sum, count = _interval_sums(keys, cums, lo, jax.lax.stop_gradient(x))
  per_pair = x * w_sum - wd_sum
  total = jnp.sum(pos_w * per_pair)
  n_nonzero = jnp.sum(jnp.where(pos_w > 0, count, 0.0))
  return total, n_nonzero


def triplet_margin_from_dist(dist: Array, target: Array, mask: Array | None = None, *,
                             margin: float = 0.05, triplets: str = "all",
                             soft_margin: bool = False) -> Array:
  """Triplet margin loss on a distance matrix: `[d(a, p) - d(a, n) + margin]_+`.

  Args:
    dist: [Q, R] distances of anchors to references.
    target: [Q, R] in [0, 1]; a triplet (a, p, n) has weight `y_ap * (1 - y_an)`.
    mask: optional [Q, R] pairs to use (self-pairs, unmined pairs excluded).
    margin: finite, >= 0; 0.05 (PML's TripletMarginLoss default; FaceNet used 0.2, the
      batch-hard paper 0.3 or a soft margin). Unused with `soft_margin`.
    triplets: "all": every valid triplet; "semihard": triplets with d_ap < d_an (the hinge then
      also requires d_an < d_ap + margin), the same value as PML's
      TripletMarginMiner(type_of_triplets="semihard") followed by TripletMarginLoss whenever the
      loss margin is at most the miner's (0.2); "hard": batch-hard, one triplet per anchor with
      its farthest positive and nearest negative (Hermans et al., 2017; PML's BatchHardMiner).
    soft_margin: with "hard", use `softplus(d_ap - d_an)` instead of the hinge (Hermans et al.;
      PML's TripletMarginLoss(margin=0, smooth_loss=True) after a BatchHardMiner).

  Returns:
    Scalar: the sum over triplets divided by the number of triplets with a non-zero loss (PML's
    AvgNonZeroReducer); 0 when no triplet contributes (also for an empty batch).

  "all" and "semihard" never build the [Q, R, R] triplet tensor: each anchor's negatives are
  sorted once and the hinge sums come from prefix sums, O(Q R log R) time and O(Q R) memory, with
  exact values and gradients.
  """
  _checks.matrix_triple(dist, target, mask, "dist")
  _checks.one_of(triplets, _TRIPLETS, "triplets")
  _checks.number(margin, "margin", ge=0.0)
  pos_w, neg_w = pair_weights(target, mask)
  if triplets == "hard":
    has_p = jnp.any(pos_w > 0, axis=1)
    has_n = jnp.any(neg_w > 0, axis=1)
    i_p = jnp.argmax(jnp.where(pos_w > 0, dist, -jnp.inf), axis=1)[:, None]
    i_n = jnp.argmin(jnp.where(neg_w > 0, dist, jnp.inf), axis=1)[:, None]
    pick = lambda a, i: jnp.take_along_axis(a, i, axis=1)[:, 0]
    valid = has_p & has_n
    gap = jnp.where(valid, pick(dist, i_p) - pick(dist, i_n), 0.0)
    per_anchor = jax.nn.softplus(gap) if soft_margin else jax.nn.relu(gap + margin)
    w_p, w_n = pick(pos_w, i_p), pick(neg_w, i_n)  # 1 for clean labels
    return _generic.avg_nonzero(per_anchor, jnp.where(valid, w_p * w_n, 0.0))
  if soft_margin:
    raise ValueError("soft_margin is only defined for triplets='hard'.")
  total, count = _all_triplets(dist, pos_w, neg_w, margin, triplets == "semihard")
  return total / jnp.maximum(count, 1.0)


def triplet_margin_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                        ref_labels: Array | None = None, *, margin: float = 0.05,
                        triplets: str = "all", soft_margin: bool = False,
                        distance: str = "euclidean", mask: Array | None = None) -> Array:
  """Triplet margin loss over a batch; see `triplet_margin_from_dist` (defaults of PML)."""
  d, t, m = dist_inputs(embeddings, labels, ref_embeddings, ref_labels, distance=distance,
                        mask=mask)
  return triplet_margin_from_dist(d, t, m, margin=margin, triplets=triplets,
                                  soft_margin=soft_margin)


# --------------------------------------------------------------------------- multi-similarity


def multi_similarity_from_sim(sim: Array, target: Array, mask: Array | None = None, *,
                              alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                              reduction: str = "mean") -> Array:
  """Multi-similarity loss (Wang et al., CVPR 2019) on a similarity matrix.

  `1/alpha log(1 + sum_p y e^{-alpha (s - base)})
  + 1/beta log(1 + sum_n (1 - y) e^{beta (s - base)})`
  per anchor, averaged over all anchors (an anchor without positives or negatives contributes 0
  for that term), as PML. The generic form with rho_plus = e^{-alpha(s - base)},
  rho_minus = e^{beta(s - base)}, sigma_plus = log(1 + .)/alpha, sigma_minus = log(1 + .)/beta,
  computed in the log domain.

  Defaults are PML's: alpha 2, beta 50, base 0.5 (the paper's lambda; its experiments used
  lambda = 1, alpha 2, beta 40 on some datasets). The paper's pair mining is separate:
  `jaxdml.miners.multi_similarity_miner`.

  Valid hyperparameters: `alpha > 0`, `beta > 0` (a negative scale flips the sign of its term),
  any finite `base`. Empty sets: an anchor without positives (negatives) gets 0 for that term, so
  a batch without positive pairs gives the mean of the negative terms alone, and an empty batch
  (or every pair masked) gives 0.
  """
  _checks.number(alpha, "alpha", gt=0.0)
  _checks.number(beta, "beta", gt=0.0)
  _checks.number(base, "base")
  return _generic.generic_loss(
      sim, target, mask,
      rho_pos=lambda s: -alpha * (s - base),
      rho_neg=lambda s: beta * (s - base),
      sigma_pos=lambda lse: jax.nn.softplus(lse) / alpha,
      sigma_neg=lambda lse: jax.nn.softplus(lse) / beta,
      log_domain=True, reduction=reduction)


def multi_similarity_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                          ref_labels: Array | None = None, *, alpha: float = 2.0,
                          beta: float = 50.0, base: float = 0.5,
                          miner_epsilon: float | None = None, mask: Array | None = None) -> Array:
  """Multi-similarity loss on cosine similarities; see `multi_similarity_from_sim`.

  Args:
    alpha, beta: the positive and negative scales, > 0. base: the similarity offset, finite.
    miner_epsilon: if given (finite), first apply the paper's pair mining
      (`jaxdml.miners.multi_similarity_miner`, epsilon 0.1 in the paper) to the pairs.
  """
  s, t, m = sim_inputs(embeddings, labels, ref_embeddings, ref_labels, mask=mask)
  if miner_epsilon is not None:
    m = m & multi_similarity_miner(s, t, m, epsilon=miner_epsilon)
  return multi_similarity_from_sim(s, t, m, alpha=alpha, beta=beta, base=base)


# --------------------------------------------------------------------------- margin loss


def margin_from_dist(dist: Array, target: Array, mask: Array | None = None, *,
                     beta: Array | float = 1.2, margin: float = 0.2, nu: float = 0.0) -> Array:
  """Margin loss (Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017).

  Over the triplets (a, p, n) of the mask, each with weight `y_ap (1 - y_an)`, every triplet has
  a positive term `[d_ap - beta_a + margin]_+` and a negative term `[beta_a - d_an + margin]_+`.
  The loss is the weighted sum of all terms plus `nu * sum_t beta_a(t)`, divided by the number of
  non-zero terms (positive and negative terms counted separately); 0 when no term is non-zero.
  This is PML's MarginLoss with `triplets_per_anchor="all"` (its DivisorReducer) and the original
  code's normaliser. The sum over triplets is computed from pair terms in O(QR): a positive
  pair's term repeats once per negative of its anchor and a negative pair's once per positive.

  For the paper's recipe (every positive pair with one distance-weighted negative) pass the mask
  of `jaxdml.miners.distance_weighted_miner`: the drawn negatives of an anchor then form triplets
  with each of its positives.

  Args:
    dist: [Q, R] distances.
    target: [Q, R] in [0, 1]. mask: optional [Q, R] bool.
    beta: the boundary, >= 0; a scalar, or [Q] per-anchor values (e.g.
      `beta_per_class[labels]`). Learn it by passing it from your parameter pytree (it receives
      gradients; a traced value is not checked).
    margin: alpha in the paper, 0.2; finite, >= 0.
    nu: weight of the beta regulariser, >= 0 (a negative one rewards a large beta without
      bound); 0 by default (as PML). Deviation from PML: PML adds a
      scalar (single, learned) beta's regulariser as `nu * beta` without dividing it; here it is
      always `nu * sum_t beta_a(t) / count`, as PML does for per-class betas and the original
      code for both.

  Anchors without a positive or without a negative form no triplet and contribute nothing; an
  empty batch gives 0.
  """
  _checks.matrix_triple(dist, target, mask, "dist")
  _checks.number(beta, "beta", ge=0.0)
  _checks.number(margin, "margin", ge=0.0)
  _checks.number(nu, "nu", ge=0.0)
  pos_w, neg_w = pair_weights(target, mask)
  b = jnp.asarray(beta, dist.dtype)
  if b.ndim == 1:
    if b.shape[0] != dist.shape[0]:
      raise ValueError(f"per-anchor `beta` has {b.shape[0]} entries for {dist.shape[0]} anchors.")
    b = b[:, None]
  elif b.ndim != 0:
    raise ValueError(f"`beta` must be a scalar or [Q], got shape {b.shape}.")
  pos = jax.nn.relu(dist - b + margin)
  neg = jax.nn.relu(b - dist + margin)
  # Per anchor: total weight / number of its positives and negatives (the other triplet member).
  w_pos = jnp.sum(pos_w, axis=1, keepdims=True)
  w_neg = jnp.sum(neg_w, axis=1, keepdims=True)
  n_pos = jnp.sum(pos_w > 0, axis=1, keepdims=True).astype(dist.dtype)
  n_neg = jnp.sum(neg_w > 0, axis=1, keepdims=True).astype(dist.dtype)
  total = jnp.sum(pos_w * pos * w_neg) + jnp.sum(neg_w * neg * w_pos)
  count = (jnp.sum(jnp.where((pos_w > 0) & (pos > 0), n_neg, 0.0))
           + jnp.sum(jnp.where((neg_w > 0) & (neg > 0), n_pos, 0.0)))
  if nu:
    total = total + nu * jnp.sum(jnp.broadcast_to(b, w_pos.shape) * w_pos * w_neg)
  # `0 * total`, not 0, where no term is non-zero: a NaN total stays NaN.
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0 * total)


def margin_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                ref_labels: Array | None = None, *, beta: Array | float = 1.2,
                margin: float = 0.2, nu: float = 0.0, mask: Array | None = None) -> Array:
  """Margin loss over a batch; `beta` a scalar or [num_classes] (indexed by anchor label)."""
  d, t, m = dist_inputs(embeddings, labels, ref_embeddings, ref_labels, mask=mask)
  b = jnp.asarray(beta)
  if b.ndim == 1:
    b = b[labels]
  return margin_from_dist(d, t, m, beta=b, margin=margin, nu=nu)


# --------------------------------------------------------------------------- lifted structure


def lifted_structure_from_dist(dist: Array, target: Array, mask: Array | None = None, *,
                               neg_margin: float = 1.0, pos_margin: float = 0.0) -> Array:
  """Lifted structured loss (Song et al., CVPR 2016) on a square distance matrix.

  For a positive pair (i, j):
  `J_ij = log( sum_{k in N(i)} e^{m_neg - d_ik} + sum_{l in N(j)} e^{m_neg - d_jl} ) + d_ij - m_pos`
  and the loss is `1/2 mean_{(i,j) in P} [J_ij]_+^2` over ordered positive pairs (the paper's
  `1/(2|P|) sum` over unordered pairs, with its alpha = m_neg = 1), as PML's LiftedStructureLoss.
  Needs queries == references (dist is [B, B]) since the negatives of the positive j are used.
  Soft targets weight positives by y and negatives by 1 - y.

  Empty sets: no positive pair gives 0. A positive pair none of whose two members has a negative
  has `J = -inf` (the log of an empty sum) and contributes 0, still counting in the mean; so a
  batch of one class gives 0, as in PML. Deviation from PML: with a miner that leaves some
  positive pairs without negatives while others keep theirs, PML takes the empty log-sum as 0
  (J = d_ij - m_pos); here it is -inf, which is the formula's value.

  Valid hyperparameters: any finite `neg_margin` and `pos_margin` (the loss is >= 0 for all).
  An empty batch gives 0.
  """
  _checks.matrix_triple(dist, target, mask, "dist")
  _checks.number(neg_margin, "neg_margin")
  _checks.number(pos_margin, "pos_margin")
  if dist.shape[0] != dist.shape[1]:
    raise ValueError(f"lifted structure needs a square [B, B] `dist`, got {dist.shape}.")
  pos_w, neg_w = pair_weights(target, mask)
  lse_n, has_n = _generic.masked_logsumexp(neg_margin - dist, neg_w)
  a_i, a_j = lse_n[:, None], lse_n[None, :]
  has_i, has_j = has_n[:, None], has_n[None, :]
  # logaddexp of the two rows' log-sums, written so that an empty side never produces -inf
  # (whose gradient would be NaN).
  pair_lse = jnp.where(has_i & has_j, jnp.logaddexp(a_i, a_j), jnp.where(has_i, a_i, a_j))
  has_neg = has_i | has_j
  j = pair_lse + dist - pos_margin
  per_pair = jnp.where(has_neg, jnp.square(jax.nn.relu(j)), 0.0)
  return 0.5 * jnp.sum(pos_w * per_pair) / jnp.maximum(jnp.sum(pos_w), 1e-12)


def generalized_lifted_structure_from_dist(dist: Array, target: Array,
                                           mask: Array | None = None, *,
                                           pos_margin: float = 0.0,
                                           neg_margin: float = 1.0) -> Array:
  """Generalised lifted structure loss (Hermans et al., 2017), per anchor.

  `[ log sum_p y e^{d_ap - m_pos} + log sum_n (1 - y) e^{m_neg - d_an} ]_+`, mean over all
  anchors. The generic form with tau = relu(p + q) of the two log-sums. Defaults as PML:
  pos_margin 0, neg_margin 1.

  Empty sets: an anchor lacking a positive or a negative gives 0 (an empty log-sum is -inf), and
  still counts in the mean. Deviation from PML's GeneralizedLiftedStructureLoss: PML takes an
  empty log-sum as 0, so an anchor without positives there still gives `[log sum_n ...]_+` (and
  one without negatives `[log sum_p ...]_+`). The two agree whenever every anchor has both, e.g.
  any class-balanced (P x K, K >= 2) batch of at least two classes.

  Valid hyperparameters: any finite `pos_margin` and `neg_margin`. An empty batch gives 0.
  """
  _checks.matrix_triple(dist, target, mask, "dist")
  _checks.number(pos_margin, "pos_margin")
  _checks.number(neg_margin, "neg_margin")
  return _generic.generic_loss(
      dist, target, mask,
      rho_pos=lambda d: d - pos_margin, rho_neg=lambda d: neg_margin - d,
      tau=lambda p, q: jax.nn.relu(p + q), log_domain=True, reduction="mean")


def lifted_structure_loss(embeddings: Array, labels: Array, *, neg_margin: float = 1.0,
                          generalized: bool = False, pos_margin: float = 0.0,
                          mask: Array | None = None) -> Array:
  """Lifted structure loss over a batch (Euclidean distance of normalised embeddings).

  `generalized=False`: Song et al. 2016 (pairs), `lifted_structure_from_dist`; True: the
  per-anchor generalised form, `generalized_lifted_structure_from_dist`. No `ref_embeddings`:
  the pair form needs the negatives of both members of a positive pair (PML does not support
  references for it either).
  """
  d, t, m = dist_inputs(embeddings, labels, mask=mask)
  if generalized:
    return generalized_lifted_structure_from_dist(d, t, m, pos_margin=pos_margin,
                                                  neg_margin=neg_margin)
  return lifted_structure_from_dist(d, t, m, neg_margin=neg_margin, pos_margin=pos_margin)


# --------------------------------------------------------------------------- circle


def circle_from_sim(sim: Array, target: Array, mask: Array | None = None, *,
                    margin: float = 0.4, gamma: float = 80.0) -> Array:
  """Circle loss (Sun et al., CVPR 2020), pair-wise form, on a similarity matrix.

  `softplus( log sum_p e^{-gamma a_p (s_p - (1 - m))} + log sum_n e^{gamma a_n (s_n - m)} )` per
  anchor, with self-paced weights `a_p = [1 + m - s_p]_+`, `a_n = [s_n + m]_+` treated as constants
  (no gradient through them, as in the paper and PML). Soft targets weight the exponentials.
  Averaged over anchors with a non-zero loss (PML's AvgNonZeroReducer); anchors lacking a positive
  or a negative give 0 (an empty batch gives 0). Defaults are PML's: m 0.4, gamma 80 (the paper
  used m 0.25, gamma 256 for face recognition).

  Valid hyperparameters: a finite `margin` (the relaxation m) and a scale `gamma > 0`.
  """
  _checks.number(margin, "margin")
  _checks.number(gamma, "gamma", gt=0.0)
  sg = jax.lax.stop_gradient
  per_anchor = _generic.generic_loss(
      sim, target, mask,
      rho_pos=lambda s: -gamma * jax.nn.relu(1 + margin - sg(s)) * (s - (1 - margin)),
      rho_neg=lambda s: gamma * jax.nn.relu(sg(s) + margin) * (s - margin),
      tau=lambda p, q: jax.nn.softplus(p + q), log_domain=True, reduction="none")
  return _generic.avg_nonzero(per_anchor, jnp.ones_like(per_anchor))


def circle_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                ref_labels: Array | None = None, *, margin: float = 0.4, gamma: float = 80.0,
                mask: Array | None = None) -> Array:
  """Circle loss on cosine similarities; see `circle_from_sim`."""
  s, t, m = sim_inputs(embeddings, labels, ref_embeddings, ref_labels, mask=mask)
  return circle_from_sim(s, t, m, margin=margin, gamma=gamma)


# --------------------------------------------------------------------------- softmax family


def supcon_from_sim(sim: Array, target: Array, mask: Array | None = None, *,
                    temperature: float = 0.1) -> Array:
  """Supervised contrastive loss (Khosla et al., NeurIPS 2020), "L_out" form.

  Per anchor: `-(1/sum_p y) sum_p y s_ap / T + log sum_{x in mask} e^{s_ax / T}`: the mean over
  positives of the log-probability of each positive against every valid reference (positives
  included, self excluded). Averaged over anchors with a non-zero loss (PML's AvgNonZeroReducer);
  an anchor without positives gives 0, and so does an empty batch. Temperature: finite, > 0;
  0.1 (PML; the paper used 0.1 too).

  Deviation from PML: PML returns 0 for the whole batch when it holds no negative pair at all
  (a single class); here each anchor still gets `log sum_x e^{s_ax/T} - mean_p s_ap/T`, the
  formula's value (> 0 unless all positives are equally similar). Batches with negatives agree.
  """
  _checks.matrix_triple(sim, target, mask)
  _checks.number(temperature, "temperature", gt=0.0)
  pos_w, neg_w = pair_weights(target, mask)
  logits = sim / temperature
  all_w = jnp.where(pos_w + neg_w > 0, 1.0, 0.0)
  lse_all, _ = _generic.masked_logsumexp(logits, all_w)
  n_pos = jnp.sum(pos_w, axis=1)
  has_p = n_pos > 0
  mean_pos = jnp.sum(pos_w * logits, axis=1) / jnp.where(has_p, n_pos, 1.0)
  per_anchor = jnp.where(has_p, lse_all - mean_pos, 0.0)
  return _generic.avg_nonzero(per_anchor, has_p.astype(sim.dtype))


def supcon_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                ref_labels: Array | None = None, *, temperature: float = 0.1,
                mask: Array | None = None) -> Array:
  """Supervised contrastive loss on cosine similarities; see `supcon_from_sim`."""
  s, t, m = sim_inputs(embeddings, labels, ref_embeddings, ref_labels, mask=mask)
  return supcon_from_sim(s, t, m, temperature=temperature)


def ntxent_from_sim(sim: Array, target: Array, mask: Array | None = None, *,
                    temperature: float = 0.07) -> Array:
  """NT-Xent / InfoNCE (Chen et al., 2020; Oord et al., 2018) with labels, per positive pair.

  For each positive pair (a, p): `-log( e^{s_ap/T} / (e^{s_ap/T} + sum_n e^{s_an/T}) )`, averaged
  over positive pairs (weighted by y for soft targets), as PML's NTXentLoss. Temperature: finite,
  > 0; 0.07 (PML). Other positives of the anchor are not in the denominator. A pair whose anchor
  has no negatives gives 0 (and still counts in the mean); no positive pair at all (or an empty
  batch): 0.
  """
  _checks.matrix_triple(sim, target, mask)
  _checks.number(temperature, "temperature", gt=0.0)
  pos_w, neg_w = pair_weights(target, mask)
  logits = sim / temperature
  lse_n, has_n = _generic.masked_logsumexp(logits, neg_w)
  per_pair = jnp.where(has_n[:, None], jax.nn.softplus(lse_n[:, None] - logits), 0.0)
  return jnp.sum(pos_w * per_pair) / jnp.maximum(jnp.sum(pos_w), 1e-12)


def ntxent_loss(embeddings: Array, labels: Array, ref_embeddings: Array | None = None,
                ref_labels: Array | None = None, *, temperature: float = 0.07,
                mask: Array | None = None) -> Array:
  """NT-Xent on cosine similarities; see `ntxent_from_sim`."""
  s, t, m = sim_inputs(embeddings, labels, ref_embeddings, ref_labels, mask=mask)
  return ntxent_from_sim(s, t, m, temperature=temperature)


def n_pairs_loss(embeddings: Array, labels: Array, *, l2_reg: float = 0.0,
                 normalize: bool = True) -> Array:
  """Multi-class N-pair loss (Sohn, NeurIPS 2016) over a class-balanced batch.

  Within the batch, the first example of each class is its anchor and the second its positive
  (classes with one example take no part), which is PML's choice of one positive pair per label.
  Each anchor is scored against every class's positive: `-log( e^{s_ap} / sum_{classes c}
  e^{s_ac} )`, averaged over anchors: `softmax_generic_loss` on the [B/2, B/2] matrix of anchors
  against positives (padded to a static size, padding masked). No class with two examples: 0
  (plus the `l2_reg` term); an empty batch (B = 0): 0. An example that takes part in no pair
  (the third member of a class, a class of one) does not enter the loss: a NaN there changes
  nothing (except through `l2_reg`), while a NaN in a scored example makes the loss NaN.

  Args:
    embeddings: [B, d] float. labels: [B] int.
    l2_reg: >= 0; adds the paper's `l2_reg * mean ||f||^2` of the raw embeddings (0.002 in the
      paper; PML adds none by default).
    normalize: True (default, as PML's NPairsLoss, whose DotProductSimilarity normalises the
      embeddings): `s` is the cosine similarity, with no temperature. False: the paper's inner
      product of unnormalised embeddings (use it with `l2_reg`).
  """
  _checks.embeddings(embeddings)
  _checks.labels(labels, embeddings.shape[0])
  _checks.number(l2_reg, "l2_reg", ge=0.0)
  if embeddings.shape[0] == 0:  # no example, no pair: the documented 0
    return jnp.zeros((), embeddings.dtype)
  same = labels[:, None] == labels[None, :]
  earlier = jnp.tril(same, k=-1)  # j < i with the same label
  rank = jnp.sum(earlier, axis=1)  # rank of example i within its class
  anchor = rank == 0
  positive = rank == 1
  # the positive of each example's class (its rank-1 member), if any
  pos_of = jnp.argmax(same & positive[None, :], axis=1)
  has_pos = jnp.any(same & positive[None, :], axis=1)
  # Compact the scored pairs: at most B // 2 classes have two examples, so anchors and their
  # positives fit in B // 2 slots, and the matrix is [B/2, B/2] instead of [B, B].
  n = max(embeddings.shape[0] // 2, 1)
  a_idx = jnp.nonzero(anchor & has_pos, size=n, fill_value=0)[0]
  valid = jnp.arange(n) < jnp.sum(anchor & has_pos)
  p_idx = pos_of[a_idx]
  # Gather, then normalise: an example that takes part in no pair gets an exact zero gradient,
  # even when it is NaN (normalising it first would send 0 * NaN back to it).
  za, zp = embeddings[a_idx], embeddings[p_idx]
  if normalize:
    za, zp = similarity.l2_normalize(za), similarity.l2_normalize(zp)
  sim = za @ zp.T
  target = jnp.eye(n, dtype=sim.dtype)  # anchor i's positive is column i
  mask = valid[:, None] & valid[None, :]
  loss = _generic.softmax_generic_loss(sim, target, mask)
  if _checks.is_traced(l2_reg) or l2_reg:
    loss = loss + l2_reg * jnp.mean(jnp.sum(jnp.square(embeddings), axis=1))
  return loss
