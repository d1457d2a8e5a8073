"""Methods that wrap an objective (layer 3): each module holds its own typed `Settings` (a frozen
dataclass with the authors' defaults and its own validation), pure functions over its own
parameters or state, and `wrap(inner, settings, ...) -> jaxdml.objectives.Objective`.

  - `das`: Densely-Anchored Sampling (Liu et al., ECCV 2022): memory, update, generation.
  - `metrix`: mixup for metric learning (Venkataramanan et al., ICLR 2022) and its positivity
    analysis.
  - `hier`: hierarchical proxies in the Poincare ball (Kim et al., CVPR 2023) and the
    hyperbolic-ViT pairwise loss (Ermolov et al., CVPR 2022).
  - `aml`: asymmetric metric learning (Budnik & Avrithis, CVPR 2021): a student trained in a
    frozen teacher's space.

`BY_NAME` is the one registry configs read (a method's config section is named by its key);
each entry has `Settings` and `build(inner, settings, setup: objectives.Setup)`. A method used
from Python alone needs no entry.
"""

from types import MappingProxyType

from jaxdml.methods import aml, das, hier, metrix

BY_NAME = MappingProxyType({"das": das, "metrix": metrix, "hier": hier, "aml": aml})

__all__ = ["aml", "das", "hier", "metrix", "BY_NAME"]
