"""Digit pairs, small CNN, Proxy-Anchor loss (proxies at 100x the learning rate: 1e-1).

    jaxdml train --config digits_proxy_anchor

Reference (PyTorch + pytorch-metric-learning, same protocol): MAP@R 0.937.
"""

from jaxdml.app.config import Config, ObjectiveConfig, OptimConfig


def get_config() -> Config:
  return Config(name="digits_proxy_anchor",
                objective=ObjectiveConfig(loss="proxy_anchor",
                                          loss_kwargs={"margin": 0.1, "alpha": 32.0}),
                optim=OptimConfig(loss_lr_mult=100.0))
