"""The built-in config `glyphs_das` (jaxdml/configs/), at this path too."""

from jaxdml.configs.glyphs_das import get_config

__all__ = ["get_config"]
