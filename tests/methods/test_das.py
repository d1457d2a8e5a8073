"""DAS: recorder and bank updates by hand, generation semantics, gradients, and losses on top."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import losses as L
from jaxdml import miners, similarity, targets
from jaxdml.methods import das

update = jax.jit(das.update)
generate = jax.jit(das.generate, static_argnames=(
    "num_generated", "scale_range", "shift_scale", "detach", "normalize"))
IDENTITY = {"scale_range": (1.0, 1.0), "shift_scale": 0.0}


def batch(rng, classes=(0, 0, 1, 1, 2, 2), dim=6):
  z = rng.normal(size=(len(classes), dim)).astype(np.float32)
  return jnp.asarray(z), jnp.asarray(classes, jnp.int32)


def l2n(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------- state and DFS


def test_init_shapes_and_defaults():
  s = das.init(7, 5)
  assert s.frequency.shape == (7, 5) and s.frequency.dtype == jnp.int32
  assert s.top_dims.shape == (7, 4)  # das_dfs_num_scale = 4
  assert s.bank.shape == (7, 10, 5) and s.bank.dtype == jnp.float32  # bank of 10
  assert s.bank_count.shape == s.bank_ptr.shape == (7,)
  np.testing.assert_array_equal(s.top_dims[3], [0, 1, 2, 3])
  assert int(jnp.sum(s.frequency)) == 0 and int(jnp.sum(s.bank_count)) == 0
  assert jax.tree_util.tree_structure(s).num_leaves == 5


def test_frequency_update_signed_top_k():
  s = das.init(5, 6, num_scaled_dims=2)
  v = jnp.array([[0.1, 0.9, -2.0, 0.5, 0.8, 0.0]])
  s = update(s, v, jnp.array([3]))
  expect = np.zeros((5, 6), np.int32)
  expect[3, [1, 4]] = 1  # signed top-2: -2 is the smallest, not a top entry
  np.testing.assert_array_equal(s.frequency, expect)
  assert set(np.asarray(s.top_dims[3]).tolist()) == {1, 4}
  mask = np.asarray(das.mask(s))
  np.testing.assert_array_equal(mask[3], [False, True, False, False, True, False])
  np.testing.assert_array_equal(mask.sum(1), [2] * 5)


def test_frequency_accumulates_without_decay_and_mask_follows_counts():
  s = das.init(2, 4, num_scaled_dims=1)
  s = update(s, jnp.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), jnp.array([1, 1]))
  np.testing.assert_array_equal(s.frequency[1], [0, 1, 1, 0])
  assert int(s.top_dims[1, 0]) == 1  # tie between dims 1 and 2: the lower index
  for _ in range(3):
    s = update(s, jnp.array([[0.0, 0.0, 1.0, 0.0]]), jnp.array([1]))
  np.testing.assert_array_equal(s.frequency[1], [0, 1, 4, 0])  # plain counts, no momentum
  assert int(s.top_dims[1, 0]) == 2
  np.testing.assert_array_equal(s.frequency[0], 0)  # the absent class is untouched
  np.testing.assert_array_equal(s.top_dims[0], [0])


# --------------------------------------------------------------------------- MTS bank


def naive_banks(batches, bank_size):
  """Per class, the list of differences in enqueue order (a-major, zero rows dropped)."""
  pushed = {}
  for z, y in batches:
    z, y = np.asarray(z, np.float64), np.asarray(y)
    for t in np.unique(y):
      e = z[y == t]
      d = (e[:, None, :] - e[None, :, :]).reshape(-1, z.shape[1])
      pushed.setdefault(int(t), []).extend(d[np.abs(d).sum(1) > 0])
  return pushed


def check_ring(state, pushed, bank_size):
  for c in range(state.bank.shape[0]):
    entries = pushed.get(c, [])
    n = len(entries)
    assert int(state.bank_count[c]) == min(n, bank_size)
    assert int(state.bank_ptr[c]) == n % bank_size
    for e in range(max(0, n - bank_size), n):  # the last Z, at slot e mod Z
      np.testing.assert_allclose(state.bank[c, e % bank_size], entries[e], rtol=1e-6, atol=1e-6)
    for slot in range(min(n, bank_size), bank_size):
      np.testing.assert_array_equal(state.bank[c, slot], 0.0)


def test_bank_stores_both_signed_differences():
  s = das.init(4, 3, num_scaled_dims=1)
  a, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 2.0])
  s = update(s, jnp.asarray(np.stack([a, b]), jnp.float32), jnp.array([2, 2]))
  np.testing.assert_allclose(s.bank[2, 0], a - b)
  np.testing.assert_allclose(s.bank[2, 1], b - a)
  assert int(s.bank_count[2]) == 2 and int(s.bank_ptr[2]) == 2
  np.testing.assert_array_equal(s.bank_count, [0, 0, 2, 0])


def test_bank_fifo_capacity_and_order():
  s = das.init(3, 2, num_scaled_dims=1)
  pushed = []
  for step in range(6):  # 12 differences into a bank of 10
    z = jnp.array([[float(step + 1), 0.0], [0.0, 0.0]])
    y = jnp.array([1, 1])
    s = update(s, z, y)
    pushed.append((z, y))
  assert int(s.bank_count[1]) == 10 and int(s.bank_ptr[1]) == 2
  # slots 0, 1 were overwritten by the sixth batch; slots 2..9 hold batches 2..5
  np.testing.assert_allclose(s.bank[1, :, 0], [6, -6, 2, -2, 3, -3, 4, -4, 5, -5])
  check_ring(s, naive_banks(pushed, 10), 10)


def test_bank_overflow_in_one_batch_keeps_last_entries():
  rng = np.random.default_rng(0)
  s = das.init(3, 4, bank_size=5)
  z, y = batch(rng, classes=(0, 1, 0, 0, 2, 0), dim=4)  # class 0: 4 samples, 12 differences
  s = update(s, z, y)
  check_ring(s, naive_banks([(z, y)], 5), 5)
  assert int(s.bank_ptr[0]) == 12 % 5 and int(s.bank_count[0]) == 5


def test_bank_matches_reference_over_random_batches():
  rng = np.random.default_rng(1)
  s = das.init(5, 3, num_scaled_dims=1, bank_size=7)
  seen = []
  for _ in range(6):
    y = jnp.asarray(rng.integers(0, 4, size=8), jnp.int32)  # class 4 never appears
    z = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    s = update(s, z, y)
    seen.append((z, y))
  check_ring(s, naive_banks(seen, 7), 7)
  assert int(s.bank_count[4]) == 0


def test_zero_differences_are_not_stored():
  s = das.init(3, 2, num_scaled_dims=1)
  z = jnp.array([[1.0, 2.0], [1.0, 2.0], [3.0, 3.0]])
  s = update(s, z, jnp.array([0, 0, 1]))  # class 0: two identical rows; class 1: a single one
  np.testing.assert_array_equal(s.bank_count, [0, 0, 0])
  np.testing.assert_array_equal(s.bank, 0.0)


def test_out_of_range_labels_are_dropped():
  s = das.init(3, 2, num_scaled_dims=1)
  z = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.0, 5.0]])
  s = update(s, z, jnp.array([-1, -1, 3]))
  np.testing.assert_array_equal(s.frequency, 0)
  np.testing.assert_array_equal(s.bank_count, 0)
  np.testing.assert_array_equal(s.bank, 0.0)


# --------------------------------------------------------------------------- generation


def test_empty_bank_gives_zero_shift():
  rng = np.random.default_rng(2)
  z, y = batch(rng)
  s = das.init(3, 6)
  out, _ = generate(s, z, y, jax.random.key(0), scale_range=(1.0, 1.0), shift_scale=5.0,
                    normalize=False)
  np.testing.assert_array_equal(out, jnp.tile(z, (3, 1)))


def test_degenerate_identity_reproduces_normalized_input():
  rng = np.random.default_rng(3)
  z, y = batch(rng)
  s = update(das.init(3, 6), z, y)  # non-empty banks
  out, y_gen = generate(s, z, y, jax.random.key(1), **IDENTITY)
  assert out.shape == (18, 6) and y_gen.shape == (18,)
  np.testing.assert_allclose(out, np.tile(l2n(z), (3, 1)), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(y_gen, np.tile(np.asarray(y), 3))
  # The loss on [real; generated] equals the loss on the batch duplicated four times.
  zn = similarity.l2_normalize(z)
  out, y_gen = generate(s, zn, y, jax.random.key(1), **IDENTITY)
  z_all, y_all = das.combine(zn, y, out, y_gen)
  dup = jnp.tile(zn, (4, 1))
  np.testing.assert_allclose(z_all, dup, atol=1e-6)
  np.testing.assert_allclose(L.multi_similarity_loss(z_all, y_all),
                             L.multi_similarity_loss(dup, jnp.tile(y, 4)), rtol=1e-5)


def test_scaling_touches_only_the_class_top_dims():
  rng = np.random.default_rng(4)
  z, y = batch(rng, dim=8)
  s = update(das.init(3, 8, num_scaled_dims=3), z, y)
  out, _ = generate(s, z, y, jax.random.key(2), num_generated=4, scale_range=(0.5, 2.0),
                    shift_scale=0.0, normalize=False)
  ratio = np.asarray(out).reshape(4, 6, 8) / np.asarray(z)[None]
  mask = np.asarray(das.mask(s))[np.asarray(y)]  # [B, d]
  np.testing.assert_allclose(ratio[:, ~mask], 1.0, rtol=1e-6)
  scaled = ratio[:, mask]
  assert scaled.min() >= 0.5 - 1e-6 and scaled.max() < 2.0 + 1e-6
  assert np.unique(np.round(scaled, 5)).size == scaled.size  # independent draws


def test_shift_is_a_stored_difference_of_the_class():
  rng = np.random.default_rng(5)
  z, y = batch(rng, classes=(0, 0, 0, 1, 1, 2))  # class 2: one sample, empty bank
  s = update(das.init(3, 6), z, y)
  out, _ = generate(s, z, y, jax.random.key(3), num_generated=5, scale_range=(1.0, 1.0),
                    shift_scale=0.1, normalize=False)
  shifts = (np.asarray(out).reshape(5, 6, 6) - np.asarray(z)[None]) / 0.1
  for r in range(5):
    for i, c in enumerate(np.asarray(y)):
      stored = np.asarray(s.bank[c, : int(s.bank_count[c])])
      if stored.size == 0:
        np.testing.assert_allclose(shifts[r, i], 0.0, atol=1e-5)
      else:
        assert np.min(np.abs(stored - shifts[r, i]).max(1)) < 1e-4


def test_determinism_and_key_dependence():
  rng = np.random.default_rng(6)
  z, y = batch(rng)
  s = update(das.init(3, 6), z, y)
  a, _ = generate(s, z, y, jax.random.key(7))
  b, _ = generate(s, z, y, jax.random.key(7))
  c, _ = generate(s, z, y, jax.random.key(8))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_classes_absent_and_never_seen_stay_finite():
  rng = np.random.default_rng(7)
  s = das.init(10, 6)
  z, y = batch(rng, classes=(1, 1, 7, 7, 9, 9))
  s = update(s, z, y)
  z2, y2 = batch(rng, classes=(0, 3, 3, 4, 5, 8))  # classes with empty banks and zero counts
  out, _ = generate(s, z2, y2, jax.random.key(0), shift_scale=0.1)
  assert np.isfinite(np.asarray(out)).all()
  zero = jnp.zeros((2, 6))
  out, _ = generate(s, zero, jnp.array([0, 1]), jax.random.key(0))
  assert np.isfinite(np.asarray(out)).all()
  assert np.isfinite(np.asarray(jax.tree_util.tree_leaves(update(s, z2, y2))[2])).all()


def test_apply_is_update_generate_combine():
  rng = np.random.default_rng(8)
  z, y = batch(rng)
  s0 = das.init(3, 6)
  key = jax.random.key(4)
  z_all, y_all, s1 = jax.jit(das.apply, static_argnames=("num_generated", "detach"))(
      s0, z, y, key, num_generated=2, detach=True)
  s_ref = update(s0, z, y)
  g, yg = generate(s_ref, z, y, key, num_generated=2, detach=True)
  assert z_all.shape == (18, 6)
  np.testing.assert_array_equal(z_all[:6], z)  # real first, then the generated rounds
  np.testing.assert_allclose(z_all[6:], g, rtol=1e-6)
  np.testing.assert_array_equal(y_all, np.tile(np.asarray(y), 3))
  for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s_ref), strict=True):
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("normalize", [True, False])
def test_detach_gradients_only_through_real_rows(normalize):
  rng = np.random.default_rng(9)
  z, y = batch(rng)
  s = update(das.init(3, 6), z, y)
  key = jax.random.key(5)
  kw = {"scale_range": (0.5, 2.0), "shift_scale": 0.1, "normalize": normalize}

  def full(z_, detach):
    g, yg = das.generate(s, z_, y, key, detach=detach, **kw)
    return L.multi_similarity_loss(*das.combine(z_, y, g, yg))

  g_const, yg = das.generate(s, z, y, key, **kw)

  def real_only(z_):
    return L.multi_similarity_loss(*das.combine(z_, y, g_const, yg))

  def gen_sum(z_, detach):
    return jnp.sum(das.generate(s, z_, y, key, detach=detach, **kw)[0] * 1.7)

  @jax.jit
  def grads(z_):
    return [jax.grad(f, argnums=0)(z_, d) for f in (full, gen_sum) for d in (True, False)]

  grad_detached, grad_flowing, gen_detached, gen_flowing = grads(z)
  np.testing.assert_allclose(grad_detached, jax.jit(jax.grad(real_only))(z), rtol=1e-5,
                             atol=1e-7)
  assert not np.allclose(grad_flowing, grad_detached, atol=1e-6)
  np.testing.assert_array_equal(gen_detached, 0.0)
  assert np.abs(np.asarray(gen_flowing)).max() > 0


def test_update_carries_no_gradient():
  rng = np.random.default_rng(10)
  z, y = batch(rng)
  s0 = das.init(3, 6)

  def f(z_):
    s = das.update(s0, z_, y)
    return jnp.sum(s.bank ** 2)

  np.testing.assert_array_equal(jax.grad(f)(z), 0.0)


# --------------------------------------------------------------------------- transformations


def test_vmap_over_keys_and_over_states():
  rng = np.random.default_rng(11)
  z, y = batch(rng)
  s = update(das.init(3, 6), z, y)
  keys = jax.random.split(jax.random.key(0), 3)
  outs, labels = jax.jit(jax.vmap(lambda k: das.generate(s, z, y, k)))(keys)
  assert outs.shape == (3, 18, 6) and labels.shape == (3, 18)
  np.testing.assert_allclose(outs[1], das.generate(s, z, y, keys[1])[0], rtol=1e-6)

  zs = jnp.stack([batch(rng)[0] for _ in range(2)])
  ys = jnp.stack([y, y[::-1]])
  s0 = das.init(3, 6)
  states = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), s0)
  batched = jax.jit(jax.vmap(das.update))(states, zs, ys)
  for i in range(2):
    single = das.update(s0, zs[i], ys[i])
    leaves = zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(single), strict=True)
    for a, b in leaves:
      np.testing.assert_allclose(a[i], b, rtol=1e-6)


def test_update_and_generate_trace_once_per_shape():
  traces = []

  def step(s, z, y, key):
    traces.append(1)
    return das.apply(s, z, y, key)

  jstep = jax.jit(step)
  rng = np.random.default_rng(12)
  s = das.init(3, 6)
  for i in range(3):
    z, y = batch(rng)
    _, _, s = jstep(s, z, y, jax.random.key(i))
  assert len(traces) == 1
  assert int(jnp.sum(s.frequency)) == 3 * 6 * 4


# --------------------------------------------------------------------------- losses on top


def test_pairs_all_match_labels_and_real_queries():
  y = jnp.array([0, 1, 0], jnp.int32)
  t, m = das.pairs(y, 2)
  t_ref, m_ref = targets.from_labels(jnp.tile(y, 3))
  np.testing.assert_array_equal(t, t_ref)
  np.testing.assert_array_equal(m, m_ref)
  assert bool(m[0, 3]) and float(t[0, 3]) == 1.0  # a source and its copy are positives
  t, m = das.pairs(y, 2, queries="real")
  assert t.shape == m.shape == (3, 9)
  assert not bool(m[1, 1]) and bool(m[1, 4])
  _, m = das.pairs(y, 2, exclude_source=True)
  src = np.arange(9) % 3
  np.testing.assert_array_equal(m, src[:, None] != src[None, :])


def test_losses_and_miners_accept_generated_embeddings():
  rng = np.random.default_rng(13)
  z, y = batch(rng, classes=(0, 0, 1, 1, 2, 2, 3, 3))
  z = similarity.l2_normalize(z)
  s = update(das.init(4, 6), z, y)
  key = jax.random.key(9)
  proxies = L.init_proxies(jax.random.key(1), 4, 6, method="proxy_anchor")

  def all_losses(z_):
    g, yg = das.generate(s, z_, y, key, scale_range=(0.5, 2.0), shift_scale=0.1)
    z_all, y_all = das.combine(z_, y, g, yg)
    ms = L.multi_similarity_loss(z_all, y_all)
    tri = L.triplet_margin_loss(z_all, y_all, margin=0.2, triplets="semihard")
    pa = L.proxy_anchor_loss(z_all, y_all, proxies)
    _, mask = das.pairs(y, 3, queries="real")
    ms_real = L.multi_similarity_loss(z_, y, z_all, y_all, mask=mask)
    dist = similarity.euclidean(z_all)
    t, m = das.pairs(y, 3)
    mined = miners.semihard_miner(dist, t, m)
    mined_loss = L.contrastive_from_dist(dist, t, mined)
    return jnp.stack([ms, tri, pa, ms_real, mined_loss])

  def total(z_):
    values = all_losses(z_)
    return jnp.sum(values), values

  (_, values), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(z)
  assert np.isfinite(np.asarray(values)).all() and (np.asarray(values) > 0).all()
  assert np.isfinite(np.asarray(grads)).all() and np.abs(np.asarray(grads)).max() > 0
  # The "real" anchors loss is the first B rows of the full loss matrix, averaged.
  @jax.jit
  def real_vs_full(z_all, y_all):
    t, m = das.pairs(y, 3)
    per_anchor = L.multi_similarity_from_sim(similarity.cosine(z_all), t, m, reduction="none")
    _, mask = das.pairs(y, 3, queries="real")
    return L.multi_similarity_loss(z, y, z_all, y_all, mask=mask), jnp.mean(per_anchor[:8])

  g, yg = generate(s, z, y, key, shift_scale=0.1)
  np.testing.assert_allclose(*real_vs_full(*das.combine(z, y, g, yg)), rtol=1e-5)


def test_aux_loss_adds_the_real_only_term():
  rng = np.random.default_rng(14)
  z, y = batch(rng)
  g, yg = generate(update(das.init(3, 6), z, y), z, y, jax.random.key(0))
  loss_fn = jax.jit(lambda e, lab: L.triplet_margin_loss(e, lab, margin=0.2))
  z_all, y_all = das.combine(z, y, g, yg)
  plain, aux = jax.jit(lambda *a: (das.loss(loss_fn, *a),
                                   das.loss(loss_fn, *a, aux_weight=1.0)))(z, y, g, yg)
  np.testing.assert_allclose(plain, loss_fn(z_all, y_all), rtol=1e-6)
  np.testing.assert_allclose(aux, loss_fn(z, y) + loss_fn(z_all, y_all), rtol=1e-6)


# --------------------------------------------------------------------------- recipes and errors


def test_recipes_follow_the_scripts():
  r = das.recipe("table1", "cub200")
  assert r.num_scaled_dims == 8 and r.scale_range == (0.99, 1.01) and r.detach
  assert r.shift_scale == 0.01 and r.normalize and r.aux_weight is None
  r = das.recipe("table1", "online_products")
  assert r.num_scaled_dims == 8 and r.scale_range == (0.5, 2.0) and not r.detach
  assert r.shift_scale == 0.1
  r = das.recipe("table2", "cars196", "npair")
  assert r.num_scaled_dims == 4 and not r.normalize and r.detach
  r = das.recipe("table2", "online_products", "triplet_semihard")
  assert r.aux_weight == 1.0 and r.detach and r.shift_scale == 0.1
  assert das.recipe("table2", "online_products", "margin") == das.Settings()
  assert das.Settings() == das.Settings(4, 10, 3, (0.5, 2.0), 0.01, False, True, None)
  s = das.init(3, 16, **r.init_kwargs())
  rng = np.random.default_rng(15)
  z, y = batch(rng, dim=16)
  out, _ = das.generate(s, z, y, jax.random.key(0), **r.generate_kwargs())
  assert out.shape == (18, 16)
  with pytest.raises(ValueError, match="no DAS recipe"):
    das.recipe("table3", "cub200")
  with pytest.raises(TypeError):
    das.RECIPES[("x", "y", "z")] = r


def test_trace_time_errors():
  s = das.init(3, 6)
  z = jnp.zeros((4, 6))
  y = jnp.zeros((4,), jnp.int32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="rank 2"):
    update(s, jnp.zeros((4, 6, 1)), y)
  with pytest.raises(TypeError, match="integer class labels"):
    update(s, z, jnp.zeros((4,)))
  with pytest.raises(ValueError, match="4 rows"):
    update(s, z, jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="dimension 5"):
    update(s, jnp.zeros((4, 5)), y)
  with pytest.raises(TypeError, match="floating"):
    generate(s, jnp.zeros((4, 6), jnp.int32), y, key)
  with pytest.raises(TypeError, match="integer class labels"):
    generate(s, z, y.astype(jnp.float32), key)
  with pytest.raises(ValueError, match="left <= right"):
    generate(s, z, y, key, scale_range=(2.0, 1.0))
  with pytest.raises(ValueError, match="num_generated"):
    generate(s, z, y, key, num_generated=0)
  with pytest.raises(ValueError, match="num_scaled_dims"):
    das.init(3, 6, num_scaled_dims=7)
  with pytest.raises(ValueError, match="bank_size"):
    das.init(3, 6, bank_size=0)
  with pytest.raises(ValueError, match="queries"):
    das.pairs(y, 3, queries="generated")
  with pytest.raises(ValueError, match="dimension"):
    das.combine(z, y, jnp.zeros((4, 5)), y)


_JITTED_UPDATE = """
import jax, jax.numpy as jnp
from jaxdml.methods import das
x = jax.random.normal(jax.random.PRNGKey(0), (64, 32))
w = jax.random.normal(jax.random.PRNGKey(1), (32, 128))
y = jnp.repeat(jnp.arange(16), 4)

