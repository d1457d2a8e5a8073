"""The built-in config `hier_resnet50_cars` (jaxdml/configs/), at this path too."""

from jaxdml.configs.hier_resnet50_cars import get_config

__all__ = ["get_config"]
