"""Evaluation of embeddings: exact k-NN search, retrieval metrics and clustering metrics.

The metrics follow pytorch-metric-learning's `AccuracyCalculator` and "A Metric Learning Reality
Check" (Musgrave et al., ECCV 2020). Typical use on a test set (leave-one-out retrieval):

    from jaxdml import evaluation
    metrics = evaluation.retrieval_metrics(embeddings, labels)  # "recall@1", "map@r", ...
    metrics |= evaluation.clustering_metrics(embeddings, labels)  # "nmi", "f1"

`sharded_knn` is `knn` with the references split across the devices of a mesh;
`retrieval_metrics(..., mesh=mesh)` uses it.

Landmark retrieval (Revisited Oxford and Paris, optionally with a million distractors) is scored
by `landmark_metrics` with the Easy / Medium / Hard protocols of the published evaluation code;
`learn_whitening` / `apply_whitening` give the learned whitening (Lw) such descriptors use.

Embeddings in the Poincare ball (HIER, Hyp-ViT) are scored by hyperbolic distance with
`retrieval_metrics(..., similarity="poincare", c=...)`.

This layer depends only on `jaxdml.similarity`, `jaxdml.geometry`, JAX and NumPy.
"""

from jaxdml.evaluation._clustering import clustering_f1, clustering_metrics, kmeans, nmi
from jaxdml.evaluation._landmarks import (
    PROTOCOLS,
    LandmarkGroundTruth,
    item_ranks,
    landmark_metrics,
    ranks_in_ranking,
    remove_ignored,
    revisited_map,
    trapezoid_ap,
)
from jaxdml.evaluation._metrics import (
    LoneQueryWarning,
    map_at_r,
    mean_average_precision,
    num_relevant,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)
from jaxdml.evaluation._search import knn
from jaxdml.evaluation._sharded import default_mesh, sharded_knn
from jaxdml.evaluation._whitening import (
    Whitening,
    apply_whitening,
    learn_pca_whitening,
    learn_whitening,
)

__all__ = [
    "PROTOCOLS",
    "LandmarkGroundTruth",
    "LoneQueryWarning",
    "Whitening",
    "apply_whitening",
    "clustering_f1",
    "clustering_metrics",
    "default_mesh",
    "item_ranks",
    "kmeans",
    "knn",
    "landmark_metrics",
    "learn_pca_whitening",
    "learn_whitening",
    "map_at_r",
    "mean_average_precision",
    "nmi",
    "num_relevant",
    "precision_at_1",
    "r_precision",
    "ranks_in_ranking",
    "recall_at_k",
    "remove_ignored",
    "retrieval_metrics",
    "revisited_map",
    "sharded_knn",
    "trapezoid_ap",
]
