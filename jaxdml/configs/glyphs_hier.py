"""Glyphs, Proxy-Anchor + HIER on the Poincare-ball head with HIER's optimiser settings
(`recipes.glyph_hier`, which see).

    jaxdml train --config glyphs_hier
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.glyph_hier("hyperbolic", 0.5)
