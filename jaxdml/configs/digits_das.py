"""Digit pairs, small CNN, multi-similarity loss with Densely-Anchored Sampling (DAS).

    jaxdml train --config digits_das

DAS at the authors' argparse defaults (K = 4 scaled dimensions per class, scale factors in
[0.5, 2], shift scale 0.01, a bank of 10 intra-class differences per class, 3 generated
embeddings per real one); its memory is loss state in the train state and is checkpointed with
it. `benchmarks/methods.py` compares it with plain multi-similarity over seeds.
"""

from jaxdml.app.config import Config, ObjectiveConfig
from jaxdml.methods import das


def get_config() -> Config:
  return Config(name="digits_das", objective=ObjectiveConfig(
      loss="multi_similarity", methods={"das": das.Settings()}))
