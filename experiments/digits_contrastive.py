"""Digit pairs, small CNN, contrastive loss (margins 0 / 1 on normalised Euclidean distance).

    jaxdml train --config experiments/digits_contrastive.py

Reference (PyTorch + pytorch-metric-learning, same protocol): MAP@R 0.953.
"""

from jaxdml.train import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(name="digits_contrastive", loss="contrastive",
                     loss_kwargs={"pos_margin": 0.0, "neg_margin": 1.0})
