"""Turns a loss name, miner name, method settings and plain keyword values into an objective.

An objective is a set of pure functions over two pytrees, the loss *parameters* (proxies,
learnable margins, HIER's hierarchical proxies: trained by the optimiser) and the loss *state*
(DAS's memory: carried from step to step, never differentiated):

  init(key) -> params
  init_state() -> state                                        ({} for most objectives)
  apply(params, state, z, y, key, embed_mixed=None) -> (loss, state, aux)

`aux` is a dict of scalar diagnostics (the parts of a composed loss). `embed_mixed` is given by
the train step when `objective.mixup` is "input" or "feature": `embed_mixed(pairs)` returns the
embeddings of the examples that `pairs` (a `jaxdml.methods.metrix.MixPairs`) mixes, passed
through the network from the mixed images or feature maps.

`make_objective` composes a core loss (with an optional miner) with the seed methods, each given
as a dict of plain values (the configs' `das`, `metrix` and `hier` fields):

  * DAS (`jaxdml.methods.das`): the state holds the DAS memory; each step records the batch,
    generates R embeddings per real one and gives the loss the combined batch.
  * Metrix (`jaxdml.methods.metrix`): `L_clean + w L_mix` with the mixed loss of the same kind
    and hyperparameters as the clean one (contrastive, multi-similarity, Proxy-Anchor,
    ProxyNCA).
  * HIER (`jaxdml.methods.hier`): `lambda1 L + lambda2 L_HIER` with hierarchical proxies under
    the loss parameters' "hier" key (their own learning-rate group, "loss/hier").

They compose in that order: DAS feeds the clean loss, Metrix adds its mixed term, HIER
regularises the total; e.g. Proxy-Anchor + Metrix + HIER in one step.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdml import losses, miners, similarity
from jaxdml.losses._inputs import dist_inputs, sim_inputs
from jaxdml.methods import das as das_lib
from jaxdml.methods import hier as hier_lib
from jaxdml.methods import metrix as metrix_lib

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


def _no_state() -> dict:
  return {}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective (see the module docstring).

  Attributes:
    name: the loss name, with the methods it composes, e.g. "proxy_anchor+metrix+hier".
    init: `key -> params`.
    apply: `(params, state, z, y, key, embed_mixed=None) -> (loss, state, aux)`.
    has_params: whether `init` returns trainable parameters.
    init_state: `() -> state`.
    mixup: where Metrix mixes: None (no Metrix), "embedding" (inside `apply`), or "input" /
      "feature" (the train step passes `embed_mixed`).
  """

  name: str
  init: Callable[[Array], Any]
  apply: Callable[..., tuple[Array, Any, dict]]
  has_params: bool
  init_state: Callable[[], Any] = _no_state
  mixup: str | None = None


def from_loss_fn(name: str, init: Callable[[Array], Any],
                 loss_fn: Callable[[Any, Array, Array, Array], Array],
                 has_params: bool = True) -> Objective:
  """A stateless objective from `loss_fn(params, z, y, key) -> scalar`."""

  def apply(params, state, z, y, key, embed_mixed=None):
    del embed_mixed
    return loss_fn(params, z, y, key), state, {}

  return Objective(name, init, apply, has_params)


def names() -> list[str]:
  return sorted(PAIR_LOSSES) + sorted(PROXY_LOSSES)


def _core_loss(name: str, *, num_classes: int, dim: int, loss_kwargs: dict | None,
               miner: str | None, miner_kwargs: dict | None) -> Objective:
  """The stateless objective of core loss `name` (see `names()`), optionally with a miner."""
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

    def loss_fn(params, z, y, key):
      del key
      return fn(z, y, params["proxies"], **kw)

    return from_loss_fn(name, init, loss_fn, True)

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

  def loss_fn(params, z, y, key):
    call_kw = dict(kw)
    if learn_beta:
      call_kw["beta"] = params["beta"]
    if miner:
      call_kw["mask"] = jax.lax.stop_gradient(mine(jax.lax.stop_gradient(z), y, key))
    return fn(z, y, **call_kw)

  return from_loss_fn(name, init, loss_fn, learn_beta)


# ------------------------------------------------------------------------------------------------
# Composition with the seed methods
# ------------------------------------------------------------------------------------------------

