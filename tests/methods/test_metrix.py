"""Tests of jaxdml.methods.metrix (Metrix, Venkataramanan et al., ICLR 2022)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L
from jaxdml import objectives, similarity
from jaxdml.methods import metrix

#: The paper's four losses. Contrastive and Proxy-Anchor with the official code's values;
#: multi-similarity with Wang et al.'s (the official code's are 17.97 / 75.66 / 0.77,
#: `metrix.recipe`, tested below); ProxyNCA++ with its paper's temperature.
HPARAMS = {"contrastive": {"pos_margin": 0.0, "neg_margin": 0.5},
           "multi_similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
           "proxy_anchor": {"margin": 0.1, "alpha": 32.0},
           "proxy_nca": {"temperature": 1.0 / 9.0}}
KINDS = tuple(HPARAMS)
PROXY_KINDS = ("proxy_anchor", "proxy_nca")


def _objective(kind, **overrides):
  return objectives.core(kind, num_classes=4, dim=5, **{**HPARAMS[kind], **overrides})


def _params(kind, proxies):
  return {"proxies": proxies} if kind in PROXY_KINDS else {}


def _proxies(num_classes=4, dim=5, seed=3):
  return jax.random.normal(jax.random.key(seed), (num_classes, dim), jnp.float32)


def _embed_mix(z, pairs):
  return metrix.mix_embeddings(z[pairs.index_a], z[pairs.index_b], pairs.lam)


# --------------------------------------------------------------------------- mixing


def test_sample_lambda_beta_moments():
  lam = jax.jit(lambda k: metrix.sample_lambda(k, 2.0, (100_000,)))(jax.random.key(0))
  lam = np.asarray(lam, np.float64)
  assert lam.min() >= 0.0 and lam.max() <= 1.0
  assert abs(lam.mean() - 0.5) < 5e-3
  assert abs(lam.var() - 0.05) < 2e-3
  assert metrix.sample_lambda(jax.random.key(1)).shape == ()
  with pytest.raises(ValueError, match="alpha"):
    metrix.sample_lambda(jax.random.key(0), 0.0)


@pytest.mark.parametrize("shape", [(3, 4, 4, 2), (3, 2, 2, 8), (3, 5)])
def test_mix_identical_inputs_is_identity(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  f = jax.jit(metrix.mix)
  for lam in (jnp.float32(0.3), jnp.array([0.0, 0.5, 1.0], jnp.float32)):
    np.testing.assert_allclose(f(x, x, lam), x, rtol=1e-6, atol=1e-6)
  # per-example lam against a hand computation
  y = jax.random.normal(jax.random.key(1), shape)
  lam = jnp.array([0.0, 0.25, 1.0], jnp.float32)
  want = np.stack([np.asarray(y[0]), 0.25 * np.asarray(x[1]) + 0.75 * np.asarray(y[1]),
                   np.asarray(x[2])])
  np.testing.assert_allclose(f(x, y, lam), want, rtol=1e-6, atol=1e-6)


def test_feature_mixup_of_identical_maps_gives_clean_embedding():
  """Spec 4.7.4: mixing two identical feature maps embeds like the clean map, for any lam."""
  kw = jax.random.normal(jax.random.key(2), (8, 4))

  def embed(f):  # GAP + GMP, linear, L2 norm (the code's head)
    pooled = jnp.mean(f, axis=(1, 2)) + jnp.max(f, axis=(1, 2))
    return similarity.l2_normalize(pooled @ kw)

  feats = jax.random.normal(jax.random.key(3), (4, 3, 3, 8))
  pairs = metrix.MixPairs(jnp.arange(4), jnp.array([0, 1, 2, 3]), jnp.array([0, 1, 2, 3]),
                          jnp.float32(0.37), jnp.ones(4, bool))
  out = jax.jit(lambda f, p: embed(metrix.mix_pairs(f, p)))(feats, pairs)
  np.testing.assert_allclose(out, embed(feats), rtol=1e-5, atol=1e-6)


def test_mix_embeddings_normalisation():
  a = jnp.array([[1.0, 0.0]])
  n = jnp.array([[0.0, 1.0]])
  raw = metrix.mix_embeddings(a, n, 0.5, normalize=False)
  np.testing.assert_allclose(raw, [[0.5, 0.5]])
  np.testing.assert_allclose(metrix.mix_embeddings(a, n, 0.5), [[2 ** -0.5, 2 ** -0.5]],
                             rtol=1e-6)


def test_mix_errors_at_trace_time():
  x = jnp.ones((3, 4))
  with pytest.raises(ValueError, match="same shape"):
    jax.jit(lambda a, b: metrix.mix(a, b, 0.5))(x, jnp.ones((3, 5)))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    jax.jit(lambda a: metrix.mix(a, a, 1.5))(x)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    jax.jit(lambda a: metrix.mix(a, a, np.array([0.1, -0.2, 0.3])))(x)
  with pytest.raises(ValueError, match="one entry per example"):
    jax.jit(lambda a, lam: metrix.mix(a, a, lam))(x, jnp.ones(4) * 0.5)
  with pytest.raises(TypeError, match="floating"):
    metrix.mix(jnp.ones((3, 4), jnp.int32), jnp.ones((3, 4), jnp.int32), 0.5)
  with pytest.raises(ValueError, match="rank 2"):
    metrix.mix_embeddings(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), 0.5)


# --------------------------------------------------------------------------- pair selection


def _check_slots(pairs, labels, pairing):
  y = np.asarray(labels)
  a, ia, ib, v = (np.asarray(x) for x in (pairs.anchor, pairs.index_a, pairs.index_b,
                                          pairs.valid))
  for m in np.flatnonzero(v):
    assert y[ia[m]] == y[a[m]] and y[ib[m]] != y[a[m]]
    if pairing == "pos_neg":
      assert ia[m] != a[m]
    else:
      assert ia[m] == a[m]


def test_select_pos_neg_default_one_per_anchor(batch):
  y = jnp.asarray(batch.labels)
  sim = similarity.cosine(jnp.asarray(batch.emb))
  pairs = jax.jit(lambda y, s: metrix.select_pairs(y, 0.5, sim=s))(y, sim)
  assert pairs.anchor.shape == (12,) and pairs.lam.shape == ()
  assert bool(jnp.all(pairs.valid))
  np.testing.assert_array_equal(pairs.anchor, np.arange(12))
  _check_slots(pairs, y, "pos_neg")
  # hardest negative = most similar different-class example; positive = first (lowest index)
  yn, sn = np.asarray(y), np.asarray(sim)
  for i in range(12):
    negs = np.flatnonzero(yn != yn[i])
    assert pairs.index_b[i] == negs[np.argmax(sn[i, negs])]
    assert pairs.index_a[i] == np.flatnonzero((yn == yn[i]) & (np.arange(12) != i))[0]


def test_select_all_triples(batch):
  y = jnp.asarray(batch.labels)
  f = jax.jit(functools.partial(metrix.select_pairs, lam=0.3, num_positives=None,
                                num_negatives=None))
  pairs = f(y)
  assert pairs.anchor.shape == (12 * 11 * 11,)
  _check_slots(pairs, y, "pos_neg")
  a, ia, ib, v = (np.asarray(x) for x in (pairs.anchor, pairs.index_a, pairs.index_b,
                                          pairs.valid))
  got = set(zip(a[v].tolist(), ia[v].tolist(), ib[v].tolist(), strict=True))
  yn = np.asarray(y)
  want = {(a, p, n) for a in range(12) for p in range(12) for n in range(12)
          if p != a and yn[p] == yn[a] and yn[n] != yn[a]}
  assert got == want


def test_select_anchor_neg_uses_anchors_without_positive():
  y = jnp.array([0, 0, 1, 2, 3, 3], jnp.int32)
  pairs = jax.jit(lambda y: metrix.select_pairs(y, 0.5, pairing="anchor_neg",
                                                num_negatives=2))(y)
  assert pairs.anchor.shape == (12,)
  _check_slots(pairs, y, "anchor_neg")
  anchors = sorted(set(np.asarray(pairs.anchor)[np.asarray(pairs.valid)].tolist()))
  assert anchors == [2, 3]
  assert int(jnp.sum(pairs.valid)) == 4
  everyone = metrix.select_pairs(y, 0.5, pairing="anchor_neg", anchor_neg_all=True)
  assert bool(jnp.all(everyone.valid))
  _check_slots(everyone, y, "anchor_neg")


def test_select_random_pairing_and_num_mixed(batch):
  y = jnp.asarray(np.array([0, 0, 0, 1, 1, 2, 3, 3], np.int32))

  @jax.jit
  def draw(key):
    return metrix.sample_pairs(key, y, num_negatives=None, num_mixed=10)

  seen = set()
  for seed in range(12):
    pairs = jax.tree.map(np.asarray, draw(jax.random.key(seed)))
    assert pairs.anchor.shape == (10,) and pairs.lam.shape == ()
    assert 0.0 <= float(pairs.lam) <= 1.0
    is_an = bool(np.all((pairs.index_a == pairs.anchor)[pairs.valid]))
    seen.add(is_an)
    _check_slots(pairs, y, "anchor_neg" if is_an else "pos_neg")
    assert int(pairs.valid.sum()) == (7 if is_an else 10)  # only anchor 5: 7 negatives
  assert seen == {True, False}
  per = jax.jit(lambda k: metrix.sample_pairs(k, y, per_example_lambda=True,
                                              pairing="pos_neg"))(jax.random.key(0))
  assert per.lam.shape == (8,)


def test_select_errors():
  y = jnp.array([0, 0, 1, 1], jnp.int32)
  with pytest.raises(ValueError, match="pairing"):
    metrix.select_pairs(y, 0.5, pairing="both")
  with pytest.raises(ValueError, match="key"):
    metrix.select_pairs(y, 0.5, pairing="random")
  with pytest.raises(ValueError, match="num_mixed"):
    metrix.select_pairs(y, 0.5, num_mixed=5)
  with pytest.raises(ValueError, match="sim"):
    metrix.select_pairs(y, 0.5, sim=jnp.ones((4, 3)))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    jax.jit(lambda y: metrix.select_pairs(y, -0.1))(y)
  with pytest.raises(ValueError, match="lam"):
    metrix.select_pairs(y, jnp.full((3,), 0.5))
  with pytest.raises(TypeError, match="integer"):
    metrix.select_pairs(jnp.zeros(4), 0.5)


# --------------------------------------------------------------------------- targets


def test_mixed_targets(batch):
  y = jnp.asarray(batch.labels)
  pairs = metrix.select_pairs(y, 0.3, num_negatives=2)
  target, mask = jax.jit(metrix.mixed_targets)(y, pairs)
  assert target.shape == mask.shape == (12, 24)
  m = np.arange(24)
  np.testing.assert_allclose(np.asarray(target)[np.asarray(pairs.anchor), m], 0.3, rtol=1e-6)
  assert int(mask.sum()) == 24 and bool(jnp.all(mask[pairs.anchor, m]))
  full_t, full_m = metrix.mixed_targets(y, pairs, own_anchor=False)
  yn, ya, yb = (np.asarray(v) for v in (y, y[pairs.index_a], y[pairs.index_b]))
  want = 0.3 * (yn[:, None] == ya[None]) + 0.7 * (yn[:, None] == yb[None])
  np.testing.assert_allclose(full_t, want, rtol=1e-6)
  assert bool(jnp.all(full_m))
  pt, pm = metrix.mixed_proxy_targets(y, pairs, 4)
  np.testing.assert_allclose(pt.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(pt[m, ya], 0.3, rtol=1e-6)
  np.testing.assert_allclose(pt[m, yb], 0.7, rtol=1e-6)


# --------------------------------------------------------------------------- lam = 1 / lam = 0


# random 5-d embeddings are rarely within the code's 0.5 margin: widen it so both terms act
HP = {"contrastive": {"neg_margin": 1.3}}


def _clean_reference(kind, z, y, members, own, proxies):
  """The clean jaxdml loss of the anchors against the unmixed members (pos at 1, neg at 0)."""
  hp = {**HPARAMS[kind], **HP.get(kind, {})}
  if kind == "contrastive":
    return L.contrastive_loss(z, y, z[members], y[members], mask=own, **hp)
  if kind == "multi_similarity":
    return L.multi_similarity_loss(z, y, z[members], y[members], mask=own, **hp)
  if kind == "proxy_anchor":
    return L.proxy_anchor_loss(z[members], y[members], proxies, **hp)
  return L.proxy_nca_loss(z[members], y[members], proxies, **hp)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_lambda_endpoints_reproduce_clean_terms(batch, kind, lam):
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  proxies = _proxies()
  pairs = metrix.select_pairs(y, lam, sim=similarity.cosine(z))
  assert bool(jnp.all(pairs.valid))
  obj = _objective(kind, **HP.get(kind, {}))

  @jax.jit
  def f(z, proxies, pairs):
    return metrix.mixed_loss(obj, _params(kind, proxies), z, y, _embed_mix(z, pairs), pairs)

  got = f(z, proxies, pairs)
  members = pairs.index_a if lam == 1.0 else pairs.index_b
  own = jnp.arange(12)[:, None] == pairs.anchor[None, :]
  want = _clean_reference(kind, z, y, members, own, proxies)
  assert float(want) > 0
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["contrastive", "multi_similarity"])
def test_lambda_endpoints_pair_terms_only(batch, kind):
  """lam = 1 uses only positive terms, lam = 0 only negative ones (pair losses)."""
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  obj = _objective(kind)
  for lam in (1.0, 0.0):
    pairs = metrix.select_pairs(y, lam)
    sim, target, mask = metrix.mixed_inputs(obj, {}, z, y, _embed_mix(z, pairs), pairs)
    hard = jnp.full_like(target, lam)
    got = obj.soft.loss({}, sim, target, mask)
    np.testing.assert_allclose(got, obj.soft.loss({}, sim, hard, mask), rtol=1e-6)


def test_contrastive_by_hand():
  """Spec 4.7.2: a = p = (1, 0), n = (0, 1), lam = 0.5."""
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  y = jnp.array([0, 0, 1], jnp.int32)
  pairs = metrix.MixPairs(jnp.array([0]), jnp.array([1]), jnp.array([2]), jnp.float32(0.5),
                          jnp.array([True]))
  # the raw interpolation (0.5, 0.5): d = sqrt(0.5)
  raw = metrix.mix_embeddings(z[pairs.index_a], z[pairs.index_b], pairs.lam, normalize=False)
  target, mask = metrix.mixed_targets(y, pairs)
  d = similarity.euclidean(z, raw)
  np.testing.assert_allclose(d[0, 0], 0.5 ** 0.5, rtol=1e-6)
  pos = L.contrastive_from_dist(d, target, mask, neg_margin=0.5)
  np.testing.assert_allclose(pos, 0.5 * 0.5 ** 0.5, rtol=1e-6)  # 0.3536; negative term 0
  # what the Metrix loss sees: the distance of the re-normalised mixture, 0.7654
  obj = _objective("contrastive")
  got = jax.jit(lambda z, p: metrix.mixed_loss(obj, {}, z, y, _embed_mix(z, p), p))(z, pairs)
  np.testing.assert_allclose(got, 0.5 * np.sqrt(2 - 2 * 0.5 ** 0.5), rtol=1e-6)
  # a near negative: the negative term (1 - lam)[0.5 - d]_+ appears
  z2 = z.at[2].set(jnp.array([0.96, 0.28]))
  p2 = pairs._replace(lam=jnp.float32(0.0))
  got2 = metrix.mixed_loss(obj, {}, z2, y, _embed_mix(z2, p2), p2)
  np.testing.assert_allclose(got2, 0.5 - np.sqrt(2 - 2 * 0.96), rtol=1e-5)


def test_mixed_loss_of_a_users_own_pair_loss():
  """A loss given only by its matrix form mixes like a built-in one: `pair_loss(from_sim)` with
  the multi-similarity matrix form gives the built-in's mixed loss."""
  z = jax.random.normal(jax.random.key(0), (8, 5))
  y = jnp.repeat(jnp.arange(4), 2)
  pairs = metrix.sample_pairs(jax.random.key(1), y, pairing="pos_neg", num_negatives=None)
  mixed = _embed_mix(z, pairs)
  mine = objectives.pair_loss(L.multi_similarity_from_sim, name="mine")
  np.testing.assert_allclose(metrix.mixed_loss(mine, {}, z, y, mixed, pairs),
                             metrix.mixed_loss(_objective("multi_similarity"), {}, z, y, mixed,
                                               pairs), rtol=1e-6)


