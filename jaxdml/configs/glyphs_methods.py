"""The glyphs runs of DAS, Metrix and HIER at their published settings, with their baselines
and the controls that isolate each method's own idea (`benchmarks/methods.py` runs them all).

Every run keeps the glyphs recipe's network, data and budget (`glyphs.get_config()`: `ResCNN`,
8 epochs of 128 images, 1,472 steps, AdamW at 1e-3): only the objective, the batches and, for
HIER, the head and the optimiser's published settings change. The glyphs network is trained
from scratch, so its base learning rate is the recipe's 1e-3, not the 1e-4 / 1e-5 at which the
papers fine-tune ImageNet backbones; where a paper sets a multiplier for a parameter group, the
multiplier below keeps that group's absolute rate at the paper's (written at each builder).

  - `das(method)`: DAS Table 1's multi-similarity run (`das.full_recipe("table1", "cub200")`):
    MS alpha 2, beta 40, base 0.5 with its pair miner (epsilon 0.1), batches of 64 classes x 2
    images, DAS with K 8 and the table's other settings. method "none" is the baseline (the
    same loss, miner and batches), "off" the control whose generated embeddings are exact
    copies of the real ones (the same batch size and loss; only the generation differs).
  - `metrix(location)`: Metrix's official multi-similarity run (`metrix.recipe("cub")`): MS
    alpha 17.97, beta 75.66, base 0.77 with its miner (epsilon 0.39) on plain random batches of
    100 (as on CUB-200 / Cars-196); location None is the baseline, "input", "feature" or
    "embedding" the mixup's location. On glyphs a random batch of 100 holds a positive for an
    anchor with probability 99 x 15 / 23,599 ~ 6% (about 0.98 expected positives on CUB-200's
    5,864 training images of 100 classes): most anchors have no positive, the situation for
    which Metrix's anchor-negative mixing was written.
  - `hier(head, weight)`: Proxy-Anchor (margin 0.1, alpha 32) on the linear or the Poincare-ball
    head, with HIER's loss at `weight` (lambda2; None: no HIER). The optimiser is HIER's
    (hier/train.py, hier/utils.py): AdamW with eps 1e-4 and weight decay 1e-2 on every group,
    the class proxies at 1e3 x and the 512 hierarchical proxies at 5 x the base rate, which
    are the absolute rates of the official CUB run (1e4 x and 50 x its 1e-4: 1.0 and 5e-3),
    gradients clipped by value at 10. The baselines (no HIER) run with the same optimiser.
"""

from __future__ import annotations

import dataclasses

from jaxdml.app.config import Config, ObjectiveConfig
from jaxdml.configs import glyphs
from jaxdml.methods import das as das_lib
from jaxdml.methods import hier as hier_lib
from jaxdml.methods import metrix as metrix_lib

DAS_METHODS = ("none", "on", "off")
METRIX_LOCATIONS = (None, "input", "feature", "embedding")
HIER_HEADS = ("linear", "hyperbolic")
#: HIER's hierarchical proxies (the paper's 512; glyphs has 1,475 training classes)
HIER_PROXIES = 512


def _replace(config: Config, name: str, **sections) -> Config:
  return dataclasses.replace(config, name=name, **sections)


def das(method: str = "on") -> Config:
  """MS at DAS's Table 1 recipe: "none" (baseline), "on" (+ DAS) or "off" (generation off)."""
  if method not in DAS_METHODS:
    raise ValueError(f"method must be one of {DAS_METHODS}, got {method!r}.")
  base = glyphs.get_config()
  r = das_lib.full_recipe("table1", "cub200")
  methods = {} if method == "none" else {
      "das": dataclasses.replace(r.settings, generation=method)}
  objective = ObjectiveConfig(loss=r.loss, loss_kwargs=dict(r.loss_kwargs), miner=r.miner,
                              miner_kwargs=dict(r.miner_kwargs), methods=methods)
  data = dataclasses.replace(base.data, classes_per_batch=128 // r.per_class,
                             per_class=r.per_class)
  return _replace(base, f"glyphs_das_{method}", objective=objective, data=data)


def metrix(location: str | None = "feature") -> Config:
  """MS at Metrix's official recipe, without (None) or with mixup at `location`."""
  if location not in METRIX_LOCATIONS:
    raise ValueError(f"location must be one of {METRIX_LOCATIONS}, got {location!r}.")
  base = glyphs.get_config()
  r = metrix_lib.recipe("cub", "multisimilarity", "feature")
  methods = {} if location is None else {
      "metrix": dataclasses.replace(r.settings, location=location)}
  objective = ObjectiveConfig(loss=r.loss, loss_kwargs=dict(r.loss_kwargs), miner=r.miner,
                              miner_kwargs=dict(r.miner_kwargs), methods=methods)
  data = dataclasses.replace(base.data, sampler="random", batch_size=r.batch_size)
  return _replace(base, f"glyphs_metrix_{location or 'none'}", objective=objective, data=data)


def hier(head: str = "hyperbolic", weight: float | None = 0.5) -> Config:
  """Proxy-Anchor on the `head`, plus HIER's loss at `weight` (None: without HIER)."""
  if head not in HIER_HEADS:
    raise ValueError(f"head must be one of {HIER_HEADS}, got {head!r}.")
  if weight is not None and head != "hyperbolic":
    raise ValueError("HIER's loss lives in the Poincare ball: use head='hyperbolic'.")
  base = glyphs.get_config()
  methods = {} if weight is None else {"hier": hier_lib.Settings(
      num_proxies=HIER_PROXIES, lambda2=weight, lr_mult=5.0, weight_decay=1e-2)}
  objective = ObjectiveConfig(loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0},
                              methods=methods)
  model = dataclasses.replace(base.model, head=head)
  optim = dataclasses.replace(base.optim, weight_decay=1e-2, loss_weight_decay=None,
                              loss_lr_mult=1e3, eps=1e-4, clip_value=10.0)
  name = f"glyphs_pa_{head}" + ("" if weight is None else f"_hier_{weight:g}")
  return _replace(base, name, objective=objective, model=model, optim=optim)
