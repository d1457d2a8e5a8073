"""The built-in config `hier_vits16_sop` (jaxdml/configs/), at this path too."""

from jaxdml.configs.hier_vits16_sop import get_config

__all__ = ["get_config"]
