"""Metric-learning losses as pure functions.

Each loss comes in two forms:
  * a matrix form over the `(sim or dist, target, mask)` primitive, `*_from_sim` / `*_from_dist`,
    which serves a batch against itself, queries against a memory bank, a student against a
    teacher, or real against synthetic embeddings alike;
  * a convenience wrapper over `(embeddings, labels)` named after what it computes
    (`multi_similarity_loss`, `proxy_anchor_loss`, ...).
"""

from jaxdml.losses._generic import (
    avg_nonzero,
    generic_loss,
    masked_logsumexp,
    softmax_generic_loss,
)
from jaxdml.losses._pair import (
    circle_from_sim,
    circle_loss,
    contrastive_from_dist,
    contrastive_loss,
    generalized_lifted_structure_from_dist,
    lifted_structure_from_dist,
    lifted_structure_loss,
    margin_from_dist,
    margin_loss,
    multi_similarity_from_sim,
    multi_similarity_loss,
    n_pairs_loss,
    ntxent_from_sim,
    ntxent_loss,
    supcon_from_sim,
    supcon_loss,
    triplet_margin_from_dist,
    triplet_margin_loss,
)

__all__ = [
    "avg_nonzero",
    "generic_loss",
    "masked_logsumexp",
    "softmax_generic_loss",
    "circle_from_sim",
    "circle_loss",
    "contrastive_from_dist",
    "contrastive_loss",
    "generalized_lifted_structure_from_dist",
    "lifted_structure_from_dist",
    "lifted_structure_loss",
    "margin_from_dist",
    "margin_loss",
    "multi_similarity_from_sim",
    "multi_similarity_loss",
    "n_pairs_loss",
    "ntxent_from_sim",
    "ntxent_loss",
    "supcon_from_sim",
    "supcon_loss",
    "triplet_margin_from_dist",
    "triplet_margin_loss",
]
