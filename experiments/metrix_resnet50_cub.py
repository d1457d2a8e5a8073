"""The built-in config `metrix_resnet50_cub` (jaxdml/configs/), at this path too."""

from jaxdml.configs.metrix_resnet50_cub import get_config

__all__ = ["get_config"]
