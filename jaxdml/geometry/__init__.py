"""Hyperbolic geometry (the Poincare ball) as pure array functions; depends on JAX only.

    from jaxdml.geometry import poincare
    z = poincare.to_poincare(head_output, c=0.1, clip_r=2.3)   # Euclidean features -> ball
    d = poincare.dist_matrix(z)                                # [B, B] geodesic distances
"""

from jaxdml.geometry import poincare
from jaxdml.geometry.poincare import (
    artanh,
    ball_radius,
    clip_features,
    dist0,
    dist_matrix,
    distance,
    expmap0,
    hyperbolic_knn,
    hyperbolic_similarity,
    logmap0,
    mobius_add,
    project,
    projection_radius,
    riemannian_gradient,
    to_poincare,
)

__all__ = [
    "poincare",
    "artanh",
    "ball_radius",
    "clip_features",
    "dist0",
    "dist_matrix",
    "distance",
    "expmap0",
    "hyperbolic_knn",
    "hyperbolic_similarity",
    "logmap0",
    "mobius_add",
    "project",
    "projection_radius",
    "riemannian_gradient",
    "to_poincare",
]
