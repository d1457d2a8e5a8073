"""Pair and triplet losses against float64 loop implementations and pytorch-metric-learning.

Every jaxdml call goes through `jax.jit`. One jitted value-and-gradient function per loss
configuration is shared by all tests (same shapes), so each compiles once per input shape.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L

RTOL, ATOL = 1e-4, 1e-5
CLASS_BETA = np.linspace(1.0, 1.4, 12)  # per-class margin-loss beta, indexed by label

# name -> (wrapper, keyword arguments, accepts ref_embeddings)
CONFIGS = {
    "contrastive": (L.contrastive_loss, {}, True),
    "triplet_all": (L.triplet_margin_loss, {}, True),
    "triplet_semihard": (L.triplet_margin_loss, {"triplets": "semihard"}, True),
    "triplet_hard": (L.triplet_margin_loss, {"triplets": "hard"}, True),
    "triplet_hard_soft": (L.triplet_margin_loss, {"triplets": "hard", "soft_margin": True}, True),
    "multi_similarity": (L.multi_similarity_loss, {}, True),
    "multi_similarity_mined": (L.multi_similarity_loss, {"miner_epsilon": 0.1}, True),
    "margin": (L.margin_loss, {}, True),
    "margin_class_beta": (L.margin_loss, {"beta": CLASS_BETA, "nu": 0.1}, True),
    "lifted": (L.lifted_structure_loss, {}, False),
    "generalized_lifted": (L.lifted_structure_loss, {"generalized": True}, False),
    "circle": (L.circle_loss, {}, True),
    "supcon": (L.supcon_loss, {}, True),
    "ntxent": (L.ntxent_loss, {}, True),
    "n_pairs": (L.n_pairs_loss, {}, False),
    "n_pairs_dot": (L.n_pairs_loss, {"normalize": False, "l2_reg": 0.002}, False),
}
REF_NAMES = [n for n, c in CONFIGS.items() if c[2]]
# Losses whose value does not depend on the embeddings' norms.
SCALE_INVARIANT = [n for n in CONFIGS if n != "n_pairs_dot"]
# N-pair picks the first two examples of each class: the batch order is part of its definition.
PERMUTATION_INVARIANT = [n for n in CONFIGS if not n.startswith("n_pairs")]


def _all_losses(refs: bool):
  """jit of every configuration at once, one compilation per input shape (far cheaper than one
  per loss). Against the batch itself: value_and_grad in `embeddings`; against references:
  values and gradients in `embeddings` of a few configurations (the references get none)."""
  def f(e, y, *ref_args):
    out = {}
    for name, (fn, kw, accepts_refs) in CONFIGS.items():
      if refs and not accepts_refs:
        continue
      loss = functools.partial(lambda x, fn, kw: fn(x, y, *ref_args, **kw), fn=fn, kw=kw)
      if refs and name not in REF_GRADS:
        out[name] = (loss(e), jnp.zeros_like(e))
      else:
        out[name] = jax.value_and_grad(loss)(e)
    return out
  return jax.jit(f)


# With references, no pair is masked out for being a self-pair: coincident query / reference
# points put d = 0 on live pairs. These cover the distance-based and the cosine-based code paths.
REF_GRADS = ("contrastive", "triplet_all", "margin", "multi_similarity", "circle")
_ALL = {False: _all_losses(False), True: _all_losses(True)}


def run(name, emb, labels, ref_emb=None, ref_labels=None):
  """(value, grad) of one configuration as NumPy, through the shared jitted function."""
  args = (jnp.asarray(emb), jnp.asarray(labels, jnp.int32))
  if ref_emb is not None:
    args += (jnp.asarray(ref_emb), jnp.asarray(ref_labels, jnp.int32))
  v, g = _ALL[ref_emb is not None](*args)[name]
  return float(v), np.asarray(g)


# --------------------------------------------------------------------------- naive references


class Naive:
  """Loops over pairs / triplets in float64, written from the papers' and PML's definitions."""

  def __init__(self, h, emb, labels, ref_emb=None, ref_labels=None):
    self.h = h
    self.self_ref = ref_emb is None
    if self.self_ref:
      ref_emb, ref_labels = emb, labels
    self.emb = np.asarray(emb, np.float64)
    self.labels, self.ref_labels = list(labels), list(ref_labels)
    self.q = len(self.labels)
    self.pos, self.neg = h.pairs(self.labels, self.ref_labels, self.self_ref)
    self.pos_of = collections.defaultdict(list)
    self.neg_of = collections.defaultdict(list)
    for a, p in self.pos:
      self.pos_of[a].append(p)
    for a, n in self.neg:
      self.neg_of[a].append(n)
    self.triplets = [(a, p, n) for a, p in self.pos for n in self.neg_of[a]]
    qn, rn = h.l2n(emb), h.l2n(ref_emb)
    self.d = h.cdist(qn, rn)
    self.s = qn @ rn.T

  def contrastive(self, pos_margin=0.0, neg_margin=1.0):
    d, h = self.d, self.h
    return (h.avg_nonzero([max(d[a, p] - pos_margin, 0.0) for a, p in self.pos])
            + h.avg_nonzero([max(neg_margin - d[a, n], 0.0) for a, n in self.neg]))

  def triplet(self, margin=0.05, triplets="all", soft_margin=False):
    d = self.d
    losses = []
    if triplets == "hard":
      for a in range(self.q):
        if self.pos_of[a] and self.neg_of[a]:
          gap = max(d[a, p] for p in self.pos_of[a]) - min(d[a, n] for n in self.neg_of[a])
          losses.append(np.logaddexp(0.0, gap) if soft_margin else max(gap + margin, 0.0))
      return self.h.avg_nonzero(losses)
    for a, p, n in self.triplets:
      if triplets == "semihard" and not d[a, n] > d[a, p]:
        continue
      losses.append(max(d[a, p] - d[a, n] + margin, 0.0))
    return self.h.avg_nonzero(losses)

  def multi_similarity(self, alpha=2.0, beta=50.0, base=0.5, epsilon=None):
    s = self.s
    total = 0.0
    for a in range(self.q):
      ps, ns = self.pos_of[a], self.neg_of[a]
      if epsilon is not None:  # the paper's mining, evaluated before either set is pruned
        min_p = min((s[a, p] for p in ps), default=np.inf)
        max_n = max((s[a, n] for n in ns), default=-np.inf)
        ps = [p for p in ps if s[a, p] - epsilon < max_n]
        ns = [n for n in ns if s[a, n] + epsilon > min_p]
      total += np.log1p(sum(np.exp(-alpha * (s[a, p] - base)) for p in ps)) / alpha
      total += np.log1p(sum(np.exp(beta * (s[a, n] - base)) for n in ns)) / beta
    return total / self.q

  def margin(self, beta=1.2, margin=0.2, nu=0.0):
    d = self.d
    b = lambda a: beta[self.labels[a]] if np.ndim(beta) else beta
    total, count = 0.0, 0
    for a, p, n in self.triplets:
      lp = max(d[a, p] - b(a) + margin, 0.0)
      ln = max(b(a) - d[a, n] + margin, 0.0)
      total += lp + ln + nu * b(a)
      count += int(lp > 0) + int(ln > 0)
    return total / count if count else 0.0

  def lifted(self, neg_margin=1.0, pos_margin=0.0):
    d = self.d
    losses = []
    for i, j in self.pos:
      terms = [neg_margin - d[i, k] for k in self.neg_of[i]]
      terms += [neg_margin - d[j, k] for k in self.neg_of[j]]
      if terms:
        jij = self.h.lse(terms) + d[i, j] - pos_margin
        losses.append(0.5 * max(jij, 0.0) ** 2)
      else:  # log of an empty sum: -inf, hinge 0
        losses.append(0.0)
    return float(np.mean(losses)) if losses else 0.0

  def generalized_lifted(self, neg_margin=1.0, pos_margin=0.0):
    d = self.d
    total = 0.0
    for a in range(self.q):
      ps, ns = self.pos_of[a], self.neg_of[a]
      if ps and ns:
        total += max(self.h.lse([d[a, p] - pos_margin for p in ps])
                     + self.h.lse([neg_margin - d[a, n] for n in ns]), 0.0)
    return total / self.q

  def circle(self, m=0.4, gamma=80.0, weights_sim=None):
    """`weights_sim`: similarities to compute the self-paced weights from (default: self.s)."""
    s = self.s
    w = s if weights_sim is None else weights_sim
    losses = []
    for a in range(self.q):
      ps, ns = self.pos_of[a], self.neg_of[a]
      if ps and ns:
        lp = [-gamma * max(1 + m - w[a, p], 0.0) * (s[a, p] - (1 - m)) for p in ps]
        ln = [gamma * max(w[a, n] + m, 0.0) * (s[a, n] - m) for n in ns]
        losses.append(np.logaddexp(0.0, self.h.lse(lp) + self.h.lse(ln)))
    return self.h.avg_nonzero(losses)

  def supcon(self, temperature=0.1):
    z = self.s / temperature
    losses = []
    for a in range(self.q):
      ps, ns = self.pos_of[a], self.neg_of[a]
      if ps:
        denom = self.h.lse([z[a, x] for x in ps + ns])
        losses.append(-np.mean([z[a, p] - denom for p in ps]))
    return self.h.avg_nonzero(losses)

  def ntxent(self, temperature=0.07):
    z = self.s / temperature
    losses = []
    for a, p in self.pos:
      ns = self.neg_of[a]
      losses.append(self.h.lse([z[a, p]] + [z[a, n] for n in ns]) - z[a, p] if ns else 0.0)
    return float(np.mean(losses)) if losses else 0.0

  def n_pairs(self, normalize=True, l2_reg=0.0):
    members = collections.defaultdict(list)
    for i, y in enumerate(self.labels):
      members[y].append(i)
    pairs = [(m[0], m[1]) for m in members.values() if len(m) >= 2]
    f = self.h.l2n(self.emb) if normalize else self.emb
    losses = []
    for a, p in pairs:
      logits = [f[a] @ f[c] for _, c in pairs]
      losses.append(self.h.lse(logits) - f[a] @ f[p])
    reg = l2_reg * np.mean(np.sum(self.emb ** 2, axis=1))
    return (float(np.mean(losses)) if losses else 0.0) + reg


NAIVE = {
    "contrastive": lambda n: n.contrastive(),
    "triplet_all": lambda n: n.triplet(),
    "triplet_semihard": lambda n: n.triplet(triplets="semihard"),
    "triplet_hard": lambda n: n.triplet(triplets="hard"),
    "triplet_hard_soft": lambda n: n.triplet(triplets="hard", soft_margin=True),
    "multi_similarity": lambda n: n.multi_similarity(),
    "multi_similarity_mined": lambda n: n.multi_similarity(epsilon=0.1),
    "margin": lambda n: n.margin(),
    "margin_class_beta": lambda n: n.margin(beta=CLASS_BETA, nu=0.1),
    "lifted": lambda n: n.lifted(),
    "generalized_lifted": lambda n: n.generalized_lifted(),
    "circle": lambda n: n.circle(),
    "supcon": lambda n: n.supcon(),
    "ntxent": lambda n: n.ntxent(),
    "n_pairs": lambda n: n.n_pairs(),
    "n_pairs_dot": lambda n: n.n_pairs(normalize=False, l2_reg=0.002),
}


def naive(h, name, emb, labels, ref_emb=None, ref_labels=None):
  return NAIVE[name](Naive(h, emb, labels, ref_emb, ref_labels))


# --------------------------------------------------------------------------- 1. vs naive loops


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_naive_batch(name, batch, batch2, npref):
  for b in (batch, batch2):
    value, _ = run(name, b.emb, b.labels)
    np.testing.assert_allclose(value, naive(npref, name, b.emb, b.labels), rtol=RTOL, atol=ATOL)
  assert value > 0  # the comparison is not vacuous


@pytest.mark.parametrize("name", REF_NAMES)
def test_matches_naive_with_references(name, batch, batch2, npref):
  for b in (batch, batch2):
    value, _ = run(name, b.emb, b.labels, b.ref_emb, b.ref_labels)
    expected = naive(npref, name, b.emb, b.labels, b.ref_emb, b.ref_labels)
    np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL)


def test_singleton_classes_match_naive(npref, rng):
  """Classes with one example: anchors without positives, handled as each docstring says."""
  emb = rng.normal(size=(12, 5)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 7], np.int32)
  for name in CONFIGS:
    value, grad = run(name, emb, labels)
    np.testing.assert_allclose(value, naive(npref, name, emb, labels), rtol=RTOL, atol=ATOL,
                               err_msg=name)
    assert np.all(np.isfinite(grad)), name


def test_triplet_all_soft_targets_match_naive(rng):
  """Prefix-sum triplet sums vs the O(QR^2) loop with soft weights y_ap (1 - y_an) and a mask."""
  q, r, margin = 5, 7, 0.3
  dist = rng.uniform(0.0, 1.5, size=(q, r)).astype(np.float32)
  target = rng.choice([0.0, 0.25, 0.7, 1.0], size=(q, r)).astype(np.float32)
  mask = rng.uniform(size=(q, r)) > 0.2
  f = jax.jit(lambda d, t, m: L.triplet_margin_from_dist(d, t, m, margin=margin))
  total, count = 0.0, 0
  for a in range(q):
    for p in range(r):
      for n in range(r):
        wp = target[a, p] * mask[a, p]
        wn = (1 - target[a, n]) * mask[a, n]
        hinge = max(float(dist[a, p]) - float(dist[a, n]) + margin, 0.0)
        total += wp * wn * hinge
        count += (wp > 0) and (wn > 0) and (hinge > 0)
  np.testing.assert_allclose(float(f(dist, target, mask)), total / count, rtol=RTOL)


# --------------------------------------------------------------------------- 2. vs PML


def _pml_value(pml, name, emb, labels, ref_emb=None, ref_labels=None):
  torch, losses, miners = pml.torch, pml.pml.losses, pml.pml.miners
  t = lambda x: torch.tensor(np.asarray(x, np.float64))
  e, y = t(emb), torch.tensor(np.asarray(labels), dtype=torch.long)
  refs = {}
  if ref_emb is not None:
    refs = {"ref_emb": t(ref_emb), "ref_labels": torch.tensor(np.asarray(ref_labels),
                                                              dtype=torch.long)}
  miner = None
  if name == "triplet_semihard":
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
  elif name.startswith("triplet_hard"):
    miner = miners.BatchHardMiner()
  elif name == "multi_similarity_mined":
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
  if name == "margin_class_beta":
    loss = losses.MarginLoss(nu=0.1, learn_beta=True, num_classes=len(CLASS_BETA))
    loss.beta.data = t(CLASS_BETA)
  elif name == "n_pairs_dot":
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.regularizers import LpRegularizer
    loss = losses.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False),
                             embedding_regularizer=LpRegularizer(power=2),
                             embedding_reg_weight=0.002)
  else:
    loss = {
        "contrastive": losses.ContrastiveLoss,
        "triplet_all": losses.TripletMarginLoss,
        "triplet_semihard": losses.TripletMarginLoss,
        "triplet_hard": losses.TripletMarginLoss,
        "triplet_hard_soft": functools.partial(losses.TripletMarginLoss, margin=0.0,
                                               smooth_loss=True),
        "multi_similarity": losses.MultiSimilarityLoss,
        "multi_similarity_mined": losses.MultiSimilarityLoss,
        "margin": losses.MarginLoss,
        "lifted": losses.LiftedStructureLoss,
        "generalized_lifted": losses.GeneralizedLiftedStructureLoss,
        "circle": losses.CircleLoss,
        "supcon": losses.SupConLoss,
        "ntxent": losses.NTXentLoss,
        "n_pairs": losses.NPairsLoss,
    }[name]()
  indices = None
  if miner is not None:
    indices = miner(e, y, refs.get("ref_emb"), refs.get("ref_labels"))
  return float(loss(e, y, indices, **refs).detach())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_pml_batch(name, batch, batch2, pml):
  for b in (batch, batch2):
    value, _ = run(name, b.emb, b.labels)
    np.testing.assert_allclose(value, _pml_value(pml, name, b.emb, b.labels), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("name", REF_NAMES)
def test_matches_pml_with_references(name, batch, batch2, pml):
  for b in (batch, batch2):
    value, _ = run(name, b.emb, b.labels, b.ref_emb, b.ref_labels)
    expected = _pml_value(pml, name, b.emb, b.labels, b.ref_emb, b.ref_labels)
    np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL)


def test_pml_deviation_generalized_lifted_singletons(pml, npref, rng):
  """Documented: PML takes an empty log-sum as 0, so an anchor without positives still adds
  [log sum_n e^{1 - d_an}]_+ / N there; jaxdml gives such an anchor 0."""
  emb = rng.normal(size=(12, 5)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 7], np.int32)
  assert "Deviation from PML" in L.generalized_lifted_structure_from_dist.__doc__
  value, _ = run("generalized_lifted", emb, labels)
  n = Naive(npref, emb, labels)
  extra = sum(max(npref.lse([1.0 - n.d[a, k] for k in n.neg_of[a]]), 0.0)
              for a in range(12) if not n.pos_of[a]) / 12
  assert extra > 0.01
  np.testing.assert_allclose(_pml_value(pml, "generalized_lifted", emb, labels),
                             value + extra, rtol=RTOL, atol=ATOL)


def test_pml_deviation_supcon_single_class(pml, npref, rng):
  """Documented: with no negative pair in the batch PML returns 0; jaxdml keeps the formula."""
  emb = rng.normal(size=(12, 5)).astype(np.float32)
  labels = np.zeros(12, np.int32)
  assert "Deviation from PML" in L.supcon_from_sim.__doc__
  value, _ = run("supcon", emb, labels)
  assert _pml_value(pml, "supcon", emb, labels) == 0.0
  assert value > 0.1
  np.testing.assert_allclose(value, naive(npref, "supcon", emb, labels), rtol=RTOL)


def test_pml_deviation_margin_scalar_beta_regulariser(pml, npref, batch):
  """Documented: PML adds a single learned beta's `nu * beta` undivided; jaxdml divides
  `nu * sum_t beta` by the count of non-zero terms, as PML does for per-class betas."""
  assert "Deviation from PML" in L.margin_from_dist.__doc__
  torch = pml.torch
  e = torch.tensor(batch.emb.astype(np.float64))
  y = torch.tensor(batch.labels, dtype=torch.long)
  pml_reg = float(pml.pml.losses.MarginLoss(nu=0.1, learn_beta=True)(e, y).detach())
  pml_plain = float(pml.pml.losses.MarginLoss()(e, y))
  np.testing.assert_allclose(pml_reg, pml_plain + 0.1 * 1.2, rtol=1e-6)
  value = float(jax.jit(lambda e, y: L.margin_loss(e, y, nu=0.1))(batch.emb, batch.labels))
  n = Naive(npref, batch.emb, batch.labels)
  np.testing.assert_allclose(value, n.margin(nu=0.1), rtol=RTOL)
  assert abs(value - pml_reg) > 1e-2


def test_pml_one_class_and_no_positive_batches_agree(pml, rng):
  """Edge batches where PML has special cases: jaxdml gives the same value (except SupCon)."""
  emb = rng.normal(size=(12, 5)).astype(np.float32)
  for labels in (np.zeros(12, np.int32), np.arange(12, dtype=np.int32)):
    for name in CONFIGS:
      if name == "generalized_lifted" or (name == "supcon" and labels[0] == labels[1]):
        continue  # documented deviations (every anchor lacks positives or negatives here)
      value, _ = run(name, emb, labels)
      np.testing.assert_allclose(value, _pml_value(pml, name, emb, labels), rtol=RTOL,
                                 atol=ATOL, err_msg=f"{name} {labels}")


# --------------------------------------------------------------------------- 4. gradients


def _directional_fd(f, x, v, h=1e-6):
  return (f(x + h * v) - f(x - h * v)) / (2 * h)


FD_NAMES = ("multi_similarity", "contrastive", "triplet_all", "circle")


@functools.lru_cache(maxsize=None)
def _x64_gradients(emb_bytes, labels_bytes):
  """float64 jax gradients of the FD_NAMES losses, one compilation for all four."""
  with jax.enable_x64(True):
    x = jnp.asarray(np.frombuffer(emb_bytes, np.float32).reshape(12, 5), jnp.float64)
    y = jnp.asarray(np.frombuffer(labels_bytes, np.int32))
    loss = lambda z, n: CONFIGS[n][0](z, y, **CONFIGS[n][1])
    grads = jax.jit(lambda e: {n: jax.grad(loss)(e, n) for n in FD_NAMES})(x)
    assert grads["circle"].dtype == jnp.float64
    return {n: np.asarray(g) for n, g in grads.items()}


@pytest.mark.parametrize("name", FD_NAMES)
def test_gradient_finite_differences(name, batch, npref):
  """Central differences in float64 along random directions vs the float64 jax gradient.

  The differences are taken of the float64 loop implementation (which the values were checked
  against above). Circle loss treats its self-paced weights as constants (no gradient through
  them, as the paper and PML), so its differences are taken with the weights frozen at the base
  point. Random data keeps the hinge losses away from their kinks.
  """
  g = _x64_gradients(batch.emb.tobytes(), batch.labels.tobytes())[name]
  assert np.abs(g).max() > 1e-3
  s0 = Naive(npref, batch.emb, batch.labels).s
  f = lambda e: NAIVE[name](Naive(npref, e, batch.labels)) if name != "circle" else (
      Naive(npref, e, batch.labels).circle(weights_sim=s0))
  x = batch.emb.astype(np.float64)
  rng = np.random.default_rng(7)
  for _ in range(3):
    v = rng.normal(size=x.shape)
    np.testing.assert_allclose(_directional_fd(f, x, v), np.sum(g * v), rtol=1e-5, atol=1e-8)


def test_gradient_matches_pml_autograd(pml, batch):
  """Besides finite differences: MS and circle gradients equal torch autograd through PML."""
  torch = pml.torch
  for name in ("multi_similarity", "circle", "ntxent"):
    e = torch.tensor(batch.emb.astype(np.float64), requires_grad=True)
    loss = {"multi_similarity": pml.pml.losses.MultiSimilarityLoss,
            "circle": pml.pml.losses.CircleLoss, "ntxent": pml.pml.losses.NTXentLoss}[name]()
    loss(e, torch.tensor(batch.labels, dtype=torch.long)).backward()
    _, g = run(name, batch.emb, batch.labels)
    np.testing.assert_allclose(g, e.grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_finite_degenerate_embeddings(name, batch):
  emb = batch.emb.copy()
  same = np.flatnonzero(batch.labels == batch.labels[0])[1]
  other = np.flatnonzero(batch.labels != batch.labels[0])[0]
  emb[same] = emb[0]  # a coincident positive pair
  emb[other] = emb[0]  # and coincident negative pairs
  for e in (emb, np.zeros_like(emb)):
    value, grad = run(name, e, batch.labels)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name
  if CONFIGS[name][2]:  # queries coincide with their references
    value, grad = run(name, emb, batch.labels, emb[:10], batch.labels[:10])
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name
    if name in REF_GRADS:
      assert np.abs(grad).max() > 0, name


# --------------------------------------------------------------------------- 5. invariances


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
def test_permutation_invariance(name, batch, rng):
  base, _ = run(name, batch.emb, batch.labels)
  perm = rng.permutation(len(batch.labels))
  value, _ = run(name, batch.emb[perm], batch.labels[perm])
  np.testing.assert_allclose(value, base, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "margin_class_beta"])
def test_relabelling_invariance(name, batch):
  base, _ = run(name, batch.emb, batch.labels)
  relabel = np.array([7, 2, 9, 0], np.int32)
  value, _ = run(name, batch.emb, relabel[batch.labels])
  np.testing.assert_allclose(value, base, rtol=RTOL, atol=ATOL)


def test_per_class_beta_follows_labels(batch):
  """Relabelling with the per-class betas permuted along leaves the margin loss unchanged."""
  perm = np.array([2, 0, 3, 1], np.int32)
  beta = jnp.asarray(CLASS_BETA[:4])
  f = jax.jit(lambda e, y, b: L.margin_loss(e, y, beta=b, nu=0.1))
  base = f(batch.emb, batch.labels, beta)
  moved = jnp.zeros(4).at[perm].set(beta)
  np.testing.assert_allclose(f(batch.emb, perm[batch.labels], moved), base, rtol=RTOL)


@pytest.mark.parametrize("name", SCALE_INVARIANT)
def test_positive_rescaling_invariance(name, batch, rng):
  base, _ = run(name, batch.emb, batch.labels)
  scales = rng.uniform(0.2, 5.0, size=(len(batch.labels), 1)).astype(np.float32)
  value, _ = run(name, batch.emb * scales, batch.labels)
  np.testing.assert_allclose(value, base, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- 6. edge cases


# Values each docstring promises for batches without positives / without negatives.
# (The MS miner keeps nothing for an anchor lacking positives or negatives; the N-pair l2 term
# does not depend on pairs.)
NONZERO_WITHOUT_POSITIVES = {"contrastive", "multi_similarity", "n_pairs_dot"}
NONZERO_WITHOUT_NEGATIVES = {"contrastive", "multi_similarity", "supcon", "n_pairs_dot"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_edge_cases(name, npref, rng):
  emb = rng.normal(size=(12, 5)).astype(np.float32)
  cases = {
      "no_positives": np.arange(12, dtype=np.int32),
      "no_negatives": np.full(12, 3, np.int32),
  }
  for case, labels in cases.items():
    value, grad = run(name, emb, labels)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), case
    np.testing.assert_allclose(value, naive(npref, name, emb, labels), rtol=RTOL, atol=ATOL,
                               err_msg=case)
    nonzero = (NONZERO_WITHOUT_POSITIVES if case == "no_positives"
               else NONZERO_WITHOUT_NEGATIVES)
    if name in nonzero:
      assert value > 0, case
    else:
      assert value == 0.0, case
      np.testing.assert_array_equal(grad, 0.0)
  # A batch of one example: no pairs at all.
  value, grad = run(name, emb[:1], np.zeros(1, np.int32))
  expected = 0.002 * float(np.sum(emb[0].astype(np.float64) ** 2)) if name == "n_pairs_dot" else 0
  np.testing.assert_allclose(value, expected, rtol=RTOL)
  assert np.all(np.isfinite(grad))


def test_no_negatives_multi_similarity_is_positive_term(npref, rng):
  """No negatives: MS keeps only 1/alpha log(1 + sum_p e^{-alpha(s - base)}) per anchor."""
  emb = rng.normal(size=(12, 5)).astype(np.float32)
  value, _ = run("multi_similarity", emb, np.zeros(12, np.int32))
  s = npref.l2n(emb) @ npref.l2n(emb).T
  off = ~np.eye(12, dtype=bool)
  expected = np.mean(np.log1p(np.where(off, np.exp(-2.0 * (s - 0.5)), 0).sum(1)) / 2.0)
  np.testing.assert_allclose(value, expected, rtol=RTOL)


def test_lifted_pairs_without_negatives_under_mask(npref, rng):
  """A mask that leaves a positive pair without negatives on either side: it adds 0 and counts."""
  emb = rng.normal(size=(6, 5)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 1], np.int32)
  dd = npref.cdist(npref.l2n(emb), npref.l2n(emb))
  t = (labels[:, None] == labels[None, :]).astype(np.float32)
  mask = ~np.eye(6, dtype=bool)
  mask[[0, 1], 3:] = False  # rows 0 and 1 lose their negatives
  f = jax.jit(jax.value_and_grad(lambda d: L.lifted_structure_from_dist(d, t, mask)))
  value, grad = f(dd.astype(np.float32))
  assert np.all(np.isfinite(np.asarray(grad)))
  losses = []
  for i in range(6):
    for j in range(6):
      if mask[i, j] and labels[i] == labels[j]:
        negs = [1 - dd[i, k] for k in range(6) if mask[i, k] and labels[k] != labels[i]]
        negs += [1 - dd[j, k] for k in range(6) if mask[j, k] and labels[k] != labels[j]]
        losses.append(0.5 * max(npref.lse(negs) + dd[i, j], 0) ** 2 if negs else 0.0)
  assert 0.0 in losses
  np.testing.assert_allclose(float(value), np.mean(losses), rtol=RTOL)


def test_batch_hard_soft_margin_averages_all_valid_anchors(batch, npref):
  """Hermans et al.'s soft margin: softplus(max d_ap - min d_an), a mean over all anchors."""
  value, _ = run("triplet_hard_soft", batch.emb, batch.labels)
  n = Naive(npref, batch.emb, batch.labels)
  gaps = [max(n.d[a, p] for p in n.pos_of[a]) - min(n.d[a, k] for k in n.neg_of[a])
          for a in range(12)]
  np.testing.assert_allclose(value, np.mean(np.logaddexp(0, gaps)), rtol=RTOL)