# --------------------------------------------------------------------------- full objective


@pytest.mark.parametrize("kind", KINDS)
def test_wrap_is_clean_plus_weighted_mixed_loss_with_finite_gradients(batch, kind):
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  proxies = _proxies()
  inner = _objective(kind)
  obj = metrix.wrap(inner, metrix.Settings(location="embedding", pairing="pos_neg"))
  key = jax.random.key(5)

  def total(params, z):
    loss, _, aux = obj.apply(params, {}, objectives.Batch(z, y), key)
    return loss, aux

  grad_fn = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))
  params = _params(kind, proxies)
  (value, aux), grads = grad_fn(params, z)
  clean = inner.apply(params, {}, objectives.Batch(z, y), jax.random.split(key)[0])[0]
  np.testing.assert_allclose(aux["base_loss"], clean, rtol=1e-6)
  np.testing.assert_allclose(value, clean + 0.4 * aux["mix_loss"], rtol=1e-5)
  assert np.isfinite(float(value)) and float(aux["mix_loss"]) > 0
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))
  assert float(jnp.abs(grads[1]).sum()) > 0

  # degenerate mixtures stay finite: lam at 0 and 1, anchor-negative mixing (mixed == anchor)
  def mixed(params, z, p):
    return metrix.mixed_loss(inner, params, z, y, _embed_mix(z, p), p)

  mixed_grad = jax.jit(jax.grad(mixed, argnums=(0, 1)))
  for pairing in ("pos_neg", "anchor_neg"):
    for lam in (0.0, 1.0):
      p = metrix.select_pairs(y, lam, pairing=pairing, anchor_neg_all=True)
      p = p._replace(lam=jnp.float32(lam))
      for g in jax.tree.leaves(mixed_grad(params, z, p)):
        assert np.all(np.isfinite(np.asarray(g)))


