"""Turns a loss name, miner name and plain keyword values into a training objective.

An objective is a pair of pure functions:
  init(key) -> loss_params     (proxies, learnable margins; {} for pair losses)
  apply(loss_params, embeddings, labels, key) -> scalar loss
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdml import losses, miners
from jaxdml.losses._inputs import dist_inputs, sim_inputs

Array = jax.Array

# pair losses: name -> (wrapper, what the miner reads: "sim", "dist", or None = forms its own pairs)
PAIR_LOSSES: dict[str, tuple[Callable[..., Array], str]] = {
    "contrastive": (losses.contrastive_loss, "dist"),
    "triplet": (losses.triplet_margin_loss, "dist"),
    "multi_similarity": (losses.multi_similarity_loss, "sim"),
    "margin": (losses.margin_loss, "dist"),
    "lifted_structure": (losses.lifted_structure_loss, "dist"),
    "circle": (losses.circle_loss, "sim"),
    "supcon": (losses.supcon_loss, "sim"),
    "ntxent": (losses.ntxent_loss, "sim"),
    "n_pairs": (losses.n_pairs_loss, None),
}

# proxy losses: name -> (wrapper, `init_proxies` method)
PROXY_LOSSES: dict[str, tuple[Callable[..., Array], str]] = {
    "proxy_anchor": (losses.proxy_anchor_loss, "proxy_anchor"),
    "proxy_nca": (losses.proxy_nca_loss, "normal"),
    "normalized_softmax": (losses.normalized_softmax_loss, "normal"),
    "arcface": (losses.arcface_loss, "normal"),
    "cosface": (losses.cosface_loss, "normal"),
    "soft_triple": (losses.soft_triple_loss, "soft_triple"),
}

ALIASES = {"ms": "multi_similarity", "pa": "proxy_anchor", "proxynca": "proxy_nca"}


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  init: Callable[[Array], Any]
  apply: Callable[[Any, Array, Array, Array], Array]
  has_params: bool


def names() -> list[str]:
  return sorted(PAIR_LOSSES) + sorted(PROXY_LOSSES)


def make_objective(name: str, *, num_classes: int, dim: int, loss_kwargs: dict | None = None,
                   miner: str | None = None, miner_kwargs: dict | None = None) -> Objective:
  """Builds the objective for loss `name` (see `names()`), optionally with a miner."""
  name = ALIASES.get(name, name)
  kw = dict(loss_kwargs or {})
  mkw = dict(miner_kwargs or {})
  if name in PROXY_LOSSES:
    if miner:
      raise ValueError(f"miner {miner!r} does not apply to the proxy loss {name!r}.")
    fn, method = PROXY_LOSSES[name]
    init_kw = {}
    if name == "soft_triple":
      init_kw["centers_per_class"] = kw.pop("centers_per_class", 10)

    def init(key):
      return {"proxies": losses.init_proxies(key, num_classes, dim, method=method, **init_kw)}

    def apply(params, z, y, key):
      del key
      return fn(z, y, params["proxies"], **kw)

    return Objective(name, init, apply, True)

  if name not in PAIR_LOSSES:
    raise ValueError(f"unknown loss {name!r}; expected one of {names()} or {sorted(ALIASES)}.")
  fn, kind = PAIR_LOSSES[name]
  if miner and miner not in miners.MINERS:
    raise ValueError(f"unknown miner {miner!r}; expected one of {sorted(miners.MINERS)}.")
  if miner and kind is None:
    raise ValueError(f"loss {name!r} forms its own pairs and takes no miner.")
  learn_beta = name == "margin" and kw.pop("learn_beta", False)

  def init(key):
    del key
    if learn_beta:
      return {"beta": jnp.full((num_classes,), kw.get("beta", 1.2), jnp.float32)}
    return {}

  def mine(z, y, key):
    if miner == "multi_similarity":
      s, t, m = sim_inputs(z, y)
      return miners.multi_similarity_miner(s, t, m, **mkw)
    d, t, m = dist_inputs(z, y)
    if miner == "distance_weighted":
      return miners.distance_weighted_miner(d, t, m, key, dim=z.shape[1], **mkw)
    return miners.MINERS[miner](d, t, m, **mkw)

  def apply(params, z, y, key):
    call_kw = dict(kw)
    if learn_beta:
      call_kw["beta"] = params["beta"]
    if miner:
      call_kw["mask"] = jax.lax.stop_gradient(mine(jax.lax.stop_gradient(z), y, key))
    return fn(z, y, **call_kw)

  return Objective(name, init, apply, learn_beta)
