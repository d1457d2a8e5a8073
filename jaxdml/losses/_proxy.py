"""Proxy-based losses: each class is represented by one or more learnable vectors (proxies).

Proxies are ordinary arrays passed in explicitly, `proxies [C, d]` (SoftTriple: `centers
[C, K, d]`); the losses hold no state. Create them with `init_proxies` and train them together with
the embedding network (they are usually given a larger learning rate).

Every loss comes in two forms:
  * `<name>_from_sim(sim, target, mask=None, ...)`: the matrix form over similarities of B
    embeddings to C proxies, `sim [B, C]`, a soft target `target [B, C]` (one-hot for clean labels,
    fractional for mixed examples) and an optional bool `mask [B, C]` (False removes the pair);
  * `<name>_loss(embeddings [B, d], labels [B], proxies [C, d], ...)`: the wrapper that builds the
    similarities and the one-hot targets and returns a scalar.

The softmax family (ProxyNCA, normalized softmax, ArcFace, CosFace, SoftTriple) is computed with
`softmax_generic_loss`: per example, `-log(sum_c y_c exp(z_c) / sum_c exp(z_c))` for logits z. With
a one-hot target this is the usual cross-entropy. With a fractional target it is the negative log of
the softmax mass on the target classes (the formulation of Venkataramanan et al., ICLR 2022), not
the soft-label cross-entropy `-sum_c y_c log softmax(z)_c`.

Labels outside [0, C) cannot be checked under `jax.jit`. The wrappers treat them as "ignore": the
one-hot row of such a label is all zero, and the wrappers also mask the whole row, so the example
takes no part in the loss (it contributes 0, is left out of every average, and gets zero gradient).
A label of -1 can therefore mark padding. pytorch-metric-learning (PML) raises an error instead.

Hyperparameters given as numbers (or concrete arrays) are checked when the function is called or
traced, with an error naming the argument (each docstring says what is valid); traced values
(a learned scale) are not checked. A NaN (or inf) embedding or proxy makes the loss NaN. An empty
batch gives 0 (SoftTriple: its centre regulariser alone).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdml import _checks, similarity, targets
from jaxdml.losses._generic import generic_loss, softmax_generic_loss

Array = jax.Array

INIT_METHODS = ("normal", "kaiming_normal_fan_out", "kaiming_uniform")

#: The initialiser each loss uses in its paper's code and in PML.
DEFAULT_INIT = {
    "proxy_anchor": "kaiming_normal_fan_out",
    "soft_triple": "kaiming_uniform",
    "proxy_nca": "normal",
    "normalized_softmax": "normal",
    "arcface": "normal",
    "cosface": "normal",
}

_SOFT_TRIPLE_REG_EPS = 1e-5


# ------------------------------------------------------------------------------------------------
# Initialisation
# ------------------------------------------------------------------------------------------------


def init_proxies(
    key: Array,
    num_classes: int,
    dim: int,
    *,
    method: str = "normal",
    centers_per_class: int | None = None,
    dtype=jnp.float32,
) -> Array:
  """Random initial proxies.

  Args:
    key: a `jax.random` key.
    num_classes: C, the number of classes, an int >= 1.
    dim: d, the embedding dimension, an int >= 1.
    method: one of
      * "normal": i.i.d. N(0, 1). PML's default for every loss with weights (ProxyNCA, normalized
        softmax, ArcFace, CosFace). ProxyNCA++ (Teh et al., 2020) uses N(0, 1) / 8; since the
        proxies are L2-normalised inside the loss only their gradient scale differs.
      * "kaiming_normal_fan_out": N(0, 2 / n) with n = C·K the number of proxies; this is
        `torch.nn.init.kaiming_normal_(proxies[C, d], mode="fan_out")`, used by the Proxy-Anchor
        code (Kim et al., 2020) and PML's ProxyAnchorLoss.
      * "kaiming_uniform": U(-1/sqrt(n), 1/sqrt(n)) with n = C·K; this is
        `torch.nn.init.kaiming_uniform_(fc[d, C*K], a=sqrt(5))`, used by the SoftTriple code (Qian
        et al., 2019) and PML's SoftTripleLoss.
      or a loss name from `DEFAULT_INIT` ("proxy_anchor", "soft_triple", "proxy_nca",
      "normalized_softmax", "arcface", "cosface"), which selects that loss's initialiser.
    centers_per_class: K, an int >= 1. None gives proxies of shape [C, d]; an integer gives
      centres of shape [C, K, d] (for `soft_triple_loss`). With `method="soft_triple"` None
      means K = 10, the SoftTriple default.
    dtype: floating dtype of the result.

  Returns:
    [C, d] proxies, or [C, K, d] centres when `centers_per_class` is set.
  """
  if method == "soft_triple" and centers_per_class is None:
    centers_per_class = 10
  method = DEFAULT_INIT.get(method, method)
  _checks.one_of(method, INIT_METHODS, "method")
  _checks.positive_int(num_classes, "num_classes")
  _checks.positive_int(dim, "dim")
  if centers_per_class is None:
    shape = (num_classes, dim)
    n = num_classes
  else:
    _checks.positive_int(centers_per_class, "centers_per_class")
    shape = (num_classes, centers_per_class, dim)
    n = num_classes * centers_per_class
  if method == "normal":
    return jax.random.normal(key, shape, dtype)
  if method == "kaiming_normal_fan_out":
    return math.sqrt(2.0 / n) * jax.random.normal(key, shape, dtype)
  bound = 1.0 / math.sqrt(n)
  return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------


def _check_positive(value, name: str) -> None:
  """Checks that a hyperparameter is finite and > 0 unless it is traced."""
  _checks.number(value, name, gt=0.0)


def _check_inputs(embeddings: Array, labels: Array, proxies: Array, rank: int, name: str) -> None:
  _checks.embeddings(embeddings)
  _checks.labels(labels, embeddings.shape[0])
  what = "[num_classes, dim]" if rank == 2 else "[num_classes, centers_per_class, dim]"
  _checks.check_rank(proxies, rank, name, what)
  _checks.check_floating(proxies, name)
  if proxies.shape[-1] != embeddings.shape[1]:
    raise ValueError(
        f"`{name}` have dimension {proxies.shape[-1]} but `embeddings` have dimension "
        f"{embeddings.shape[1]}.")


def _label_target(labels: Array, num_classes: int, dtype) -> tuple[Array, Array]:
  """One-hot targets and the mask that drops rows whose label is outside [0, num_classes)."""
  labels = labels.astype(jnp.int32)
  target = targets.one_hot(labels, num_classes).astype(dtype)
  valid = (labels >= 0) & (labels < num_classes)
  mask = jnp.broadcast_to(valid[:, None], target.shape)
  return target, mask


# ------------------------------------------------------------------------------------------------
# Proxy-Anchor
# ------------------------------------------------------------------------------------------------


def proxy_anchor_from_sim(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
) -> Array:
  """Proxy-Anchor loss over embedding-to-proxy similarities.

  Each proxy p is an anchor against the batch. With P+ the proxies that have at least one positive
  example (target > 0) and C the number of proxies:

      loss = 1/|P+| sum_{p in P+} log(1 + sum_i y_ip exp(-alpha (s_ip - margin)))
           + 1/C    sum_{p}       log(1 + sum_i (1 - y_ip) exp(alpha (s_ip + margin)))

  This is `generic_loss` on `sim.T` (proxies as anchors) with log-domain sums,
  `sigma = softplus` and reduction ("mean_nonempty", "mean"); it matches PML's DivisorReducer
  (positive term divided by the number of proxies with positives, negative term by C).

  Args:
    sim: [B, C] similarities of embeddings to proxies (cosine in the paper).
    target: [B, C] soft targets in [0, 1]; a mixed example counts as positive with weight y and as
      negative with weight 1 - y.
    mask: optional [B, C] bool; False removes the (example, proxy) pair.
    margin: delta, default 0.1; finite.
    alpha: scale, default 32; > 0.

  Returns:
    Scalar loss; 0 (finite, zero gradient) when the batch is empty.

  Reference: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.
  """
  _checks.matrix_triple(sim, target, mask)
  _check_positive(alpha, "alpha")
  _checks.number(margin, "margin")
  return generic_loss(
      sim.T,
      target.T,
      None if mask is None else mask.T,
      rho_pos=lambda s: -alpha * (s - margin),
      rho_neg=lambda s: alpha * (s + margin),
      sigma_pos=jax.nn.softplus,
      sigma_neg=jax.nn.softplus,
      log_domain=True,
      reduction=("mean_nonempty", "mean"),
  )


def proxy_anchor_loss(
    embeddings: Array,
    labels: Array,
    proxies: Array,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
) -> Array:
  """Proxy-Anchor loss (Kim et al., CVPR 2020) with cosine similarity.

  See `proxy_anchor_from_sim` for the formula. Defaults match PML's ProxyAnchorLoss (margin 0.1,
  alpha 32, CosineSimilarity, DivisorReducer); initialise proxies with
  `init_proxies(key, C, d, method="proxy_anchor")` (kaiming normal, fan_out).

  Args:
    embeddings: [B, d] embeddings (normalised inside).
    labels: [B] integer labels in [0, C). Out-of-range labels (e.g. -1) drop the example: it is
      neither a positive nor a negative for any proxy.
    proxies: [C, d] class proxies (normalised inside).
    margin: delta, finite.
    alpha: scale, > 0.

  Returns:
    Scalar loss.

  Differences from PML: out-of-range labels are ignored instead of raising; no miner weights
  (`indices_tuple`) and no built-in weight regulariser (add it to the returned loss).
  """
  _check_inputs(embeddings, labels, proxies, 2, "proxies")
  sim = similarity.cosine(embeddings, proxies)
  target, mask = _label_target(labels, proxies.shape[0], sim.dtype)
  return proxy_anchor_from_sim(sim, target, mask, margin=margin, alpha=alpha)


# ------------------------------------------------------------------------------------------------
# ProxyNCA / ProxyNCA++
# ------------------------------------------------------------------------------------------------


def proxy_nca_from_sim(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean_nonempty",
) -> Array:
  """ProxyNCA over similarities (negative squared distances) of embeddings to proxies.

      loss_i = -log( sum_c y_ic exp(s_ic / T) / sum_c exp(s_ic / T) )

  with `s = -|x - p|^2`, i.e. the softmax over all proxies of the ProxyNCA++ form; the positive
  proxy stays in the denominator, unlike the original ProxyNCA (Movshovitz-Attias et al., 2017).

  Args:
    sim: [B, C] similarities, normally `-squared_euclidean(x, p)` of normalised vectors.
    target: [B, C] soft targets.
    mask: optional [B, C] bool; False removes the proxy from that example's softmax.
    temperature: T > 0. ProxyNCA++ uses 1/9; PML's ProxyNCALoss default `softmax_scale=1`
      is T = 1.
    reduction: "mean_nonempty" (mean over examples with a positive, the default), "mean", "sum" or
      "none".

  Returns:
    Scalar loss (or [B] with reduction "none").
  """
  _checks.matrix_triple(sim, target, mask)
  _check_positive(temperature, "temperature")
  return softmax_generic_loss(sim / temperature, target, mask, reduction=reduction)


def proxy_nca_loss(
    embeddings: Array,
    labels: Array,
    proxies: Array,
    *,
    temperature: float = 1.0,
    normalize_embeddings: bool = True,
    normalize_proxies: bool = True,
) -> Array:
  """ProxyNCA / ProxyNCA++ loss: softmax over negative squared distances to class proxies.

      loss = mean_i -log softmax_c( -|x_i - p_c|^2 / T )[y_i]

  Defaults follow PML's ProxyNCALoss: squared Euclidean distance of L2-normalised embeddings and
  proxies (`LpDistance(power=2)`), `softmax_scale=1` (T = 1), mean over examples.

  ProxyNCA++ (Teh et al., "ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood Component
  Analysis", ECCV 2020) uses the same softmax with a low temperature, T = 1/9 (their code scales
  both normalised vectors by sqrt(1/T) = 3), normalised proxies and embeddings, proxies initialised
  as N(0, 1)/8 and trained with a much larger learning rate ("fast-moving proxies"), and global max
  pooling in the backbone. For ProxyNCA++ pass `temperature=1/9`. PML's `softmax_scale` is 1/T.

  Args:
    embeddings: [B, d] embeddings.
    labels: [B] integer labels in [0, C). Out-of-range labels drop the example (ignored in the
      mean).
    proxies: [C, d] class proxies.
    temperature: T > 0.
    normalize_embeddings: L2-normalise the embeddings first (PML and ProxyNCA++: yes).
    normalize_proxies: L2-normalise the proxies first (PML and ProxyNCA++: yes).

  Returns:
    Scalar loss.

  Differences from PML: PML drops examples whose target probability underflows to exactly 0; here
  the log-domain computation keeps them with their (large, finite) loss. Out-of-range labels are
  ignored instead of raising.
  """
  _check_inputs(embeddings, labels, proxies, 2, "proxies")
  x = similarity.l2_normalize(embeddings) if normalize_embeddings else embeddings
  p = similarity.l2_normalize(proxies) if normalize_proxies else proxies
  sim = similarity.neg_squared_euclidean(x, p)
  target, mask = _label_target(labels, proxies.shape[0], sim.dtype)
  return proxy_nca_from_sim(sim, target, mask, temperature=temperature)


# ------------------------------------------------------------------------------------------------
# Normalized softmax
# ------------------------------------------------------------------------------------------------


def normalized_softmax_from_sim(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    temperature: float = 0.05,
    reduction: str = "mean_nonempty",
) -> Array:
  """Normalized softmax over cosine similarities: `-log sum_c y_c softmax(cos / T)_c`.

  Args:
    sim: [B, C] cosine similarities of embeddings to proxies.
    target: [B, C] soft targets.
    mask: optional [B, C] bool.
    temperature: T > 0, default 0.05.
    reduction: as in `softmax_generic_loss`.
  """
  _checks.matrix_triple(sim, target, mask)
  _check_positive(temperature, "temperature")
  return softmax_generic_loss(sim / temperature, target, mask, reduction=reduction)


def normalized_softmax_loss(
    embeddings: Array,
    labels: Array,
    proxies: Array,
    *,
    temperature: float = 0.05,
) -> Array:
  """Normalized softmax loss: cross-entropy of cosine similarities to class proxies over T.

      loss = mean_i -log softmax_c( cos(x_i, w_c) / T )[y_i]

  Reference: Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019.
  Default T = 0.05 as in PML's NormalizedSoftmaxLoss (DotProductSimilarity of normalised
  embeddings and normalised class weights).

  Args:
    embeddings: [B, d].
    labels: [B] integer labels in [0, C); out-of-range labels drop the example.
    proxies: [C, d] class weights (PML stores them transposed, `W [d, C]`).
    temperature: T > 0.

  Returns:
    Scalar loss.

  Differences from PML: proxies are [C, d] rows (PML's `W` is [d, C]); out-of-range labels are
  ignored instead of raising; no miner weights or built-in weight regulariser.
  """
  _check_inputs(embeddings, labels, proxies, 2, "proxies")
  sim = similarity.cosine(embeddings, proxies)
  target, mask = _label_target(labels, proxies.shape[0], sim.dtype)
  return normalized_softmax_from_sim(sim, target, mask, temperature=temperature)


# ------------------------------------------------------------------------------------------------
# ArcFace and CosFace
# ------------------------------------------------------------------------------------------------


def arcface_margin_cosine(cos: Array, margin: float = 0.5, eps: float = 1e-7) -> Array:
  """psi(theta): cos(theta + m) where theta <= pi - m, else cos(theta) - m sin(m).

  The second branch keeps psi decreasing in theta (as in the ArcFace code and PML). Computed
  without `arccos`: cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m) with
  sin(theta) = sqrt(1 - cos^2), and theta <= pi - m is cos(theta) >= -cos(m). `cos` is clipped to
  [-1 + eps, 1 - eps] inside the square root (eps is raised to the dtype's machine epsilon if
  smaller), so the gradient is finite everywhere, including cos = +-1. Valid: `0 <= margin < pi`,
  `0 < eps < 1`; NaN cosines stay NaN.
  """
  _checks.number(margin, "margin", ge=0.0, lt=math.pi)
  _checks.number(eps, "eps", gt=0.0, lt=1.0)
  eps = max(float(eps), float(jnp.finfo(cos.dtype).eps))
  c = jnp.clip(cos, -1.0 + eps, 1.0 - eps)
  sin_theta = jnp.sqrt(1.0 - c * c)
  cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
  return jnp.where(c >= -cos_m, c * cos_m - sin_theta * sin_m, cos - margin * sin_m)


def arcface_from_sim(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    margin: float = 0.5,
    scale: float = 64.0,
    eps: float = 1e-7,
    reduction: str = "mean_nonempty",
) -> Array:
  """ArcFace (additive angular margin) over cosine similarities.

      z_ic = s * ((1 - y_ic) cos_ic + y_ic psi(theta_ic)),   loss_i = -log sum_c y_ic softmax(z_i)_c

  with psi from `arcface_margin_cosine`. For a one-hot target this is ArcFace exactly: the target
  logit is s·cos(theta + m), the others s·cos(theta). For a soft target the margin-modified cosine
  is interpolated with weight y, so a class with target 0.5 gets half of the margin penalty.

  Args:
    sim: [B, C] cosine similarities in [-1, 1].
    target: [B, C] soft targets.
    mask: optional [B, C] bool.
    margin: m in radians, default 0.5; 0 <= m < pi.
    scale: s, default 64; > 0.
    eps: clipping of cos before arccos, 0 < eps < 1.
    reduction: as in `softmax_generic_loss`.
  """
  _checks.matrix_triple(sim, target, mask)
  _check_positive(scale, "scale")
  y = target.astype(sim.dtype)
  psi = arcface_margin_cosine(sim, margin, eps)
  logits = scale * (sim + y * (psi - sim))
  return softmax_generic_loss(logits, target, mask, reduction=reduction)


def arcface_loss(
    embeddings: Array,
    labels: Array,
    proxies: Array,
    *,
    margin: float = 0.5,
    scale: float = 64.0,
    eps: float = 1e-7,
) -> Array:
  """ArcFace loss: softmax with an additive angular margin on the target class.

      loss = mean_i -log( e^{s cos(theta_iy + m)} / (e^{s cos(theta_iy + m)}
                                                     + sum_{c != y} e^{s cos theta_ic}) )

  Reference: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
  CVPR 2019. Defaults m = 0.5 rad, s = 64.

  Args:
    embeddings: [B, d].
    labels: [B] integer labels in [0, C); out-of-range labels drop the example.
    proxies: [C, d] class weights (PML: `W [d, C]`, transposed).
    margin: m in radians, 0 <= m < pi. PML takes degrees, default 28.6 deg = 0.49916 rad; pass
      `math.radians(28.6)` to match it exactly.
    scale: s, > 0.
    eps: cos is clipped to [-1 + eps, 1 - eps] before arccos, 0 < eps < 1.

  Returns:
    Scalar loss.

  Differences from PML: margin in radians (0.5 rather than 28.6 deg); PML clamps cos to [-1, 1]
  before acos, whose gradient is infinite at |cos| = 1 (an embedding equal to its proxy gives NaN),
  while here the clip by eps keeps it finite.
  """
  _check_inputs(embeddings, labels, proxies, 2, "proxies")
  sim = similarity.cosine(embeddings, proxies)
  target, mask = _label_target(labels, proxies.shape[0], sim.dtype)
  return arcface_from_sim(sim, target, mask, margin=margin, scale=scale, eps=eps)


def cosface_from_sim(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    margin: float = 0.35,
    scale: float = 64.0,
    reduction: str = "mean_nonempty",
) -> Array:
  """CosFace (additive cosine margin) over cosine similarities.

      z_ic = s * (cos_ic - m y_ic),   loss_i = -log sum_c y_ic softmax(z_i)_c

  For a one-hot target the target logit is s(cos - m); a soft target takes the margin in
  proportion to its weight.

  Args:
    sim: [B, C] cosine similarities.
    target: [B, C] soft targets.
    mask: optional [B, C] bool.
    margin: m, default 0.35; finite, >= 0.
    scale: s, default 64; > 0.
    reduction: as in `softmax_generic_loss`.
  """
  _checks.matrix_triple(sim, target, mask)
  _check_positive(scale, "scale")
  _checks.number(margin, "margin", ge=0.0)
  logits = scale * (sim - margin * target.astype(sim.dtype))
  return softmax_generic_loss(logits, target, mask, reduction=reduction)


def cosface_loss(
    embeddings: Array,
    labels: Array,
    proxies: Array,
    *,
    margin: float = 0.35,
    scale: float = 64.0,
) -> Array:
  """CosFace loss (large margin cosine loss).

      loss = mean_i -log softmax_c( s (cos theta_ic - m [c = y_i]) )[y_i]

  Reference: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
  CVPR 2018. Defaults m = 0.35, s = 64, as in PML's CosFaceLoss.

  Args:
    embeddings: [B, d].
    labels: [B] integer labels in [0, C); out-of-range labels drop the example.
    proxies: [C, d] class weights (PML: `W [d, C]`, transposed).
    margin: m, >= 0.
    scale: s, > 0.

  Returns:
    Scalar loss.

  Differences from PML: proxies are [C, d] rows (PML's `W` is [d, C]); out-of-range labels are
  ignored instead of raising; no miner weights or built-in weight regulariser.
  """
  _check_inputs(embeddings, labels, proxies, 2, "proxies")
  sim = similarity.cosine(embeddings, proxies)
  target, mask = _label_target(labels, proxies.shape[0], sim.dtype)
  return cosface_from_sim(sim, target, mask, margin=margin, scale=scale)


# ------------------------------------------------------------------------------------------------
# SoftTriple
# ------------------------------------------------------------------------------------------------


def soft_triple_class_similarity(sim: Array, gamma: float = 0.1) -> Array:
  """Relaxed class similarity `S_c = sum_k softmax_k(s_ck / gamma) s_ck`, [B, C, K] -> [B, C].

  `gamma` > 0.
  """
  _checks.check_rank(sim, 3, "sim", "[batch, num_classes, centers_per_class]")
  _checks.check_floating(sim, "sim")
  _check_positive(gamma, "gamma")
  weights = jax.nn.softmax(sim / gamma, axis=-1)
  return jnp.sum(weights * sim, axis=-1)


def soft_triple_from_sim(
    sim: Array,
    target: Array,
    mask: Array | None = None,
    *,
    la: float = 20.0,
    gamma: float = 0.1,
    margin: float = 0.01,
    reduction: str = "mean_nonempty",
) -> Array:
  """SoftTriple classification term over similarities to class centres.

      S_ic = sum_k softmax_k(s_ick / gamma) s_ick
      loss_i = -log sum_c y_ic softmax_c( la (S_ic - margin y_ic) )

  Args:
    sim: [B, C, K] cosine similarities of embeddings to the K centres of each class.
    target: [B, C] soft targets.
    mask: optional [B, C] bool.
    la: lambda, the softmax scale, default 20; > 0.
    gamma: entropy temperature of the centre softmax, default 0.1 (PML stores 1/gamma); > 0.
    margin: delta, default 0.01; finite, >= 0.
    reduction: as in `softmax_generic_loss`.

  Returns:
    Scalar loss, without the centre regulariser (see `soft_triple_regularizer`).
  """
  class_sim = soft_triple_class_similarity(sim, gamma)
  if tuple(target.shape) != tuple(sim.shape[:2]):
    raise ValueError(
        f"`target` must have shape [batch, num_classes] = {tuple(sim.shape[:2])} to match `sim` "
        f"{tuple(sim.shape)}, got {tuple(target.shape)}.")
  if mask is not None and tuple(mask.shape) != tuple(sim.shape[:2]):
    raise ValueError(
        f"`mask` must have shape {tuple(sim.shape[:2])} to match `sim`, got {tuple(mask.shape)}.")
  _check_positive(la, "la")
  _checks.number(margin, "margin", ge=0.0)
  logits = la * (class_sim - margin * target.astype(class_sim.dtype))
  return softmax_generic_loss(logits, target, mask, reduction=reduction)


def soft_triple_regularizer(centers: Array) -> Array:
  """SoftTriple's centre regulariser: mean distance between centres of the same class.

      R = sum_c sum_{k < k'} sqrt(2 + 1e-5 - 2 <w_ck, w_ck'>) / (C K (K - 1))

  over L2-normalised centres (the denominator counts each pair twice, as in the paper's code and
  PML's SparseCentersRegularizer). Minimising it pulls the K centres of a class together so that
  redundant ones merge. 0 when K = 1.

  Args:
    centers: [C, K, d].
  """
  _checks.check_rank(centers, 3, "centers", "[num_classes, centers_per_class, dim]")
  _checks.check_floating(centers, "centers")
  c, k, _ = centers.shape
  if k < 2:
    return jnp.zeros((), centers.dtype)
  w = similarity.l2_normalize(centers)
  gram = jnp.einsum("ckd,cjd->ckj", w, w)
  upper = jnp.triu(jnp.ones((k, k), dtype=bool), k=1)
  arg = 2.0 + _SOFT_TRIPLE_REG_EPS - jnp.minimum(2.0 * gram, 2.0)
  dist = jnp.sqrt(jnp.where(upper, arg, 1.0))
  return jnp.sum(jnp.where(upper, dist, 0.0)) / (c * k * (k - 1))


def soft_triple_loss(
    embeddings: Array,
    labels: Array,
    centers: Array,
    *,
    la: float = 20.0,
    gamma: float = 0.1,
    margin: float = 0.01,
    tau: float = 0.2,
) -> Array:
  """SoftTriple loss: softmax over relaxed class similarities with K centres per class.

      loss = mean_i -log softmax_c( la (S_ic - margin [c = y_i]) )[y_i] + tau R(centers)

  with S from `soft_triple_class_similarity` (cosine similarities) and R from
  `soft_triple_regularizer`.

  Reference: Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling",
  ICCV 2019. Defaults la = 20, gamma = 0.1, margin = 0.01 (paper and PML), tau = 0.2 (paper), and
  K = 10 centres per class (`init_proxies(key, C, d, method="soft_triple")`, kaiming uniform).

  Args:
    embeddings: [B, d] (normalised inside).
    labels: [B] integer labels in [0, C); out-of-range labels drop the example.
    centers: [C, K, d] class centres. PML stores them as `fc [d, C*K]`, class-major:
      `centers = fc.T.reshape(C, K, d)`.
    la: lambda, > 0.
    gamma: centre-softmax temperature, > 0.
    margin: delta, >= 0.
    tau: weight of the centre regulariser, >= 0; 0 disables it.

  Returns:
    Scalar loss; for an empty batch, `tau * R(centers)` (the classification term is 0).

  Differences from PML: PML's SoftTripleLoss has no regulariser of its own (tau = 0 in effect). The
  paper's term is obtained there by passing
  `weight_regularizer=SparseCentersRegularizer(num_classes, centers_per_class)` together with
  `weight_reg_weight=tau` (the default weight is 1, not 0.2); that regulariser uses the dtype's
  smallest positive number instead of the paper's 1e-5 inside the square root.
  """
  _check_inputs(embeddings, labels, centers, 3, "centers")
  _checks.number(tau, "tau", ge=0.0)
  c, k, d = centers.shape
  b = embeddings.shape[0]
  sim = similarity.cosine(embeddings, centers.reshape(c * k, d)).reshape(b, c, k)
  target, mask = _label_target(labels, c, sim.dtype)
  loss = soft_triple_from_sim(sim, target, mask, la=la, gamma=gamma, margin=margin)
  if isinstance(tau, (int, float)) and tau == 0:
    return loss
  return loss + tau * soft_triple_regularizer(centers)
