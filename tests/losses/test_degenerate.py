"""Degenerate inputs of every core loss: NaN embeddings, empty batches, invalid hyperparameters."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L
from jaxdml import miners, objectives

NUM_CLASSES, DIM = 4, 6
LABELS = jnp.repeat(jnp.arange(NUM_CLASSES), 2)  # every example has one positive
EMB = jax.random.normal(jax.random.PRNGKey(0), (8, DIM))
PAIR = sorted(objectives.PAIR_LOSSES)
PROXY = sorted(objectives.PROXY_LOSSES)


def _proxies(name):
  kw = {"centers_per_class": 3} if name == "soft_triple" else {}
  return L.init_proxies(jax.random.PRNGKey(1), NUM_CLASSES, DIM,
                        method=objectives.PROXY_LOSSES[name].init, **kw)


def _loss(name, z, y=LABELS, **kw):
  if name in objectives.PAIR_LOSSES:
    return objectives.PAIR_LOSSES[name].wrapper(z, y, **kw)
  return objectives.PROXY_LOSSES[name].wrapper(z, y, _proxies(name), **kw)


# ------------------------------------------------------------------------------------ NaN


@functools.cache
def _all_value_and_grad():
  """One jitted function: value and gradient of every core loss (one compilation per shape)."""
  proxies = {name: _proxies(name) for name in PROXY}

  def f(z, y):
    out = {}
    for name in PAIR + PROXY:
      fn = objectives.PAIR_LOSSES.get(name)
      if fn is not None:
        loss = functools.partial(lambda e, w: w(e, y), w=fn.wrapper)
      else:
        loss = functools.partial(lambda e, w, p: w(e, y, p),
                                 w=objectives.PROXY_LOSSES[name].wrapper, p=proxies[name])
      out[name] = jax.value_and_grad(loss)(z)
    return out

  return jax.jit(f)


@functools.cache
def _nan_results(bad):
  f = _all_value_and_grad()
  return f(EMB, LABELS), f(EMB.at[3].set(bad), LABELS)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", PAIR + PROXY)
def test_a_non_finite_embedding_makes_every_core_loss_nan(name, bad):
  # Before, the Euclidean distance sent NaN to 0 and the distance losses stayed finite.
  clean, dirty = _nan_results(bad)
  assert np.isfinite(float(clean[name][0]))
  value, grad = dirty[name]
  assert np.isnan(float(value)), name
  assert np.isnan(np.asarray(grad)).any()


# one loss per miner, among those reading what the miner reads; circle is the case that the
# multi-similarity miner used to get wrong
MINED = {"batch_hard": "contrastive", "semihard": "triplet", "multi_similarity": "circle",
         "distance_weighted": "margin"}


@functools.cache
def _mined_losses():
  objs = {m: objectives.core(name, miner=m) for m, name in MINED.items()}

  def f(z, y):
    return {m: o.apply({}, {}, objectives.Batch(z, y), jax.random.PRNGKey(2))[0]
            for m, o in objs.items()}

  # A singleton class (label 4): its NaN pairs are all negatives of the other rows.
  y = jnp.array([0, 0, 1, 1, 2, 2, 3, 4])
  return jax.jit(f)(EMB.at[7].set(jnp.nan), y)


@pytest.mark.parametrize("miner", sorted(miners.MINERS))
def test_a_miner_does_not_mine_a_nan_away(miner):
  # Before, the multi-similarity miner dropped every positive of a row next to a NaN negative
  # (its bound was NaN and every comparison False), and the loss was finite.
  assert np.isnan(float(_mined_losses()[miner])), miner


def test_margin_loss_is_nan_when_every_term_is():
  # Before, "no non-zero term" (every comparison with NaN is False) returned 0.
  dist = jnp.full((3, 3), jnp.nan)
  target = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  assert np.isnan(float(L.margin_from_dist(dist, target, ~jnp.eye(3, dtype=bool))))


def test_n_pairs_ignores_an_example_that_forms_no_pair_value_and_gradient():
  # The NaN example is a class of one: it takes part in no pair. Its gradient used to be NaN
  # (0 * NaN through the normalisation of the whole batch) while the value was finite.
  y = jnp.array([0, 0, 1, 1, 2, 2, 0, 3])
  z = EMB.at[7].set(jnp.nan)
  f = jax.jit(jax.value_and_grad(lambda e: L.n_pairs_loss(e, y)))
  value, grad = f(z)
  clean, _ = f(EMB)
  assert float(value) == pytest.approx(float(clean), rel=1e-6)
  assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad)[7].any()


# ------------------------------------------------------------------------------------ empty


@pytest.mark.parametrize("name", PAIR + PROXY)
def test_an_empty_batch_gives_the_documented_value(name):
  value, grad = _empty_results()[name]
  expected = 0.0
  if name == "soft_triple":  # the classification term is 0; the centre regulariser remains
    expected = 0.2 * float(L.soft_triple_regularizer(_proxies(name)))
  assert float(value) == pytest.approx(expected, abs=1e-7), name
  assert grad.shape == (0, DIM)


@functools.cache
def _empty_results():
  return _all_value_and_grad()(jnp.zeros((0, DIM)), jnp.zeros((0,), jnp.int32))


@pytest.mark.parametrize("name", [n for n in PAIR if objectives.PAIR_LOSSES[n].from_x]
                         + PROXY)
@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0)])
def test_matrix_forms_on_empty_matrices_give_zero(name, shape):
  # multi-similarity and Proxy-Anchor (over zero proxies) averaged over no anchor: NaN before.
  fn = (objectives.PAIR_LOSSES.get(name) or objectives.PROXY_LOSSES[name]).from_x
  sim = jnp.zeros(shape + (2,) if name == "soft_triple" else shape)
  assert float(fn(sim, jnp.zeros(shape))) == 0.0


def test_multi_similarity_without_positives_is_the_negative_term_alone():
  # Two anchors of different classes: per anchor 1/beta log(1 + e^{beta (s - base)}), averaged.
  s = jnp.array([[1.0, 0.3], [0.3, 1.0]])
  target = jnp.eye(2)
  mask = ~jnp.eye(2, dtype=bool)
  expected = math.log1p(math.exp(50.0 * (0.3 - 0.5))) / 50.0
  got = float(L.multi_similarity_from_sim(s, target, mask))
  assert got == pytest.approx(expected, rel=1e-5)
  assert float(L.multi_similarity_loss(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))) == 0.0


def test_n_pairs_empty_and_pairless_batches():
  assert float(L.n_pairs_loss(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))) == 0.0
  assert float(L.n_pairs_loss(EMB[:4], jnp.arange(4))) == 0.0  # no class with two examples
  z = EMB[:4]  # the l2 term still counts without pairs
  got = float(L.n_pairs_loss(z, jnp.arange(4), l2_reg=0.5, normalize=False))
  assert got == pytest.approx(0.5 * float(jnp.mean(jnp.sum(z * z, axis=1))), rel=1e-6)


# ------------------------------------------------------------------------ hyperparameters

S = jnp.array([[0.9, 0.2, 0.1], [0.3, 0.8, -0.2], [0.1, 0.4, 0.7]])
T = jnp.eye(3)
S3 = jnp.stack([S, S - 0.1], axis=-1)  # [B, C, K] for SoftTriple

# (function, positional arguments, keyword arguments, argument the message must name)
BAD = [
    (L.contrastive_from_dist, (S + 1, T), {"neg_margin": 0.0}, "neg_margin"),
    (L.contrastive_loss, (EMB, LABELS), {"pos_margin": -0.1}, "pos_margin"),
    (L.contrastive_loss, (EMB, LABELS), {"pos_margin": 0.5, "neg_margin": 0.5}, "neg_margin"),
    (L.contrastive_loss, (EMB, LABELS), {"neg_margin": math.nan}, "neg_margin"),
    (L.triplet_margin_loss, (EMB, LABELS), {"margin": -0.05}, "margin"),
    (L.triplet_margin_from_dist, (S + 1, T), {"margin": math.inf}, "margin"),
    (L.multi_similarity_loss, (EMB, LABELS), {"beta": -50.0}, "beta"),
    (L.multi_similarity_loss, (EMB, LABELS), {"alpha": 0.0}, "alpha"),
    (L.multi_similarity_from_sim, (S, T), {"base": math.nan}, "base"),
    (L.multi_similarity_loss, (EMB, LABELS), {"miner_epsilon": math.nan}, "epsilon"),
    (L.margin_loss, (EMB, LABELS), {"beta": -1.2}, "beta"),
    (L.margin_loss, (EMB, LABELS), {"beta": np.array([1.0, 1.0, -1.0, 1.0])}, "beta"),
    (L.margin_loss, (EMB, LABELS), {"margin": -0.2}, "margin"),
    (L.margin_loss, (EMB, LABELS), {"nu": -0.1}, "nu"),
    (L.lifted_structure_loss, (EMB, LABELS), {"neg_margin": math.inf}, "neg_margin"),
    (L.lifted_structure_loss, (EMB, LABELS), {"generalized": True, "pos_margin": math.nan},
     "pos_margin"),
    (L.circle_loss, (EMB, LABELS), {"gamma": 0.0}, "gamma"),
    (L.circle_from_sim, (S, T), {"margin": math.nan}, "margin"),
    (L.supcon_loss, (EMB, LABELS), {"temperature": 0.0}, "temperature"),
    (L.ntxent_from_sim, (S, T), {"temperature": -0.07}, "temperature"),
    (L.n_pairs_loss, (EMB, LABELS), {"l2_reg": -0.002}, "l2_reg"),
    (L.proxy_anchor_from_sim, (S, T), {"alpha": -32.0}, "alpha"),
    (L.proxy_anchor_from_sim, (S, T), {"margin": math.nan}, "margin"),
    (L.proxy_nca_from_sim, (S, T), {"temperature": 0.0}, "temperature"),
    (L.proxy_nca_from_sim, (S, T), {"temperature": math.inf}, "temperature"),
    (L.normalized_softmax_from_sim, (S, T), {"temperature": -1.0}, "temperature"),
    (L.arcface_from_sim, (S, T), {"scale": 0.0}, "scale"),
    (L.arcface_from_sim, (S, T), {"margin": 4.0}, "margin"),
    (L.arcface_from_sim, (S, T), {"margin": -0.5}, "margin"),
    (L.arcface_from_sim, (S, T), {"eps": 0.0}, "eps"),
    (L.cosface_from_sim, (S, T), {"scale": -64.0}, "scale"),
    (L.cosface_from_sim, (S, T), {"margin": -0.35}, "margin"),
    (L.soft_triple_from_sim, (S3, T), {"la": 0.0}, "la"),
    (L.soft_triple_from_sim, (S3, T), {"gamma": 0.0}, "gamma"),
    (L.soft_triple_from_sim, (S3, T), {"margin": -0.01}, "margin"),
    (L.soft_triple_loss, (EMB, LABELS, jnp.ones((4, 2, DIM))), {"tau": -0.2}, "tau"),
    (L.init_proxies, (jax.random.PRNGKey(0), 4, 3), {"centers_per_class": 0},
     "centers_per_class"),
    (L.init_proxies, (jax.random.PRNGKey(0), 0, 3), {}, "num_classes"),
    (L.init_proxies, (jax.random.PRNGKey(0), 4, 2.5), {}, "dim"),
]


@pytest.mark.parametrize("fn,args,kw,arg", BAD,
                         ids=[f"{b[0].__name__}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_hyperparameters_raise_naming_the_argument(fn, args, kw, arg):
  with pytest.raises(ValueError, match=f"`?{arg}`?"):
    fn(*args, **kw)


def test_invalid_hyperparameters_are_caught_under_jit():
  with pytest.raises(ValueError, match="`temperature`"):
    jax.jit(lambda s: L.supcon_from_sim(s, T, temperature=0.0))(S)


def test_a_bool_is_not_a_hyperparameter():
  with pytest.raises(TypeError, match="`temperature`"):
    L.supcon_from_sim(S, T, temperature=True)


def test_traced_hyperparameters_are_not_checked_and_still_work():
  # A learned or traced hyperparameter goes through (its value is unknown at trace time) and
  # gives the same value as the Python number.
  mask = ~jnp.eye(3, dtype=bool)
  cases = [
      (lambda v: L.supcon_from_sim(S, T, mask, temperature=v), 0.1),
      (lambda v: L.multi_similarity_from_sim(S, T, mask, beta=v), 50.0),
      (lambda v: L.margin_from_dist(1.0 - S, T, mask, beta=v, nu=0.1), 0.8),
      (lambda v: L.arcface_from_sim(S, T, scale=v), 64.0),
      (lambda v: L.n_pairs_loss(EMB, LABELS, l2_reg=v), 0.002),
  ]
  for fn, v in cases:
    traced = jax.jit(fn)(jnp.float32(v))
    assert float(traced) == pytest.approx(float(fn(v)), rel=1e-6)
  g = jax.grad(lambda b: L.margin_from_dist(1.0 - S, T, mask, beta=b, nu=0.1))(jnp.float32(0.8))
  assert np.isfinite(float(g))


def test_valid_edge_values_are_accepted():
  mask = ~jnp.eye(3, dtype=bool)
  assert np.isfinite(float(L.triplet_margin_from_dist(1.0 - S, T, mask, margin=0.0)))
  assert np.isfinite(float(L.cosface_from_sim(S, T, margin=0.0)))
  assert np.isfinite(float(L.arcface_from_sim(S, T, margin=0.0)))
  assert np.isfinite(float(L.margin_from_dist(1.0 - S, T, mask, beta=0.0)))
  assert np.isfinite(float(L.lifted_structure_from_dist(1.0 - S, T, mask, neg_margin=-1.0)))