def test_errors(batch):
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  pairs = metrix.select_pairs(y, 0.5)
  mixed = _embed_mix(z, pairs)
  obj = _objective("contrastive")
  with pytest.raises(ValueError, match="soft targets"):
    metrix.wrap(objectives.core("lifted_structure"))
  with pytest.raises(ValueError, match="soft targets"):
    metrix.mixed_loss(objectives.core("n_pairs"), {}, z, y, mixed, pairs)
  with pytest.raises(ValueError, match="rows"):
    jax.jit(lambda z, m: metrix.mixed_loss(obj, {}, z, y, m, pairs))(z, mixed[:5])
  with pytest.raises(ValueError, match="dimension"):
    metrix.mixed_loss(obj, {}, z, y, mixed[:, :3], pairs)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrix.mixed_loss(obj, {}, z, y, mixed, pairs._replace(lam=jnp.float32(2.0)))
  with pytest.raises(ValueError, match="location"):
    metrix.Settings(location="pixels")
  with pytest.raises(ValueError, match="weight"):
    metrix.Settings(weight=-0.4)
  with pytest.raises(ValueError, match="num_positives"):
    metrix.Settings(num_positives=0)
  with pytest.raises(TypeError, match="metrix.Settings"):
    metrix.wrap(obj, {"location": "feature"})
  for location, what in (("feature", "feature maps"), ("input", "inputs")):
    wrapped = metrix.wrap(obj, metrix.Settings(location=location))
    with pytest.raises(ValueError, match=what):
      wrapped.apply({}, {}, objectives.Batch(z, y), jax.random.key(0))


