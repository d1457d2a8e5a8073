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
This module holds everything that does not need a model: drawing lam, choosing the pairs to mix as
fixed-size index arrays, mixing arrays, the soft targets of mixed examples, and `L_clean + w L_mix`
for contrastive, multi-similarity, Proxy-Anchor and ProxyNCA++ through the `*_from_sim` losses of
`jaxdml.losses`. The caller produces the mixed embeddings with any mixing location, e.g. for
feature mixup with a `jaxdml.models.EmbeddingModel`:

    pairs = metrix.sample_pairs(key, labels, sim=jax.lax.stop_gradient(sim_clean))
    feats = model.apply(variables, images, train=True, method="features")
    mixed = model.apply(variables, metrix.mix_pairs(feats, pairs), train=True,
                        method="embed_features")
    loss = metrix.metrix_loss("multi_similarity", clean, labels, mixed, pairs)

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
    re-normalised mixture; every loss here works on cosine similarities for the same reason.
The released code (commit 7ce730c) implements the contrastive loss only. The multi-similarity
(alpha 2, beta 50, base 0.5), Proxy-Anchor (margin 0.1, alpha 32) and ProxyNCA++ (temperature 1/9)
hyperparameters are those of the losses' own papers and of `jaxdml.losses`; the mixed loss for them
is the paper's `L_clean + w L_mix`, not the fused multi-similarity form of a later version of the
code.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml import _checks, similarity, targets
from jaxdml import losses as _losses

Array = jax.Array

KINDS = ("contrastive", "multi_similarity", "proxy_anchor", "proxy_nca")
PAIRINGS = ("pos_neg", "anchor_neg", "random")
PROXY_KINDS = ("proxy_anchor", "proxy_nca")

#: Beta(alpha, alpha) parameter of lam (official code, `main.py --alpha`).
DEFAULT_ALPHA = 2.0
#: Weight w of the mixed loss (official code, `train.py`).
DEFAULT_WEIGHT = 0.4

#: Default hyperparameters of every loss kind, used by both the clean and the mixed loss.
DEFAULT_HPARAMS: dict[str, dict[str, float]] = {
    "contrastive": {"pos_margin": 0.0, "neg_margin": 0.5},
    "multi_similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
    "proxy_anchor": {"margin": 0.1, "alpha": 32.0},
    "proxy_nca": {"temperature": 1.0 / 9.0},
}


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


