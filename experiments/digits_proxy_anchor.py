"""The built-in config `digits_proxy_anchor` (jaxdml/configs/), at this path too."""

from jaxdml.configs.digits_proxy_anchor import get_config

__all__ = ["get_config"]
