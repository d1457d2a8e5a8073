"""Asymmetric metric learning (AML; Budnik & Avrithis, CVPR 2021) as pure functions.

A frozen teacher `g` has indexed the database; a small student `f_theta` is trained so that its
query descriptors can be searched in the teacher's space. The one primitive is the asymmetric
similarity `s(a, x) = sim(f_theta(a), g(x))` (`asymmetric_similarity`): a [B, N] matrix of
student anchors against teacher items, which any core loss's `from_sim` takes with a target and
a mask (`jaxdml.losses.*_from_sim`), exactly as it takes the symmetric one. The losses of the
paper's table are also written with the released code's definitions, on tuples of one student
query and T teacher items (`items [B, T, d]`, `labels [B, T]`: 1 positive, 0 negative, -1 not
used):

* `regression_loss`: `1/2 ||f(a) - g(a)||^2` per image (Reg: no labels, no mining).
* `contrastive_loss`: `sum_items 1/2 y D^2 + 1/2 (1 - y) [m - D]_+^2`, `D = ||q - x + 1e-6||`,
  margin 0.7 (Contr on (t_p, t_n1..); Contr+ on (t_q, t_p, t_n1..), the teacher's own vector of
  the query as a second positive: `tuple_items`).
* `triplet_loss`: `sum_n [||q - t_p||^2 - ||q - t_n||^2 + m]_+` with squared distances and
  margin 0.7 (the code passes its `--loss-margin`, not the class default 0.1).
* `multi_similarity_loss`: MS on the query's row only, threshold 0.5, scales 2 / 40 (the code's
  0.1 margin is unused).
* `rkd_loss`: relational distillation `2 L_angle + L_dist` (smooth L1; distances divided by the
  mean of the non-zero ones; angles as cosines between difference vectors), teacher without
  gradient, on unlabelled random batches.
* `dark_rank_loss`: hard DarkRank: the teacher ranks each anchor's neighbours and the student's
  scores `-alpha d^beta` are scored by the Plackett-Luce log-likelihood of that order over the
  first `permute_len`. The released code calls it with the student on both sides, which cannot
  transfer anything from the teacher; here the order comes from the teacher, as the paper
  describes it.

Per tuple the code sums over the tuple's items and back-propagates tuple by tuple, accumulating
the batch's gradients: the batch loss here is therefore the sum over tuples (reduction "sum";
"mean" divides by the number of tuples).

Hard negatives (`mine_negatives`) are drawn from a pool of teacher descriptors ranked by the
current student's query descriptor: the ranking is walked from the top, the query's own cluster
and every cluster already taken are skipped, until `num_negatives` are found (at most one image
per cluster).

Reference: M. Budnik, Y. Avrithis, "Asymmetric Metric Learning for Knowledge Transfer", CVPR
2021; code github.com/budnikm/aml (`aml/layers/loss.py`, `aml/layers/functional.py`,
`aml/datasets/traindataset.py`, `aml/main.py`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxdml import _checks

Array = jax.Array

REDUCTIONS = ("sum", "mean")
#: the code's defaults
DEFAULT_MARGIN = 0.7
MS_THRESHOLD, MS_SCALE_POS, MS_SCALE_NEG = 0.5, 2.0, 40.0
DARKRANK_ALPHA, DARKRANK_BETA, DARKRANK_PERMUTE_LEN = 3.0, 3.0, 4
RKD_DIST_WEIGHT, RKD_ANGLE_WEIGHT = 1.0, 2.0
#: the per-epoch learning-rate decay of the code (`ExponentialLR(gamma=exp(-0.01))`)
EPOCH_DECAY = math.exp(-0.01)


def asymmetric_similarity(student: Array, teacher: Array) -> Array:
  """`s(a, x) = <f(a), g(x)>`: [B, d] student descriptors against [N, d] teacher ones -> [B, N].

  Both are L2-normalised descriptors (AML's student ends with GeM and L2 in the teacher's
  dimension), so the dot product is the cosine. Feed it to any `*_from_sim` loss with
  `target[i, j] = 1[y_i = y'_j]`.

  >>> asymmetric_similarity(jnp.eye(2), jnp.array([[0.6, 0.8]])).tolist()
  [[0.6000000238418579], [0.800000011920929]]
  """
  _checks.check_rank(student, 2, "student", "[batch, dim]")
  _checks.check_rank(teacher, 2, "teacher", "[items, dim]")
  if student.shape[1] != teacher.shape[1]:
    raise ValueError(f"`student` has dimension {student.shape[1]} but `teacher` has "
                     f"{teacher.shape[1]}: the student must project to the teacher's dimension.")
  return student @ lax.stop_gradient(teacher).T


def tuple_items(teacher_query: Array, teacher_positive: Array, teacher_negatives: Array, *,
                with_query: bool) -> tuple[Array, Array]:
  """The teacher side of AML's tuples and their labels.

  Args:
    teacher_query: [B, d] the teacher's descriptor of each query image.
    teacher_positive: [B, d] of its positive.
    teacher_negatives: [B, N, d] of its mined negatives.
    with_query: Contr+ (the teacher's query as a second positive) or Contr.

  Returns:
    (items [B, T, d], labels [B, T] float32): (t_q, t_p, t_n...) with labels (1, 1, 0...) for
    Contr+, (t_p, t_n...) with (1, 0...) for Contr.
  """
  parts = [teacher_query[:, None]] if with_query else []
  parts += [teacher_positive[:, None], teacher_negatives]
  items = jnp.concatenate(parts, axis=1)
  b, n = teacher_negatives.shape[:2]
  labels = jnp.concatenate([jnp.ones((b, len(parts) - 1)), jnp.zeros((b, n))], axis=1)
  return items, labels


def _reduce(per_tuple: Array, reduction: str) -> Array:
  _checks.one_of(reduction, REDUCTIONS, "reduction")
  return jnp.sum(per_tuple) if reduction == "sum" else jnp.mean(per_tuple)


def _tuple_checks(query: Array, items: Array, labels: Array | None = None) -> None:
  _checks.check_rank(query, 2, "query", "[batch, dim]")
  _checks.check_rank(items, 3, "items", "[batch, tuple, dim]")
  if items.shape[0] != query.shape[0] or items.shape[2] != query.shape[1]:
    raise ValueError(f"`items` {items.shape} does not fit `query` {query.shape}: expected "
                     f"[{query.shape[0]}, T, {query.shape[1]}].")
  if labels is not None and labels.shape != items.shape[:2]:
    raise ValueError(f"`labels` must have shape {items.shape[:2]}, got {labels.shape}.")


def regression_loss(student: Array, teacher: Array, *, reduction: str = "sum") -> Array:
  """Reg: `1/2 ||f(a) - g(a)||^2` per image (the positive branch of the contrastive loss with
  the teacher's descriptor of the same image), summed (or averaged) over the batch.

  >>> float(regression_loss(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])))
  1.0
  """
  if student.shape != teacher.shape:
    raise ValueError(f"`student` {student.shape} and `teacher` {teacher.shape} must match.")
  d = student - lax.stop_gradient(teacher)
  return _reduce(0.5 * jnp.sum(d * d, axis=-1), reduction)


def contrastive_loss(query: Array, items: Array, labels: Array, *,
                     margin: float = DEFAULT_MARGIN, reduction: str = "sum") -> Array:
  """AML's (and cirtorch's) contrastive loss of each query against its tuple's teacher items.

  `sum_j 1/2 y_j D_j^2 + 1/2 (1 - y_j) [m - D_j]_+^2` with `D_j = ||q - x_j + 1e-6||` (the code's
  `pairwise_distance` eps); items with label -1 are left out.

  >>> q = jnp.array([[1.0, 0.0]])
  >>> items = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # t_p = q, t_n at distance sqrt 2 > 0.7
  >>> round(float(contrastive_loss(q, items, jnp.array([[1.0, 0.0]]))), 10)
  0.0
  """
  _tuple_checks(query, items, labels)
  _checks.number(margin, "margin")
  diff = query[:, None, :] - lax.stop_gradient(items) + 1e-6
  d = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
  y = labels.astype(d.dtype)
  per = 0.5 * y * d * d + 0.5 * (1.0 - y) * jnp.square(jnp.maximum(margin - d, 0.0))
  return _reduce(jnp.sum(jnp.where(labels >= 0, per, 0.0), axis=1), reduction)


def triplet_loss(query: Array, positive: Array, negatives: Array, *,
                 margin: float = DEFAULT_MARGIN, reduction: str = "sum") -> Array:
  """`sum_n [||q - t_p||^2 - ||q - t_n||^2 + m]_+` per tuple (squared distances; one positive).

  >>> q, p = jnp.array([[1.0, 0.0]]), jnp.array([[0.6, 0.8]])  # ||q - p||^2 = 0.8
  >>> round(float(triplet_loss(q, p, jnp.array([[[0.0, 1.0]]]), margin=1.5)), 5)  # 0.8 - 2 + 1.5
  0.3
  """
  _tuple_checks(query, negatives)
  if positive.shape != query.shape:
    raise ValueError(f"`positive` must have shape {query.shape}, got {positive.shape}.")
  _checks.number(margin, "margin")
  dp = jnp.sum(jnp.square(query - lax.stop_gradient(positive)), axis=-1)
  dn = jnp.sum(jnp.square(query[:, None] - lax.stop_gradient(negatives)), axis=-1)
  return _reduce(jnp.sum(jax.nn.relu(dp[:, None] - dn + margin), axis=1), reduction)


def multi_similarity_loss(query: Array, items: Array, labels: Array, *,
                          threshold: float = MS_THRESHOLD, scale_pos: float = MS_SCALE_POS,
                          scale_neg: float = MS_SCALE_NEG, reduction: str = "sum") -> Array:
  """MS on each query's row of its tuple (`s_j = <q, x_j>`):
  `1/a log(1 + sum_p e^{-a (s_p - t)}) + 1/b log(1 + sum_n e^{b (s_n - t)})`, a = 2, b = 40,
  t = 0.5; items with label -1 are left out. It is `jaxdml.losses.multi_similarity_from_sim` on
  the [B, T] tuple similarities (the same primitive as the symmetric loss).
  """
  from jaxdml.losses import multi_similarity_from_sim  # noqa: PLC0415

  _tuple_checks(query, items, labels)
  sim = jnp.einsum("bd,btd->bt", query, lax.stop_gradient(items))
  target = (labels > 0).astype(sim.dtype)
  return multi_similarity_from_sim(sim, target, labels >= 0, alpha=scale_pos, beta=scale_neg,
                                   base=threshold, reduction=reduction)


def _pdist(x: Array, eps: float = 1e-12) -> Array:
  """Euclidean distances with a zero diagonal, clamped at `eps` before the root (RKD's pdist)."""
  sq = jnp.sum(x * x, axis=-1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, eps)
  return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, jnp.sqrt(d2))


