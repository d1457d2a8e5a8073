"""HIER: hierarchical proxies in hyperbolic space as a regulariser of a metric-learning loss.

Kim, Jeong and Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical Regularization",
CVPR 2023. A set of learnable "hierarchical proxies" lives in the Poincare ball with the
embeddings. For a triplet (i, j, k) in which i and j are more related than k, the proxy that is
the lowest common ancestor (LCA) of i and j should be closer to them than the LCA of the whole
triplet, and k should be further from the LCA of (i, j) than from the LCA of (i, j, k). The
triplets are mined among the batch (with labels) and among the proxies themselves, so that the
proxies organise into a hierarchy. The total objective is

    L = lambda1 * L_base(z, y) + lambda2 * L_HIER(proxies, z, y),   lambda1 = 1, lambda2 = 0.5

where L_base is any metric-learning loss on the same embeddings (Proxy-Anchor on the cosine of the
embeddings in the paper's main results).

Typical use, with embeddings `z` already in the ball (the head ends with
`jaxdml.geometry.poincare.to_poincare(..., riemannian=True)`):

    hier_proxies = hier.init_proxies(key, 512, 128)        # a parameter, trained at 50x lr
    total = proxy_anchor_loss(z, y, pa_proxies) + 0.5 * hier.loss(hier_proxies, z, y, key)

or, as an objective around any other (`wrap`): `hier.wrap(objectives.core("proxy_anchor", ...),
hier.Settings(num_proxies=512), dim=128)`.

State conventions: everything is a pure function; the proxies are a plain [P, d] array of
Euclidean parameters (mapped into the ball inside the loss), randomness comes from an explicit
key (triplet sampling and the Gumbel noise of the LCA selection).

Also here: the pairwise cross-entropy loss of Hyperbolic ViT (Ermolov et al., CVPR 2022), which
HIER's code offers as a base loss ("SupCon"), and the learning-rate multipliers of HIER's recipe.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdml import _checks, objectives
from jaxdml.geometry import poincare

Array = jax.Array

#: The authors' defaults (hier/losses.py HIERLoss, hier/train.py and every scripts/*/hier_*.sh).
DEFAULT_NUM_PROXIES = 512
DEFAULT_MARGIN = 0.1
DEFAULT_TAU = 0.1
DEFAULT_TOPK = 20
DEFAULT_TRIPLETS_PER_ANCHOR = 50
DEFAULT_LAMBDA1 = 1.0
DEFAULT_LAMBDA2 = 0.5


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


def init_proxies(
    key: Array,
    num_proxies: int,
    dim: int,
    *,
    clip_r: float = poincare.DEFAULT_CLIP_R,
    dtype=jnp.float32,
) -> Array:
  """Initial hierarchical proxies: Euclidean parameters `N(0, 1) / sqrt(dim) * clip_r * 0.9`.

  Their norms concentrate at about `0.9 clip_r` (2.07 for clip_r = 2.3), just inside the feature
  clipping radius, so that `to_poincare` maps them near the outer rim of the embeddings' region.
  The authors use 512 proxies (`--num_hproxies`) of the embedding dimension.

  Args:
    key: a `jax.random` key.
    num_proxies: P.
    dim: the embedding dimension d.
    clip_r: the feature-clipping radius of the head (2.3).
    dtype: floating dtype.

  Returns:
    [P, d] Euclidean proxy parameters; `loss` maps them into the ball.

  >>> import jax
  >>> init_proxies(jax.random.PRNGKey(0), 512, 128).shape
  (512, 128)
  """
  if num_proxies < 1 or dim < 1:
    raise ValueError(f"num_proxies and dim must be >= 1, got {num_proxies}, {dim}.")
  scale = clip_r * 0.9 / jnp.sqrt(float(dim))
  return (jax.random.normal(key, (num_proxies, dim), jnp.float32) * scale).astype(dtype)


def proxies_in_ball(
    proxies: Array,
    *,
    c: float = poincare.DEFAULT_C,
    clip_r: float | None = poincare.DEFAULT_CLIP_R,
    riemannian: bool = True,
) -> Array:
  """The proxies as points of the ball, `to_poincare(proxies)` (HIER: with the Riemannian fix).

  >>> import jax, jax.numpy as jnp
  >>> rho = proxies_in_ball(init_proxies(jax.random.PRNGKey(0), 4, 8))
  >>> bool((jnp.linalg.norm(rho, axis=1) < poincare.ball_radius(0.1)).all())
  True
  """
  return poincare.to_poincare(proxies, c=c, clip_r=clip_r, riemannian=riemannian)


def lr_multipliers(*, fc_lr_scale: float = 1.0) -> dict[str, float]:
  """Learning-rate multipliers of HIER's parameter groups, as plain data for the trainer.

  From the authors' `get_params_groups` (hier/utils.py) and scripts:

    * "backbone": 1 (the pretrained network; its learning rate is 0 during the first
      `warmup_epochs`: 1 on CUB/Cars, 5 on SOP/In-shop);
    * "head": `fc_lr_scale` (the LayerNorm + Linear + ToPoincare head): 1, or 100 in the
      ViT-S, DeiT-S and DINO scripts for SOP and In-shop;
    * "hier_proxies": 50 (the hierarchical proxies of `init_proxies`);
    * "class_proxies": 1e4 (the base loss's parameters, e.g. the Proxy-Anchor class proxies).

  Every group uses the same weight decay, `--weight_decay` (1e-2 on CUB/Cars, 1e-4 on
  SOP/In-shop), and the optimiser (AdamW in every script) one epsilon for all groups, 1e-4 with
  `--use_fp16 True` (every script) and 1e-8 without (hier/train.py). The base learning rate is
  scaled by `global_batch / 180`; gradients of all parameters, the loss parameters included,
  are clipped by value to [-10, 10] (the `--clip_grad` flag only switches this on). In jaxdml's
  trainer groups ("backbone", "head", "loss"), the two proxy groups are both "loss" parameters
  and need separate multipliers (`Settings.lr_mult` gives the hierarchical proxies theirs, and
  `Settings.weight_decay` their decay).

  >>> lr_multipliers()["hier_proxies"]
  50.0
  """
  return {"backbone": 1.0, "head": float(fc_lr_scale), "hier_proxies": 50.0,
          "class_proxies": 1e4}


# ------------------------------------------------------------------------------------------------
# Reciprocal k-NN triplet mining with a fixed budget
# ------------------------------------------------------------------------------------------------


class Triplets(NamedTuple):
  """A fixed-size set of triplets (i, j, k): (i, j) the related pair, k the third node.

  anchor, positive, negative: [M] int32 indices. weight: [M] float32, 1 for real triplets and 0 for
  the slots of skipped anchors (the budget is fixed so that the shapes are static under jit).
  """

  anchor: Array
  positive: Array
  negative: Array
  weight: Array


def reciprocal_relevance(sim: Array, topk: int = DEFAULT_TOPK) -> Array:
  """The matrix `M = (N + N^T) / 2` of reciprocal k-NN, with the diagonal set to -1.

  `N[i, j] = 1` iff j is among the `topk` largest entries of row i of `sim` (row i itself
  included, as a node is normally its own nearest neighbour). So `M[i, j]` is 1 for mutual
  neighbours, 0.5 for one-way neighbours and 0 otherwise. `topk` is clipped to the number of
  nodes N (the authors' `torch.topk` raises instead). Ties in `sim` go to the lower index.

  Args:
    sim: [N, N] similarities among N nodes (larger is closer).
    topk: neighbourhood size k (20 in the authors' scripts).

  Returns:
    [N, N] float32 matrix with values in {-1, 0, 0.5, 1}.

  >>> import jax.numpy as jnp
  >>> sim = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.8, 1.0]])
  >>> reciprocal_relevance(sim, topk=2).tolist()
  [[-1.0, 1.0, 0.0], [1.0, -1.0, 0.5], [0.0, 0.5, -1.0]]
  """
  _checks.check_rank(sim, 2, "sim", "[nodes, nodes]")
  n = sim.shape[0]
  if sim.shape[1] != n:
    raise ValueError(f"`sim` must be square, got shape {sim.shape}.")
  k = max(1, min(int(topk), n))
  _, idx = lax.top_k(sim, k)
  nn = jnp.zeros((n, n), jnp.float32).at[jnp.arange(n)[:, None], idx].set(1.0)
  m = 0.5 * (nn + nn.T)
  return jnp.where(jnp.eye(n, dtype=bool), -1.0, m)


def reciprocal_triplets(
    sim: Array,
    key: Array,
    *,
    topk: int = DEFAULT_TOPK,
    triplets_per_anchor: int = DEFAULT_TRIPLETS_PER_ANCHOR,
    negatives_include_anchor: bool = True,
) -> Triplets:
  """Samples triplets from reciprocal k-NN, with a fixed budget of N * triplets_per_anchor.

  With `M = reciprocal_relevance(sim, topk)`, the related partners of anchor i are the j with
  `M[i, j] = 1` (mutual top-k neighbours) and the third nodes are the k with `M[i, k] < 1`. An
  anchor with at most one related partner is skipped. Every other anchor gets
  `triplets_per_anchor` triplets, their partners and third nodes drawn uniformly with replacement
  and paired index-wise, as in the authors' `get_reciprocal_triplets`.

  Budget: the authors' code returns a variable number of triplets (T per valid anchor). Here every
  anchor has T slots, so there are always N * T triplets, and the slots of skipped anchors carry
  weight 0. This is exactly the authors' triplet count when no anchor is skipped and an upper
  bound otherwise; the loss divides by the sum of the weights, so its value is the authors' mean.
  Memory of the loss grows as N * T * P (P proxies).

  Args:
    sim: [N, N] similarities (no gradient flows through the mining).
    key: a `jax.random` key.
    topk: neighbourhood size (20 in every script; the function default in the code is 30).
    triplets_per_anchor: T (the code calls it with 50).
    negatives_include_anchor: the authors' third-node set `M[i, :] < 1` contains the anchor
      itself (the diagonal is -1); True keeps that. Such a triplet (i, j, i) has the same two LCAs
      whenever the Gumbel noise does not separate them, and then only adds to the mean's
      divisor. False excludes the anchor.

  Returns:
    `Triplets` of N * T entries, grouped by anchor (anchor = repeat(arange(N), T)).

  >>> import jax, jax.numpy as jnp
  >>> sim = jnp.eye(6) + jnp.kron(jnp.eye(2), jnp.ones((3, 3)))  # two groups of 3
  >>> t = reciprocal_triplets(sim, jax.random.PRNGKey(0), topk=3, triplets_per_anchor=2)
  >>> t.anchor.shape, t.weight.tolist() == [1.0] * 12
  ((12,), True)
  """
  n = sim.shape[0]
  t = int(triplets_per_anchor)
  if t < 1:
    raise ValueError(f"`triplets_per_anchor` must be >= 1, got {triplets_per_anchor}.")
  u = jax.random.uniform(key, (2, n, t))
  return _reciprocal_triplets(sim, u, topk, negatives_include_anchor)


def _reciprocal_triplets(sim: Array, u: Array, topk: int, negatives_include_anchor: bool
                         ) -> Triplets:
  """`reciprocal_triplets` with its randomness given: `u [2, N, T]` uniform in [0, 1)."""
  m = reciprocal_relevance(lax.stop_gradient(sim), topk)
  n, t = m.shape[0], u.shape[-1]
  related = m == 1.0
  others = m < 1.0
  if not negatives_include_anchor:
    others = others & ~jnp.eye(n, dtype=bool)
  valid = (jnp.sum(related, axis=1) > 1) & jnp.any(others, axis=1)
  pos = _sample_from_rows(related, u[0])
  neg = _sample_from_rows(others, u[1])
  anchor = jnp.repeat(jnp.arange(n, dtype=jnp.int32), t)
  return Triplets(anchor, pos.reshape(-1), neg.reshape(-1),
                  jnp.repeat(valid.astype(jnp.float32), t))


def _sample_from_rows(mask: Array, u: Array) -> Array:
  """For each row of `mask [n, n]`, t columns drawn uniformly among its True entries.

  `u [n, t]` holds uniform numbers in [0, 1): draw r = floor(u * count) and return the column of
  the row's (r + 1)-th True entry (a binary search in the row's cumulative count), which costs
  O(n t log n) rather than the O(n^2 t) of Gumbel-max sampling. Rows without a True entry return
  arbitrary columns.
  """
  n = mask.shape[1]
  cums = jnp.cumsum(mask.astype(jnp.int32), axis=1)
  counts = cums[:, -1:]
  r = jnp.minimum(jnp.floor(u * counts).astype(jnp.int32), jnp.maximum(counts - 1, 0))
  idx = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="left"))(cums, r + 1)
  return jnp.minimum(idx, n - 1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# LCA selection and the triplet loss
# ------------------------------------------------------------------------------------------------


def select_lca(max_dist: Array, key: Array | None, *, tau: float = DEFAULT_TAU
               ) -> tuple[Array, Array]:
  """Straight-through hard Gumbel-softmax choice of a lowest common ancestor among P proxies.

  Logits are `-max_dist / tau` (a proxy is a good common ancestor when its largest distance to the
  members is small). Forward: the one-hot vector at `argmax(-max_dist / tau + g)`, g ~ Gumbel(0, 1)
  i.i.d. (Gumbel temperature 1, `torch.nn.functional.gumbel_softmax(hard=True)`). Backward: the
  gradient of `softmax(-max_dist / tau + g)`. With `key=None` there is no noise: the LCA is
  `argmin_p max_dist[p]`.

  Args:
    max_dist: [M, P] for each triplet, the largest distance of its members to each proxy.
    key: a `jax.random` key, or None for the noiseless choice.
    tau: temperature (0.1).

  Returns:
    (weights [M, P], index [M] int32): one-hot forward values with soft gradients, and the
    selected proxies.

  >>> import jax.numpy as jnp
  >>> one_hot, index = select_lca(jnp.array([[2.0, 0.5, 1.0]]), None)
  >>> one_hot.tolist(), index.tolist()
  ([[0.0, 1.0, 0.0]], [1])
  """
  noise = None if key is None else jax.random.gumbel(key, max_dist.shape, max_dist.dtype)
  return _straight_through_lca(max_dist, noise, tau)


def _straight_through_lca(max_dist: Array, noise: Array | None, tau: float
                          ) -> tuple[Array, Array]:
  logits = -max_dist / tau
  if noise is not None:
    logits = logits + noise
  soft = jax.nn.softmax(logits, axis=-1)
  idx = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  hard = jax.nn.one_hot(idx, logits.shape[-1], dtype=soft.dtype)
  return hard + soft - lax.stop_gradient(soft), idx


def triplet_loss(
    dist: Array,
    triplets: Triplets,
    key: Array | None,
    *,
    margin: float = DEFAULT_MARGIN,
    tau: float = DEFAULT_TAU,
) -> tuple[Array, dict[str, Array]]:
  """The HIER triplet loss over node-to-proxy distances (the authors' `compute_gHHC`).

  For a triplet (i, j, k), with `D = dist`, `m_ij = max(D_i, D_j)` and `m_ijk = max(m_ij, D_k)`
  (element-wise over the P proxies), the LCAs are `pi_ij = select_lca(m_ij)` and
  `pi_ijk = select_lca(m_ijk)` (independent Gumbel noise for the two choices),
  `d_a,ij = <D_a, pi_ij>` and `d_a,ijk = <D_a, pi_ijk>`, and

      l = [d_i,ij - d_i,ijk + delta]_+ + [d_j,ij - d_j,ijk + delta]_+ + [d_k,ijk - d_k,ij + delta]_+

  counted only when the two LCAs differ. The loss is `sum(w l 1[lca_ij != lca_ijk]) / sum(w)`
  with w the triplet weights: as in the authors' code, triplets whose LCAs coincide count in the
  divisor (the mean runs over all sampled triplets). It is 0 when no triplet has weight.

  Args:
    dist: [N, P] distances of N nodes (embeddings or proxies) to the P proxies.
    triplets: indices into the N nodes, with weights.
    key: a `jax.random` key for the Gumbel noise, or None (noiseless LCA).
    margin: delta (0.1).
    tau: LCA temperature (0.1).

  Returns:
    (loss, aux) with aux {"num_triplets": sum of weights, "active_fraction": weighted share of
    triplets whose two LCAs differ}.

  >>> import jax, jax.numpy as jnp
  >>> sim = jnp.eye(6) + jnp.kron(jnp.eye(2), jnp.ones((3, 3)))
  >>> t = reciprocal_triplets(sim, jax.random.PRNGKey(0), topk=3, triplets_per_anchor=2)
  >>> dist = jax.random.uniform(jax.random.PRNGKey(1), (6, 4))  # nodes to 4 proxies
  >>> value, aux = triplet_loss(dist, t, None)
  >>> bool(value >= 0), int(aux["num_triplets"])
  (True, 12)
  """
  _checks.check_rank(dist, 2, "dist", "[nodes, proxies]")
  _checks.check_floating(dist, "dist")
  dtype = jnp.promote_types(dist.dtype, jnp.float32)
  shape = (2, triplets.anchor.shape[0], dist.shape[1])
  noise = None if key is None else jax.random.gumbel(key, shape, dtype)
  return _triplet_loss(dist, triplets, noise, margin, tau)


def _triplet_loss(dist: Array, triplets: Triplets, noise: Array | None, margin: float,
                       tau: float) -> tuple[Array, dict[str, Array]]:
  """`triplet_loss` with its Gumbel noise given: `noise [2, M, P]` or None."""
  dist = dist.astype(jnp.promote_types(dist.dtype, jnp.float32))
  di, dj, dk = dist[triplets.anchor], dist[triplets.positive], dist[triplets.negative]
  m_ij = jnp.maximum(di, dj)
  m_ijk = jnp.maximum(m_ij, dk)
  g_ij, g_ijk = (None, None) if noise is None else (noise[0], noise[1])
  pi_ij, idx_ij = _straight_through_lca(m_ij, g_ij, tau)
  pi_ijk, idx_ijk = _straight_through_lca(m_ijk, g_ijk, tau)

  def to(d, pi):
    return jnp.sum(d * pi, axis=-1)

  per = (jax.nn.relu(to(di, pi_ij) - to(di, pi_ijk) + margin)
         + jax.nn.relu(to(dj, pi_ij) - to(dj, pi_ijk) + margin)
         + jax.nn.relu(to(dk, pi_ijk) - to(dk, pi_ij) + margin))
  w = triplets.weight.astype(per.dtype)
  active = (idx_ij != idx_ijk).astype(per.dtype)
  total = jnp.sum(w)
  denom = jnp.maximum(total, 1.0)
  loss = jnp.where(total > 0, jnp.sum(per * active * w) / denom, 0.0)
  return loss, {"num_triplets": total, "active_fraction": jnp.sum(active * w) / denom}


# ------------------------------------------------------------------------------------------------
# The HIER loss
# ------------------------------------------------------------------------------------------------


def loss_and_aux(
    proxies: Array,
    embeddings: Array,
    labels: Array,
    key: Array,
    *,
    c: float = poincare.DEFAULT_C,
    clip_r: float | None = poincare.DEFAULT_CLIP_R,
    margin: float = DEFAULT_MARGIN,
    tau: float = DEFAULT_TAU,
    topk: int = DEFAULT_TOPK,
    triplets_per_anchor: int = DEFAULT_TRIPLETS_PER_ANCHOR,
    riemannian: bool = True,
    lca_noise: bool = True,
    negatives_include_anchor: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """HIER loss with diagnostics: `L_HIER = L_data + L_proxy`.

  1. The proxies are mapped into the ball, `rho = to_poincare(proxies)` (clip, expmap0, project,
     Riemannian gradient).
  2. Data triplets: `S = exp(-d(z, z)) + 1[y_i = y_j]` (no gradient; the label bonus makes
     same-class pairs mutual neighbours), `reciprocal_triplets(S)`, then
     `triplet_loss(d(z, rho))`.
  3. Proxy triplets: `S' = exp(-d(rho, rho))` (no gradient, no labels), `reciprocal_triplets(S')`,
     then `triplet_loss(d(rho, rho))`. As in the authors' code a proxy's LCA candidates
     include itself (distance 0), so for a proxy pair (i, j) the proxies i and j tie as candidate
     LCAs at `max = d(i, j)`; the Gumbel noise breaks the tie (without noise, float rounding
     does), and any proxy nearer to both wins over them.

  Differences from the authors' `HIERLoss.forward` (hier/losses.py): the fixed triplet budget of
  `reciprocal_triplets` (same value of the mean); 0 instead of an error when no anchor has two
  related partners; `topk` clipped to the number of nodes; c must be > 0 (the code's spherical
  branch is not provided). Under data parallelism the embeddings should be the global batch, as
  the authors gather them across GPUs before the loss.

  Args:
    proxies: [P, d] Euclidean proxy parameters (`init_proxies`).
    embeddings: [B, d] embeddings already in the ball (the head's `to_poincare` output).
    labels: [B] integer labels.
    key: a `jax.random` key (triplet sampling and Gumbel noise).
    c: curvature parameter (0.1).
    clip_r: feature-clipping radius applied to the proxies (2.3).
    margin: delta (0.1).
    tau: LCA temperature (0.1).
    topk: reciprocal-neighbourhood size (20).
    triplets_per_anchor: T (50).
    riemannian: Riemannian gradient fix on the proxies (True, as the authors).
    lca_noise: Gumbel noise in the LCA choice (True, as the authors); False selects the LCAs
      deterministically.
    negatives_include_anchor: see `reciprocal_triplets` (True, as the authors).

  Returns:
    (loss, aux): aux holds "data_loss", "proxy_loss", the "num_triplets" of each part
    ("data_triplets", "proxy_triplets") and their "active_fraction"s.

  >>> import jax, jax.numpy as jnp
  >>> proxies = init_proxies(jax.random.PRNGKey(0), 8, 4)
  >>> value, aux = jax.jit(loss_and_aux)(proxies, 0.3 * jnp.eye(4), jnp.array([0, 0, 1, 1]),
  ...                                    jax.random.PRNGKey(1))
  >>> sorted(aux)[:2], bool(jnp.isclose(value, aux["data_loss"] + aux["proxy_loss"]))
  (['data_active_fraction', 'data_loss'], True)
  """
  _checks.embeddings(embeddings)
  _checks.labels(labels, embeddings.shape[0])
  _checks.check_rank(proxies, 2, "proxies", "[num_proxies, dim]")
  _checks.check_floating(proxies, "proxies")
  if proxies.shape[1] != embeddings.shape[1]:
    raise ValueError(f"`proxies` have dimension {proxies.shape[1]} but `embeddings` have "
                     f"dimension {embeddings.shape[1]}.")
  if isinstance(c, (int, float)):
    _checks.positive(c, "c")
  if int(triplets_per_anchor) < 1:
    raise ValueError(f"`triplets_per_anchor` must be >= 1, got {triplets_per_anchor}.")
  u_data, u_proxy, g_data, g_proxy = _randomness(
      key, embeddings.shape[0], proxies.shape[0], int(triplets_per_anchor), lca_noise)
  rho = proxies_in_ball(proxies, c=c, clip_r=clip_r, riemannian=riemannian)

  d_zz = lax.stop_gradient(poincare.dist_matrix(embeddings, c=c)).astype(jnp.float32)
  same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  t_data = _reciprocal_triplets(jnp.exp(-d_zz) + same, u_data, topk, negatives_include_anchor)
  data_loss, data_aux = _triplet_loss(poincare.dist_matrix(embeddings, rho, c=c), t_data,
                                           g_data, margin, tau)

  d_pp = poincare.dist_matrix(rho, c=c)
  t_proxy = _reciprocal_triplets(jnp.exp(-lax.stop_gradient(d_pp)), u_proxy, topk,
                                 negatives_include_anchor)
  proxy_loss, proxy_aux = _triplet_loss(d_pp, t_proxy, g_proxy, margin, tau)
  aux = {
      "data_loss": data_loss,
      "proxy_loss": proxy_loss,
      "data_triplets": data_aux["num_triplets"],
      "proxy_triplets": proxy_aux["num_triplets"],
      "data_active_fraction": data_aux["active_fraction"],
      "proxy_active_fraction": proxy_aux["active_fraction"],
  }
  return data_loss + proxy_loss, aux


def _randomness(key: Array, b: int, p: int, t: int, lca_noise: bool
                     ) -> tuple[Array, Array, Array | None, Array | None]:
  """All random numbers of one `loss` call from a single draw (one generator to compile).

  Returns uniforms for the data and proxy triplet sampling ([2, B, T], [2, P, T]) and Gumbel
  noise for the data and proxy LCA choices ([2, B T, P], [2, P T, P]; None without noise).
  """
  sizes = [2 * b * t, 2 * p * t] + ([2 * b * t * p, 2 * p * t * p] if lca_noise else [])
  tiny = float(jnp.finfo(jnp.float32).tiny)
  u = jax.random.uniform(key, (sum(sizes),), jnp.float32, minval=tiny, maxval=1.0)
  parts, start = [], 0
  for size in sizes:
    parts.append(u[start:start + size])
    start += size
  u_data, u_proxy = parts[0].reshape(2, b, t), parts[1].reshape(2, p, t)
  if not lca_noise:
    return u_data, u_proxy, None, None
  gumbel = lambda v, shape: -jnp.log(-jnp.log(v)).reshape(shape)
  return u_data, u_proxy, gumbel(parts[2], (2, b * t, p)), gumbel(parts[3], (2, p * t, p))


def loss(proxies: Array, embeddings: Array, labels: Array, key: Array, **kwargs) -> Array:
  """The HIER regulariser `L_HIER` as a scalar; see `loss_and_aux` for the arguments.

  Defaults are the authors' (c 0.1, clip 2.3, margin 0.1, tau 0.1, topk 20, 50 triplets per
  anchor). Add it to a base loss with weight 0.5 (`combine_losses`, or `wrap` an objective).

  >>> import jax, jax.numpy as jnp
  >>> z = 0.3 * jnp.eye(4)  # points of the ball
  >>> proxies = init_proxies(jax.random.PRNGKey(0), 8, 4)
  >>> value = jax.jit(loss)(proxies, z, jnp.array([0, 0, 1, 1]), jax.random.PRNGKey(1))
  >>> bool(jnp.isfinite(value))
  True
  """
  return loss_and_aux(proxies, embeddings, labels, key, **kwargs)[0]


def combine_losses(base_loss: Array, hier: Array, *, lambda1: float = DEFAULT_LAMBDA1,
                   lambda2: float = DEFAULT_LAMBDA2) -> Array:
  """`lambda1 * base_loss + lambda2 * hier` (1 and 0.5 in every HIER script).

  >>> float(combine_losses(2.0, 1.0))
  2.5
  """
  return lambda1 * base_loss + lambda2 * hier


def lowest_common_ancestors(x: Array, y: Array, proxies: Array, *,
                            c: float = poincare.DEFAULT_C) -> tuple[Array, Array]:
  """The proxy HIER treats as the lowest common ancestor of each pair, and its depth.

  For points x_n, y_n of the ball, `LCA_n = argmin_p max(d(x_n, p), d(y_n, p))` over the proxies
  (the noise-free choice of `select_lca`), and its depth is its distance to the origin
  `d(0, LCA_n)`: in a learned hierarchy, related pairs have deeper (more specific) ancestors
  than unrelated ones, whose ancestors sit nearer the centre.

  Args:
    x, y: [N, d] points of the ball (e.g. class centroids).
    proxies: [P, d] proxies in the ball (`proxies_in_ball(params)`).
    c: curvature parameter.

  Returns:
    (index [N] int32, depth [N] float).

  >>> import jax.numpy as jnp
  >>> proxies = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  >>> index, depth = lowest_common_ancestors(jnp.array([[0.9, 0.1]]), jnp.array([[0.9, -0.1]]),
  ...                                        proxies)
  >>> index.tolist(), bool(depth[0] > 0)
  ([1], True)
  """
  _checks.same_shape(x, y, "x", "y")
  d = jnp.maximum(poincare.dist_matrix(x, proxies, c=c), poincare.dist_matrix(y, proxies, c=c))
  idx = jnp.argmin(d, axis=1).astype(jnp.int32)
  return idx, poincare.dist0(proxies[idx], c=c)


# ------------------------------------------------------------------------------------------------
# Hyperbolic ViT's pairwise cross-entropy
# ------------------------------------------------------------------------------------------------


def hyp_pairwise_ce_loss(
    embeddings: Array,
    *,
    c: float = poincare.DEFAULT_C,
    tau: float = 0.2,
    reduction: str = "sum",
) -> Array:
  """Pairwise cross-entropy of Hyperbolic ViT (an NT-Xent over views, in the ball).

  The batch holds n classes with m views each, `embeddings [n, m, d]` (row r = one class; a
  flat batch laid out class by class is `z.reshape(n, m, d)`). With `s(a, b) = -d_c(a, b)` (the
  dot product `a.b` when c = 0, Hyp-ViT's spherical mode), for each ordered pair of views
  (i, j), i != j, `x0 = z[:, i]`, `x1 = z[:, j]`:

      logits = [ s(x0, x1) / tau  |  s(x0, x0) / tau - 1e9 I ]      # [n, 2n]
      l_ij = mean_r CE(logits_r, target r)

  so row r's positive is its own class in view j and its negatives are the other classes in both
  views (never another sample of its own class).

  Args:
    embeddings: [n, m, d] points of the ball (unit vectors when c = 0), m >= 2.
    c: curvature parameter (0.1); 0 for the spherical (dot-product) variant.
    tau: temperature (0.2 in both papers' code).
    reduction: "sum" over the m (m - 1) ordered pairs (Hyp-ViT's train.py), "mean" over them, or
      "hier" (the sum divided by m^2, as HIER's `SupCon`, whose counter also counts i = j).

  Returns:
    Scalar loss.

  Reference: Ermolov et al., "Hyperbolic Vision Transformers: Combining Improvements in Metric
  Learning", CVPR 2022.

  >>> import jax
  >>> views = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (4, 2, 8))  # 4 classes x 2 views
  >>> bool(hyp_pairwise_ce_loss(views) > 0)
  True
  """
  _checks.check_rank(embeddings, 3, "embeddings", "[classes, views, dim]")
  _checks.check_floating(embeddings, "embeddings")
  _checks.one_of(reduction, ("sum", "mean", "hier"), "reduction")
  if isinstance(c, (int, float)) and c < 0:
    raise ValueError(f"`c` must be >= 0, got {c}.")
  n, m, _ = embeddings.shape
  if m < 2:
    raise ValueError(f"need at least 2 views per class, got {m}.")
  z = embeddings.astype(jnp.promote_types(embeddings.dtype, jnp.float32))
  spherical = isinstance(c, (int, float)) and c == 0

  def sim(a, b=None):
    if spherical:
      return a @ (a if b is None else b).T
    return -poincare.dist_matrix(a, b, c=c)

  eye = jnp.eye(n, dtype=bool)
  total = 0.0
  for i in range(m):
    x0 = z[:, i]
    s00 = sim(x0) / tau
    s00 = jnp.where(eye, s00 - 1e9, s00)
    for j in range(m):
      if i == j:
        continue
      logits = jnp.concatenate([sim(x0, z[:, j]) / tau, s00], axis=1)
      logp = jax.nn.log_softmax(logits, axis=1)
      total = total - jnp.mean(jnp.diagonal(logp[:, :n]))
  if reduction == "mean":
    return total / (m * (m - 1))
  if reduction == "hier":
    return total / (m * m)
  return total


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  """HIER settings; the defaults are the authors' (hier/train.py and every scripts/*/hier_*.sh).

  Attributes:
    num_proxies: hierarchical proxies (512, `--num_hproxies`).
    lambda1, lambda2: `lambda1 L_inner + lambda2 L_HIER` (1 and 0.5).
    lr_mult: the hierarchical proxies' learning-rate multiplier (50); the objective asks the
      optimiser for it as the group "loss/<name>".
    weight_decay: the weight decay of that group, or None (default) for the loss group's
      (`optim.loss_weight_decay`). The official code gives every group, these proxies included,
      the script's `--weight_decay` (`get_params_groups` in hier/utils.py): 1e-2 on CUB/Cars and
      1e-4 on SOP/In-shop, with AdamW's decoupled decay (scaled by the group's learning rate,
      as optax's adamw) and eps 1e-4 for every group (`--use_fp16 True`, hier/train.py; set
      `optim.eps`).
    c, clip_r: the Poincare ball (curvature parameter 0.1, feature clipping 2.3): the head's.
    margin, tau, topk, triplets_per_anchor, riemannian, lca_noise, negatives_include_anchor: as
      `loss_and_aux`.

  >>> Settings(num_proxies=64).lambda2
  0.5
  >>> Settings(lambda2=-1.0)
  Traceback (most recent call last):
  ...
  ValueError: hier lambda2 must be >= 0, got -1.0.
  """

  num_proxies: int = DEFAULT_NUM_PROXIES
  lambda1: float = DEFAULT_LAMBDA1
  lambda2: float = DEFAULT_LAMBDA2
  lr_mult: float = 50.0
  weight_decay: float | None = None
  c: float = poincare.DEFAULT_C
  clip_r: float = poincare.DEFAULT_CLIP_R
  margin: float = DEFAULT_MARGIN
  tau: float = DEFAULT_TAU
  topk: int = DEFAULT_TOPK
  triplets_per_anchor: int = DEFAULT_TRIPLETS_PER_ANCHOR
  riemannian: bool = True
  lca_noise: bool = True
  negatives_include_anchor: bool = True

  def __post_init__(self):
    for name in ("num_proxies", "topk", "triplets_per_anchor"):
      _checks.positive_int(getattr(self, name), f"hier {name}")
    for name in ("lambda1", "lambda2", "margin"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"hier {name} must be >= 0, got {getattr(self, name)}.")
    for name in ("lr_mult", "c", "clip_r", "tau"):
      if not getattr(self, name) > 0:
        raise ValueError(f"hier {name} must be > 0, got {getattr(self, name)}.")
    if self.weight_decay is not None and not self.weight_decay >= 0:
      raise ValueError(f"hier weight_decay must be None or >= 0, got {self.weight_decay}.")

  def loss_kwargs(self) -> dict:
    """Keyword arguments for `loss_and_aux`."""
    return {"c": self.c, "clip_r": self.clip_r, "margin": self.margin, "tau": self.tau,
            "topk": self.topk, "triplets_per_anchor": self.triplets_per_anchor,
            "riemannian": self.riemannian, "lca_noise": self.lca_noise,
            "negatives_include_anchor": self.negatives_include_anchor}


def wrap(inner: objectives.Objective, settings: Settings = Settings(), *, dim: int,
         name: str = "hier") -> objectives.Objective:
  """HIER around any objective: `lambda1 L_inner + lambda2 L_HIER` on the same embeddings.

  The embeddings must be points of the Poincare ball of `settings.c` (a hyperbolic head). The
  hierarchical proxies are the parameters under `name`, with their own learning-rate group
  (`lr_mult`); the key is split into (inner, own), in `init` (the inner parameters, then the
  proxies) as in `apply` (the own key samples the triplets and the LCA noise).

  Args:
    inner: the base objective (Proxy-Anchor in the paper's main results).
    settings: `Settings`.
    dim: the embedding dimension (the proxies' too).
    name: the parameter key and diagnostics name (`aux[f"{name}_loss"]`).

  Returns:
    The objective; its state and `soft` loss are the inner ones.

  >>> import jax, jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> obj = wrap(objectives.core("proxy_anchor", num_classes=2, dim=4), Settings(num_proxies=8),
  ...            dim=4)
  >>> params = obj.init(jax.random.PRNGKey(0))
  >>> sorted(params), dict(obj.lr_mult)
  (['hier', 'proxies'], {'hier': 50.0})
  >>> batch = objectives.Batch(0.3 * jnp.eye(4), jnp.array([0, 0, 1, 1]))
  >>> loss, _, aux = jax.jit(obj.apply)(params, {}, batch, jax.random.PRNGKey(1))
  >>> bool(jnp.isclose(loss, aux["base_loss"] + 0.5 * aux["hier_loss"]))
  True
  """
  if not isinstance(settings, Settings):
    raise TypeError(f"settings must be a hier.Settings, got {type(settings).__name__}.")
  _checks.positive_int(dim, "hier dim")
  kwargs = settings.loss_kwargs()

  def init(key):
    k_inner, k_own = jax.random.split(key)
    params = dict(inner.init(k_inner))
    if name in params:
      raise ValueError(f"the inner objective {inner.name!r} already has parameters {name!r}; "
                       "give this HIER another name.")
    params[name] = init_proxies(k_own, settings.num_proxies, dim, clip_r=settings.clip_r)
    return params

  def apply(params, state, batch, key):
    k_inner, k_own = jax.random.split(key)
    inner_params = {k: v for k, v in params.items() if k != name}
    base, state, aux = inner.apply(inner_params, state, batch, k_inner)
    h, _ = loss_and_aux(params[name], batch.embeddings, batch.labels, k_own, **kwargs)
    aux = dict(aux)
    aux.setdefault("base_loss", base)
    aux[f"{name}_loss"] = h
    total = combine_losses(base, h, lambda1=settings.lambda1, lambda2=settings.lambda2)
    return total, state, aux

  decay = dict(inner.weight_decay)
  if settings.weight_decay is not None:
    decay[name] = float(settings.weight_decay)
  return objectives.Objective(f"{inner.name}+{name}", init, apply, inner.init_state,
                              soft=inner.soft,
                              lr_mult={**inner.lr_mult, name: float(settings.lr_mult)},
                              weight_decay=decay)


def build(inner: objectives.Objective, settings: Settings,
          setup: objectives.Setup) -> objectives.Objective:
  """`wrap` as applications build it: HIER's ball is the hyperbolic head's (`setup.ball`).

  Raises ValueError without a hyperbolic head, or when `settings` name another ball.

  >>> from jaxdml import objectives
  >>> inner = objectives.core("proxy_anchor", num_classes=10, dim=16)
  >>> obj = build(inner, Settings(num_proxies=32),
  ...             objectives.Setup(num_classes=10, dim=16, ball=(0.1, 2.3)))
  >>> dict(obj.lr_mult)
  {'hier': 50.0}
  """
  if setup.ball is None:
    raise ValueError("HIER places embeddings and proxies in the Poincare ball: it needs a "
                     "hyperbolic head (model.head='hyperbolic').")
  c, clip_r = (float(v) for v in setup.ball)
  default = Settings()
  for field, value in (("c", c), ("clip_r", clip_r)):
    own = getattr(settings, field)
    if own != value and own != getattr(default, field):
      raise ValueError(f"hier {field} ({own}) differs from the head's ({value}): HIER's ball is "
                       f"the head's; set it on the model (poincare_c / clip_r).")
  return wrap(inner, dataclasses.replace(settings, c=c, clip_r=clip_r), dim=setup.dim)
