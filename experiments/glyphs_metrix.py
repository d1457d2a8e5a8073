"""The built-in config `glyphs_metrix` (jaxdml/configs/), at this path too."""

from jaxdml.configs.glyphs_metrix import get_config

__all__ = ["get_config"]
