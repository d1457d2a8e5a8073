"""Argument validation at the API boundary.

Every check here looks only at shapes and dtypes, so it runs at trace time: under `jax.jit` a bad
argument raises a clear Python error before anything is compiled. Values (NaN, label ranges) cannot
be checked inside jit; functions that need that say so and offer an eager check.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def _dtype(x: Any) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def check_rank(x: Any, rank: int, name: str, what: str = "") -> None:
  shape = _shape(x)
  if len(shape) != rank:
    hint = f" ({what})" if what else ""
    raise ValueError(f"`{name}` must have rank {rank}{hint}, got shape {shape}.")


def check_floating(x: Any, name: str) -> None:
  if not jnp.issubdtype(_dtype(x), jnp.floating):
    raise TypeError(f"`{name}` must be a floating-point array, got dtype {_dtype(x)}.")


def check_integer(x: Any, name: str) -> None:
  dt = _dtype(x)
  if not (jnp.issubdtype(dt, jnp.integer) or jnp.issubdtype(dt, jnp.bool_)):
    raise TypeError(
        f"`{name}` must hold integer class labels, got dtype {dt}. "
        "Cast with labels.astype(jnp.int32); soft labels go through a `target` matrix instead.")


def embeddings(x: Any, name: str = "embeddings") -> None:
  check_rank(x, 2, name, "[batch, dim]")
  check_floating(x, name)


def labels(y: Any, n: int, name: str = "labels") -> None:
  check_rank(y, 1, name, "[batch]")
  check_integer(y, name)
  if _shape(y)[0] != n:
    raise ValueError(f"`{name}` has {_shape(y)[0]} entries but the embeddings have {n} rows.")


def same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
  if _shape(a) != _shape(b):
    raise ValueError(
        f"`{name_a}` and `{name_b}` must have the same shape, got {_shape(a)} and {_shape(b)}.")


def matrix_triple(sim: Any, target: Any, mask: Any, sim_name: str = "sim") -> None:
  """Validates the (sim, target, mask) primitive: three [Q, R] arrays."""
  check_rank(sim, 2, sim_name, "[queries, references]")
  check_floating(sim, sim_name)
  same_shape(sim, target, sim_name, "target")
  if mask is not None:
    same_shape(sim, mask, sim_name, "mask")


def positive(value: float, name: str) -> None:
  if not value > 0:
    raise ValueError(f"`{name}` must be > 0, got {value}.")


def one_of(value: Any, options: tuple, name: str) -> None:
  if value not in options:
    raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")


def positive_int(value: Any, name: str) -> None:
  """Raises ValueError unless `value` is a Python int >= 1 (a bool is not)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}.")