# --------------------------------------------------------------------------- 7. errors


def _trace(fn, *args):
  return jax.jit(fn)(*args)


def test_errors_name_the_argument(batch):
  e, y = jnp.asarray(batch.emb), jnp.asarray(batch.labels)
  re, ry = jnp.asarray(batch.ref_emb), jnp.asarray(batch.ref_labels)
  for fn in (L.contrastive_loss, L.triplet_margin_loss, L.multi_similarity_loss, L.margin_loss,
             L.circle_loss, L.supcon_loss, L.ntxent_loss):
    with pytest.raises(ValueError, match="`labels`"):
      _trace(fn, e, y[:-1])
    with pytest.raises(TypeError, match="`labels`.*integer"):
      _trace(fn, e, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="`embeddings`.*rank 2"):
      _trace(fn, e[0], y[:1])
    with pytest.raises(ValueError, match="`labels`.*rank 1"):
      _trace(fn, e, y[:, None])
    with pytest.raises(TypeError, match="`embeddings`.*floating"):
      _trace(fn, y[:, None], y)
    with pytest.raises(ValueError, match="`ref_embeddings`"):
      _trace(fn, e, y, re[:, :3], ry)
    with pytest.raises(ValueError, match="`ref_labels`"):
      _trace(fn, e, y, re, ry[:4])
    with pytest.raises(ValueError, match="ref_embeddings.*ref_labels"):
      _trace(lambda a, b, c, fn=fn: fn(a, b, c), e, y, re)
    with pytest.raises(ValueError, match="`mask`"):
      _trace(lambda a, b, m, fn=fn: fn(a, b, mask=m), e, y, jnp.ones((12, 11), bool))
  for fn in (L.lifted_structure_loss, L.n_pairs_loss):
    with pytest.raises(ValueError, match="`labels`"):
      _trace(fn, e, y[:-1])
    with pytest.raises(TypeError, match="`labels`"):
      _trace(fn, e, y.astype(jnp.float32))