DAS_KEYS = ("recipe", *das_lib.DASRecipe._fields)
METRIX_KEYS = ("location", "alpha", "weight", "pairing", "num_positives", "num_negatives",
               "num_mixed", "per_example_lambda", "own_anchor", "hard_negatives",
               "anchor_neg_all")
METRIX_LOCATIONS = ("input", "feature", "embedding")
HIER_KEYS = ("num_proxies", "lambda1", "lambda2", "lr_mult", *sorted(hier_lib._HIER_KWARGS))

#: Core loss name -> the Metrix loss kind with the same definition.
METRIX_KINDS = {"contrastive": "contrastive", "multi_similarity": "multi_similarity",
                "proxy_anchor": "proxy_anchor", "proxy_nca": "proxy_nca"}


def _check_keys(settings: dict, allowed: tuple[str, ...], what: str) -> dict:
  if not isinstance(settings, dict):
    raise ValueError(f"the {what} settings must be a dict, got {type(settings).__name__}.")
  unknown = set(settings) - set(allowed)
  if unknown:
    raise ValueError(f"unknown {what} settings {sorted(unknown)}; expected some of "
                     f"{sorted(allowed)}.")
  return dict(settings)


def das_settings(settings: dict) -> das_lib.DASRecipe:
  """The `DASRecipe` of a config's `das` dict.

  `{"recipe": [table, dataset, loss]}` starts from a published run (`das.das_recipe`); the other
  keys (`DASRecipe` fields: num_scaled_dims, bank_size, num_generated, scale_range, shift_scale,
  detach, normalize, aux_weight) override it or the authors' argparse defaults.
  """
  s = _check_keys(settings, DAS_KEYS, "DAS")
  recipe = s.pop("recipe", None)
  if recipe is not None and (not isinstance(recipe, (list, tuple)) or len(recipe) != 3):
    raise ValueError(f"das['recipe'] must be [table, dataset, loss], e.g. ['table1', 'cub200', "
                     f"'multisimilarity'], got {recipe!r}.")
  base = das_lib.das_recipe(*recipe) if recipe else das_lib.DASRecipe()
  if "scale_range" in s:
    s["scale_range"] = tuple(float(v) for v in s["scale_range"])
  out = base._replace(**s)
  for name in ("num_scaled_dims", "bank_size", "num_generated"):
    if int(getattr(out, name)) < 1:
      raise ValueError(f"das['{name}'] must be >= 1, got {getattr(out, name)}.")
  if out.shift_scale < 0 or (out.aux_weight is not None and out.aux_weight < 0):
    raise ValueError("das['shift_scale'] and das['aux_weight'] must be >= 0.")
  return out


def metrix_settings(settings: dict) -> dict:
  """A config's `metrix` dict with the defaults of the official code filled in.

  Keys: location ("feature", the README's recipe; "input" or "embedding"), alpha (2.0, lambda ~
  Beta(alpha, alpha)), weight (w = 0.4), pairing ("random": a coin flip per step between
  positive-negative and anchor-negative pairs), num_positives / num_negatives (per anchor; the
  code's input mixup mixes every positive with the hardest negative, 1 / None -> None / 1, its
  feature and embedding mixup the first positive with every negative, 1 / None), num_mixed (keep
  a fixed number of mixed examples per step; None keeps all), per_example_lambda (False: one
  lambda per step, as the code), own_anchor (True: a mixed example is compared with its own
  anchor only), hard_negatives (True: rank negatives by similarity when a subset is taken).
  """
  s = _check_keys(settings, METRIX_KEYS, "Metrix")
  location = s.setdefault("location", "feature")
  if location not in METRIX_LOCATIONS:
    raise ValueError(f"metrix location must be one of {METRIX_LOCATIONS}, got {location!r}.")
  if location == "input":
    s.setdefault("num_positives", None)
    s.setdefault("num_negatives", 1)
  else:
    s.setdefault("num_positives", 1)
    s.setdefault("num_negatives", None)
  s.setdefault("alpha", metrix_lib.DEFAULT_ALPHA)
  s.setdefault("weight", metrix_lib.DEFAULT_WEIGHT)
  s.setdefault("pairing", "random")
  s.setdefault("num_mixed", None)
  s.setdefault("per_example_lambda", False)
  s.setdefault("own_anchor", True)
  s.setdefault("hard_negatives", True)
  s.setdefault("anchor_neg_all", False)
  if s["pairing"] not in metrix_lib.PAIRINGS:
    raise ValueError(f"metrix pairing must be one of {metrix_lib.PAIRINGS}, got "
                     f"{s['pairing']!r}.")
  if not s["alpha"] > 0:
    raise ValueError(f"metrix alpha must be > 0, got {s['alpha']}.")
  if not s["weight"] >= 0:
    raise ValueError(f"metrix weight must be >= 0, got {s['weight']}.")
  return s


