"""The built-in config `proxy_anchor_resnet50_cub` (jaxdml/configs/), at this path too."""

from jaxdml.configs.proxy_anchor_resnet50_cub import get_config

__all__ = ["get_config"]
