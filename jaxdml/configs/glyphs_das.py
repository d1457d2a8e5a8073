"""Glyphs, multi-similarity + DAS at Table 1's recipe (`recipes.glyph_das`, which see).

    jaxdml train --config glyphs_das
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.glyph_das("on")