def _hparams(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
  _checks.one_of(kind, KINDS, "kind")
  params = dict(DEFAULT_HPARAMS[kind])
  unknown = set(overrides) - set(params)
  if unknown:
    raise TypeError(f"unknown hyperparameters {sorted(unknown)} for {kind!r}; "
                    f"expected some of {sorted(params)}.")
  params.update(overrides)
  return params


def mixed_loss_from_sim(kind: str, sim: Array, target: Array, mask: Array | None = None,
                        **hparams: float) -> Array:
  """One loss of `KINDS` as a function of a cosine-similarity matrix with soft targets.

  For "contrastive" and "multi_similarity", `sim` is [Q, R] anchors by references; for
  "proxy_anchor" and "proxy_nca" it is [N, C] embeddings by proxies. Every loss is computed from the
  cosine similarity s of unit vectors, so that its gradient with respect to s is defined for all
  four (see `positivity`):
  * contrastive: `contrastive_from_dist` on `d = sqrt(2 - 2 s)` (Euclidean distance of unit
    vectors); margins 0 (positive) and 0.5 (negative) (official code);
  * multi_similarity: `multi_similarity_from_sim`; alpha 2, beta 50, base 0.5;
  * proxy_anchor: `proxy_anchor_from_sim`; margin 0.1, alpha 32;
  * proxy_nca: `proxy_nca_from_sim` on `2 s - 2 = -|x - p|^2` of unit vectors; temperature 1/9
    (ProxyNCA++).
  Keyword arguments override the defaults of `DEFAULT_HPARAMS[kind]`.
  """
  hp = _hparams(kind, hparams)
  _checks.matrix_triple(sim, target, mask)
  if kind == "contrastive":
    dist = similarity.to_distance(sim, "cosine")
    return _losses.contrastive_from_dist(dist, target, mask, **hp)
  if kind == "multi_similarity":
    return _losses.multi_similarity_from_sim(sim, target, mask, **hp)
  if kind == "proxy_anchor":
    return _losses.proxy_anchor_from_sim(sim, target, mask, **hp)
  return _losses.proxy_nca_from_sim(2.0 * sim - 2.0, target, mask, **hp)


def _check_embeddings(embeddings, labels, mixed, pairs, kind, proxies):
  _checks.one_of(kind, KINDS, "kind")
  _checks.embeddings(embeddings, "embeddings")
  _checks.labels(labels, embeddings.shape[0], "labels")
  _checks.embeddings(mixed, "mixed")
  m = _check_pairs(pairs)
  if mixed.shape[0] != m:
    raise ValueError(f"`mixed` has {mixed.shape[0]} rows but `pairs` has {m} slots.")
  if mixed.shape[1] != embeddings.shape[1]:
    raise ValueError(f"`mixed` have dimension {mixed.shape[1]} but `embeddings` have "
                     f"{embeddings.shape[1]}.")
  if kind in PROXY_KINDS:
    if proxies is None:
      raise ValueError(f"kind {kind!r} needs `proxies` [C, d].")
    _checks.check_rank(proxies, 2, "proxies", "[num_classes, dim]")
    _checks.check_floating(proxies, "proxies")
    if proxies.shape[1] != embeddings.shape[1]:
      raise ValueError(f"`proxies` have dimension {proxies.shape[1]} but `embeddings` have "
                       f"{embeddings.shape[1]}.")


def mixed_inputs(kind: str, embeddings: Array, labels: Array, mixed: Array, pairs: MixPairs, *,
                 proxies: Array | None = None, own_anchor: bool = True
                 ) -> tuple[Array, Array, Array]:
  """The (sim, target, mask) of the mixed loss.

  Pair kinds: clean anchors [B] against the mixed examples [M], `sim = cos(embeddings, mixed)`
  ([B, M]) with `mixed_targets`. Proxy kinds: mixed examples [M] against the proxies [C],
  `sim = cos(mixed, proxies)` ([M, C]) with `mixed_proxy_targets` (for Proxy-Anchor the proxies are
  the anchors; for ProxyNCA++ each mixed example is the anchor).
  """
  _check_embeddings(embeddings, labels, mixed, pairs, kind, proxies)
  if kind in PROXY_KINDS:
    sim = similarity.cosine(mixed, proxies)
    target, mask = mixed_proxy_targets(labels, pairs, proxies.shape[0])
  else:
    sim = similarity.cosine(embeddings, mixed)
    target, mask = mixed_targets(labels, pairs, own_anchor=own_anchor)
  return sim, target.astype(sim.dtype), mask


def mixed_loss(kind: str, embeddings: Array, labels: Array, mixed: Array, pairs: MixPairs, *,
               proxies: Array | None = None, own_anchor: bool = True, **hparams: float) -> Array:
  """L_mix: the loss of the clean anchors against the mixed examples with soft targets.

  Args:
    kind: "contrastive", "multi_similarity", "proxy_anchor" or "proxy_nca" (ProxyNCA++).
    embeddings: [B, d] clean embeddings of the batch.
    labels: [B] integer labels.
    mixed: [M, d] mixed embeddings aligned with `pairs` (any mixing location).
    pairs: `MixPairs` (carrying lam).
    proxies: [C, d] class proxies for the proxy kinds.
    own_anchor: see `mixed_targets` (pair kinds only).
    **hparams: overrides of `DEFAULT_HPARAMS[kind]`.

  Returns:
    Scalar. With lam = 1 (0) and positive-negative pairs it equals the clean loss of the anchors
    against their positives (negatives) only.
  """
  sim, target, mask = mixed_inputs(kind, embeddings, labels, mixed, pairs, proxies=proxies,
                                   own_anchor=own_anchor)
  return mixed_loss_from_sim(kind, sim, target, mask, **hparams)


def clean_loss(kind: str, embeddings: Array, labels: Array, *, proxies: Array | None = None,
               **hparams: float) -> Array:
  """L_clean: the plain `jaxdml.losses` loss of the batch, with the Metrix defaults.

  contrastive: `contrastive_loss` (Euclidean distance of normalised embeddings, neg margin 0.5);
  multi_similarity: `multi_similarity_loss` (no pair miner); proxy_anchor: `proxy_anchor_loss`;
  proxy_nca: `proxy_nca_loss` with temperature 1/9.
  """
  hp = _hparams(kind, hparams)
  if kind == "contrastive":
    return _losses.contrastive_loss(embeddings, labels, **hp)
  if kind == "multi_similarity":
    return _losses.multi_similarity_loss(embeddings, labels, **hp)
  if proxies is None:
    raise ValueError(f"kind {kind!r} needs `proxies` [C, d].")
  if kind == "proxy_anchor":
    return _losses.proxy_anchor_loss(embeddings, labels, proxies, **hp)
  return _losses.proxy_nca_loss(embeddings, labels, proxies, **hp)


def metrix_loss(kind: str, embeddings: Array, labels: Array, mixed: Array, pairs: MixPairs, *,
                proxies: Array | None = None, weight: float | Array = DEFAULT_WEIGHT,
                own_anchor: bool = True, **hparams: float) -> Array:
  """Metrix objective `L_clean + weight * L_mix` for one loss kind.

  `L_clean = clean_loss(kind, embeddings, labels)`, `L_mix = mixed_loss(kind, ..., mixed, pairs)`,
  both with the same hyperparameters (`DEFAULT_HPARAMS[kind]`, overridden by `hparams`).

  Args:
    kind: "contrastive", "multi_similarity", "proxy_anchor" or "proxy_nca" (ProxyNCA++).
    embeddings: [B, d] clean embeddings; labels: [B] integer labels.
    mixed: [M, d] mixed embeddings aligned with `pairs`.
    pairs: `MixPairs` from `sample_pairs` / `select_pairs`.
    proxies: [C, d] for the proxy kinds.
    weight: w, 0.4 (official code; 0.3 in its embedding-mixup anchor-negative branch).
    own_anchor: see `mixed_targets`.

  Returns:
    Scalar loss.

  Deviations: the code's multi-similarity variant fuses clean and mixed terms inside one
  log-sum; here the two losses are separate, as in the paper's formulation.
  """
  l_mix = mixed_loss(kind, embeddings, labels, mixed, pairs, proxies=proxies,
                     own_anchor=own_anchor, **hparams)
  return clean_loss(kind, embeddings, labels, proxies=proxies, **hparams) + weight * l_mix


# --------------------------------------------------------------------------- positivity


def positivity(kind: str, sim: Array, target: Array, mask: Array | None = None,
               **hparams: float) -> tuple[Array, Array]:
  """Which pairs act as positives: `d loss / d s <= 0` for every entry of a similarity matrix.

  Venkataramanan et al. call a mixed embedding v "positive" for anchor a when
  `d l(a) / d s(a, v) <= 0`: increasing the similarity decreases the loss, so the loss pulls v
  towards a. The gradient is taken with `jax.grad` of `mixed_loss_from_sim(kind, ...)` with respect
  to the cosine-similarity matrix. Entries outside the mask have gradient 0 and are reported False.
  A zero gradient inside the mask (a satisfied margin) counts as positive, by the paper's `<=`.

  Args:
    kind, sim, target, mask, hparams: as `mixed_loss_from_sim` (for the proxy kinds the pair of a
      mixed example v and the proxy of class c is entry [v, c]).

  Returns:
    (grad [Q, R], positive [Q, R] bool).
  """
  _checks.matrix_triple(sim, target, mask)
  grad = jax.grad(lambda s: mixed_loss_from_sim(kind, s, target, mask, **hparams))(sim)
  positive = grad <= 0
  if mask is not None:
    positive = positive & mask
  return grad, positive


def mixed_positivity(kind: str, embeddings: Array, labels: Array, mixed: Array, pairs: MixPairs, *,
                     proxies: Array | None = None, own_anchor: bool = True,
                     **hparams: float) -> Array:
  """[M] bool: whether each valid mixed example acts as a positive for its own anchor.

  The pair read is (anchor[m], m) for the pair kinds and (m, class of anchor[m]) for the proxy
  kinds; the loss is `mixed_loss` (the clean loss does not depend on these similarities).
  """
  sim, target, mask = mixed_inputs(kind, embeddings, labels, mixed, pairs, proxies=proxies,
                                   own_anchor=own_anchor)
  _, positive = positivity(kind, sim, target, mask, **hparams)
  m = jnp.arange(pairs.anchor.shape[0])
  if kind in PROXY_KINDS:
    out = positive[m, labels[pairs.anchor]]
  else:
    out = positive[pairs.anchor, m]
  return out & pairs.valid


def positivity_curve(
    kind: str,
    embeddings: Array,
    labels: Array,
    lambdas: Array,
    *,
    proxies: Array | None = None,
    pairs: MixPairs | None = None,
    mix_fn: Callable[[MixPairs], Array] | None = None,
    own_anchor: bool = True,
    **hparams: float,
) -> Array:
  """Fraction of mixed examples that act as positives, for each lam of a grid.

  For every lam, the mixed examples of `pairs` are formed with that lam, the mixed loss of `kind`
  is differentiated with respect to the anchor-to-mixed similarities, and the fraction of valid
  mixed examples with `d loss / d s <= 0` is returned (see `positivity`). Averaged over real
  batches, it estimates the probability that a mixed embedding behaves as a positive as a function
  of lam. For a positive-negative mix the soft target is lam, so a faithful loss turns from
  negative to positive as lam grows.

  Args:
    kind: one of `KINDS`.
    embeddings: [B, d] clean embeddings of a batch; labels: [B] integer labels.
    lambdas: [L] grid of values in [0, 1].
    proxies: [C, d] for the proxy kinds.
    pairs: which examples to mix (their lam is replaced); default: every (anchor, first positive,
      negative) triple, `select_pairs(labels, 0., pairing="pos_neg", num_negatives=None)`.
    mix_fn: maps `pairs` (with the current lam) to [M, d] mixed embeddings, e.g. feature mixup
      through a model; default: embedding mixup of the L2-normalised `embeddings` (the code's
      model outputs unit vectors), re-normalised.
    own_anchor, hparams: as `mixed_loss`.

  Returns:
    [L] float32 fractions (0 where a batch has no valid mixed example).
  """
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
    pos = mixed_positivity(kind, embeddings, labels, mix_fn(p), p, proxies=proxies,
                           own_anchor=own_anchor, **hparams)
    n = jnp.sum(p.valid)
    return jnp.sum(pos) / jnp.maximum(n, 1)

  return jax.lax.map(one, lambdas)
