"""Digit pairs, small CNN with HIER's hyperbolic head, Proxy-Anchor + HIER.

    jaxdml train --config digits_hier

The head is HIER's (layer norm without affine, orthogonal linear, `to_poincare` with c = 0.1 and
clipping at 2.3); retrieval is scored by hyperbolic distance. The objective is
`L_PA + 0.5 L_HIER` with 64 hierarchical proxies (the paper uses 512 for 100-11,000 classes; the
benchmark has 50 training classes) at 50x the learning rate, Proxy-Anchor's class proxies at
100x (this benchmark's Proxy-Anchor setting; HIER's image recipes use 1e4 with a 1e-4 base rate),
and gradients clipped by value at 10 as in HIER's recipe. The label hierarchy of the benchmark
(first digit, first digit < 5) is never shown to the model; `benchmarks/methods.py` measures
how far the learned proxies recover it.
"""

from jaxdml.app.config import Config, ModelConfig, ObjectiveConfig, OptimConfig
from jaxdml.methods import hier


def get_config() -> Config:
  return Config(
      name="digits_hier", model=ModelConfig(head="hyperbolic"),
      objective=ObjectiveConfig(loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0},
                                methods={"hier": hier.Settings(num_proxies=64)}),
      optim=OptimConfig(loss_lr_mult=100.0, clip_value=10.0))
