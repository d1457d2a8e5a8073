"""Digit pairs, small CNN, multi-similarity loss with Metrix feature mixup.

    jaxdml train --config digits_metrix

The small CNN's last feature map (after max-pooling) is mixed, as Metrix mixes ResNet-50's
layer4 output, with the official code's defaults: lambda ~ Beta(2, 2), w = 0.4, a coin flip per
step between positive-negative and anchor-negative pairs, each anchor's first positive mixed
with every negative. `--set 'metrix={"location": "input"}'` mixes images, `"embedding"`
embeddings.
"""

from jaxdml.app.config import Config, ObjectiveConfig
from jaxdml.methods import metrix


def get_config() -> Config:
  return Config(name="digits_metrix", objective=ObjectiveConfig(
      loss="multi_similarity", methods={"metrix": metrix.Settings(location="feature")}))
