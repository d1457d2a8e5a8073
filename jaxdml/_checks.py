"""Argument validation at the API boundary.

Every check here looks only at shapes and dtypes, so it runs at trace time: under `jax.jit` a bad
argument raises a clear Python error before anything is compiled. Values (NaN, label ranges) cannot
be checked inside jit; functions that need that say so and offer an eager check.

Hyperparameters (`number`) are the exception: a Python number, or any concrete array, is checked
when the function is called or traced; a traced value (a learned margin, a scale under `jax.jit`)
is left alone, so learnable hyperparameters still work.
"""

from __future__ import annotations

import math
from typing import Any

import jax
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


def is_traced(x: Any) -> bool:
  """True for a value being traced by jit/grad/vmap (its contents are unknown)."""
  return isinstance(x, jax.core.Tracer)


def _bound(value: float) -> str:
  if math.isclose(value, math.pi):
    return "pi"
  return f"{value:g}"


def number(value: Any, name: str, *, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None) -> None:
  """Checks a hyperparameter: finite, and within the given bounds, unless it is traced.

  `value` may be a Python or NumPy number or a concrete array (every entry is checked); a jax
  tracer passes unchecked. Raises TypeError for a bool or a non-numeric value, ValueError naming
  `name` for NaN, inf or a value out of bounds.
  """
  if is_traced(value):
    return
  if isinstance(value, bool) or isinstance(value, np.ndarray) and value.dtype == np.bool_:
    raise TypeError(f"`{name}` must be a real number, got {value!r}.")
  try:
    arr = np.asarray(value)
  except Exception as err:  # noqa: BLE001 - any object that is not array-like
    raise TypeError(f"`{name}` must be a real number, got {value!r}.") from err
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise TypeError(f"`{name}` must be a real number, got {value!r}.")
  shown = value if arr.ndim == 0 else arr
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"`{name}` must be finite, got {shown}.")
  for bound, ok, op in ((gt, lambda b: arr > b, ">"), (ge, lambda b: arr >= b, ">="),
                        (lt, lambda b: arr < b, "<"), (le, lambda b: arr <= b, "<=")):
    if bound is not None and not np.all(ok(bound)):
      raise ValueError(f"`{name}` must be {op} {_bound(bound)}, got {shown}.")


def all_finite(x: Any, name: str, why: str = "") -> None:
  """Raises ValueError if a concrete array holds NaN or inf; a traced one passes unchecked.

  The test runs where the array lives (only a bool comes back to the host); the rows at fault
  are located only when there are some.
  """
  if is_traced(x):
    return
  if bool(jnp.all(jnp.isfinite(jnp.asarray(x)))):
    return
  finite = np.isfinite(np.asarray(x))
  rows = ""
  if finite.ndim:
    bad = np.nonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))[0]
    rows = f" in {len(bad)} row(s) (the first: row {int(bad[0])})"
  hint = f"; {why}" if why else ""
  raise ValueError(f"`{name}` holds NaN or inf values{rows}{hint}.")
