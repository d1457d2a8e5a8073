"""The built-in config `digits_das` (jaxdml/configs/), at this path too."""

from jaxdml.configs.digits_das import get_config

__all__ = ["get_config"]
