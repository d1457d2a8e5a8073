"""Glyphs, Proxy-Anchor + HIER on the Poincare-ball head with HIER's optimiser settings
(`glyphs_methods.hier`, which see).

    jaxdml train --config glyphs_hier
"""

from jaxdml.app.config import Config
from jaxdml.configs import glyphs_methods


def get_config() -> Config:
  return glyphs_methods.hier("hyperbolic", 0.5)
