"""The built-in config `das_resnet50_cars` (jaxdml/configs/), at this path too."""

from jaxdml.configs.das_resnet50_cars import get_config

__all__ = ["get_config"]