@jax.jit
def step(x, state):
  z = x @ w
  z = z * jax.lax.rsqrt(jnp.sum(z * z, axis=1, keepdims=True))
  return das.update(state, z, y)

s = step(x, das.init(50, 128))
print(int(s.bank_ptr[:16].min()), int(s.bank_ptr[:16].max()),
      float(jnp.linalg.norm(s.bank[:16], axis=-1).min()))
"""


def test_update_inside_a_jitted_program_skips_self_pairs():
  """With z computed in the same jitted program, XLA's default optimisations may duplicate its
  producer so that z_a - z_a is not exactly 0; the self-pairs must still never enter the bank.
  Run in a fresh process with XLA's default flags (the suite's cheaper compile hides the
  effect)."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _JITTED_UPDATE], env=env, capture_output=True,
                       text=True, check=True, timeout=120).stdout.split()
  lo, hi, min_norm = int(out[0]), int(out[1]), float(out[2])
  # 4 samples per class: 12 ordered differences each, so the ring pointer moves to 12 % 10
  assert lo == hi == 2
  assert min_norm > 1e-3  # no (near-)zero shift was stored


# --------------------------------------------------------------------------- the control, recipes


def test_generation_off_is_the_duplicated_batch():
  """generation="off": the inner loss of the batch repeated R + 1 times, value and gradient; the
  memory is updated as with "on"; "on" gives another loss."""
  from jaxdml import objectives  # noqa: PLC0415

  rng = np.random.default_rng(21)
  z, y = batch(rng, classes=(0, 0, 1, 1, 2, 2, 3, 3), dim=8)
  z = similarity.l2_normalize(z)
  inner = objectives.core("multi_similarity", miner="multi_similarity",
                          miner_kwargs={"epsilon": 0.1})
  key = jax.random.key(5)
  r = 3
  off = das.wrap(inner, das.Settings(num_generated=r, generation="off"), num_classes=4, dim=8)
  on = das.wrap(inner, das.Settings(num_generated=r, scale_range=(0.5, 2.0)), num_classes=4,
                dim=8)

  def value(obj, zz):
    loss, state, _ = obj.apply({}, obj.init_state(), objectives.Batch(zz, y), key)
    return loss, state

  # Naive reference: the duplicated batch built by hand, through the same inner objective.
  z_dup = jnp.asarray(np.concatenate([np.asarray(z)] * (r + 1)))
  y_dup = jnp.asarray(np.concatenate([np.asarray(y)] * (r + 1)))
  k_inner = jax.random.split(key)[0]
  inner_loss = jax.jit(lambda zz, yy: inner.apply({}, {}, objectives.Batch(zz, yy), k_inner)[0])
  expected = inner_loss(z_dup, y_dup)
  (loss_off, state_off), (loss_on, state_on) = jax.jit(
      lambda zz: (value(off, zz), value(on, zz)))(z)
  np.testing.assert_allclose(loss_off, expected, rtol=1e-6)
  np.testing.assert_allclose(
      loss_off, L.multi_similarity_loss(z_dup, y_dup, miner_epsilon=0.1), rtol=1e-6)
  # The repeated batch is not the batch: the control is not a no-op.
  assert abs(float(loss_off) - float(inner_loss(z, y))) > 1e-4
  assert abs(float(loss_on) - float(loss_off)) > 1e-4
  # The memory is recorded the same way.
  for a, b in zip(state_off["das"], state_on["das"], strict=True):
    np.testing.assert_array_equal(a, b)
  assert state_off["das"].bank_count.tolist() == [2, 2, 2, 2]
  # Gradients: through every copy without detach, through the real rows only with it.
  detached = das.wrap(inner, das.Settings(num_generated=r, generation="off", detach=True),
                      num_classes=4, dim=8)

  def real_rows_only(zz):
    z_all = jnp.concatenate([zz, jax.lax.stop_gradient(jnp.tile(zz, (r, 1)))])
    return inner.apply({}, {}, objectives.Batch(z_all, y_dup), k_inner)[0]

  @jax.jit
  def gradients(zz):
    g = lambda f: jax.grad(f)(zz)
    return (g(lambda v: value(off, v)[0]), g(lambda v: inner_loss(jnp.tile(v, (r + 1, 1)), y_dup)),
            g(lambda v: value(detached, v)[0]), g(real_rows_only))

  g_off, g_ref, g_det, g_det_ref = gradients(z)
  np.testing.assert_allclose(g_off, g_ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_det, g_det_ref, rtol=1e-5, atol=1e-7)
  assert not np.allclose(g_det, g_off)
  # copies itself, and the setting's check.
  z_c, y_c = das.copies(z, y, 2)
  np.testing.assert_array_equal(z_c, np.concatenate([z, z]))
  np.testing.assert_array_equal(y_c, np.concatenate([y, y]))
  with pytest.raises(ValueError, match="das generation"):
    das.Settings(generation="none")


