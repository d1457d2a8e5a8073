"""The built-in config `proxy_anchor_bninception_inshop` (jaxdml/configs/), at this path too."""

from jaxdml.configs.proxy_anchor_bninception_inshop import get_config

__all__ = ["get_config"]