def _smooth_l1(a: Array, b: Array) -> Array:
  d = jnp.abs(a - b)
  return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))


def _normalized_mean(d: Array) -> Array:
  nonzero = d > 0
  return d / (jnp.sum(jnp.where(nonzero, d, 0.0)) / jnp.maximum(jnp.sum(nonzero), 1))


def rkd_loss(student: Array, teacher: Array, *, dist_weight: float = RKD_DIST_WEIGHT,
             angle_weight: float = RKD_ANGLE_WEIGHT) -> Array:
  """Relational knowledge distillation (Park et al., CVPR 2019) between a batch's two spaces.

  Distance term: smooth L1 between the pairwise distances of the student and of the teacher,
  each divided by the mean of its non-zero distances. Angle term: smooth L1 between the cosines
  `<e(a, x), e(a, y)>` of the unit difference vectors `e(a, x) = (x - a) / ||x - a||` over all
  triples (a difference of a point with itself is the zero vector). Both are element-wise means.
  The teacher gets no gradient. `dist_weight * L_dist + angle_weight * L_angle` (1 and 2).
  """
  if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
    raise ValueError(f"`student` [B, d] and `teacher` [B, d'] must hold the same B images, got "
                     f"{student.shape} and {teacher.shape}.")
  teacher = lax.stop_gradient(teacher)
  loss_d = _smooth_l1(_normalized_mean(_pdist(student)), _normalized_mean(_pdist(teacher)))

  def cosines(x):
    e = x[None, :, :] - x[:, None, :]  # e[a, x] = x - a
    # e / max(||e||, 1e-12) (F.normalize), without the root's infinite slope at e = 0
    e = e * lax.rsqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), 1e-24))
    return jnp.einsum("axd,ayd->axy", e, e)

  loss_a = _smooth_l1(cosines(student), cosines(teacher))
  return dist_weight * loss_d + angle_weight * loss_a