# The published multi-similarity runs, written from table1.sh / table2.sh and
# scripts/parameters.py of github.com/lizhaoliu-Lec/DAS (4f2a357):
# (table, dataset) -> (K, scale_range, shift_scale, detach).
PUBLISHED_MS = {
    ("table1", "cub200"): (8, (0.99, 1.01), 0.01, True),
    ("table1", "cars196"): (8, (0.99, 1.01), 0.01, True),
    ("table1", "online_products"): (8, (0.5, 2.0), 0.1, False),
    ("table2", "cub200"): (4, (0.99, 1.01), 0.01, True),
    ("table2", "cars196"): (4, (0.99, 1.01), 0.01, True),
    ("table2", "online_products"): (4, (0.5, 2.0), 0.1, False),
}


@pytest.mark.parametrize("table,dataset", sorted(PUBLISHED_MS))
def test_full_recipe_matches_the_scripts(table, dataset):
  k, scale, shift, detach = PUBLISHED_MS[(table, dataset)]
  r = das.full_recipe(table, dataset)
  assert r.loss == "multi_similarity"
  assert dict(r.loss_kwargs) == {"alpha": 2.0, "beta": 40.0, "base": 0.5}
  assert r.miner == "multi_similarity" and dict(r.miner_kwargs) == {"epsilon": 0.1}
  assert r.per_class == 2
  s = r.settings
  assert (s.num_scaled_dims, s.scale_range, s.shift_scale, s.detach) == (k, scale, shift, detach)
  assert (s.num_generated, s.bank_size, s.normalize, s.aux_weight, s.generation) == (
      3, 10, True, None, "on")
  assert s == das.recipe(table, dataset)
  # The values build an objective.
  from jaxdml import objectives  # noqa: PLC0415
  inner = objectives.core(r.loss, miner=r.miner, miner_kwargs=r.miner_kwargs, **r.loss_kwargs)
  assert das.wrap(inner, s, num_classes=3, dim=16).name == "multi_similarity+das"


def test_full_recipe_errors():
  with pytest.raises(ValueError, match="multi-similarity runs"):
    das.full_recipe("table2", "cub200", "contrastive")
  with pytest.raises(ValueError, match="no DAS recipe"):
    das.full_recipe("table1", "cub200", "contrastive")
  with pytest.raises(TypeError):
    das.full_recipe("table1", "cub200").loss_kwargs["beta"] = 50.0
