"""The Poincare ball of curvature -c (c > 0, radius 1/sqrt(c)) as pure array functions.

These are the operations of the `hyptorch` package used by Hyperbolic ViT (Ermolov et al.,
CVPR 2022) and HIER (Kim et al., CVPR 2023), with their numerical safeguards:

  * feature clipping (Guo et al., "Clipped Hyperbolic Classifiers Are Super-Hyperbolic
    Classifiers", 2021) before the exponential map: `x <- x * min(1, r / (|x| + 1e-5))`;
  * `expmap0(u) = tanh(sqrt(c) |u|) u / (sqrt(c) |u|)`, `|u|` clamped to >= 1e-5 and the tanh
    argument to [-15, 15];
  * `logmap0(y) = artanh(sqrt(c) |y|) y / (sqrt(c) |y|)`, `|y|` clamped to >= 1e-5;
  * `project`: points with norm above `(1 - 1e-3) / sqrt(c)` are scaled back to that norm;
  * Mobius addition with `+1e-5` in the denominator;
  * `d_c(x, y) = (2 / sqrt(c)) artanh(sqrt(c) |(-x) + y|)` (Mobius sum), artanh clamped to
    [-1 + 1e-5, 1 - 1e-5] with the backward pass `g / (1 - x^2)` of the clamped x;
  * the "Riemannian gradient" of `ToPoincare`: identity forward, backward scaled by
    `(1 - c |x|^2)^2 / 4`, the inverse squared conformal factor of the ball at x.

Every function works on the last axis, broadcasts over the others, and is jit/vmap/grad-able.
Arithmetic is done in at least float32: a bfloat16 or float16 input is cast up and the result
cast back, because those formats cannot represent `1 - 1e-3` or `1 - 1e-5` (bfloat16 rounds both
to 1, which would put points on the boundary and make artanh infinite). For the same reason
`project` keeps low-precision points a little further inside, at `(1 - max(1e-3, eps)) /
sqrt(c)` with `eps` the machine epsilon of the input dtype, so that rounding the result to that
dtype cannot move it out of the ball (for float32 this is the authors' 1e-3).

Defaults follow both papers' code: c = 0.1 and clip radius 2.3, so that an embedding lies at a
Euclidean norm of at most `tanh(sqrt(0.1) 2.3) / sqrt(0.1) ~= 1.965` (ball radius 3.162) and at a
hyperbolic distance of at most 4.6 from the origin.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

DEFAULT_C = 0.1
DEFAULT_CLIP_R = 2.3

_MIN_NORM = 1e-5  # clamp of norms in expmap0, logmap0 and project
_CLIP_EPS = 1e-5  # added to the norm in the feature clipping
_PROJ_EPS = 1e-3  # relative gap to the boundary kept by `project`
_ARTANH_EPS = 1e-5  # artanh's argument is clamped to [-1 + eps, 1 - eps]
_MOBIUS_EPS = 1e-5  # added to the Mobius-addition denominator
_TANH_CLAMP = 15.0


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _check_c(c) -> None:
  if isinstance(c, (int, float)) and not c > 0:
    raise ValueError(f"the curvature parameter `c` must be > 0, got {c}.")


def _dtypes(*xs) -> tuple:
  """(output dtype, compute dtype): the inputs' result type and at least float32."""
  out = jnp.result_type(*xs)
  if not jnp.issubdtype(out, jnp.floating):
    out = jnp.dtype(jnp.float32)
  return out, jnp.promote_types(out, jnp.float32)


def _sq_norm(x: Array, keepdims: bool = True) -> Array:
  return jnp.sum(jnp.square(x), axis=-1, keepdims=keepdims)


def _clamped_norm(x: Array, min_norm: float = _MIN_NORM, keepdims: bool = True) -> Array:
  """max(|x|, min_norm), with the zero gradient of torch's clamp_min below min_norm."""
  return jnp.sqrt(jnp.maximum(_sq_norm(x, keepdims), min_norm * min_norm))


def _safe_sqrt(x: Array, tiny: float = 1e-30) -> Array:
  """sqrt with gradient 0 (not inf or NaN) at 0; NaN stays NaN and -inf gives NaN."""
  pos = x > tiny
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), jnp.abs(x) * 0.0)