def dark_rank_loss(student: Array, teacher: Array, *, alpha: float = DARKRANK_ALPHA,
                   beta: float = DARKRANK_BETA, permute_len: int = DARKRANK_PERMUTE_LEN) -> Array:
  """Hard DarkRank (Chen et al., AAAI 2018) over a batch: the teacher's order, the student's
  scores.

  For each anchor a, its `permute_len` nearest other images in the teacher's space, in the
  teacher's order x_1, x_2, ...; with the student's scores `s(a, x) = -alpha ||f(a) - f(x)||^beta`
  the loss is the mean over anchors of `-sum_k (s(a, x_k) - log sum_{l >= k} e^{s(a, x_l)})`, the
  negative Plackett-Luce log-likelihood of the teacher's order. Teacher ties go to the lower
  index.
  """
  if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
    raise ValueError(f"`student` [B, d] and `teacher` [B, d'] must hold the same B images, got "
                     f"{student.shape} and {teacher.shape}.")
  b = student.shape[0]
  if not 1 <= int(permute_len) <= b - 1:
    raise ValueError(f"`permute_len` must be in [1, {b - 1}] for a batch of {b}, got "
                     f"{permute_len}.")
  score_t = -alpha * _pdist(lax.stop_gradient(teacher)) ** beta
  score_s = -alpha * _pdist(student) ** beta
  # the anchor itself (score 0, the largest) comes first in the teacher's order: drop it
  score_t = jnp.where(jnp.eye(b, dtype=bool), jnp.inf, score_t)
  _, order = lax.top_k(score_t, int(permute_len) + 1)
  ordered = jnp.take_along_axis(score_s, order[:, 1:], axis=1)  # [B, K]
  tail_lse = lax.cumlogsumexp(ordered, axis=1, reverse=True)
  return jnp.mean(-jnp.sum(ordered - tail_lse, axis=1))