def hier_settings(settings: dict) -> dict:
  """A config's `hier` dict with the authors' defaults filled in.

  Keys: num_proxies (512), lambda1 (1) and lambda2 (0.5) of `lambda1 L + lambda2 L_HIER`, lr_mult
  (50: the hierarchical proxies' learning-rate multiplier, read by the optimiser builder), and
  the keyword arguments of `hier.hier_loss_and_aux` (c, clip_r, margin, tau, topk,
  triplets_per_anchor, riemannian, lca_noise, negatives_include_anchor).
  """
  s = _check_keys(settings, HIER_KEYS, "HIER")
  s.setdefault("num_proxies", hier_lib.DEFAULT_NUM_PROXIES)
  s.setdefault("lambda1", hier_lib.DEFAULT_LAMBDA1)
  s.setdefault("lambda2", hier_lib.DEFAULT_LAMBDA2)
  s.setdefault("lr_mult", 50.0)
  if int(s["num_proxies"]) < 1:
    raise ValueError(f"hier num_proxies must be >= 1, got {s['num_proxies']}.")
  for name in ("lambda1", "lambda2"):
    if not s[name] >= 0:
      raise ValueError(f"hier {name} must be >= 0, got {s[name]}.")
  if not s["lr_mult"] > 0:
    raise ValueError(f"hier lr_mult must be > 0, got {s['lr_mult']}.")
  return s


def metrix_hparams(name: str, kw: dict) -> dict:
  """The mixed loss's hyperparameters: those of the clean loss (its kwargs, else its defaults)."""
  fn = (PAIR_LOSSES.get(name) or PROXY_LOSSES[name])[0]
  params = inspect.signature(fn).parameters
  if kw.get("distance", "euclidean") != "euclidean":
    raise ValueError("Metrix's contrastive loss is defined on the Euclidean distance of "
                     "normalised embeddings; remove loss_kwargs['distance'].")
  if any(kw.get(k, True) is False for k in ("normalize_embeddings", "normalize_proxies")):
    raise ValueError("Metrix's mixed losses work on cosine similarities; remove "
                     "loss_kwargs['normalize_embeddings' / 'normalize_proxies'].")
  kind = METRIX_KINDS[name]
  return {k: kw.get(k, params[k].default) for k in metrix_lib.DEFAULT_HPARAMS[kind]}


