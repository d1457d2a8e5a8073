"""The built-in config `ms_bninception_sop` (jaxdml/configs/), at this path too."""

from jaxdml.configs.ms_bninception_sop import get_config

__all__ = ["get_config"]