def test_build_keeps_the_positive_negative_mixes_of_a_batch():
  """Input mixup of a P x M batch: num_mixed = P M (M - 1), so no padding image is embedded."""
  inner = _objective("contrastive")
  setup = objectives.Setup(num_classes=4, dim=5, classes_per_batch=4, per_class=3)
  built = metrix.build(inner, metrix.Settings(location="input"), setup)
  y = jnp.repeat(jnp.arange(4), 3)
  seen = []
  fns = objectives.ModelFns(embed=lambda x: (seen.append(x.shape), x)[1])
  x = jax.random.normal(jax.random.key(0), (12, 5))
  built.apply({}, {}, objectives.Batch(x, y, inputs=x, model=fns), jax.random.key(1))
  assert seen == [(4 * 3 * 2, 5)]


def test_build_mixes_one_batch_of_inputs_for_random_batches():
  """Random batches of B: B input mixes, not B (B - 1), and every valid slot of a batch with
  few positives is among them (the official runs' batches of 100 hold about 7 positive pairs)."""
  inner = _objective("contrastive")
  setup = objectives.Setup(num_classes=50, dim=5, batch_size=12)
  built = metrix.build(inner, metrix.Settings(location="input"), setup)
  y = jnp.array([0, 1, 2, 0, 3, 4, 5, 6, 1, 7, 8, 9])  # positive pairs: (0, 3), (1, 8)
  seen = []
  fns = objectives.ModelFns(embed=lambda x: (seen.append(x.shape), x)[1])
  x = jax.random.normal(jax.random.key(0), (12, 5))
  batch = objectives.Batch(x, y, inputs=x, model=fns)
  loss, _, aux = built.apply({}, {}, batch, jax.random.key(1))
  assert seen == [(12, 5)]
  explicit = metrix.wrap(inner, metrix.Settings(location="input", num_mixed=12))
  np.testing.assert_allclose(explicit.apply({}, {}, batch, jax.random.key(1))[0], loss)
  for key in range(5):
    pairs = metrix.select_pairs(y, 0.5, sim=x @ x.T, key=jax.random.key(key), num_positives=None,
                                num_negatives=1, num_mixed=12)
    assert int(pairs.valid.sum()) == 4
    kept = {(int(a), int(p)) for a, p, v in zip(pairs.anchor, pairs.index_a,
                                                          pairs.valid, strict=True) if v}
    assert kept == {(0, 3), (3, 0), (1, 8), (8, 1)}
  # a given num_mixed stands
  own = metrix.build(inner, metrix.Settings(location="input", num_mixed=3), setup)
  seen.clear()
  own.apply({}, {}, batch, jax.random.key(1))
  assert seen == [(3, 5)]


