"""Metrix: mixup for deep metric learning, as pure functions.

Venkataramanan, Psomas, Kijak, Amsaleg, Karantzalos and Avrithis, "It Takes Two to Tango: Mixup for
Deep Metric Learning", ICLR 2022. Official code: github.com/billpsomas/Metrix_ICLR22.

A pair loss in the generic form (see `jaxdml.losses.generic_loss`) sums, for an anchor a, the
per-pair terms of its examples (x, y) with y in [0, 1]:

    l(a) = sigma_plus( sum_x y rho_plus(s(a, x)) ) + sigma_minus( sum_x (1 - y) rho_minus(s(a, x)) )

Clean positives have y = 1 and clean negatives y = 0. Metrix adds *mixed* examples
`v = f_lambda(x, x')` whose label is the interpolation `lam y + (1 - lam) y'` and evaluates the same
loss on them; the training objective is

    L = L_clean + w * L_mix,    lam ~ Beta(alpha, alpha).

The mixing function `f_lambda` interpolates inputs (input mixup), intermediate feature maps (feature
or manifold mixup: `embed(mix(features(x), features(x'), lam))`) or embeddings (embedding mixup).
`wrap(inner, Settings(...))` adds `w L_mix` to any objective that has a loss over similarities
with soft targets (`jaxdml.objectives.SoftLoss`: every built-in pair and proxy loss except lifted
structure, N-pair and a margin loss with learned beta, and any loss made with
`objectives.pair_loss` / `proxy_loss`): the mixed loss is the inner objective's own, with its
hyperparameters. The network reaches it through the model seam of `jaxdml.objectives.Batch`
(feature maps and head for feature mixup, inputs and the whole network for input mixup), which
the train step always fills. The pieces are public: drawing lam, choosing the pairs to mix as
fixed-size index arrays, mixing arrays, the soft targets of mixed examples, the mixed loss and
the positivity analysis of the paper (which mixed examples a loss treats as positives), e.g.
feature mixup by hand with a `jaxdml.models.EmbeddingModel`:

    obj = objectives.core("multi_similarity")
    pairs = metrix.sample_pairs(key, labels, sim=jax.lax.stop_gradient(sim_clean))
    feats = model.apply(variables, images, train=True, method="features")
    mixed = model.apply(variables, metrix.mix_pairs(feats, pairs), train=True,
                        method="embed_features")
    loss = losses.multi_similarity_loss(clean, labels) + 0.4 * metrix.mixed_loss(
        obj, {}, clean, labels, mixed, pairs)

Defaults and where they come from (the official code, `main.py`, `train.py`, `mixup/utils.py`,
`mixup/losses.py`, `net/feature_resnet.py`):
  * lam ~ Beta(2, 2) (`--alpha 2.0`), one scalar lam per iteration;
  * each iteration mixes either positive-negative pairs or anchor-negative pairs, with probability
    1/2 each (`random.randint(0, 1)`): `pairing="random"`;
  * w = 0.4 (`train.py`; its embedding-mixup anchor-negative branch alone uses 0.3);
  * contrastive: Euclidean distance of L2-normalised embeddings (PML `LpDistance`), positive margin
    0, negative margin 0.5, each term averaged over its non-zero entries (`AvgNonZeroReducer`);
  * the mixed embedding itself is not re-normalised by the code, but every distance it enters
    normalises it (PML's `LpDistance` has `normalize_embeddings=True`), so the loss sees the
    re-normalised mixture; every loss here works on cosine similarities for the same reason;
  * multi-similarity: PML's loss with alpha 17.97, beta 75.66, base 0.77 and PML's
    multi-similarity miner with epsilon 0.39 on the clean pairs (`main.py` lines 171-176 of
    github.com/billpsomas/metrix at b679703), not Wang et al.'s 2 / 50 / 0.5 with epsilon 0.1
    that `objectives.core("multi_similarity")` defaults to;
  * Proxy-Anchor: PML's defaults (margin 0.1, alpha 32), the proxies at 100x the learning rate;
  * batches (`main.py` and the README's commands): CUB-200 and Cars-196 train on plain random
    batches of 100 (a shuffled loader, the last partial batch dropped), not on P x M
    class-balanced ones, so many anchors have no positive in their batch; SOP and In-shop on
    batches of 20 classes x 5 images (`BalancedSampler`, `--images_per_class 5`).
`recipe(dataset, loss, mode)` gives these values. The released code (commit 7ce730c) implements the
contrastive loss only; the later one (b679703) adds multi-similarity with embedding mixup and
Proxy-Anchor without mixup. For the other losses the mixed loss is the paper's `L_clean + w L_mix`
with the clean loss's hyperparameters, not the fused multi-similarity form of that later code.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml import _checks, objectives, similarity, targets

Array = jax.Array

PAIRINGS = ("pos_neg", "anchor_neg", "random")
LOCATIONS = ("input", "feature", "embedding")

#: Beta(alpha, alpha) parameter of lam (official code, `main.py --alpha`).
DEFAULT_ALPHA = 2.0
#: Weight w of the mixed loss (official code, `train.py`).
DEFAULT_WEIGHT = 0.4


class MixPairs(NamedTuple):
  """M mixed examples of a batch of B, as fixed-size index arrays.

  Mixed example m is `lam_m * x[index_a[m]] + (1 - lam_m) * x[index_b[m]]`, compared with the clean
  anchor `anchor[m]`. For a positive-negative pair `index_a` is a positive of the anchor and
  `index_b` one of its negatives; for an anchor-negative pair `index_a == anchor`. Slots whose
  `valid` is False (an anchor without a positive or a negative, padding) hold in-range indices and
  must be ignored; every function here masks them.

  Attributes:
    anchor: [M] int32 index of the clean anchor.
    index_a: [M] int32, the member with weight lam (same class as the anchor).
    index_b: [M] int32, the member with weight 1 - lam (a negative of the anchor).
    lam: [] or [M] float32 mixing factor(s) in [0, 1].
    valid: [M] bool.
  """

  anchor: Array
  index_a: Array
  index_b: Array
  lam: Array
  valid: Array


# --------------------------------------------------------------------------- mixing


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _check_lambda(lam: Any, name: str = "lam") -> None:
  """Raises for a concrete lam outside [0, 1]; a traced lam cannot be checked and is left alone."""
  if isinstance(lam, jax.core.Tracer):
    return
  value = np.asarray(lam, dtype=np.float64)
  if not np.all((value >= 0.0) & (value <= 1.0)):
    raise ValueError(f"`{name}` must lie in [0, 1], got {value}.")


def sample_lambda(key: Array, alpha: float = DEFAULT_ALPHA, shape: tuple[int, ...] = ()) -> Array:
  """Draws mixing factors lam ~ Beta(alpha, alpha).

  Args:
    key: a `jax.random` key.
    alpha: the Beta parameter; 2.0 in the official code (`--alpha`), which gives mean 1/2 and
      variance 1/20. The classic mixup default, 0.4 (Zhang et al., 2018), is the default of the
      code's unused `mixup_data` helper.
    shape: () for one lam per batch (as the code), (M,) for one per mixed example.

  Returns:
    float32 array of `shape`.

  >>> import jax
  >>> lam = sample_lambda(jax.random.PRNGKey(0), 2.0, (3,))
  >>> lam.shape, bool(((lam > 0) & (lam < 1)).all())
  ((3,), True)
  """
  if isinstance(alpha, (int, float)):
    _checks.positive(alpha, "alpha")
  return jax.random.beta(key, alpha, alpha, shape, dtype=jnp.float32)


def mix(a: Array, b: Array, lam: Array | float) -> Array:
  """The mixup interpolation `lam * a + (1 - lam) * b`.

  Works for any location: images [M, H, W, C], feature maps [M, h, w, C], embeddings [M, d].

  Args:
    a, b: floating arrays of the same shape; axis 0 is the example axis.
    lam: a scalar, or [M] with one factor per example (broadcast over the other axes). A concrete
      value outside [0, 1] raises (at trace time under `jax.jit`); a traced one is not checked.

  Returns:
    Array of the shape and dtype of `a`.

  >>> import jax.numpy as jnp
  >>> mix(jnp.ones(2), jnp.zeros(2), 0.25).tolist()
  [0.25, 0.25]
  """
  _checks.same_shape(a, b, "a", "b")
  _checks.check_floating(a, "a")
  _checks.check_floating(b, "b")
  lam_shape = _shape(lam)
  if len(lam_shape) > 1 or (len(lam_shape) == 1 and (a.ndim == 0 or lam_shape[0] != a.shape[0])):
    raise ValueError(
        f"`lam` must be a scalar or have one entry per example ({a.shape[:1]}), got shape "
        f"{lam_shape}.")
  _check_lambda(lam)
  lam = jnp.asarray(lam, a.dtype)
  if lam.ndim == 1:
    lam = lam.reshape(lam.shape + (1,) * (a.ndim - 1))
  return lam * a + (1.0 - lam) * b


def mix_embeddings(a: Array, b: Array, lam: Array | float, *, normalize: bool = True) -> Array:
  """Embedding mixup: `mix(a, b, lam)` of [M, d] embeddings, L2-normalised by default.

  `normalize=True` returns what the official code's losses see (its distances normalise every
  embedding); `normalize=False` returns the raw interpolation, as its model outputs it.

  >>> import jax.numpy as jnp
  >>> mixed = mix_embeddings(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]), 0.5)
  >>> [round(v, 4) for v in mixed[0].tolist()]
  [0.7071, 0.7071]
  """
  _checks.embeddings(a, "a")
  out = mix(a, b, lam)
  return similarity.l2_normalize(out) if normalize else out


def mix_pairs(x: Array, pairs: MixPairs) -> Array:
  """Mixes the examples of a batch as `pairs` says: `mix(x[index_a], x[index_b], lam)`.

  Args:
    x: [B, ...] inputs, feature maps or embeddings of the batch (floating).
    pairs: from `select_pairs` / `sample_pairs`.

  Returns:
    [M, ...] mixed examples, aligned with `pairs` (invalid slots hold some mixture; ignore them).

  >>> import jax.numpy as jnp
  >>> pairs = select_pairs(jnp.array([0, 0, 1, 1]), 0.5)
  >>> mix_pairs(jnp.array([0.0, 1.0, 2.0, 3.0]), pairs).tolist()
  [1.5, 1.0, 1.5, 1.0]
  """
  if len(_shape(x)) < 1:
    raise ValueError("`x` must have a leading batch axis.")
  return mix(x[pairs.index_a], x[pairs.index_b], pairs.lam)


# --------------------------------------------------------------------------- pair selection


def _top(candidates: Array, score: Array, k: int) -> tuple[Array, Array]:
  """Per row, the k candidates of highest score: ([B, k] indices, [B, k] whether a candidate)."""
  score = jnp.where(candidates, score, -jnp.inf)
  _, idx = jax.lax.top_k(score, k)
  return idx.astype(jnp.int32), jnp.take_along_axis(candidates, idx, axis=1)


def _count(value: int | None, b: int, name: str) -> int:
  if value is None:
    return max(b - 1, 1)
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
  return min(int(value), max(b - 1, 1))


def select_pairs(
    labels: Array,
    lam: Array | float,
    *,
    pairing: str = "pos_neg",
    sim: Array | None = None,
    key: Array | None = None,
    num_positives: int | None = 1,
    num_negatives: int | None = 1,
    num_mixed: int | None = None,
    valid: Array | None = None,
    anchor_neg_all: bool = False,
) -> MixPairs:
  """Chooses which examples of a batch to mix, as fixed-size (jit-friendly) index arrays.

  Every anchor i owns `num_positives * num_negatives` slots (one if `pairing="anchor_neg"`), so a
  batch of B gives M = B * num_positives * num_negatives mixed examples (B by default: one per
  anchor), whatever its labels; slots that cannot be filled are marked invalid. `num_mixed` then
  keeps a fixed number of the valid slots (chosen at random with `key`, else the first ones).

  * "pos_neg": for an anchor a with a positive p and a negative n, mix p with n
    (`x = lam p + (1 - lam) n`, soft target lam with respect to a).
  * "anchor_neg": mix the anchor with its negative n (`x = lam a + (1 - lam) n`, soft target lam).
    As in the code, only anchors *without* a positive in the batch are used, unless
    `anchor_neg_all`.
  * "random": one of the two per call, each with probability 1/2 (needs `key`), as the code does
    every iteration. Both are computed and one is selected, so this stays jit-compatible.

  Which positives and negatives fill an anchor's slots:
  * negatives: the most similar ones (hardest) if `sim` is given, as the code's input mixup
    (`top_k = 1`); else random ones if `key` is given; else the lowest-indexed ones;
  * positives: random ones if `key` is given, else the lowest-indexed ones (the code's embedding
    and feature mixup always takes an anchor's first positive).
  `None` takes all of them (B - 1 slots). The code's recipes: input mixup is
  `num_positives=None, num_negatives=1` with `sim`; embedding and feature mixup are
  `num_positives=1, num_negatives=None`. Deviation: the code's embedding and feature mixup repeat
  each (anchor, first positive, negative) triple once per positive of the anchor, which only
  reweights anchors in unbalanced batches; here each triple appears once.

  Args:
    labels: [B] integer labels.
    lam: scalar or [M] mixing factor(s) to carry in the result (see `sample_lambda`).
    pairing: "pos_neg", "anchor_neg" or "random".
    sim: optional [B, B] clean similarities used to rank negatives (no gradient flows).
    key: optional `jax.random` key (required for "random" and for a random `num_mixed` subset).
    num_positives, num_negatives: slots per anchor, or None for all.
    num_mixed: optional fixed number of mixed examples to keep (<= M).
    valid: optional [B] bool; False marks padding that is never mixed or used as an anchor.
    anchor_neg_all: use every anchor for "anchor_neg", not only those without positives.

  Returns:
    `MixPairs` with M slots.

  >>> import jax.numpy as jnp
  >>> pairs = select_pairs(jnp.array([0, 0, 1, 1]), 0.5)
  >>> pairs.anchor.tolist(), pairs.index_a.tolist(), pairs.index_b.tolist()
  ([0, 1, 2, 3], [1, 0, 3, 2], [2, 2, 0, 0])
  """
  _checks.check_rank(labels, 1, "labels", "[batch]")
  _checks.check_integer(labels, "labels")
  _checks.one_of(pairing, PAIRINGS, "pairing")
  b = labels.shape[0]
  if b < 2:
    raise ValueError(f"mixing needs a batch of at least 2 examples, got {b}.")
  if sim is not None:
    _checks.check_rank(sim, 2, "sim", "[batch, batch]")
    if sim.shape != (b, b):
      raise ValueError(f"`sim` must have shape {(b, b)}, got {sim.shape}.")
  if pairing == "random" and key is None:
    raise ValueError("pairing='random' needs a `key`.")
  n_pos = _count(num_positives, b, "num_positives")
  n_neg = _count(num_negatives, b, "num_negatives")
  if pairing == "anchor_neg":
    n_pos = 1
  keys = jax.random.split(key, 4) if key is not None else [None] * 4

  ok = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid, bool)
  if valid is not None:
    _checks.same_shape(valid, labels, "valid", "labels")
  both = ok[:, None] & ok[None, :]
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(b, dtype=bool)
  pos_cand = same & ~eye & both
  neg_cand = ~same & both
  order = jnp.broadcast_to(-jnp.arange(b, dtype=jnp.float32), (b, b))
  if sim is not None:
    neg_score = jax.lax.stop_gradient(sim).astype(jnp.float32)
  elif keys[1] is not None:
    neg_score = jax.random.uniform(keys[1], (b, b))
  else:
    neg_score = order
  pos_score = jax.random.uniform(keys[2], (b, b)) if keys[2] is not None else order
  pos_idx, pos_ok = _top(pos_cand, pos_score, n_pos)  # [B, P]
  neg_idx, neg_ok = _top(neg_cand, neg_score, n_neg)  # [B, N]

  shape = (b, n_pos, n_neg)
  anchor = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None, None], shape)
  index_b = jnp.broadcast_to(neg_idx[:, None, :], shape)
  pn_a = jnp.broadcast_to(pos_idx[:, :, None], shape)
  pn_valid = pos_ok[:, :, None] & neg_ok[:, None, :]
  has_pos = jnp.any(pos_cand, axis=1)
  an_anchor = ok if anchor_neg_all else ok & ~has_pos
  first = (jnp.arange(n_pos) == 0)[None, :, None]
  an_valid = an_anchor[:, None, None] & first & neg_ok[:, None, :]
  if pairing == "pos_neg":
    index_a, slot_valid = pn_a, pn_valid
  elif pairing == "anchor_neg":
    index_a, slot_valid = anchor, an_valid
  else:
    coin = jax.random.bernoulli(keys[0])
    index_a = jnp.where(coin, pn_a, anchor)
    slot_valid = jnp.where(coin, pn_valid, an_valid)

  anchor, index_a, index_b, slot_valid = (
      x.reshape(-1) for x in (anchor, index_a, index_b, slot_valid))
  if num_mixed is not None:
    m0 = anchor.shape[0]
    if not isinstance(num_mixed, (int, np.integer)) or not 1 <= num_mixed <= m0:
      raise ValueError(f"`num_mixed` must be an int in [1, {m0}] (the number of slots), "
                       f"got {num_mixed!r}.")
    prio = (jax.random.uniform(keys[3], (m0,)) if keys[3] is not None
            else -jnp.arange(m0, dtype=jnp.float32))
    _, keep = jax.lax.top_k(jnp.where(slot_valid, prio, -jnp.inf), int(num_mixed))
    anchor, index_a, index_b, slot_valid = (
        x[keep] for x in (anchor, index_a, index_b, slot_valid))
  m = anchor.shape[0]
  lam_shape = _shape(lam)
  if len(lam_shape) > 1 or (len(lam_shape) == 1 and lam_shape[0] != m):
    raise ValueError(f"`lam` must be a scalar or have shape ({m},), got {lam_shape}.")
  _check_lambda(lam)
  return MixPairs(anchor, index_a, index_b, jnp.asarray(lam, jnp.float32), slot_valid)


def sample_pairs(
    key: Array,
    labels: Array,
    *,
    alpha: float = DEFAULT_ALPHA,
    pairing: str = "random",
    per_example_lambda: bool = False,
    **select_kwargs: Any,
) -> MixPairs:
  """Draws lam ~ Beta(alpha, alpha) and the pairs to mix, with the official code's defaults.

  Args:
    key: a `jax.random` key (split for lam, the coin and the selection).
    labels: [B] integer labels.
    alpha: Beta parameter (2.0).
    pairing: "random" (the code: a coin flip between "pos_neg" and "anchor_neg"), or either one.
    per_example_lambda: one lam per mixed example instead of the code's one per batch.
    **select_kwargs: `sim`, `num_positives`, `num_negatives`, `num_mixed`, `valid`,
      `anchor_neg_all` of `select_pairs`.

  Returns:
    `MixPairs`.

  >>> import jax, jax.numpy as jnp
  >>> pairs = sample_pairs(jax.random.PRNGKey(0), jnp.array([0, 0, 1, 1]), pairing="pos_neg")
  >>> pairs.anchor.shape, bool(pairs.valid.all())
  ((4,), True)
  """
  k_lam, k_sel = jax.random.split(key)
  pairs = select_pairs(labels, 0.0, pairing=pairing, key=k_sel, **select_kwargs)
  shape = pairs.anchor.shape if per_example_lambda else ()
  return pairs._replace(lam=sample_lambda(k_lam, alpha, shape))


# --------------------------------------------------------------------------- soft targets


def _check_pairs(pairs: MixPairs) -> int:
  m = _shape(pairs.anchor)
  if len(m) != 1:
    raise ValueError(f"`pairs.anchor` must have shape [M], got {m}.")
  for name in ("index_a", "index_b", "valid"):
    if _shape(getattr(pairs, name)) != m:
      raise ValueError(f"`pairs.{name}` must have shape {m}, got "
                       f"{_shape(getattr(pairs, name))}.")
  lam_shape = _shape(pairs.lam)
  if lam_shape not in ((), m):
    raise ValueError(f"`pairs.lam` must be a scalar or have shape {m}, got {lam_shape}.")
  _check_lambda(pairs.lam, "pairs.lam")
  return m[0]


def _lam_vector(pairs: MixPairs) -> Array:
  return jnp.broadcast_to(jnp.asarray(pairs.lam, jnp.float32), pairs.anchor.shape)


def mixed_targets(labels: Array, pairs: MixPairs, *, own_anchor: bool = True
                  ) -> tuple[Array, Array]:
  """Soft targets of the batch's clean anchors (queries) against the mixed examples (references).

  `target[q, m] = lam [y_q == y_{a(m)}] + (1 - lam) [y_q == y_{b(m)}]`: lam for the class of the
  first member, 1 - lam for the class of the second. For both pairings the own anchor's target is
  lam (a clean positive at lam = 1, a clean negative at lam = 0).

  Args:
    labels: [B] integer labels of the batch (the anchors).
    pairs: `MixPairs` over this batch.
    own_anchor: compare each mixed example only with the anchor it was made for (the official
      code, which takes the diagonal of its anchor-by-mixed matrix); False compares it with every
      anchor of the batch (the paper's V(a) over all anchors).

  Returns:
    (target [B, M] float32, mask [B, M] bool).

  >>> import jax.numpy as jnp
  >>> y = jnp.array([0, 0, 1, 1])
  >>> target, mask = mixed_targets(y, select_pairs(y, 0.25))
  >>> target[0].tolist(), mask[0].tolist()
  ([0.25, 0.25, 0.75, 0.75], [True, False, False, False])
  """
  _checks.check_rank(labels, 1, "labels", "[batch]")
  _checks.check_integer(labels, "labels")
  _check_pairs(pairs)
  lam = _lam_vector(pairs)[None, :]
  ya, yb = labels[pairs.index_a], labels[pairs.index_b]
  target = (lam * (labels[:, None] == ya[None, :])
            + (1.0 - lam) * (labels[:, None] == yb[None, :])).astype(jnp.float32)
  mask = jnp.broadcast_to(pairs.valid[None, :], target.shape)
  if own_anchor:
    mask = mask & (jnp.arange(labels.shape[0])[:, None] == pairs.anchor[None, :])
  return target, mask


def mixed_proxy_targets(labels: Array, pairs: MixPairs, num_classes: int) -> tuple[Array, Array]:
  """Soft targets of the mixed examples against class proxies.

  `target[m] = lam onehot(y_{a(m)}) + (1 - lam) onehot(y_{b(m)})`.

  Returns:
    (target [M, C] float32, mask [M, C] bool; invalid slots are masked out).

  >>> import jax.numpy as jnp
  >>> y = jnp.array([0, 0, 1, 1])
  >>> target, _ = mixed_proxy_targets(y, select_pairs(y, 0.25), 2)
  >>> target[0].tolist()
  [0.25, 0.75]
  """
  _checks.check_rank(labels, 1, "labels", "[batch]")
  _checks.check_integer(labels, "labels")
  _check_pairs(pairs)
  lam = _lam_vector(pairs)[:, None]
  ya = targets.one_hot(labels[pairs.index_a], num_classes)
  yb = targets.one_hot(labels[pairs.index_b], num_classes)
  target = lam * ya + (1.0 - lam) * yb
  return target, jnp.broadcast_to(pairs.valid[:, None], target.shape)


# --------------------------------------------------------------------------- losses


def _soft(loss: objectives.Objective | objectives.SoftLoss) -> objectives.SoftLoss:
  soft = loss.soft if isinstance(loss, objectives.Objective) else loss
  if not isinstance(soft, objectives.SoftLoss):
    name = getattr(loss, "name", type(loss).__name__)
    raise ValueError(
        f"Metrix mixes with a loss over similarities with soft targets (`SoftLoss`); {name!r} "
        "has none (lifted structure, N-pair and a margin loss with learned beta form their own "
        "pairs). Use another loss, or `objectives.pair_loss` / `proxy_loss` for your own.")
  return soft


def mixed_inputs(loss: objectives.Objective | objectives.SoftLoss, params: Any,
                 embeddings: Array, labels: Array, mixed: Array, pairs: MixPairs, *,
                 own_anchor: bool = True) -> tuple[Array, Array, Array]:
  """The (sim, target, mask) of the mixed loss of an objective (or its `SoftLoss`).

  Pair losses: the clean anchors [B] against the mixed examples [M], `sim [B, M]` with
  `mixed_targets`. Proxy losses: the mixed examples [M] against the C proxies in `params`,
  `sim [M, C]` with `mixed_proxy_targets` (for Proxy-Anchor the proxies are the anchors; for
  ProxyNCA++ each mixed example is). `sim` is computed as the loss computes its own.

  >>> import jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> y = jnp.array([0, 0, 1, 1])
  >>> p = select_pairs(y, 0.5)
  >>> sim, target, mask = mixed_inputs(objectives.core("multi_similarity"), {}, jnp.eye(4), y,
  ...                                  mix_pairs(jnp.eye(4), p), p)
  >>> sim.shape, float(target[0, 0])
  ((4, 4), 0.5)
  """
  soft = _soft(loss)
  _checks.embeddings(embeddings, "embeddings")
  _checks.labels(labels, embeddings.shape[0], "labels")
  _checks.embeddings(mixed, "mixed")
  m = _check_pairs(pairs)
  if mixed.shape[0] != m:
    raise ValueError(f"`mixed` has {mixed.shape[0]} rows but `pairs` has {m} slots.")
  if mixed.shape[1] != embeddings.shape[1]:
    raise ValueError(f"`mixed` have dimension {mixed.shape[1]} but `embeddings` have "
                     f"{embeddings.shape[1]}.")
  if soft.kind == "proxies":
    sim = soft.similarity(params, mixed, None)
    target, mask = mixed_proxy_targets(labels, pairs, sim.shape[1])
  else:
    sim = soft.similarity(params, embeddings, mixed)
    target, mask = mixed_targets(labels, pairs, own_anchor=own_anchor)
  return sim, target.astype(sim.dtype), mask


def mixed_loss(loss: objectives.Objective | objectives.SoftLoss, params: Any, embeddings: Array,
               labels: Array, mixed: Array, pairs: MixPairs, *, own_anchor: bool = True) -> Array:
  """L_mix: the loss of the clean anchors against the mixed examples with soft targets.

  Args:
    loss: the clean objective (`jaxdml.objectives.Objective`) or its `soft` loss: L_mix is the
      same loss with the same hyperparameters, on soft targets.
    params: the objective's parameters (the class proxies of a proxy loss; {} for most pair
      losses).
    embeddings: [B, d] clean embeddings of the batch; labels: [B] integer labels.
    mixed: [M, d] mixed embeddings aligned with `pairs` (any mixing location).
    pairs: `MixPairs` (carrying lam).
    own_anchor: see `mixed_targets` (pair losses only).

  Returns:
    Scalar. With lam = 1 (0) and positive-negative pairs it equals the clean loss of the anchors
    against their positives (negatives) only.

  >>> import jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> y = jnp.array([0, 0, 1, 1])
  >>> p = select_pairs(y, 0.5)
  >>> obj = objectives.core("contrastive", neg_margin=0.5)
  >>> float(mixed_loss(obj, {}, jnp.eye(4), y, mix_pairs(jnp.eye(4), p), p)) > 0
  True
  """
  soft = _soft(loss)
  sim, target, mask = mixed_inputs(soft, params, embeddings, labels, mixed, pairs,
                                   own_anchor=own_anchor)
  return soft.loss(params, sim, target, mask)


# --------------------------------------------------------------------------- the objective


@dataclasses.dataclass(frozen=True)
class Settings:
  """Metrix settings, with the official code's defaults.

  Attributes:
    location: where to mix: "feature" (the last feature maps, the README's recipe), "input"
      (the images) or "embedding".
    alpha: lam ~ Beta(alpha, alpha) (2.0).
    weight: w of `L_clean + w L_mix` (0.4).
    pairing: "random" (a coin flip per step between positive-negative and anchor-negative
      pairs, as the code), "pos_neg" or "anchor_neg" (see `select_pairs`).
    num_positives, num_negatives: per anchor, an int or None (all); "auto" is the code's choice
      for the location: input mixup mixes every positive with the hardest negative (None / 1),
      feature and embedding mixup the first positive with every negative (1 / None).
    num_mixed: keep a fixed number of mixed examples per step (None: all slots).
    per_example_lambda: one lam per mixed example (False: one per step, as the code).
    own_anchor: compare a mixed example with its own anchor only (True, as the code).
    hard_negatives: rank negatives by similarity when a subset is taken (True).
    anchor_neg_all: anchor-negative pairs for every anchor, not only those without a positive.

  >>> Settings(location="input").negatives
  1
  >>> Settings(location="pixels")
  Traceback (most recent call last):
  ...
  ValueError: metrix location must be one of ('input', 'feature', 'embedding'), got 'pixels'.
  """

  location: str = "feature"
  alpha: float = DEFAULT_ALPHA
  weight: float = DEFAULT_WEIGHT
  pairing: str = "random"
  num_positives: int | None | str = "auto"
  num_negatives: int | None | str = "auto"
  num_mixed: int | None = None
  per_example_lambda: bool = False
  own_anchor: bool = True
  hard_negatives: bool = True
  anchor_neg_all: bool = False

  def __post_init__(self):
    if self.location not in LOCATIONS:
      raise ValueError(f"metrix location must be one of {LOCATIONS}, got {self.location!r}.")
    if self.pairing not in PAIRINGS:
      raise ValueError(f"metrix pairing must be one of {PAIRINGS}, got {self.pairing!r}.")
    if not self.alpha > 0:
      raise ValueError(f"metrix alpha must be > 0, got {self.alpha}.")
    if not self.weight >= 0:
      raise ValueError(f"metrix weight must be >= 0, got {self.weight}.")
    for name in ("num_positives", "num_negatives", "num_mixed"):
      value = getattr(self, name)
      if value is None or (value == "auto" and name != "num_mixed"):
        continue
      _checks.positive_int(value, f"metrix {name} (or None" + (
          ", 'auto')" if name != "num_mixed" else ")"))

  @property
  def positives(self) -> int | None:
    """Positives per anchor (`num_positives` with "auto" resolved for the location)."""
    if self.num_positives == "auto":
      return None if self.location == "input" else 1
    return self.num_positives

  @property
  def negatives(self) -> int | None:
    """Negatives per anchor (`num_negatives` with "auto" resolved for the location)."""
    if self.num_negatives == "auto":
      return 1 if self.location == "input" else None
    return self.num_negatives


def _mixed_embeddings(settings: Settings, batch: objectives.Batch, pairs: MixPairs) -> Array:
  z = batch.embeddings
  if settings.location == "embedding":
    return mix_pairs(z, pairs)
  fns = batch.model
  if settings.location == "feature":
    if batch.features is None or fns is None or fns.head is None:
      raise ValueError("Metrix feature mixup needs the batch's feature maps and the model's "
                       "head (`Batch.features`, `Batch.model.head`): train through "
                       "jaxdml.train's step with a model that has `features` / "
                       "`embed_features`, or mix at location='embedding'.")
    return fns.head(mix_pairs(batch.features, pairs))
  if batch.inputs is None or fns is None:
    raise ValueError("Metrix input mixup needs the batch's inputs and the model "
                     "(`Batch.inputs`, `Batch.model.embed`): train through jaxdml.train's step, "
                     "or mix at location='embedding'.")
  return fns.embed(mix_pairs(batch.inputs, pairs))


def wrap(inner: objectives.Objective, settings: Settings = Settings(), *,
         name: str = "metrix") -> objectives.Objective:
  """Metrix around any objective with a soft loss: `L_inner + w L_mix`.

  Each step selects the pairs to mix (`select_pairs`, hardest negatives by the clean cosine
  similarity), draws lam, mixes at `settings.location` (the embeddings, or through the model
  seam: `Batch.features` and `Batch.model.head` for feature mixup, `Batch.inputs` and
  `Batch.model.embed` for input mixup) and scores the clean anchors against the mixed examples
  with the inner objective's own loss on soft targets (`inner.soft`, see `mixed_loss`). The
  step's key is split into (inner, own); the own key draws the pairs and lam.

  Args:
    inner: the clean objective; it must have a `soft` loss.
    settings: `Settings`.
    name: the diagnostics key: `aux["mix_loss"]` (the default name) or `aux[f"{name}_loss"]`.

  Returns:
    The objective; its parameters, state and `soft` loss are the inner ones.

  >>> import jax, jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> obj = wrap(objectives.core("contrastive"), Settings(location="embedding", weight=0.4))
  >>> z, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> loss, _, aux = obj.apply({}, {}, objectives.Batch(z, y), jax.random.PRNGKey(0))
  >>> bool(jnp.isclose(loss, aux["base_loss"] + 0.4 * aux["mix_loss"]))
  True
  """
  if not isinstance(settings, Settings):
    raise TypeError(f"settings must be a metrix.Settings, got {type(settings).__name__}.")
  soft = _soft(inner)
  aux_key = "mix_loss" if name == "metrix" else f"{name}_loss"

  def apply(params, state, batch, key):
    k_inner, k_own = jax.random.split(key)
    loss, state, aux = inner.apply(params, state, batch, k_inner)
    k_pairs, k_lam = jax.random.split(k_own)
    z, y = batch.embeddings, batch.labels
    sim = jax.lax.stop_gradient(similarity.cosine(z, z)) if settings.hard_negatives else None
    pairs = select_pairs(y, 0.0, pairing=settings.pairing, sim=sim, key=k_pairs,
                         num_positives=settings.positives, num_negatives=settings.negatives,
                         num_mixed=settings.num_mixed, anchor_neg_all=settings.anchor_neg_all)
    lam_shape = pairs.anchor.shape if settings.per_example_lambda else ()
    pairs = pairs._replace(lam=sample_lambda(k_lam, settings.alpha, lam_shape))
    mixed = _mixed_embeddings(settings, batch, pairs).astype(z.dtype)
    mix = mixed_loss(soft, params, z, y, mixed, pairs, own_anchor=settings.own_anchor)
    aux = dict(aux)
    aux.setdefault("base_loss", loss)
    aux[aux_key] = mix
    return loss + settings.weight * mix, state, aux

  return objectives.Objective(f"{inner.name}+{name}", inner.init, apply, inner.init_state,
                              soft=inner.soft, lr_mult=inner.lr_mult,
                              weight_decay=inner.weight_decay)


def build(inner: objectives.Objective, settings: Settings,
          setup: objectives.Setup) -> objectives.Objective:
  """`wrap` as applications build it, with a fixed number of input mixes (`num_mixed`) so that
  no padding image goes through the network.

  * P x M batches keep exactly their P M (M - 1) positive-negative mixes.
  * Random batches of B (the official CUB / Cars runs) keep B mixes, chosen at random among the
    valid slots. Choice: the code mixes a variable number of images, one per (anchor, positive)
    pair or per anchor without a positive, which a compiled step cannot. Of the B (B - 1) slots
    only those are valid: at most B in "anchor_neg" mode, and B (B - 1) / C on average in
    "pos_neg" mode for C equally likely classes (about 7 for glyphs' batches of 100 from 1,475
    classes). B slots keep nearly all of them, and push B images, not B (B - 1), through the
    network.

  `settings.num_mixed`, when given, stands.

  >>> from jaxdml import objectives
  >>> setup = objectives.Setup(num_classes=10, dim=16, classes_per_batch=8, per_class=3)
  >>> obj = build(objectives.core("multi_similarity"), Settings(location="input"), setup)
  >>> obj.name
  'multi_similarity+metrix'
  """
  if settings.location == "input" and settings.num_mixed is None:
    if setup.per_class:
      p, m = setup.classes_per_batch, setup.per_class
      settings = dataclasses.replace(settings, num_mixed=max(1, p * m * (m - 1)))
    elif setup.batch_size:
      settings = dataclasses.replace(settings, num_mixed=int(setup.batch_size))
  return wrap(inner, settings)


# --------------------------------------------------------------------------- published runs

#: The official code's datasets (`main.py --dataset`) and losses (`--loss`).
RECIPE_DATASETS = ("cub", "cars", "sop", "inshop")
RECIPE_LOSSES = ("contrastive", "multisimilarity", "proxyanchor")
#: The official code's modes (`--mode`): no mixup, or the mixing location.
RECIPE_MODES = MappingProxyType({"baseline": None, "input": "input", "feature": "feature",
                                 "embed": "embedding"})

_RECIPE_OBJECTIVES = MappingProxyType({
    # PML ContrastiveLoss(neg_margin=0.5) on LpDistance (normalised embeddings).
    "contrastive": ("contrastive", {"pos_margin": 0.0, "neg_margin": 0.5}, None, {}),
    # main.py:171-176: MultiSimilarityLoss(17.97, 75.66, 0.77), MultiSimilarityMiner(0.39).
    "multisimilarity": ("multi_similarity", {"alpha": 17.97, "beta": 75.66, "base": 0.77},
                        "multi_similarity", {"epsilon": 0.39}),
    # PML ProxyAnchorLoss(num_classes, embedding_size) with its defaults.
    "proxyanchor": ("proxy_anchor", {"margin": 0.1, "alpha": 32.0}, None, {}),
})


@dataclasses.dataclass(frozen=True)
class Recipe:
  """An official Metrix run as plain values: the objective and the batches it sees.

  `objectives.core(r.loss, miner=r.miner, miner_kwargs=r.miner_kwargs, **r.loss_kwargs)` (with
  `num_classes` and `dim` for Proxy-Anchor) is the clean objective and `wrap(inner, r.settings)`
  adds Metrix (none for `settings=None`, the baseline).

  Attributes:
    loss: the core loss (`jaxdml.objectives.names()`).
    loss_kwargs: its keyword arguments.
    miner: the `jaxdml.miners.MINERS` name, or None.
    miner_kwargs: the miner's keyword arguments.
    settings: the Metrix `Settings`, or None for the baseline (no mixup).
    batch_size: examples per batch (`--batch_size 100` in every README command).
    per_class: images per class of a class-balanced batch (`--images_per_class`), or None for
      plain random batches (CUB-200, Cars-196).
  """

  loss: str
  loss_kwargs: Mapping[str, float]
  miner: str | None
  miner_kwargs: Mapping[str, float]
  settings: Settings | None
  batch_size: int
  per_class: int | None

  def __post_init__(self):
    object.__setattr__(self, "loss_kwargs", MappingProxyType(dict(self.loss_kwargs)))
    object.__setattr__(self, "miner_kwargs", MappingProxyType(dict(self.miner_kwargs)))


def recipe(dataset: str, loss: str = "multisimilarity", mode: str = "feature") -> Recipe:
  """The official code's run for `--dataset dataset --loss loss --mode mode`.

  Loss and miner from `main.py`; batches of 100, random on CUB-200 and Cars-196, 20 classes x 5
  images on SOP and In-shop (`main.py` and the README's commands); Metrix with the code's
  defaults (lam ~ Beta(2, 2) once per step, w = 0.4, a coin flip between positive-negative and
  anchor-negative pairs) at the mode's location. The code at b679703 runs every mode with the
  contrastive loss, multi-similarity as baseline and with embedding mixup (its input mode stops
  with a message, its feature mode has no branch), and Proxy-Anchor as baseline only; its
  `BalancedSampler` (SOP, In-shop) prints its indices and exits in `__iter__`, a leftover of
  debugging, so `per_class` is what that sampler was written to give.

  Args:
    dataset: "cub", "cars", "sop" or "inshop".
    loss: "contrastive", "multisimilarity" or "proxyanchor".
    mode: "baseline", "input", "feature" or "embed".

  >>> r = recipe("cub")
  >>> r.loss, dict(r.loss_kwargs)
  ('multi_similarity', {'alpha': 17.97, 'beta': 75.66, 'base': 0.77})
  >>> r.miner, dict(r.miner_kwargs), r.batch_size, r.per_class, r.settings.location
  ('multi_similarity', {'epsilon': 0.39}, 100, None, 'feature')
  """
  _checks.one_of(dataset, RECIPE_DATASETS, "dataset")
  _checks.one_of(loss, RECIPE_LOSSES, "loss")
  _checks.one_of(mode, tuple(RECIPE_MODES), "mode")
  name, loss_kwargs, miner, miner_kwargs = _RECIPE_OBJECTIVES[loss]
  location = RECIPE_MODES[mode]
  settings = None if location is None else Settings(location=location)
  return Recipe(loss=name, loss_kwargs=loss_kwargs, miner=miner, miner_kwargs=miner_kwargs,
                settings=settings, batch_size=100,
                per_class=None if dataset in ("cub", "cars") else 5)


# --------------------------------------------------------------------------- positivity


def positivity(loss: objectives.Objective | objectives.SoftLoss, params: Any, sim: Array,
               target: Array, mask: Array | None = None) -> tuple[Array, Array]:
  """Which pairs act as positives: `d loss / d s <= 0` for every entry of a similarity matrix.

  Venkataramanan et al. call a mixed embedding v "positive" for anchor a when
  `d l(a) / d s(a, v) <= 0`: increasing the similarity decreases the loss, so the loss pulls v
  towards a. The gradient is taken with `jax.grad` of the objective's soft loss with respect to
  its similarities (a distance-based loss: the negated distance). Entries outside the mask have
  gradient 0 and are reported False. A zero gradient inside the mask (a satisfied margin)
  counts as positive, by the paper's `<=`.

  Args:
    loss: an objective with a soft loss, or the `SoftLoss`.
    params: its parameters.
    sim, target, mask: [Q, R] as `mixed_inputs` gives them.

  Returns:
    (grad [Q, R], positive [Q, R] bool).

  >>> import jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> _, positive = positivity(objectives.core("multi_similarity"), {},
  ...                          jnp.array([[0.2, 0.1]]), jnp.array([[1.0, 0.0]]))
  >>> positive.tolist()
  [[True, False]]
  """
  soft = _soft(loss)
  _checks.matrix_triple(sim, target, mask)
  grad = jax.grad(lambda s: soft.loss(params, s, target, mask))(sim)
  positive = grad <= 0
  if mask is not None:
    positive = positive & mask
  return grad, positive


def mixed_positivity(loss: objectives.Objective | objectives.SoftLoss, params: Any,
                     embeddings: Array, labels: Array, mixed: Array, pairs: MixPairs, *,
                     own_anchor: bool = True) -> Array:
  """[M] bool: whether each valid mixed example acts as a positive for its own anchor.

  The pair read is (anchor[m], m) for pair losses and (m, class of anchor[m]) for proxy losses;
  the loss is `mixed_loss` (the clean loss does not depend on these similarities).

  >>> import jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> y = jnp.array([0, 0, 1, 1])
  >>> p = select_pairs(y, 1.0)
  >>> mixed_positivity(objectives.core("multi_similarity"), {}, jnp.eye(4), y,
  ...                  mix_pairs(jnp.eye(4), p), p).tolist()
  [True, True, True, True]
  """
  soft = _soft(loss)
  sim, target, mask = mixed_inputs(soft, params, embeddings, labels, mixed, pairs,
                                   own_anchor=own_anchor)
  _, positive = positivity(soft, params, sim, target, mask)
  m = jnp.arange(pairs.anchor.shape[0])
  if soft.kind == "proxies":
    out = positive[m, labels[pairs.anchor]]
  else:
    out = positive[pairs.anchor, m]
  return out & pairs.valid


def positivity_curve(
    loss: objectives.Objective | objectives.SoftLoss,
    params: Any,
    embeddings: Array,
    labels: Array,
    lambdas: Array,
    *,
    pairs: MixPairs | None = None,
    mix_fn: Callable[[MixPairs], Array] | None = None,
    own_anchor: bool = True,
) -> Array:
  """Fraction of mixed examples that act as positives, for each lam of a grid.

  For every lam, the mixed examples of `pairs` are formed with that lam, the mixed loss is
  differentiated with respect to the anchor-to-mixed similarities, and the fraction of valid
  mixed examples with `d loss / d s <= 0` is returned (see `positivity`). Averaged over real
  batches, it estimates the probability that a mixed embedding behaves as a positive as a function
  of lam. For a positive-negative mix the soft target is lam, so a faithful loss turns from
  negative to positive as lam grows.

  Args:
    loss: an objective with a soft loss (e.g. `objectives.core("contrastive", neg_margin=0.5)`),
      or the `SoftLoss`.
    params: its parameters (the proxies of a proxy loss).
    embeddings: [B, d] clean embeddings of a batch; labels: [B] integer labels.
    lambdas: [L] grid of values in [0, 1].
    pairs: which examples to mix (their lam is replaced); default: every (anchor, first positive,
      negative) triple, `select_pairs(labels, 0., pairing="pos_neg", num_negatives=None)`.
    mix_fn: maps `pairs` (with the current lam) to [M, d] mixed embeddings, e.g. feature mixup
      through a model; default: embedding mixup of the L2-normalised `embeddings` (the code's
      model outputs unit vectors), re-normalised.
    own_anchor: as `mixed_loss`.

  Returns:
    [L] float32 fractions (0 where a batch has no valid mixed example).

  >>> import jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> curve = positivity_curve(objectives.core("multi_similarity"), {}, jnp.eye(4),
  ...                          jnp.array([0, 0, 1, 1]), jnp.array([0.0, 1.0]))
  >>> curve.tolist()
  [0.0, 1.0]
  """
  soft = _soft(loss)
  _checks.check_rank(lambdas, 1, "lambdas", "[num_lambdas]")
  _check_lambda(lambdas, "lambdas")
  if pairs is None:
    pairs = select_pairs(labels, 0.0, pairing="pos_neg", num_negatives=None)
  if mix_fn is None:
    unit = similarity.l2_normalize(embeddings)
    mix_fn = lambda p: mix_embeddings(unit[p.index_a], unit[p.index_b], p.lam)
  lambdas = jnp.asarray(lambdas, jnp.float32)

  def one(lam):
    p = pairs._replace(lam=lam)
    pos = mixed_positivity(soft, params, embeddings, labels, mix_fn(p), p,
                           own_anchor=own_anchor)
    n = jnp.sum(p.valid)
    return jnp.sum(pos) / jnp.maximum(n, 1)

  return jax.lax.map(one, lambdas)
