"""The built-in config `digits_hier` (jaxdml/configs/), at this path too."""

from jaxdml.configs.digits_hier import get_config

__all__ = ["get_config"]
