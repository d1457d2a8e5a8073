"""Digit pairs, small CNN, Proxy-Anchor loss (proxies at lr 1e-1).

    jaxdml train --config experiments/digits_proxy_anchor.py

Reference (PyTorch + pytorch-metric-learning, same protocol): MAP@R 0.937.
"""

from jaxdml.train import TrainConfig


def get_config() -> TrainConfig:
  return TrainConfig(loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0},
                     loss_param_lr=1e-1)
