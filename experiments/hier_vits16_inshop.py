"""The built-in config `hier_vits16_inshop` (jaxdml/configs/), at this path too."""

from jaxdml.configs.hier_vits16_inshop import get_config

__all__ = ["get_config"]
