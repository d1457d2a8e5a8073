"""Glyphs, multi-similarity + DAS at Table 1's recipe (`glyphs_methods.das`, which see).

    jaxdml train --config glyphs_das
"""

from jaxdml.app.config import Config
from jaxdml.configs import glyphs_methods


def get_config() -> Config:
  return glyphs_methods.das("on")
