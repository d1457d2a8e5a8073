"""Evaluation of embeddings: exact k-NN search, retrieval metrics and clustering metrics.

The metrics follow pytorch-metric-learning's `AccuracyCalculator` and "A Metric Learning Reality
Check" (Musgrave et al., ECCV 2020). Typical use on a test set (leave-one-out retrieval):

    from jaxdml import evaluation
    metrics = evaluation.retrieval_metrics(embeddings, labels)  # "recall@1", "map@r", ...
    metrics |= evaluation.clustering_metrics(embeddings, labels)  # "nmi", "f1"

`sharded_knn` is `knn` with the references split across the devices of a mesh;
`retrieval_metrics(..., mesh=mesh)` uses it.

Embeddings in the Poincare ball (HIER, Hyp-ViT) are scored by hyperbolic distance with
`retrieval_metrics(..., similarity="poincare", c=...)`.

This layer depends only on `jaxdml.similarity`, `jaxdml.geometry`, JAX and NumPy.
"""

from jaxdml.evaluation._clustering import clustering_f1, clustering_metrics, kmeans, nmi
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

__all__ = [
    "LoneQueryWarning",
    "clustering_f1",
    "clustering_metrics",
    "default_mesh",
    "kmeans",
    "knn",
    "map_at_r",
    "mean_average_precision",
    "nmi",
    "num_relevant",
    "precision_at_1",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
    "sharded_knn",
]