def _safe_norm(x: Array, keepdims: bool = True) -> Array:
  """|x| with gradient 0 at x = 0 (torch's norm backward gives 0 there as well)."""
  return _safe_sqrt(_sq_norm(x, keepdims))


def ball_radius(c: float = DEFAULT_C) -> float:
  """1 / sqrt(c), the Euclidean radius of the ball."""
  _check_c(c)
  return 1.0 / math.sqrt(c)


def projection_radius(c: float = DEFAULT_C, dtype=jnp.float32) -> float:
  """The largest norm `project` leaves for `dtype`: `(1 - max(1e-3, eps(dtype))) / sqrt(c)`."""
  _check_c(c)
  eps = max(_PROJ_EPS, float(jnp.finfo(dtype).eps))
  return (1.0 - eps) / math.sqrt(c)


# ------------------------------------------------------------------------------------------------
# Scalar functions with the authors' clamps
# ------------------------------------------------------------------------------------------------


@jax.custom_vjp
def artanh(x: Array) -> Array:
  """Inverse hyperbolic tangent of x clamped to [-1 + 1e-5, 1 - 1e-5].

  The backward pass is `g / (1 - x^2)` evaluated at the clamped x, as in hyptorch's `Artanh`: the
  gradient does not vanish where the clamp is active, and it stays finite (at most ~5e4).
  """
  xc = jnp.clip(x, -1.0 + _ARTANH_EPS, 1.0 - _ARTANH_EPS)
  return 0.5 * (jnp.log1p(xc) - jnp.log1p(-xc))


def _artanh_fwd(x):
  xc = jnp.clip(x, -1.0 + _ARTANH_EPS, 1.0 - _ARTANH_EPS)
  return 0.5 * (jnp.log1p(xc) - jnp.log1p(-xc)), xc


def _artanh_bwd(xc, g):
  return (g / (1.0 - jnp.square(xc)),)


artanh.defvjp(_artanh_fwd, _artanh_bwd)


def _tanh(x: Array) -> Array:
  return jnp.tanh(jnp.clip(x, -_TANH_CLAMP, _TANH_CLAMP))


# ------------------------------------------------------------------------------------------------
# Maps between the tangent space at 0 (Euclidean features) and the ball
# ------------------------------------------------------------------------------------------------


def clip_features(x: Array, clip_r: float | None = DEFAULT_CLIP_R) -> Array:
  """Feature clipping before the exponential map: `x * min(1, clip_r / (|x| + 1e-5))`.

  Args:
    x: [..., d] Euclidean vectors.
    clip_r: the clipping radius r (2.3 in Hyp-ViT and HIER); None returns x unchanged.

  Reference: Guo et al., "Clipped Hyperbolic Classifiers Are Super-Hyperbolic Classifiers",
  CVPR 2022.
  """
  if clip_r is None:
    return x
  out, comp = _dtypes(x)
  xf = x.astype(comp)
  fac = jnp.minimum(1.0, clip_r / (_safe_norm(xf) + _CLIP_EPS))
  return (xf * fac).astype(out)


def expmap0(u: Array, *, c: float = DEFAULT_C) -> Array:
  """Exponential map at the origin: `tanh(sqrt(c) |u|) u / (sqrt(c) |u|)`.

  `|u|` is clamped to >= 1e-5 (so `expmap0(0) = 0` with Jacobian ~identity there) and the tanh
  argument to [-15, 15], as in hyptorch. The direction of u is kept; only its norm is squashed
  below 1/sqrt(c). Inverse of `logmap0`.
  """
  _check_c(c)
  out, comp = _dtypes(u)
  uf = u.astype(comp)
  sqrt_c = math.sqrt(c) if isinstance(c, (int, float)) else jnp.sqrt(c)
  un = _clamped_norm(uf)
  return (_tanh(sqrt_c * un) * uf / (sqrt_c * un)).astype(out)


def logmap0(y: Array, *, c: float = DEFAULT_C) -> Array:
  """Logarithmic map at the origin: `artanh(sqrt(c) |y|) y / (sqrt(c) |y|)`, |y| clamped >= 1e-5.

  Inverse of `expmap0` for points of the ball; `|logmap0(y)| = d_c(0, y) / 2`.
  """
  _check_c(c)
  out, comp = _dtypes(y)
  yf = y.astype(comp)
  sqrt_c = math.sqrt(c) if isinstance(c, (int, float)) else jnp.sqrt(c)
  yn = _clamped_norm(yf)
  return (yf / (yn * sqrt_c) * artanh(sqrt_c * yn)).astype(out)


