"""The built-in config `ms_bninception_cub` (jaxdml/configs/), at this path too."""

from jaxdml.configs.ms_bninception_cub import get_config

__all__ = ["get_config"]
