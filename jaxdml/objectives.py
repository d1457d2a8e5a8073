"""Training objectives as values, composed the way optax composes gradient transforms.

An `Objective` is three pure functions over two pytrees, the loss *parameters* (class proxies,
learnable margins, HIER's hierarchical proxies: trained by the optimiser) and the loss *state*
(DAS's memory: carried from step to step, never differentiated):

    params = obj.init(key)
    state = obj.init_state()
    loss, state, aux = obj.apply(params, state, batch, key)

`batch` is a `Batch`: the embeddings and labels of the step, and what the model seam provides
(the network's inputs, the batch's feature maps and the network's functions, `ModelFns`), so
that a method that needs the network (Metrix's input or feature mixup, a teacher, a refiner)
finds it there. `aux` is a dict of scalar diagnostics, e.g. the parts of a composed loss.

`core(name, ...)` gives the objective of a built-in loss (`names()`), with an optional miner;
`pair_loss`, `proxy_loss` and `from_fn` turn a user's own loss into an objective. A method
(`jaxdml.methods.das`, `.metrix`, `.hier`) is a function `wrap(inner, settings) -> Objective`,
so composition is plain function application, in the order the caller chooses:

    >>> import jax, jax.numpy as jnp
    >>> from jaxdml import objectives
    >>> from jaxdml.methods import das, metrix
    >>> obj = objectives.core("multi_similarity")
    >>> obj = das.wrap(obj, das.Settings(), num_classes=4, dim=8)
    >>> obj = metrix.wrap(obj, metrix.Settings(location="embedding"))
    >>> obj.name
    'multi_similarity+das+metrix'
    >>> z = jax.random.normal(jax.random.PRNGKey(0), (8, 8))
    >>> y = jnp.repeat(jnp.arange(4), 2)
    >>> params, state = obj.init(jax.random.PRNGKey(1)), obj.init_state()
    >>> loss, state, aux = obj.apply(params, state, objectives.Batch(z, y), jax.random.PRNGKey(2))
    >>> sorted(aux), sorted(state)
    (['base_loss', 'mix_loss'], ['das'])

Conventions every method follows (and a user's method should):
  * parameters and state nest by the method's name: `{**inner_params, "hier": proxies}`,
    `{**inner_state, "das": memory}`; the optimiser groups loss parameters by these keys
    (`lr_mult={"hier": 50.0}` becomes the group "loss/hier", and `weight_decay={"hier": 1e-2}`
    gives that group its own decay);
  * a method passes the `lr_mult` and `weight_decay` of its inner objective on (adding its own
    keys), so the groups an inner method asks for survive any wrapping;
  * keys: a method splits its key into `(inner, own)` and passes `inner` on;
  * a method that adds a term records the loss of its inner objective as `aux["base_loss"]`
    unless a method inside it already did;
  * `soft`, the inner objective's loss over similarities with soft targets (`SoftLoss`), is
    passed through by methods that do not change it, so Metrix can mix with any loss that has
    one, a user's own included.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxdml import _checks, losses, miners, pairs, similarity, targets

Array = jax.Array
Params = Any
State = Any


class ModelFns(NamedTuple):
  """The network, as the functions an objective may call during a step (the model seam).

  The train step builds one per step, bound to the current parameters; every call runs the
  network in training mode, threads its mutable state (batch-norm statistics) on to the next
  call and draws new dropout masks. Outside the trainer any functions of arrays will do.

  Attributes:
    embed: `inputs [M, ...] -> embeddings [M, d]` (the whole network, float32 out).
    features: `inputs -> feature maps` (the network up to its last feature map), or None when
      the model is not split there.
    head: `feature maps -> embeddings [M, d]` (pooling and the embedding head), or None.
    call: `(method_name, *args) -> output`: any other method of the model (e.g. a refiner).
  """

  embed: Callable[[Array], Array]
  features: Callable[[Array], Array] | None = None
  head: Callable[[Array], Array] | None = None
  call: Callable[..., Any] | None = None


class Batch(NamedTuple):
  """What an objective sees of one training step.

  Attributes:
    embeddings: [B, d] floating embeddings of the batch.
    labels: [B] integer labels.
    inputs: the network's inputs of the batch (images), or None.
    features: the batch's feature maps (`model.features(inputs)`, computed once by the step),
      or None.
    model: the network's functions (`ModelFns`), or None outside a train step.
  """

  embeddings: Array
  labels: Array
  inputs: Array | None = None
  features: Array | None = None
  model: ModelFns | None = None


@dataclasses.dataclass(frozen=True)
class SoftLoss:
  """An objective's loss over similarities with soft targets in [0, 1] (what Metrix mixes with).

  Attributes:
    kind: "pairs": the similarities are queries [Q, d] against references [R, d] (embeddings),
      as the loss scores a batch against itself; "proxies": queries against the objective's C
      class proxies (held in `params`), [Q, C].
    similarity: `(params, queries, references) -> sim [Q, R]` ("proxies": `references` is
      ignored); larger is more similar (a distance-based loss uses the negated distance).
    loss: `(params, sim, target, mask) -> scalar`; with one-hot targets of real labels the pair
      of the two is the objective's own loss.
  """

  kind: str
  similarity: Callable[[Params, Array, Array | None], Array]
  loss: Callable[[Params, Array, Array, Array | None], Array]

  def __post_init__(self):
    if self.kind not in ("pairs", "proxies"):
      raise ValueError(f"SoftLoss.kind must be 'pairs' or 'proxies', got {self.kind!r}.")

  def apply(self, params: Params, queries: Array, target: Array, mask: Array | None = None,
            references: Array | None = None) -> Array:
    """`loss(params, similarity(params, queries, references), target, mask)`."""
    return self.loss(params, self.similarity(params, queries, references), target, mask)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What an application knows of a run when it builds an objective from a config.

  Each method module's `build(inner, settings, setup)` reads what it needs: DAS the classes and
  dimension, HIER the ball of a hyperbolic head, Metrix the batch composition.

  Attributes:
    num_classes: training classes (labels in [0, C)).
    dim: embedding dimension.
    classes_per_batch, per_class: the batch composition P x M of a class-balanced sampler, or
      None (random batches).
    ball: (c, clip_r) of a Poincare-ball head, or None for a Euclidean head.
    batch_size: examples per batch (per step, over all devices), or None if unknown.
    load_run: `(workdir, step or None) -> run` (a `jaxdml.Run`), given by an application that
      can load trained runs (AML's teacher), or None.
  """

  num_classes: int
  dim: int
  classes_per_batch: int | None = None
  per_class: int | None = None
  ball: tuple[float, float] | None = None
  batch_size: int | None = None
  load_run: Callable[[str, int | None], Any] | None = None