# --------------------------------------------------------------------------- positivity


def _toy():
  a = [1.0, 0.0]
  p = [0.8, 0.6]     # d(a, p) = 0.632
  n = [0.96, 0.28]   # d(a, n) = 0.283 < 0.5: inside the negative margin
  return jnp.array([a, p, n]), jnp.array([0, 0, 1], jnp.int32)


def test_positivity_clean_positive_and_negative_contrastive():
  z, y = _toy()

  @jax.jit
  def pos(z, pairs):
    return metrix.mixed_positivity(_objective("contrastive"), {}, z, y, _embed_mix(z, pairs),
                                   pairs)

  at1 = pos(z, metrix.select_pairs(y, 1.0))
  at0 = pos(z, metrix.select_pairs(y, 0.0))
  np.testing.assert_array_equal(at1, [True, True, False])  # anchor 2 has no positive
  np.testing.assert_array_equal(at0, [False, False, False])
  # the gradient matrix itself: d loss / d s < 0 for the pulled pair
  pairs = metrix.select_pairs(y, 1.0)
  obj = _objective("contrastive")
  sim, target, mask = metrix.mixed_inputs(obj, {}, z, y, _embed_mix(z, pairs), pairs)
  grad, positive = metrix.positivity(obj, {}, sim, target, mask)
  assert float(grad[0, 0]) < 0 and bool(positive[0, 0])
  assert not bool(positive[0, 1])  # outside the mask


