"""Glyphs, multi-similarity + Metrix feature mixup at the official recipe
(`recipes.glyph_metrix`, which see).

    jaxdml train --config glyphs_metrix
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.glyph_metrix("feature")
