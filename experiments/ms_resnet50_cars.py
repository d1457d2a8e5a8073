"""The built-in config `ms_resnet50_cars` (jaxdml/configs/), at this path too."""

from jaxdml.configs.ms_resnet50_cars import get_config

__all__ = ["get_config"]