@pytest.mark.parametrize("kind", KINDS)
def test_positivity_endpoints_all_kinds(batch, kind):
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  proxies = _proxies()
  obj, params = _objective(kind), _params(kind, proxies)
  curve = jax.jit(lambda z, lams: metrix.positivity_curve(obj, params, z, y, lams))(
      z, jnp.array([0.0, 0.5, 1.0]))
  assert curve.shape == (3,)
  assert np.all((np.asarray(curve) >= 0) & (np.asarray(curve) <= 1))
  assert float(curve[2]) == 1.0  # a clean positive is always pulled


def test_positivity_curve_contrastive_matches_reference(batch, npref):
  """d l / d d = lam / n_pos [d > 0] - (1 - lam) / n_neg [d < m]; positive iff >= 0."""
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  lams = np.linspace(0.0, 1.0, 11)
  margin = 1.3
  obj = _objective("contrastive", neg_margin=margin)
  got = np.asarray(jax.jit(lambda z: metrix.positivity_curve(
      obj, {}, z, y, jnp.asarray(lams, jnp.float32)))(z))
  pairs = metrix.select_pairs(y, 0.0, pairing="pos_neg", num_negatives=None)
  a, ia, ib, v = (np.asarray(x) for x in (pairs.anchor, pairs.index_a, pairs.index_b,
                                          pairs.valid))
  zn = npref.l2n(batch.emb)
  want = []
  for lam in lams:
    mixed = npref.l2n(lam * zn[ia] + (1 - lam) * zn[ib])
    d = np.linalg.norm(zn[a] - mixed, axis=1)[v]
    n_pos = max(np.sum(lam * d > 0), 1)
    n_neg = max(np.sum((1 - lam) * np.maximum(margin - d, 0) > 0), 1)
    dd = lam / n_pos * (d > 0) - (1 - lam) / n_neg * (d < margin)
    want.append(np.mean(dd >= 0))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got[-1] == 1.0 and got[0] < 1.0
  assert np.all(np.diff(got) >= 0)


