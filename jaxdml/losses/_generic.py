"""The generic pair loss over (sim, target, mask), and the numerics every loss shares.

For an anchor (query) a with references x, soft targets y in [0, 1] and similarities s(a, x):

    loss(a) = sigma_plus( sum_x y rho_plus(s(a, x)) )
            + sigma_minus( sum_x (1 - y) rho_minus(s(a, x)) )

A clean positive has y = 1, a clean negative y = 0, and a mixed (interpolated) example counts in
both sums with weights y and 1 - y. This is the formulation of Venkataramanan et al. (ICLR 2022,
"It Takes Two to Tango: Mixup for Deep Metric Learning"): contrastive, multi-similarity,
Proxy-Anchor and the softmax family are instances, so mixing examples and labels works for all of
them through the same function.

Exponential losses are computed in the log domain: with `log_domain=True`, `rho_*` return
log rho and `sigma_*` receive `L = log sum_x w exp(log rho(s))` (a weighted log-sum-exp), which is
stable for scales such as beta = 50 or alpha = 32.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdml import _checks
from jaxdml.targets import pair_weights

Array = jax.Array

REDUCTIONS = ("mean", "mean_nonempty", "sum", "none")


def masked_logsumexp(x: Array, weights: Array, axis: int = -1) -> tuple[Array, Array]:
  """`log sum_i w_i exp(x_i)` over entries with `w_i > 0`.

  Which entries are active depends on the weights only, never on `x`: a NaN among the active
  entries makes the value NaN (the max shift, whatever it is, cannot hide it from the sum).

  Returns:
    (value, nonempty): `value` is 0 (finite, zero gradient) where no entry is active (also for
    an empty axis), and `nonempty` says where at least one entry was.
  """
  active = weights > 0
  x_safe = jnp.where(active, x, 0.0)
  m = jnp.max(jnp.where(active, x, -jnp.inf), axis=axis, keepdims=True, initial=-jnp.inf)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  s = jnp.sum(jnp.where(active, weights * jnp.exp(x_safe - m), 0.0), axis=axis)
  nonempty = jnp.any(active, axis=axis)
  value = jnp.where(nonempty, jnp.log(jnp.where(nonempty, s, 1.0)) + jnp.squeeze(m, axis), 0.0)
  return value, nonempty


def reduce(values: Array, nonempty: Array | None, reduction: str) -> Array:
  """Reduces per-anchor values.

  "mean": over all anchors (an anchor without pairs counts as 0; no anchor at all gives 0);
  "mean_nonempty": over anchors where `nonempty` (0 if none); "sum"; "none": the vector itself.
  """
  _checks.one_of(reduction, REDUCTIONS, "reduction")
  if reduction == "none":
    return values
  if reduction == "sum":
    return jnp.sum(values)
  if reduction == "mean":
    if values.shape[0] == 0:  # an empty batch (or no proxies): nothing to average
      return jnp.zeros(values.shape[1:], values.dtype)
    return jnp.mean(values)
  count = jnp.sum(nonempty)
  return jnp.sum(jnp.where(nonempty, values, 0.0)) / jnp.maximum(count, 1)


def avg_nonzero(values: Array, weights: Array) -> Array:
  """Sum of `weights * values` divided by the number of entries with a positive contribution.

  pytorch-metric-learning's AvgNonZeroReducer: pairs or triplets that already satisfy their margin
  (loss 0) do not dilute the average. Returns 0 when no entry contributes.
  """
  contrib = weights * values
  count = jnp.sum((contrib > 0).astype(values.dtype))
  return jnp.sum(contrib) / jnp.maximum(count, 1.0)


def _split_reduction(reduction: str | tuple[str, str]) -> tuple[str, str]:
  if isinstance(reduction, str):
    return reduction, reduction
  if len(reduction) != 2:
    raise ValueError(f"reduction must be a string or a (positive, negative) pair, got {reduction}.")
  return tuple(reduction)


def generic_loss(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    rho_pos: Callable[[Array], Array],
    rho_neg: Callable[[Array], Array],
    sigma_pos: Callable[[Array], Array] = lambda p: p,
    sigma_neg: Callable[[Array], Array] = lambda q: q,
    tau: Callable[[Array, Array], Array] | None = None,
    log_domain: bool = False,
    reduction: str | tuple[str, str] = "mean",
) -> Array:
  """The generic sigma/rho pair loss with soft targets.

  Args:
    sim: [Q, R] similarities of queries (anchors) to references.
    target: [Q, R] values in [0, 1]; 1 = same class, fractional for mixed examples.
    mask: optional [Q, R] bool; pairs outside the mask take no part.
    rho_pos, rho_neg: per-pair functions of the similarity (elementwise). With `log_domain`,
      they return log rho.
    sigma_pos, sigma_neg: functions of the per-anchor sums (of their logs, with `log_domain`).
    tau: optional `tau(p, q)` that couples the two sums (circle loss: `softplus(p + q)` of the
      log sums). Replaces `sigma_pos(p) + sigma_neg(q)`; anchors lacking a positive or a
      negative then get 0 and count as empty for "mean_nonempty".
    log_domain: compute the sums as weighted log-sum-exp (see module docstring).
    reduction: one of "mean", "mean_nonempty", "sum", "none", or a pair of them applied to the
      positive and the negative term separately (Proxy-Anchor averages its positive term over
      proxies with positives but its negative term over all proxies).

  Returns:
    The reduced loss (a scalar), or [Q] per-anchor losses for "none".

  Empty sets: an anchor with no positive (negative) pair gets 0 for that term, whatever sigma is,
  with zero gradient, so a batch without positives or negatives gives a finite loss, and an
  empty batch (Q = 0 or R = 0) gives 0 for every reduction but "none".

  NaN: a NaN similarity of a pair that takes part makes the loss NaN.
  """
  _checks.matrix_triple(sim, target, mask)
  pos_w, neg_w = pair_weights(target, mask)
  if log_domain:
    p, has_p = masked_logsumexp(rho_pos(sim), pos_w)
    q, has_q = masked_logsumexp(rho_neg(sim), neg_w)
  else:
    p = jnp.sum(pos_w * rho_pos(sim), axis=1)
    q = jnp.sum(neg_w * rho_neg(sim), axis=1)
    has_p, has_q = jnp.any(pos_w > 0, axis=1), jnp.any(neg_w > 0, axis=1)
  if tau is not None:
    both = has_p & has_q
    red = _split_reduction(reduction)[0]
    return reduce(jnp.where(both, tau(p, q), 0.0), both, red)
  pos_term = jnp.where(has_p, sigma_pos(p), 0.0)
  neg_term = jnp.where(has_q, sigma_neg(q), 0.0)
  red_pos, red_neg = _split_reduction(reduction)
  if red_pos == "none" or red_neg == "none":
    if red_pos != red_neg:
      raise ValueError("reduction 'none' must apply to both terms.")
    return pos_term + neg_term
  return reduce(pos_term, has_p, red_pos) + reduce(neg_term, has_q, red_neg)


def softmax_generic_loss(
    logits: Array,
    target: Array,
    mask: Array | None = None,
    *,
    reduction: str = "mean_nonempty",
) -> Array:
  """Cross-entropy of the positive mass against all: `-log(p / (p + q))` per anchor.

  With `p = sum_x y exp(logit)` and `q = sum_x (1 - y) exp(logit)` this is the tau(p, q) form of
  the softmax family (ProxyNCA, normalized softmax, N-pair, NT-Xent). Computed as
  `softplus(log q - log p)`. Anchors without a positive contribute 0 and are left out of
  "mean_nonempty"; anchors without a negative get loss 0 (a softmax over positives only).
  """
  _checks.matrix_triple(logits, target, mask, "logits")
  pos_w, neg_w = pair_weights(target, mask)
  log_p, has_p = masked_logsumexp(logits, pos_w)
  log_q, has_q = masked_logsumexp(logits, neg_w)
  per_anchor = jnp.where(has_p & has_q, jax.nn.softplus(log_q - log_p), 0.0)
  return reduce(per_anchor, has_p, reduction)