def test_matrix_form_errors():
  s, t = jnp.zeros((3, 4)), jnp.zeros((3, 4))
  for fn in (L.multi_similarity_from_sim, L.circle_from_sim, L.supcon_from_sim,
             L.ntxent_from_sim):
    with pytest.raises(ValueError, match="`sim`.*rank 2"):
      _trace(fn, s[None], t[None])
    with pytest.raises(ValueError, match="`target`"):
      _trace(fn, s, t[:, :3])
    with pytest.raises(ValueError, match="`mask`"):
      _trace(fn, s, t, jnp.ones((4, 3), bool))
    with pytest.raises(TypeError, match="`sim`.*floating"):
      _trace(fn, s.astype(jnp.int32), t)
  for fn in (L.contrastive_from_dist, L.triplet_margin_from_dist, L.margin_from_dist,
             L.generalized_lifted_structure_from_dist):
    with pytest.raises(ValueError, match="`dist`"):
      _trace(fn, s[0], t[0])
    with pytest.raises(ValueError, match="`target`"):
      _trace(fn, s, t.T)
  with pytest.raises(ValueError, match="square"):
    _trace(L.lifted_structure_from_dist, s, t)
  with pytest.raises(ValueError, match="`triplets`"):
    _trace(lambda d, y: L.triplet_margin_from_dist(d, y, triplets="easy"), s, t)
  with pytest.raises(ValueError, match="soft_margin"):
    _trace(lambda d, y: L.triplet_margin_from_dist(d, y, soft_margin=True), s, t)
  with pytest.raises(ValueError, match="beta"):
    _trace(lambda d, y: L.margin_from_dist(d, y, beta=jnp.ones(4)), s, t)
  with pytest.raises(ValueError, match="beta"):
    _trace(lambda d, y: L.margin_from_dist(d, y, beta=jnp.ones((3, 1))), s, t)
  with pytest.raises(ValueError, match="`distance`"):
    _trace(lambda e, y: L.contrastive_loss(e, y, distance="manhattan"), jnp.zeros((3, 2)),
           jnp.zeros(3, jnp.int32))