def project(x: Array, *, c: float = DEFAULT_C) -> Array:
  """Pulls points back inside the ball: a norm above `projection_radius(c, x.dtype)` is set to it.

  For float32 and wider the radius is the authors' `(1 - 1e-3) / sqrt(c)`; for bfloat16 and
  float16 the gap is the dtype's machine epsilon when that is larger (see the module docstring).
  The norm is clamped to >= 1e-5 as in hyptorch, so the gradient is finite everywhere.
  """
  _check_c(c)
  out, comp = _dtypes(x)
  xf = x.astype(comp)
  eps = max(_PROJ_EPS, float(jnp.finfo(out).eps))
  sqrt_c = math.sqrt(c) if isinstance(c, (int, float)) else jnp.sqrt(c)
  maxnorm = (1.0 - eps) / sqrt_c
  norm = _clamped_norm(xf)
  return jnp.where(norm > maxnorm, xf / norm * maxnorm, xf).astype(out)


@jax.custom_vjp
def _riemannian_gradient(x: Array, c: Array) -> Array:
  return x


def _riemannian_fwd(x, c):
  return x, (x, c)


def _riemannian_bwd(res, g):
  x, c = res
  _, comp = _dtypes(x)
  scale = jnp.square(1.0 - c.astype(comp) * _sq_norm(x.astype(comp))) / 4.0
  return (g * scale.astype(g.dtype)).astype(g.dtype), jnp.zeros_like(c)


_riemannian_gradient.defvjp(_riemannian_fwd, _riemannian_bwd)


def riemannian_gradient(x: Array, *, c: float = DEFAULT_C) -> Array:
  """Identity whose backward pass turns the Euclidean gradient at x into the Riemannian one.

  Forward: `x`. Backward: `g * (1 - c |x|^2)^2 / 4`, i.e. the gradient divided by the squared
  conformal factor `lambda_x^2 = (2 / (1 - c |x|^2))^2` of the ball metric, so that a plain
  (Euclidean) optimiser takes Riemannian steps. This is hyptorch's `RiemannianGradient`, which
  HIER applies to the embeddings and to its hierarchical proxies (Hyp-ViT does not). No gradient
  flows to `c`.

  The scale is computed in x's compute dtype (at least float32), `c` included: float64 points get
  the float64 scale, float32 and lower-precision points the float32 one.

  Args:
    x: [..., d] points of the ball.
    c: curvature parameter (a Python number or an array).
  """
  _check_c(c)
  _, comp = _dtypes(x)
  return _riemannian_gradient(x, jnp.asarray(c, comp))


def to_poincare(
    x: Array,
    *,
    c: float = DEFAULT_C,
    clip_r: float | None = DEFAULT_CLIP_R,
    riemannian: bool = True,
) -> Array:
  """Maps Euclidean features into the ball: `project(expmap0(clip_features(x)))`.

  This is hyptorch's `ToPoincare` layer without its trainable options (`train_x`, `train_c`).

  Args:
    x: [..., d] Euclidean features (the output of a linear head, or Euclidean proxy parameters).
    c: curvature parameter, 0.1 in Hyp-ViT and HIER.
    clip_r: feature-clipping radius, 2.3 in both; None disables clipping.
    riemannian: apply `riemannian_gradient` to the result (hyptorch's default and HIER's choice
      for its head and proxies; Hyp-ViT's head uses False).

  Returns:
    [..., d] points of the ball, in x's dtype.
  """
  y = project(expmap0(clip_features(x, clip_r), c=c), c=c)
  return riemannian_gradient(y, c=c) if riemannian else y


# ------------------------------------------------------------------------------------------------
# Mobius addition and distances
# ------------------------------------------------------------------------------------------------


