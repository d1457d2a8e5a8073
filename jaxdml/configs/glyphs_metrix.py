"""Glyphs, multi-similarity + Metrix feature mixup at the official recipe
(`glyphs_methods.metrix`, which see).

    jaxdml train --config glyphs_metrix
"""

from jaxdml.app.config import Config
from jaxdml.configs import glyphs_methods


def get_config() -> Config:
  return glyphs_methods.metrix("feature")