def _empty() -> dict:
  return {}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective (see the module docstring).

  Attributes:
    name: what it computes, e.g. "proxy_anchor+metrix+hier".
    init: `key -> params` (a dict; {} when there is nothing to train).
    apply: `(params, state, batch: Batch, key) -> (loss, new_state, aux)`.
    init_state: `() -> state` (a dict; {} for a stateless objective).
    soft: the loss over similarities with soft targets (`SoftLoss`), or None (losses that form
      their own pairs or triplets from labels).
    lr_mult: learning-rate multipliers by loss-parameter key, e.g. {"hier": 50.0}: the
      optimiser gives `params[key]` its own group "loss/<key>".
    weight_decay: weight decays by loss-parameter key, e.g. {"hier": 1e-2}: the group
      "loss/<key>" (created if `lr_mult` does not name it) decays at this rate instead of the
      loss group's. Empty by default: every loss parameter takes the loss group's decay.

  >>> obj = Objective("mine", lambda key: {}, lambda p, s, b, k: (0.0, s, {}),
  ...                 weight_decay={"extra": 0.01})
  >>> dict(obj.lr_mult), dict(obj.weight_decay)
  ({}, {'extra': 0.01})
  """

  name: str
  init: Callable[[Array], Params]
  apply: Callable[[Params, State, Batch, Array], tuple[Array, State, dict]]
  init_state: Callable[[], State] = _empty
  soft: SoftLoss | None = None
  lr_mult: Mapping[str, float] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
  weight_decay: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: MappingProxyType({}))

  def __post_init__(self):
    object.__setattr__(self, "lr_mult", MappingProxyType(dict(self.lr_mult)))
    decay = dict(self.weight_decay)
    for key, value in decay.items():
      if not isinstance(key, str) or not key:
        raise ValueError(f"Objective weight_decay keys must be loss-parameter keys (non-empty "
                         f"str), got {key!r}.")
      _checks.number(value, f"weight_decay[{key!r}]", ge=0.0)
    object.__setattr__(self, "weight_decay", MappingProxyType(decay))


# ------------------------------------------------------------------------------------------------
# User-defined losses
# ------------------------------------------------------------------------------------------------


def from_fn(loss_fn: Callable[[Params, Array, Array, Array], Array], *, name: str,
            init: Callable[[Array], Params] | None = None,
            soft: SoftLoss | None = None) -> Objective:
  """A stateless objective from `loss_fn(params, embeddings, labels, key) -> scalar`.

  Args:
    loss_fn: the loss; `params` is what `init` returns ({} by default).
    name: the objective's name.
    init: `key -> params` (a dict), or None for no parameters.
    soft: the same loss over similarities with soft targets, if it has one.

  >>> import jax, jax.numpy as jnp
  >>> from jaxdml import losses
  >>> obj = from_fn(lambda p, z, y, k: losses.contrastive_loss(z, y), name="mine")
  >>> z, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> float(obj.apply({}, {}, Batch(z, y), jax.random.PRNGKey(0))[0]) > 0
  True
  """
  init = init if init is not None else (lambda key: {})

  def apply(params, state, batch, key):
    return loss_fn(params, batch.embeddings, batch.labels, key), state, {}

  return Objective(name, init, apply, soft=soft)


def pair_loss(from_sim: Callable[[Array, Array, Array], Array], *, name: str,
              sim: str | Callable[[Array, Array], Array] = "cosine") -> Objective:
  """The objective of a pair loss given by its matrix form `from_sim(sim, target, mask)`.

  The batch is scored against itself (`jaxdml.pairs.sim_inputs`: self-pairs masked out); the
  same function is the objective's `soft` loss, so Metrix (and any method that works at the
  similarity level) composes with it like with a built-in loss.

  Args:
    from_sim: `(sim [Q, R], target [Q, R], mask [Q, R]) -> scalar`, e.g.
      `jaxdml.losses.multi_similarity_from_sim` or a user's own.
    name: the objective's name.
    sim: "cosine", "dot", "neg_squared_euclidean", or a function `(queries, references) -> [Q, R]`.

  >>> import jax, jax.numpy as jnp
  >>> from jaxdml import losses
  >>> obj = pair_loss(losses.multi_similarity_from_sim, name="ms")
  >>> z, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> bool(jnp.isclose(obj.apply({}, {}, Batch(z, y), jax.random.PRNGKey(0))[0],
  ...                  losses.multi_similarity_loss(z, y)))
  True
  """
  sim_fn = similarity.get(sim) if isinstance(sim, str) else sim

  def loss_fn(params, z, y, key):
    del params, key
    s = sim_fn(z, z)
    target, mask = targets.from_labels(y)
    return from_sim(s, target, mask)

  soft = SoftLoss("pairs", lambda params, q, r: sim_fn(q, r),
                  lambda params, s, t, m: from_sim(s, t, m))
  return from_fn(loss_fn, name=name, soft=soft)


def proxy_loss(from_sim: Callable[[Array, Array, Array], Array], *, name: str,
               num_classes: int, dim: int, init: str = "normal",
               sim: str | Callable[[Array, Array], Array] = "cosine") -> Objective:
  """The objective of a proxy loss given by its matrix form `from_sim(sim [B, C], target, mask)`.

  The class proxies are the objective's parameters, `params["proxies"]` [C, d], initialised by
  `jaxdml.losses.init_proxies(key, C, d, method=init)`; they are also the references of its
  `soft` loss.

  >>> import jax, jax.numpy as jnp
  >>> from jaxdml import losses
  >>> obj = proxy_loss(losses.proxy_anchor_from_sim, name="pa", num_classes=2, dim=4,
  ...                  init="proxy_anchor")
  >>> params = obj.init(jax.random.PRNGKey(0))
  >>> z, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> bool(jnp.isclose(obj.apply(params, {}, Batch(z, y), jax.random.PRNGKey(0))[0],
  ...                  losses.proxy_anchor_loss(z, y, params["proxies"])))
  True
  """
  _checks.positive_int(num_classes, "num_classes")
  _checks.positive_int(dim, "dim")
  sim_fn = similarity.get(sim) if isinstance(sim, str) else sim

  def init_fn(key):
    return {"proxies": losses.init_proxies(key, num_classes, dim, method=init)}

  soft = SoftLoss("proxies", lambda params, q, r=None: sim_fn(q, params["proxies"]),
                  lambda params, s, t, m: from_sim(s, t, m))

  def loss_fn(params, z, y, key):
    del key
    target = targets.one_hot(y, num_classes)
    mask = jnp.broadcast_to(((y >= 0) & (y < num_classes))[:, None], target.shape)
    return soft.apply(params, z, target, mask)

  return from_fn(loss_fn, name=name, init=init_fn, soft=soft)


# ------------------------------------------------------------------------------------------------
# The core losses
# ------------------------------------------------------------------------------------------------


class _Pair(NamedTuple):
  wrapper: Callable[..., Array]
  reads: str | None  # what the matrix form and a miner read: "sim", "dist"; None: own pairs
  from_x: Callable[..., Array] | None  # the matrix form, or None: no soft loss


class _Proxy(NamedTuple):
  wrapper: Callable[..., Array]
  init: str  # `init_proxies` method
  from_x: Callable[..., Array]
  x: Callable[[Array, Array, dict], Array]  # (queries, proxies, wrapper kwargs) -> x


def _cosine_to(q, p, kw):
  del kw
  return similarity.cosine(q, p)


def _nca_x(q, p, kw):
  q = similarity.l2_normalize(q) if kw.get("normalize_embeddings", True) else q
  p = similarity.l2_normalize(p) if kw.get("normalize_proxies", True) else p
  return similarity.neg_squared_euclidean(q, p)


def _soft_triple_x(q, centers, kw):
  del kw
  c, k, d = centers.shape
  return similarity.cosine(q, centers.reshape(c * k, d)).reshape(q.shape[0], c, k)


PAIR_LOSSES: Mapping[str, _Pair] = MappingProxyType({
    "contrastive": _Pair(losses.contrastive_loss, "dist", losses.contrastive_from_dist),
    "triplet": _Pair(losses.triplet_margin_loss, "dist", losses.triplet_margin_from_dist),
    "multi_similarity": _Pair(losses.multi_similarity_loss, "sim",
                              losses.multi_similarity_from_sim),
    "margin": _Pair(losses.margin_loss, "dist", losses.margin_from_dist),
    # the pair form needs the negatives of both members of a positive pair: no references
    "lifted_structure": _Pair(losses.lifted_structure_loss, "dist", None),
    "circle": _Pair(losses.circle_loss, "sim", losses.circle_from_sim),
    "supcon": _Pair(losses.supcon_loss, "sim", losses.supcon_from_sim),
    "ntxent": _Pair(losses.ntxent_loss, "sim", losses.ntxent_from_sim),
    "n_pairs": _Pair(losses.n_pairs_loss, None, None),
})
"""Pair losses: name -> (wrapper, what the matrix form reads, matrix form)."""

PROXY_LOSSES: Mapping[str, _Proxy] = MappingProxyType({
    "proxy_anchor": _Proxy(losses.proxy_anchor_loss, "proxy_anchor",
                           losses.proxy_anchor_from_sim, _cosine_to),
    "proxy_nca": _Proxy(losses.proxy_nca_loss, "normal", losses.proxy_nca_from_sim, _nca_x),
    "normalized_softmax": _Proxy(losses.normalized_softmax_loss, "normal",
                                 losses.normalized_softmax_from_sim, _cosine_to),
    "arcface": _Proxy(losses.arcface_loss, "normal", losses.arcface_from_sim, _cosine_to),
    "cosface": _Proxy(losses.cosface_loss, "normal", losses.cosface_from_sim, _cosine_to),
    "soft_triple": _Proxy(losses.soft_triple_loss, "soft_triple", losses.soft_triple_from_sim,
                          _soft_triple_x),
})
"""Proxy losses: name -> (wrapper, proxy initialisation, matrix form, its similarities)."""

ALIASES: Mapping[str, str] = MappingProxyType(
    {"ms": "multi_similarity", "pa": "proxy_anchor", "proxynca": "proxy_nca"})

# keyword arguments that only the objective reads (not the loss function)
_OBJECTIVE_KWARGS = {"margin": ("learn_beta",), "soft_triple": ("centers_per_class",)}


def names() -> list[str]:
  """The core losses `core` knows (aliases: `ALIASES`).

  >>> names()[:3]
  ['circle', 'contrastive', 'lifted_structure']
  """
  return sorted(PAIR_LOSSES) + sorted(PROXY_LOSSES)


def canonical_name(name: str) -> str:
  """The core loss `name` stands for (an alias resolved); raises for an unknown name.

  >>> canonical_name("pa")
  'proxy_anchor'
  """
  name = ALIASES.get(name, name)
  if name not in PAIR_LOSSES and name not in PROXY_LOSSES:
    import difflib  # noqa: PLC0415
    close = difflib.get_close_matches(name, names() + sorted(ALIASES), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown loss {name!r}{hint} Known: {names()} (aliases "
                     f"{dict(ALIASES)}).")
  return name


def _keyword_names(fn: Callable) -> set[str]:
  return {p.name for p in inspect.signature(fn).parameters.values()
          if p.kind == inspect.Parameter.KEYWORD_ONLY}


def check_loss(name: str, loss_kwargs: Mapping[str, Any] | None = None,
               miner: str | None = None, miner_kwargs: Mapping[str, Any] | None = None) -> str:
  """Checks a core loss, its keyword arguments and a miner without building anything.

  Returns the canonical loss name; raises ValueError naming the wrong argument.

  >>> check_loss("contrastive", {"neg_margin": 0.5}, miner="batch_hard")
  'contrastive'
  """
  name = canonical_name(name)
  spec = PAIR_LOSSES.get(name) or PROXY_LOSSES[name]
  allowed = (_keyword_names(spec.wrapper) - {"mask"}) | set(_OBJECTIVE_KWARGS.get(name, ()))
  unknown = set(loss_kwargs or {}) - allowed
  if unknown:
    import difflib  # noqa: PLC0415
    hints = [f"{u!r} (did you mean {difflib.get_close_matches(u, sorted(allowed), n=1)[0]!r}?)"
             if difflib.get_close_matches(u, sorted(allowed), n=1) else repr(u)
             for u in sorted(unknown)]
    raise ValueError(f"unknown keyword argument(s) {', '.join(hints)} of the {name} loss; it "
                     f"takes {sorted(allowed)}.")
  if miner is not None:
    if name in PROXY_LOSSES:
      raise ValueError(f"miner {miner!r} does not apply to the proxy loss {name!r}.")
    if miner not in miners.MINERS:
      raise ValueError(f"unknown miner {miner!r}; expected one of {sorted(miners.MINERS)}.")
    if spec.reads is None:
      raise ValueError(f"loss {name!r} forms its own pairs and takes no miner.")
    fn = miners.MINERS[miner]
    allowed_m = _keyword_names(fn) - {"dim"}
    unknown_m = set(miner_kwargs or {}) - allowed_m
    if unknown_m:
      raise ValueError(f"unknown keyword argument(s) {sorted(unknown_m)} of the {miner} miner; "
                       f"it takes {sorted(allowed_m)}.")
  elif miner_kwargs:
    raise ValueError(f"miner_kwargs {dict(miner_kwargs)} given without a miner.")
  return name


def _split(kw: dict, fn: Callable) -> dict:
  accepted = _keyword_names(fn)
  return {k: v for k, v in kw.items() if k in accepted}


def core(name: str, *, num_classes: int | None = None, dim: int | None = None,
         miner: str | None = None, miner_kwargs: Mapping[str, Any] | None = None,
         **loss_kwargs: Any) -> Objective:
  """The objective of the core loss `name` (`names()`, or an alias), optionally with a miner.

  Args:
    name: e.g. "multi_similarity", "contrastive", "proxy_anchor".
    num_classes, dim: the training classes and the embedding dimension; needed by the proxy
      losses (their proxies are the parameters) and by `margin` with `learn_beta=True`.
    miner: a `jaxdml.miners.MINERS` name for a pair loss ("batch_hard", "semihard",
      "multi_similarity", "distance_weighted"); it reads the batch's cosine similarities
      ("multi_similarity") or the Euclidean distances of the normalised embeddings, without
      gradient, and masks the loss's pairs.
    miner_kwargs: the miner's keyword arguments.
    **loss_kwargs: the loss's keyword arguments (its wrapper in `jaxdml.losses`), and
      `learn_beta` (margin: one beta per class, a parameter) or `centers_per_class`
      (SoftTriple's proxies, 10).

  Returns:
    The objective. Its `soft` loss is the loss's matrix form on the cosine similarities of the
    embeddings (a distance of normalised embeddings as a function of it; the negated distance
    for unnormalised ones), with the same hyperparameters (a miner, and the multi-similarity
    wrapper's `miner_epsilon`, mine the batch's own pairs only); None for lifted structure,
    N-pair and a margin loss with learned beta.

  >>> import jax, jax.numpy as jnp
  >>> obj = core("proxy_anchor", num_classes=2, dim=4, margin=0.1)
  >>> params = obj.init(jax.random.PRNGKey(0))
  >>> params["proxies"].shape, obj.soft.kind
  ((2, 4), 'proxies')
  """
  name = check_loss(name, loss_kwargs, miner, miner_kwargs)
  kw = dict(loss_kwargs)
  mkw = dict(miner_kwargs or {})
  if name in PROXY_LOSSES:
    if num_classes is None or dim is None:
      raise ValueError(f"the proxy loss {name!r} needs num_classes and dim.")
    _checks.positive_int(num_classes, "num_classes")
    _checks.positive_int(dim, "dim")
    spec = PROXY_LOSSES[name]
    init_kw = {}
    if name == "soft_triple":
      init_kw["centers_per_class"] = kw.pop("centers_per_class", 10)
    from_kw = _split(kw, spec.from_x)

    def init(key):
      return {"proxies": losses.init_proxies(key, num_classes, dim, method=spec.init, **init_kw)}

    def loss_fn(params, z, y, key):
      del key
      return spec.wrapper(z, y, params["proxies"], **kw)

    soft = SoftLoss("proxies", lambda params, q, r=None: spec.x(q, params["proxies"], kw),
                    lambda params, s, t, m: spec.from_x(s, t, m, **from_kw))
    return from_fn(loss_fn, name=name, init=init, soft=soft)

  spec = PAIR_LOSSES[name]
  learn_beta = name == "margin" and kw.pop("learn_beta", False)
  if learn_beta:
    if num_classes is None:
      raise ValueError("margin loss with learn_beta=True needs num_classes (one beta each).")
    _checks.positive_int(num_classes, "num_classes")

  def init(key):
    del key
    if learn_beta:
      return {"beta": jnp.full((num_classes,), kw.get("beta", 1.2), jnp.float32)}
    return {}

  def mine(z, y, key):
    if miner == "multi_similarity":
      s, t, m = pairs.sim_inputs(z, y)
      return miners.multi_similarity_miner(s, t, m, **mkw)
    d, t, m = pairs.dist_inputs(z, y)
    if miner == "distance_weighted":
      return miners.distance_weighted_miner(d, t, m, key, dim=z.shape[1], **mkw)
    return miners.MINERS[miner](d, t, m, **mkw)

  def loss_fn(params, z, y, key):
    call_kw = dict(kw)
    if learn_beta:
      call_kw["beta"] = params["beta"]
    if miner:
      call_kw["mask"] = jax.lax.stop_gradient(mine(jax.lax.stop_gradient(z), y, key))
    return spec.wrapper(z, y, **call_kw)

  soft = None
  if spec.from_x is not None and not learn_beta:
    from_kw = _split(kw, spec.from_x)
    dist_kw = {k: kw[k] for k in ("distance", "normalize") if k in kw}

    distance = dist_kw.get("distance", "euclidean")
    if spec.reads == "sim":
      soft = SoftLoss("pairs", lambda params, q, r: similarity.cosine(q, r),
                      lambda params, s, t, m: spec.from_x(s, t, m, **from_kw))
    elif dist_kw.get("normalize", True) or distance == "cosine":
      # distances of unit vectors are functions of their cosine similarity
      to_dist = {"euclidean": lambda s: similarity.to_distance(s, "cosine"),
                 "squared_euclidean": lambda s: jnp.maximum(2.0 - 2.0 * s, 0.0),
                 "cosine": lambda s: 1.0 - s}[distance]
      soft = SoftLoss("pairs", lambda params, q, r: similarity.cosine(q, r),
                      lambda params, s, t, m: spec.from_x(to_dist(s), t, m, **from_kw))
    else:  # unnormalised embeddings: the similarity is the negated distance
      soft = SoftLoss("pairs", lambda params, q, r: -pairs.distance_matrix(q, r, **dist_kw),
                      lambda params, s, t, m: spec.from_x(-s, t, m, **from_kw))
  return from_fn(loss_fn, name=name, init=init, soft=soft)