def mobius_add(x: Array, y: Array, *, c: float = DEFAULT_C) -> Array:
  """Mobius addition `x (+) y`, broadcast over the leading axes.

      x (+) y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y)
                / (1 + 2c<x,y> + c^2 |x|^2 |y|^2 + 1e-5)

  The `+1e-5` in the denominator is hyptorch's (it makes `0 (+) y` equal to `y / (1 + 1e-5)`).
  Not commutative; `(-x) (+) (x (+) y) = y` up to the 1e-5 term.
  """
  _check_c(c)
  out, comp = _dtypes(x, y)
  xf, yf = x.astype(comp), y.astype(comp)
  x2, y2 = _sq_norm(xf), _sq_norm(yf)
  xy = jnp.sum(xf * yf, axis=-1, keepdims=True)
  num = (1.0 + 2.0 * c * xy + c * y2) * xf + (1.0 - c * x2) * yf
  den = 1.0 + 2.0 * c * xy + c * c * x2 * y2 + _MOBIUS_EPS
  return (num / den).astype(out)


def distance(x: Array, y: Array, *, c: float = DEFAULT_C) -> Array:
  """Geodesic distance `(2 / sqrt(c)) artanh(sqrt(c) |(-x) (+) y|)`, broadcast, last axis reduced.

  Symmetric up to rounding. `distance(0, expmap0(u)) = 2 |u|` (up to the 1e-5 terms). The
  gradient is finite everywhere: at x = y the Mobius sum is 0 and its norm gets gradient 0, and
  near the boundary artanh's clamp bounds it.

  Args:
    x: [..., d] points of the ball.
    y: [..., d] points of the ball (broadcast against x).
    c: curvature parameter.

  Returns:
    [...] distances, in the inputs' result dtype.
  """
  out, comp = _dtypes(x, y)
  sqrt_c = math.sqrt(c) if isinstance(c, (int, float)) else jnp.sqrt(c)
  m = mobius_add(-x.astype(comp), y.astype(comp), c=c)
  return (2.0 / sqrt_c * artanh(sqrt_c * _safe_norm(m, keepdims=False))).astype(out)


def dist0(x: Array, *, c: float = DEFAULT_C) -> Array:
  """Distance to the origin, `(2 / sqrt(c)) artanh(sqrt(c) |x|)`, [..., d] -> [...]."""
  _check_c(c)
  out, comp = _dtypes(x)
  sqrt_c = math.sqrt(c) if isinstance(c, (int, float)) else jnp.sqrt(c)
  return (2.0 / sqrt_c * artanh(sqrt_c * _safe_norm(x.astype(comp), keepdims=False))).astype(out)


def dist_matrix(x: Array, y: Array | None = None, *, c: float = DEFAULT_C) -> Array:
  """All pairwise distances `D[i, j] = distance(x_i, y_j)`, shape [Q, R].

  Equal to hyptorch's `dist_matrix` (the Mobius sum `(-x_i) (+) y_j` of every pair, including the
  1e-5 terms) but computed from inner products, in O(Q R) memory and one matrix product instead
  of a [Q, R, d] tensor. With `n = (-x) (+) y`, `u = y - x`, `b = 1 - c|x|^2`:

      |n| = |u| sqrt(c^2 |u|^2 |x|^2 - 2 c b <x, u> + b^2) / (1 - 2c<x,y> + c^2|x|^2|y|^2 + 1e-5)

  (the numerator of the Mobius sum is `c |u|^2 (-x) + b u`). Like `jaxdml.similarity.euclidean`,
  `|u|^2` comes from `|x|^2 + |y|^2 - 2<x,y>`, so for nearly coincident points the distance has an
  absolute error of order `sqrt(eps) |x|` (~1e-3 in float32); use `distance` on broadcast arrays
  where small distances must be exact. Gradients are finite everywhere (0 for coincident points).

  Args:
    x: [Q, d] points of the ball.
    y: [R, d] points of the ball; None means x itself, and then the diagonal is exactly 0.
    c: curvature parameter.

  Returns:
    [Q, R] distances, in the inputs' result dtype (computed in at least float32).
  """
  _check_c(c)
  same = y is None
  if x.ndim != 2 or (not same and (y.ndim != 2 or y.shape[1] != x.shape[1])):
    raise ValueError(f"dist_matrix takes [Q, d] and [R, d] arrays, got {x.shape} and "
                     f"{None if same else y.shape}.")
  out, comp = _dtypes(x) if same else _dtypes(x, y)
  xf = x.astype(comp)
  yf = xf if same else y.astype(comp)
  sqrt_c = math.sqrt(c) if isinstance(c, (int, float)) else jnp.sqrt(c)
  x2 = _sq_norm(xf)  # [Q, 1]
  y2 = x2.T if same else _sq_norm(yf).T  # [1, R]
  xy = xf @ yf.T  # [Q, R]
  u2 = jnp.maximum(x2 + y2 - 2.0 * xy, 0.0)  # |y - x|^2
  b = 1.0 - c * x2
  bracket = jnp.maximum(c * c * u2 * x2 - 2.0 * c * b * (xy - x2) + jnp.square(b), 0.0)
  den = 1.0 - 2.0 * c * xy + c * c * x2 * y2 + _MOBIUS_EPS
  norm = _safe_sqrt(u2 * bracket) / den
  d = 2.0 / sqrt_c * artanh(sqrt_c * norm)
  if same:
    d = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)
  return d.astype(out)


