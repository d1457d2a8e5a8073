"""The built-in config `digits_metrix` (jaxdml/configs/), at this path too."""

from jaxdml.configs.digits_metrix import get_config

__all__ = ["get_config"]
