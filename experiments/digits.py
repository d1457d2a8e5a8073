"""The built-in config `digits` (jaxdml/configs/), at this path too."""

from jaxdml.configs.digits import get_config

__all__ = ["get_config"]
