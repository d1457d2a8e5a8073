"""Methods that wrap or feed a loss (layer 3): each is pure functions over its own parameters or
state, built on `jaxdml.similarity`, `jaxdml.geometry` and `jaxdml.losses`.

  - `das`: Densely-Anchored Sampling (Liu et al., ECCV 2022): state, update, generation.
  - `metrix`: mixup for metric learning (Venkataramanan et al., ICLR 2022) and its positivity
    analysis.
  - `hier`: hierarchical proxies in the Poincare ball (Kim et al., CVPR 2023) and the
    hyperbolic-ViT pairwise loss (Ermolov et al., CVPR 2022).
"""

from jaxdml.methods import das, hier, metrix  # noqa: F401  (the modules themselves)
from jaxdml.methods.das import (  # noqa: F401  (re-exports)
    DASState,
    das_apply,
    das_combine,
    das_generate,
    das_init,
    das_loss,
    das_mask,
    das_pairs,
    das_recipe,
    das_update,
)
from jaxdml.methods.hier import (  # noqa: F401  (re-exports)
    combine_losses,
    hier_loss,
    hier_loss_and_aux,
    hier_lr_multipliers,
    hier_proxies_in_ball,
    hier_triplet_loss,
    hyp_pairwise_ce_loss,
    init_hier_proxies,
    lowest_common_ancestors,
    reciprocal_relevance,
    reciprocal_triplets,
    select_lca,
    with_hier,
)
from jaxdml.methods.metrix import MixPairs, metrix_loss, positivity_curve  # noqa: F401