# ------------------------------------------------------------------------------------------------
# Retrieval with hyperbolic distance
# ------------------------------------------------------------------------------------------------


def hyperbolic_similarity(q: Array, r: Array | None = None, *, c: float = DEFAULT_C) -> Array:
  """Negative hyperbolic distance, a similarity (larger is closer): `-dist_matrix(q, r)`, [Q, R].

  This is how Hyp-ViT and HIER rank the gallery when `c > 0`. `jaxdml.evaluation.knn` takes only
  named dot-product similarities; `hyperbolic_knn` is its counterpart for this one.
  """
  return -dist_matrix(q, r, c=c)


@functools.partial(jax.jit, static_argnames=("k", "c", "exclude_self", "chunk"))
def _hyperbolic_knn(q: Array, r: Array, *, k: int, c: float, exclude_self: bool,
                    chunk: int) -> tuple[Array, Array]:
  nq = q.shape[0]
  n_chunks = -(-nq // chunk)
  qp = jnp.pad(q, ((0, n_chunks * chunk - nq), (0, 0)))
  starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
  cols = jnp.arange(r.shape[0], dtype=jnp.int32)

  def one(args):
    qc, start = args
    s = hyperbolic_similarity(qc, r, c=c)
    if exclude_self:
      rows = start + jnp.arange(chunk, dtype=jnp.int32)
      s = jnp.where(cols[None, :] == rows[:, None], -jnp.inf, s)
    return lax.top_k(s, k)

  vals, idx = lax.map(one, (qp.reshape(n_chunks, chunk, -1), starts))
  return vals.reshape(-1, k)[:nq], idx.reshape(-1, k)[:nq].astype(jnp.int32)


def hyperbolic_knn(
    queries: Array,
    references: Array | None = None,
    k: int = 10,
    *,
    c: float = DEFAULT_C,
    exclude_self: bool | None = None,
    chunk_size: int = 1024,
) -> tuple[Array, Array]:
  """Exact k nearest neighbours by hyperbolic distance (top k of `hyperbolic_similarity`).

  Same contract as `jaxdml.evaluation.knn`: queries are processed `chunk_size` rows at a time
  (memory O(chunk_size x R)), and the result feeds `jaxdml.evaluation.recall_at_k` through
  `labels[indices]`.

  Args:
    queries: [Q, d] points of the ball.
    references: [R, d] points of the ball; None searches the queries among themselves.
    k: neighbours per query, at most R (R - 1 when the query itself is excluded).
    c: curvature parameter.
    exclude_self: leave query i out of its results (assumes query i is reference i). Defaults to
      True when `references` is None, else False.
    chunk_size: queries per step.

  Returns:
    scores: [Q, k] negative distances, decreasing, float32 (float64 for float64 input).
    indices: [Q, k] int32 reference indices.
  """
  _check_c(c)
  same = references is None
  exclude_self = same if exclude_self is None else bool(exclude_self)
  r = queries if same else references
  if queries.ndim != 2 or r.ndim != 2 or queries.shape[1] != r.shape[1]:
    raise ValueError(f"queries and references must be [Q, d] and [R, d], got {queries.shape} "
                     f"and {r.shape}.")
  available = r.shape[0] - (1 if exclude_self else 0)
  if not 1 <= int(k) <= available:
    raise ValueError(f"`k` must be in [1, {available}], got {k}.")
  _, comp = _dtypes(queries, r)
  chunk = max(1, min(int(chunk_size), queries.shape[0]))
  return _hyperbolic_knn(queries.astype(comp), r.astype(comp), k=int(k), c=float(c),
                         exclude_self=exclude_self, chunk=chunk)
