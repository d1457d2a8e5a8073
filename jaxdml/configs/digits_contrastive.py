"""Digit pairs, small CNN, contrastive loss (margins 0 / 1 on normalised Euclidean distance).

    jaxdml train --config digits_contrastive

Reference (PyTorch + pytorch-metric-learning, same protocol): MAP@R 0.953.
"""

from jaxdml.app.config import Config, ObjectiveConfig


def get_config() -> Config:
  return Config(name="digits_contrastive",
                objective=ObjectiveConfig(loss="contrastive",
                                          loss_kwargs={"pos_margin": 0.0, "neg_margin": 1.0}))