def make_objective(name: str, *, num_classes: int, dim: int, loss_kwargs: dict | None = None,
                   miner: str | None = None, miner_kwargs: dict | None = None,
                   das: dict | None = None, metrix: dict | None = None,
                   hier: dict | None = None) -> Objective:
  """The objective of core loss `name` (see `names()`), a miner, and any of the seed methods.

  Args:
    name: a core loss name or alias.
    num_classes: training classes (proxies, the DAS memory).
    dim: embedding dimension.
    loss_kwargs, miner, miner_kwargs: the core loss's keyword arguments and miner.
    das: DAS settings (`das_settings`), or None.
    metrix: Metrix settings (`metrix_settings`), or None. The loss must be contrastive,
      multi-similarity, Proxy-Anchor or ProxyNCA.
    hier: HIER settings (`hier_settings`), or None. The embeddings must be points of the
      Poincare ball of curvature `hier["c"]` (a hyperbolic head).

  Returns:
    `Objective`; `aux` of `apply` holds "base_loss" and, when used, "mix_loss", "hier_loss".
  """
  name = ALIASES.get(name, name)
  kw = dict(loss_kwargs or {})
  core = _core_loss(name, num_classes=num_classes, dim=dim, loss_kwargs=loss_kwargs,
                    miner=miner, miner_kwargs=miner_kwargs)
  if das is None and metrix is None and hier is None:
    return core
  das_cfg = das_settings(das) if das is not None else None
  mx = metrix_settings(metrix) if metrix is not None else None
  hr = hier_settings(hier) if hier is not None else None
  if mx is not None and name not in METRIX_KINDS:
    raise ValueError(f"Metrix is defined for the losses {sorted(METRIX_KINDS)}, got {name!r}.")
  mix_hp = metrix_hparams(name, kw) if mx is not None else {}
  hier_kw = {k: v for k, v in (hr or {}).items() if k in hier_lib._HIER_KWARGS}
  parts = [name] + [m for m, v in (("das", das_cfg), ("metrix", mx), ("hier", hr)) if v]

  def init(key):
    k_core, k_hier = jax.random.split(key)
    params = dict(core.init(k_core))
    if hr is not None:
      params["hier"] = hier_lib.init_hier_proxies(
          k_hier, int(hr["num_proxies"]), dim, clip_r=hr.get("clip_r", 2.3))
    return params

  def init_state():
    if das_cfg is None:
      return {}
    return {"das": das_lib.das_init(num_classes, dim, **das_cfg.init_kwargs())}

  def core_loss(params, z, y, key):
    return core.apply(params, {}, z, y, key)[0]

  def apply(params, state, z, y, key, embed_mixed=None):
    # Each method, from the outermost (HIER) in, splits its key into (inner, own) and passes the
    # inner one on; the core loss gets what is left.
    k_core = key
    if hr is not None:
      k_core, k_hier = jax.random.split(k_core)
    if mx is not None:
      k_core, k_mix = jax.random.split(k_core)
    if das_cfg is not None:
      k_core, k_das = jax.random.split(k_core)
    base_params = {k: v for k, v in params.items() if k != "hier"}
    aux = {}
    if das_cfg is not None:
      das_state = das_lib.das_update(state["das"], z, y)
      z_gen, y_gen = das_lib.das_generate(das_state, z, y, k_das,
                                          **das_cfg.generate_kwargs())
      # with the auxiliary loss the core loss runs twice: combined batch, then the real one
      calls = iter(jax.random.split(k_core) if das_cfg.aux_weight is not None else [k_core])
      loss = das_lib.das_loss(lambda zz, yy: core_loss(base_params, zz, yy, next(calls)), z, y,
                              z_gen, y_gen, aux_weight=das_cfg.aux_weight)
      state = {**state, "das": das_state}
    else:
      loss = core_loss(base_params, z, y, k_core)
    aux["base_loss"] = loss
    if mx is not None:
      k_pairs, k_lam = jax.random.split(k_mix)
      sim = jax.lax.stop_gradient(similarity.cosine(z, z)) if mx["hard_negatives"] else None
      pairs = metrix_lib.select_pairs(
          y, 0.0, pairing=mx["pairing"], sim=sim, key=k_pairs,
          num_positives=mx["num_positives"], num_negatives=mx["num_negatives"],
          num_mixed=mx["num_mixed"], anchor_neg_all=mx["anchor_neg_all"])
      lam_shape = pairs.anchor.shape if mx["per_example_lambda"] else ()
      pairs = pairs._replace(lam=metrix_lib.sample_lambda(k_lam, mx["alpha"], lam_shape))
      if mx["location"] == "embedding":
        mixed = metrix_lib.mix_pairs(z, pairs)
      else:
        if embed_mixed is None:
          raise ValueError(f"Metrix {mx['location']} mixup needs the train step's "
                           "`embed_mixed`.")
        mixed = embed_mixed(pairs).astype(z.dtype)
      mix_loss = metrix_lib.mixed_loss(METRIX_KINDS[name], z, y, mixed, pairs,
                                       proxies=base_params.get("proxies"),
                                       own_anchor=mx["own_anchor"], **mix_hp)
      loss = loss + mx["weight"] * mix_loss
      aux["mix_loss"] = mix_loss
    if hr is not None:
      h, _ = hier_lib.hier_loss_and_aux(params["hier"], z, y, k_hier, **hier_kw)
      loss = hier_lib.combine_losses(loss, h, lambda1=hr["lambda1"], lambda2=hr["lambda2"])
      aux["hier_loss"] = h
    return loss, state, aux

  return Objective("+".join(parts), init, apply, core.has_params or hr is not None,
                   init_state, mx["location"] if mx is not None else None)
