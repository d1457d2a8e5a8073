"""Flax networks. Modules hold only networks; losses and state live elsewhere."""

from jaxdml.models.cnn import SmallCNN, conv2d_same

__all__ = ["SmallCNN", "conv2d_same"]