def mine_negatives(query: Array, pool: Array, query_clusters: Array, pool_clusters: Array, *,
                   num_negatives: int = 5) -> tuple[Array, Array]:
  """AML's (cirtorch's) hard negatives: for each query, walk the pool ranked by `<q, x>`
  (descending; ties to the lower index), skip the query's cluster and every cluster already
  taken, and keep the first `num_negatives` images (at most one per cluster).

  Args:
    query: [Q, d] the current student's query descriptors.
    pool: [P, d] the teacher's descriptors of the pool images.
    query_clusters, pool_clusters: [Q], [P] integer cluster ids.
    num_negatives: negatives per query (nnum, 5).

  Returns:
    (indices [Q, N] int32 into the pool, valid [Q, N] bool); a query whose pool has fewer than
    N other clusters gets its first ones and `valid` False in the remaining slots (index 0).

  >>> q = jnp.array([[1.0, 0.0]])
  >>> pool = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
  >>> idx, ok = mine_negatives(q, pool, jnp.array([0]), jnp.array([0, 1, 1, 2]), num_negatives=2)
  >>> idx.tolist(), ok.tolist()  # image 0 is the query's cluster, 2 repeats cluster 1
  ([[1, 3]], [[True, True]])
  """
  _checks.check_rank(query, 2, "query", "[queries, dim]")
  _checks.check_rank(pool, 2, "pool", "[pool, dim]")
  n = int(num_negatives)
  if n < 1:
    raise ValueError(f"`num_negatives` must be >= 1, got {num_negatives}.")
  if query_clusters.shape != query.shape[:1] or pool_clusters.shape != pool.shape[:1]:
    raise ValueError(f"`query_clusters` {query_clusters.shape} and `pool_clusters` "
                     f"{pool_clusters.shape} must have one id per query and per pool image.")
  scores = lax.stop_gradient(query) @ lax.stop_gradient(pool).T
  return _mine(scores, query_clusters, pool_clusters, n)


@jax.jit
def _first_of_cluster(ranked_clusters: Array) -> Array:
  """[P] cluster ids in rank order -> True where a cluster occurs for the first time."""
  order = jnp.argsort(ranked_clusters, stable=True)  # by cluster, then by rank
  c = ranked_clusters[order]
  first = jnp.concatenate([jnp.ones((1,), bool), c[1:] != c[:-1]])
  return jnp.zeros_like(first).at[order].set(first)


def _mine(scores: Array, query_clusters: Array, pool_clusters: Array, n: int
          ) -> tuple[Array, Array]:
  p = scores.shape[1]
  ranks = jnp.argsort(-scores, axis=1, stable=True)  # [Q, P] pool indices, best first
  ranked = pool_clusters[ranks]
  eligible = jax.vmap(_first_of_cluster)(ranked) & (ranked != query_clusters[:, None])
  count = jnp.cumsum(eligible, axis=1)
  take = eligible & (count <= n)
  # positions of the taken ranks, in rank order: the n smallest positions where `take`
  pos = jnp.where(take, jnp.arange(p)[None, :], p)
  first = -lax.top_k(-pos, min(n, p))[0]  # ascending
  valid = first < p
  index = jnp.take_along_axis(ranks, jnp.minimum(first, p - 1), axis=1)
  if n > p:
    pad = n - p
    index = jnp.pad(index, ((0, 0), (0, pad)))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
  return jnp.where(valid, index, 0).astype(jnp.int32), valid
