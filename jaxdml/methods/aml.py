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

import dataclasses
import math
from typing import Any, Callable, NamedTuple

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
                 margin: float = DEFAULT_MARGIN, reduction: str = "sum",
                 valid: Array | None = None) -> Array:
  """`sum_n [||q - t_p||^2 - ||q - t_n||^2 + m]_+` per tuple (squared distances; one positive).

  `valid` [B, N] (bool, optional) leaves out the (tuple, negative) terms where it is False (a
  tuple without a positive, a negative slot the mining could not fill).

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
  per = jax.nn.relu(dp[:, None] - dn + margin)
  if valid is not None:
    if valid.shape != per.shape:
      raise ValueError(f"`valid` must have shape {per.shape}, got {valid.shape}.")
    per = jnp.where(valid, per, 0.0)
  return _reduce(jnp.sum(per, axis=1), reduction)


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


# ------------------------------------------------------------------------------------------------
# AML as an objective of the trainer
# ------------------------------------------------------------------------------------------------

#: the asymmetric terms `Settings.loss` names: the paper's table (the code's definitions), and
#: "inner", the inner objective's own loss on the asymmetric similarities
LOSSES = ("regression", "contrastive", "contrastive_plus", "triplet", "multi_similarity", "rkd",
          "dark_rank", "inner")
_TUPLE_LOSSES = ("contrastive", "contrastive_plus", "triplet", "multi_similarity")


class Teacher(NamedTuple):
  """A frozen teacher network: `apply(variables, inputs) -> descriptors [B, dim]` (eval mode, a
  pure function), its `variables` (carried as the objective's state, never trained), its output
  `dim`, and the `input_shape` of one input (checked against the batch's; None: not checked).

  `teacher_from_run` makes one from a trained run (`jaxdml.load`).
  """

  apply: Callable[[Any, Array], Array]
  variables: Any
  dim: int
  input_shape: tuple[int, ...] | None = None


def teacher_from_run(run: Any) -> Teacher:
  """The `Teacher` of a trained run (`jaxdml.load(workdir)`): its model in eval mode.

  Its embeddings must be compared by cosine (AML's space is the sphere of L2-normalised
  descriptors); a run with a hyperbolic head is refused.
  """
  if getattr(run, "similarity", "cosine") != "cosine":
    raise ValueError(f"the teacher run {run.workdir!r} compares its embeddings by "
                     f"{run.similarity!r}; AML's teacher must give L2-normalised descriptors "
                     "(cosine).")
  model = run.model

  def apply(variables, x):
    return model.apply(variables, x, train=False).astype(jnp.float32)

  return Teacher(apply, run.variables, int(run.dim), tuple(run.input_shape))


@dataclasses.dataclass(frozen=True)
class Settings:
  """AML settings; the defaults are the released code's (`lib/cli.py`) where it has one.

  Attributes:
    loss: the asymmetric term (`LOSSES`): "regression" (Reg), "contrastive" (Contr),
      "contrastive_plus" (Contr+), "triplet", "multi_similarity" (MS on the query row), "rkd",
      "dark_rank", or "inner": the inner objective's own loss over similarities (its `soft`
      loss, a pair loss) on the asymmetric matrix `s(a, x) = <f(a), g(x)>`, students of the
      batch against teachers of the batch, so that any core loss can be trained asymmetrically.
      The code's default mode is Contr ("ts").
    weight: the asymmetric term's weight.
    inner_weight: the weight of the inner objective's own (symmetric, student-only) loss added
      to it; 0 (AML trains the asymmetric term alone) skips the inner objective.
    margin: of Contr, Contr+ and triplet (`--loss-margin`, 0.7; the triplet class's own 0.1 is
      not what the code passes).
    num_negatives: hard negatives per tuple (`--neg-num`, 5), at most one per class.
    pool_size: teacher descriptors of the most recent training images kept in the state to mine
      negatives from, besides the batch's own (the code mines from a pool of 20,000 teacher
      descriptors drawn each epoch; a teacher is frozen, so descriptors of earlier batches are
      exactly what it would compute now: the pool is a sample of the same kind, filled as
      training goes). 0: the batch only.
    self_positive: for "inner": the teacher's vector of an anchor's own image counts as one of
      its positives (as in Contr+); False masks it out (as Contr, whose tuples hold another
      image of the class).
    permute_len: DarkRank's list length (4).
    reduction: "sum" over tuples (the code back-propagates tuple by tuple and accumulates the
      batch's gradients) or "mean".
    teacher: for configs: the run directory of the teacher (`jaxdml train --workdir`), loaded
      with `jaxdml.load`; in Python give `wrap` a `Teacher` instead.
    teacher_step: its checkpoint (None: the newest).

  The tuples of the paper's losses are formed in the batch (the code's dataset gives one query,
  its fixed positive and mined negatives; class-labelled data has no fixed pairs): the query is
  the student's descriptor of a batch image, its positive the teacher's descriptor of another
  image of its class drawn at random from the batch (none: the tuple keeps its negatives only,
  Contr+ its teacher-self positive), its negatives mined by `mine_negatives` from the batch's
  and the pool's teacher descriptors with the current student query. Reg, RKD and DarkRank take
  every image of the batch, without labels.

  >>> Settings(loss="contrastive_plus").margin
  0.7
  >>> Settings(loss="reg")
  Traceback (most recent call last):
  ...
  ValueError: aml loss must be one of ('regression', 'contrastive', 'contrastive_plus', \
'triplet', 'multi_similarity', 'rkd', 'dark_rank', 'inner'), got 'reg'.
  """

  loss: str = "contrastive"
  weight: float = 1.0
  inner_weight: float = 0.0
  margin: float = DEFAULT_MARGIN
  num_negatives: int = 5
  pool_size: int = 0
  self_positive: bool = True
  permute_len: int = DARKRANK_PERMUTE_LEN
  reduction: str = "sum"
  teacher: str = ""
  teacher_step: int | None = None

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"aml loss must be one of {LOSSES}, got {self.loss!r}.")
    for name in ("weight", "inner_weight", "margin"):
      _checks.number(getattr(self, name), f"aml {name}", ge=0.0)
    _checks.positive_int(self.num_negatives, "aml num_negatives")
    _checks.positive_int(self.permute_len, "aml permute_len")
    if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or \
        self.pool_size < 0:
      raise ValueError(f"aml pool_size must be an int >= 0, got {self.pool_size!r}.")
    _checks.one_of(self.reduction, REDUCTIONS, "aml reduction")
    if self.teacher_step is not None and (isinstance(self.teacher_step, bool)
                                          or self.teacher_step < 0):
      raise ValueError(f"aml teacher_step must be None or a step >= 0, got "
                       f"{self.teacher_step!r}.")


class Pool(NamedTuple):
  """The teacher descriptors kept to mine from: `descriptors [P, d]`, their `labels [P]` (-1:
  an empty slot) and `next` (where the next batch is written, cyclically)."""

  descriptors: Array
  labels: Array
  next: Array


def init_pool(size: int, dim: int) -> Pool:
  """An empty pool of `size` slots."""
  return Pool(jnp.zeros((size, dim), jnp.float32), jnp.full((size,), -1, jnp.int32),
              jnp.zeros((), jnp.int32))


def update_pool(pool: Pool, descriptors: Array, labels: Array) -> Pool:
  """`pool` with the batch written at `next`, cyclically (the oldest entries go first)."""
  size, b = pool.labels.shape[0], descriptors.shape[0]
  if b > size:
    raise ValueError(f"aml pool_size ({size}) must be at least the batch size ({b}).")
  rows = (pool.next + jnp.arange(b)) % size
  return Pool(pool.descriptors.at[rows].set(lax.stop_gradient(descriptors).astype(jnp.float32)),
              pool.labels.at[rows].set(labels.astype(jnp.int32)), (pool.next + b) % size)


def random_positives(labels: Array, key: Array) -> tuple[Array, Array]:
  """For each batch image, another image of its class drawn uniformly from the batch.

  Returns (index [B] int32, has_positive [B] bool); index 0 where the class has no other image.
  """
  same = (labels[:, None] == labels[None, :]) & ~jnp.eye(labels.shape[0], dtype=bool)
  score = jnp.where(same, jax.random.uniform(key, same.shape), -1.0)
  return jnp.argmax(score, axis=1).astype(jnp.int32), jnp.any(same, axis=1)


def _mine_masked(query, pool, query_labels, pool_labels, n):
  """`mine_negatives` over a pool whose slots of label -1 are empty (never taken)."""
  scores = lax.stop_gradient(query) @ lax.stop_gradient(pool).T
  empty = pool_labels < 0
  scores = jnp.where(empty[None, :], -jnp.inf, scores)
  index, valid = _mine(scores, query_labels, pool_labels, n)
  return index, valid & ~empty[index]


def tuple_loss(settings: Settings, student: Array, teacher: Array, labels: Array, key: Array,
               pool: Pool | None = None) -> Array:
  """The paper's tuple losses (`Settings.loss` in `_TUPLE_LOSSES`) formed in the batch.

  Args:
    settings: `Settings`.
    student: [B, d] the students' descriptors of the batch (the queries).
    teacher: [B, d] the teacher's descriptors of the same images.
    labels: [B] integer classes (the clusters of the mining).
    key: draws each query's positive.
    pool: more teacher descriptors to mine negatives from, or None.
  """
  teacher = lax.stop_gradient(teacher)
  pos, has_pos = random_positives(labels, key)
  bank, bank_labels = teacher, labels
  if pool is not None:
    bank = jnp.concatenate([teacher, pool.descriptors.astype(teacher.dtype)])
    bank_labels = jnp.concatenate([labels.astype(jnp.int32), pool.labels])
  neg, neg_ok = _mine_masked(student, bank, labels.astype(jnp.int32),
                             bank_labels.astype(jnp.int32), settings.num_negatives)
  t_pos, t_neg = teacher[pos], bank[neg]  # [B, d], [B, N, d]
  red, margin = settings.reduction, settings.margin
  if settings.loss == "triplet":
    return triplet_loss(student, t_pos, t_neg, margin=margin, reduction=red,
                        valid=neg_ok & has_pos[:, None])
  plus = settings.loss == "contrastive_plus"
  items, item_labels = tuple_items(teacher, t_pos, t_neg, with_query=plus)
  used = jnp.concatenate([jnp.ones((labels.shape[0], 1), bool)] * plus
                         + [has_pos[:, None], neg_ok], axis=1)
  item_labels = jnp.where(used, item_labels, -1.0)
  if settings.loss == "multi_similarity":
    return multi_similarity_loss(student, items, item_labels, reduction=red)
  return contrastive_loss(student, items, item_labels, margin=margin, reduction=red)


def asymmetric_term(settings: Settings, student: Array, teacher: Array, labels: Array,
                    key: Array, pool: Pool | None = None, soft: Any = None,
                    params: Any = None) -> Array:
  """The asymmetric term `Settings.loss` of one batch (without its weight).

  `soft` and `params`: the inner objective's `SoftLoss` and loss parameters, for "inner".
  """
  teacher = lax.stop_gradient(teacher)
  if settings.loss == "regression":
    return regression_loss(student, teacher, reduction=settings.reduction)
  if settings.loss == "rkd":
    return rkd_loss(student, teacher)
  if settings.loss == "dark_rank":
    return dark_rank_loss(student, teacher, permute_len=settings.permute_len)
  if settings.loss == "inner":
    from jaxdml import targets  # noqa: PLC0415

    target, _ = targets.from_labels(labels)
    target = target.astype(student.dtype)
    b = labels.shape[0]
    mask = jnp.ones((b, b), bool) if settings.self_positive else ~jnp.eye(b, dtype=bool)
    # the diagonal is a positive pair (the same image in the two spaces)
    target = jnp.where(jnp.eye(b, dtype=bool), 1.0, target)
    return soft.apply(params, student, target, mask, references=teacher)
  return tuple_loss(settings, student, teacher, labels, key, pool)


def wrap(inner: Any, settings: Settings = Settings(), *, teacher: Teacher,
         name: str = "aml") -> Any:
  """AML around any objective: each step runs the frozen `teacher` on the batch's inputs and
  trains the student (the network of the run) by `settings.loss` between the student's
  descriptors (`batch.embeddings`) and the teacher's; `settings.inner_weight` adds the inner
  objective's own loss on the student's batch.

  The state under `name` is `{"teacher": variables, "pool": Pool}` (no pool with `pool_size`
  0): the teacher's variables travel with the run's state (checkpointed, never
  trained), so nothing outside the objective holds them. The step's key is split into
  (inner, own). The objective needs the batch's inputs (`Batch.inputs`, given by the train step).

  Args:
    inner: the objective AML wraps (`jaxdml.objectives.Objective`): its loss is added with
      `inner_weight`, and its `soft` loss is the asymmetric term of `loss="inner"`.
    settings: `Settings`.
    teacher: the frozen `Teacher` (its `dim` must equal the student's embedding dimension).
    name: the state key.

  Returns:
    The objective; `aux["aml_loss"]` is the asymmetric term and `aux["base_loss"]` the inner
    loss when it is computed. Its `soft` is None (its loss is not the inner one).

  >>> from jaxdml import objectives
  >>> teacher = Teacher(lambda v, x: x / jnp.linalg.norm(x, axis=1, keepdims=True), {}, 4)
  >>> obj = wrap(objectives.core("multi_similarity"), Settings(loss="regression"),
  ...            teacher=teacher)
  >>> x = jnp.eye(4)
  >>> batch = objectives.Batch(x, jnp.array([0, 0, 1, 1]), inputs=x)
  >>> loss, state, aux = obj.apply({}, obj.init_state(), batch, jax.random.PRNGKey(0))
  >>> float(loss), sorted(aux)  # the student is the teacher here
  (0.0, ['aml_loss'])
  """
  from jaxdml import objectives  # noqa: PLC0415

  if not isinstance(settings, Settings):
    raise TypeError(f"settings must be an aml.Settings, got {type(settings).__name__}.")
  if not isinstance(teacher, Teacher):
    raise TypeError(f"teacher must be an aml.Teacher (e.g. aml.teacher_from_run(jaxdml.load("
                    f"workdir))), got {type(teacher).__name__}.")
  _checks.positive_int(teacher.dim, "aml teacher dim")
  if settings.loss == "inner":
    if inner.soft is None or inner.soft.kind != "pairs":
      raise ValueError(f"aml loss='inner' needs an inner objective with a pair loss over "
                       f"similarities (`soft` of kind 'pairs'); {inner.name!r} has "
                       f"{'none' if inner.soft is None else 'proxies'}.")

  def init_state():
    state = dict(inner.init_state())
    if name in state:
      raise ValueError(f"the inner objective {inner.name!r} already has state {name!r}; give "
                       "this AML another name.")
    state[name] = {"teacher": teacher.variables}
    if settings.pool_size:  # (a checkpoint cannot hold an empty array)
      state[name]["pool"] = init_pool(settings.pool_size, teacher.dim)
    return state

  def apply_fn(params, state, batch, key):
    k_inner, k_own = jax.random.split(key)
    if batch.inputs is None:
      raise ValueError("aml needs the batch's inputs (Batch.inputs) to run the teacher; the "
                       "train step gives them.")
    if teacher.input_shape is not None and tuple(batch.inputs.shape[1:]) != tuple(
        teacher.input_shape):
      raise ValueError(f"the teacher takes inputs of shape {tuple(teacher.input_shape)} but the "
                       f"batch's are {tuple(batch.inputs.shape[1:])}.")
    own = state[name]
    t = lax.stop_gradient(teacher.apply(own["teacher"], batch.inputs))
    z, y = batch.embeddings, batch.labels
    if t.shape != z.shape:
      raise ValueError(f"the teacher's descriptors {t.shape} and the student's embeddings "
                       f"{z.shape} differ: the student must project to the teacher's dimension "
                       f"({teacher.dim}).")
    pool = own["pool"] if settings.pool_size else None
    term = asymmetric_term(settings, z, t, y, k_own, pool, inner.soft, params)
    inner_state = {k: v for k, v in state.items() if k != name}
    aux = {}
    total = settings.weight * term
    if settings.inner_weight:
      base, inner_state, aux = inner.apply(params, inner_state, batch, k_inner)
      aux = dict(aux)
      aux.setdefault("base_loss", base)
      total = total + settings.inner_weight * base
    aux[f"{name}_loss"] = term
    new_own = {"teacher": own["teacher"]}
    if settings.pool_size:
      new_own["pool"] = update_pool(own["pool"], t, y)
    return total, {**inner_state, name: new_own}, aux

  return objectives.Objective(f"{inner.name}+{name}", inner.init, apply_fn, init_state,
                              soft=None, lr_mult=inner.lr_mult,
                              weight_decay=inner.weight_decay)


def build(inner: Any, settings: Settings, setup: Any) -> Any:
  """`wrap` with the teacher run `settings.teacher`, loaded by `setup.load_run` (how configs
  build AML: the application gives the loader, so this layer imports none of it).

  Raises:
    ValueError: no teacher named, or a teacher whose dimension is not the student's.
  """
  if not settings.teacher:
    raise ValueError("objective.aml.teacher: AML needs the run directory of its teacher "
                     "(objective.aml.teacher=<workdir of a trained run>).")
  if getattr(setup, "load_run", None) is None:
    raise ValueError("objective.aml.teacher: this setup cannot load runs (Setup.load_run); "
                     "build AML with wrap(inner, settings, teacher=...) instead.")
  try:
    teacher = teacher_from_run(setup.load_run(settings.teacher, settings.teacher_step))
  except FileNotFoundError as e:
    raise ValueError(f"objective.aml.teacher: {e}") from e
  if teacher.dim != setup.dim:
    raise ValueError(f"objective.aml.teacher: the teacher gives {teacher.dim}-d descriptors but "
                     f"the student's model.embedding_dim is {setup.dim}; the student must "
                     "project to the teacher's dimension.")
  return wrap(inner, settings, teacher=teacher)

