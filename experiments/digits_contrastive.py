"""The built-in config `digits_contrastive` (jaxdml/configs/), at this path too."""

from jaxdml.configs.digits_contrastive import get_config

__all__ = ["get_config"]
