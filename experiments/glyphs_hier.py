"""The built-in config `glyphs_hier` (jaxdml/configs/), at this path too."""

from jaxdml.configs.glyphs_hier import get_config

__all__ = ["get_config"]