def test_positivity_curve_errors(batch):
  z, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  obj = _objective("contrastive")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrix.positivity_curve(obj, {}, z, y, jnp.array([0.0, 1.2]))
  with pytest.raises(ValueError, match="rank 1"):
    metrix.positivity_curve(obj, {}, z, y, jnp.array(0.5))
  with pytest.raises(ValueError, match="soft targets"):
    metrix.positivity_curve(objectives.core("lifted_structure"), {}, z, y, jnp.array([0.5]))


# --------------------------------------------------------------------------- published runs

# Written from github.com/billpsomas/metrix at b679703: main.py lines 155-186 (losses, miner) and
# 68-89 (loaders), README (`--batch_size 100`, `--images_per_class 5`).
OFFICIAL_LOSSES = {
    "contrastive": ("contrastive", {"pos_margin": 0.0, "neg_margin": 0.5}, None, {}),
    "multisimilarity": ("multi_similarity", {"alpha": 17.97, "beta": 75.66, "base": 0.77},
                        "multi_similarity", {"epsilon": 0.39}),
    "proxyanchor": ("proxy_anchor", {"margin": 0.1, "alpha": 32.0}, None, {}),
}
OFFICIAL_PER_CLASS = {"cub": None, "cars": None, "sop": 5, "inshop": 5}
OFFICIAL_LOCATION = {"baseline": None, "input": "input", "feature": "feature",
                     "embed": "embedding"}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_PER_CLASS))
@pytest.mark.parametrize("loss", sorted(OFFICIAL_LOSSES))
def test_recipe_matches_the_official_code(dataset, loss):
  for mode, location in OFFICIAL_LOCATION.items():
    r = metrix.recipe(dataset, loss, mode)
    assert (r.loss, dict(r.loss_kwargs), r.miner, dict(r.miner_kwargs)) == OFFICIAL_LOSSES[loss]
    assert r.batch_size == 100 and r.per_class == OFFICIAL_PER_CLASS[dataset]
    if location is None:
      assert r.settings is None
    else:
      assert r.settings == metrix.Settings(location=location)
      s = r.settings
      assert (s.alpha, s.weight, s.pairing, s.per_example_lambda) == (2.0, 0.4, "random", False)


def test_recipe_builds_the_objective_and_rejects_unknown_names():
  r = metrix.recipe("cub", "multisimilarity", "embed")
  inner = objectives.core(r.loss, miner=r.miner, miner_kwargs=r.miner_kwargs, **r.loss_kwargs)
  obj = metrix.wrap(inner, r.settings)
  rng = np.random.default_rng(4)
  z = similarity.l2_normalize(jnp.asarray(rng.normal(size=(8, 5)), jnp.float32))
  y = jnp.array([0, 0, 1, 1, 2, 3, 4, 5])
  loss, _, aux = obj.apply({}, {}, objectives.Batch(z, y), jax.random.key(0))
  np.testing.assert_allclose(
      aux["base_loss"], L.multi_similarity_loss(z, y, alpha=17.97, beta=75.66, base=0.77,
                                                miner_epsilon=0.39), rtol=1e-5)
  assert np.isfinite(float(loss))
  with pytest.raises(ValueError, match="dataset"):
    metrix.recipe("cub200")
  with pytest.raises(ValueError, match="loss"):
    metrix.recipe("cub", "ms")
  with pytest.raises(ValueError, match="mode"):
    metrix.recipe("cub", "contrastive", "embedding")
  with pytest.raises(TypeError):
    r.loss_kwargs["alpha"] = 2.0
