"""Similarity and distance matrices between query and reference embeddings.

Conventions used across jaxdml:
  * a *similarity* matrix `sim [Q, R]` is larger for closer pairs;
  * a *distance* matrix `dist [Q, R]` is smaller for closer pairs.
Losses say which one they take. `to_distance` converts a similarity into the distance the classic
pair losses are written in.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdml import _checks

Array = jax.Array

_EPS = 1e-12


def l2_normalize(x: Array, axis: int = -1, eps: float = _EPS) -> Array:
  """Scales rows to unit L2 norm; a zero row stays zero (no NaN, finite gradient).

  A row holding NaN or inf becomes NaN (`jnp.maximum` propagates NaN).
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def _refs(q: Array, r: Array | None) -> Array:
  _checks.embeddings(q, "queries")
  if r is None:
    return q
  _checks.embeddings(r, "references")
  if q.shape[1] != r.shape[1]:
    raise ValueError(
        f"queries have dimension {q.shape[1]} but references have dimension {r.shape[1]}.")
  return r


@jax.custom_vjp
def gram(x: Array) -> Array:
  """`x @ x.T` with a one-product backward pass: the cotangent is `(G + G^T) x`.

  Differentiating `x @ x.T` naively gives two matrix products (one per use of x); the Gram
  matrix's symmetry needs only one. Self-similarity (a batch against itself) is the hot path of
  every pair loss, so this saves a third of its matrix-product work.
  """
  return x @ x.T


def _gram_fwd(x):
  return x @ x.T, x


def _gram_bwd(x, g):
  return ((g + g.T) @ x,)


gram.defvjp(_gram_fwd, _gram_bwd)


def _inner(q: Array, r: Array | None) -> Array:
  """q @ r.T, through `gram` when the references are the queries themselves."""
  if r is None:
    return gram(q)
  r = _refs(q, r)
  return q @ r.T


def dot(q: Array, r: Array | None = None) -> Array:
  """Inner products `q @ r.T`, shape [Q, R]."""
  _refs(q, r)
  return _inner(q, r)


def cosine(q: Array, r: Array | None = None) -> Array:
  """Cosine similarity of L2-normalised rows, shape [Q, R], values in [-1, 1]."""
  _refs(q, r)
  return _inner(l2_normalize(q), None if r is None else l2_normalize(r))


def squared_euclidean(q: Array, r: Array | None = None) -> Array:
  """Squared Euclidean distances `|q_i - r_j|^2` (clipped at 0), shape [Q, R].

  With `r=None` the diagonal is exactly 0 (the expansion `|q|^2 + |q|^2 - 2 q.q` can leave a
  rounding residue there, which a square root would magnify).
  """
  _refs(q, r)
  qq = jnp.sum(jnp.square(q), axis=1)[:, None]
  rr = qq.T if r is None else jnp.sum(jnp.square(r), axis=1)[None, :]
  d2 = jnp.maximum(qq + rr - 2.0 * _inner(q, r), 0.0)
  if r is None:
    d2 = jnp.where(jnp.eye(q.shape[0], dtype=bool), 0.0, d2)
  return d2


def neg_squared_euclidean(q: Array, r: Array | None = None) -> Array:
  """Negative squared Euclidean distance, a similarity, shape [Q, R]."""
  return -squared_euclidean(q, r)


def safe_sqrt(x: Array, eps: float = 1e-12) -> Array:
  """sqrt with a finite gradient at 0 (the gradient there is taken as 0).

  Entries at most `eps` give 0 with gradient 0; NaN stays NaN and -inf gives NaN (a comparison
  alone would send them to 0 and hide a NaN embedding behind a finite loss).
  """
  positive = x > eps
  # |x| * 0 is 0 for every finite x and NaN for NaN or +-inf; its gradient is 0 for finite x.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), jnp.abs(x) * 0.0)


def euclidean(q: Array, r: Array | None = None) -> Array:
  """Euclidean distances, shape [Q, R]; gradient 0 (not NaN) for coincident points."""
  return safe_sqrt(squared_euclidean(q, r))


def to_distance(sim: Array, kind: str = "cosine") -> Array:
  """Converts a similarity matrix to a distance matrix.

  Args:
    sim: [Q, R] similarities.
    kind: how `sim` was computed. "cosine": Euclidean distance of the unit vectors,
      `sqrt(2 - 2 sim)`; "neg_squared_euclidean": `sqrt(-sim)`; "negate": `-sim`.
  """
  _checks.one_of(kind, ("cosine", "neg_squared_euclidean", "negate"), "kind")
  if kind == "cosine":
    return safe_sqrt(jnp.maximum(2.0 - 2.0 * sim, 0.0))
  if kind == "neg_squared_euclidean":
    return safe_sqrt(jnp.maximum(-sim, 0.0))
  return -sim


SIMILARITIES: dict[str, Callable[..., Array]] = {
    "cosine": cosine,
    "dot": dot,
    "neg_squared_euclidean": neg_squared_euclidean,
}


def get(name: str) -> Callable[..., Array]:
  """Looks a similarity function up by name ("cosine", "dot", "neg_squared_euclidean")."""
  if name not in SIMILARITIES:
    raise ValueError(f"unknown similarity {name!r}; expected one of {sorted(SIMILARITIES)}.")
  return SIMILARITIES[name]
