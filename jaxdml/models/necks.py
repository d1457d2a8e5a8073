"""Modules that sit between a backbone's last feature map and the pooling ("necks"), by name.

A neck maps a feature map [B, h, w, c] to one of the same shape (GLAM's attention, ...). Every
embedding model of the library takes one as its `neck` attribute and applies it inside its
`features` method, so what a method sees as "the features" (Metrix's feature mixup, ...) is the
neck's output, and the pooling and head follow it unchanged. `ModelConfig.neck` names one of
`NECKS` and `ModelConfig.neck_kwargs` holds its settings (the module's attributes).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.models.glam import GLAM


class Projection(nn.Module):
  """A bias-free 1 x 1 convolution to `features` channels, then ReLU: AML's students map their
  last feature map to the teacher's dimension this way before GeM and L2 (so the descriptor is
  the pooled map itself: `model.embedding_layer=false`).

  Attributes:
    features: output channels (the teacher's descriptor size, e.g. 2048 for ResNet-101 GeM).
    dtype: computation dtype (the kernel is stored in float32).
  """

  features: int = 2048
  dtype: Any = None

  def check_settings(self) -> None:
    """Raises ValueError when `features` is not a positive integer."""
    if isinstance(self.features, bool) or not isinstance(self.features, int) or (
        self.features < 1):
      raise ValueError(f"features must be a positive integer, got {self.features!r}.")

  @nn.compact
  def __call__(self, x):
    self.check_settings()
    y = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                name="conv")(x)
    return nn.relu(y)


#: neck name -> Flax module class (its dataclass fields are the settings)
NECKS: dict[str, type[nn.Module]] = {"glam": GLAM, "projection": Projection}

#: module fields that are not settings (a neck computes in the model's `compute_dtype`)
_INTERNAL = ("parent", "name", "dtype")


def neck_settings(name: str) -> dict[str, Any]:
  """The settings of neck `name` with their defaults."""
  cls = _neck_class(name)
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.name not in _INTERNAL and f.init}


def neck_from_name(name: str, kwargs: Mapping[str, Any] | None = None, **overrides: Any
                   ) -> nn.Module:
  """The neck module `name` with its settings `kwargs` (unknown keys are an error naming them).

  Lists are turned into tuples (settings read from JSON or the command line), so that the module
  is hashable. `overrides` (e.g. `dtype`) are set after the check and need not be settings a
  user may give.

  >>> neck_from_name("glam", {"global_spatial": False, "dilations": [1, 2]}).dilations
  (1, 2)
  """
  cls = _neck_class(name)
  kwargs = dict(kwargs or {})
  allowed = neck_settings(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    hint = ""
    for k in unknown:
      close = difflib.get_close_matches(k, list(allowed), n=1)
      hint += f" (did you mean {close[0]!r} for {k!r}?)" if close else ""
    raise ValueError(f"model.neck_kwargs: unknown setting(s) {unknown} of the {name!r} neck"
                     f"{hint}; its settings: {sorted(allowed)}.")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  module = cls(**kwargs, **overrides)
  if hasattr(module, "check_settings"):
    try:
      module.check_settings()
    except ValueError as e:
      raise ValueError(f"model.neck_kwargs of the {name!r} neck: {e}") from None
  return module


def _neck_class(name: str) -> type[nn.Module]:
  if name not in NECKS:
    close = difflib.get_close_matches(str(name), list(NECKS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown neck {name!r}.{hint} Necks: {sorted(NECKS)}.")
  return NECKS[name]
