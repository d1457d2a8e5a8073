"""The built-in config `glyphs` (jaxdml/configs/), at this path too."""

from jaxdml.configs.glyphs import get_config

__all__ = ["get_config"]
