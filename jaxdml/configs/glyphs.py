"""Glyphs, small residual CNN, multi-similarity loss: the glyphs benchmark's reference run.

    jaxdml train --config glyphs

The recipe of shared/design/glyphs_benchmark.md: `ResCNN` (GAP + GMP head, 128-d), multi-
similarity (alpha 2, beta 50, base 0.5), AdamW 1e-3 with weight decay 1e-4, batches of 32
classes x 4 images, 8 epochs (1,472 steps: 23,600 training images of 1,475 code points,
184 batches an epoch). The evaluation is leave-one-out on the 1,474 unseen classes, 8 images of
each (11,792 images), per level (code point, decomposition base, script) and their mean.
`benchmarks/glyphs.py` runs the same recipe in PyTorch + pytorch-metric-learning.
"""

from jaxdml.app.config import Config, DataConfig, LoopConfig, ModelConfig, ObjectiveConfig


def get_config() -> Config:
  return Config(
      name="glyphs",
      data=DataConfig(dataset="glyphs", classes_per_batch=32, per_class=4),
      model=ModelConfig(name="res_cnn", embedding_dim=128),
      objective=ObjectiveConfig(loss="multi_similarity",
                                loss_kwargs={"alpha": 2.0, "beta": 50.0, "base": 0.5}),
      loop=LoopConfig(epochs=8))
