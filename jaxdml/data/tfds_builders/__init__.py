"""TFDS builders for benchmarks that TFDS does not ship (manual downloads).

Importing this package registers "deepfashion_inshop" and "dyml" (configs vehicle, animal,
product) with TFDS. Preparing them needs no TensorFlow.
"""

from __future__ import annotations

from jaxdml.data.tfds_builders.dyml import Dyml
from jaxdml.data.tfds_builders.inshop import DeepfashionInshop

__all__ = ["DeepfashionInshop", "Dyml"]
