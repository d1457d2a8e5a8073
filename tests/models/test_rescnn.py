import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models import ResCNN, SmallCNN
from jaxdml.models.cnn import (
  ResBlock,
  avg_pool_2x2,
  max_pool_2x2,
  space_to_depth_2x2,
  train_step_seconds,
)
from jaxdml.train.step import forward_with_seam

SMALL = {"widths": (4, 8, 12), "blocks": (1, 2, 1)}


def images(n, size, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size))


def init(model, x, seed=0):
  return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(seed), x)


def apply(model, variables, *args, **kwargs):
  """`model.apply` compiled as one program (much faster here than op-by-op)."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def with_trained_stats(model, v, x):
  """Variables whose running averages have been moved by a few training passes."""
  stats = v["batch_stats"]
  for _ in range(3):
    _, new = apply(model, {**v, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    stats = new["batch_stats"]
  return {**v, "batch_stats": stats}


@pytest.mark.parametrize("size,hw", [(32, 2), (64, 4)])
def test_shapes_and_unit_norm(size, hw):
  m = ResCNN(embedding_dim=16, **SMALL)
  x = images(3, size)
  v = init(m, x)
  assert set(v) == {"params", "batch_stats"}
  assert m.downsampling == 16
  f = apply(m, v, x, method="features")
  assert f.shape == (3, hw, hw, 12)
  assert float(jnp.min(f)) >= 0.0  # after the last block's ReLU
  z = apply(m, v, x)
  assert z.shape == (3, 16) and z.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(apply(m, v, x[..., None]), z, atol=1e-6)  # [B, H, W, 1] too
  p = v["params"]
  assert p["trunk"]["stem"]["kernel"].shape == (3, 3, 4, 4)  # space-to-depth: 4 channels in
  assert set(p["trunk"]) == {"stem", "stem_bn", "stage1_0", "stage2_0", "stage2_1", "stage3_0"}
  assert "proj" in p["trunk"]["stage2_0"] and "proj" not in p["trunk"]["stage2_1"]
  assert "proj" not in p["trunk"]["stage1_0"]
  assert p["head"]["embedding"]["kernel"].shape == (12, 16)  # avg + max summed: C inputs


def test_default_network():
  m = ResCNN()
  x = images(2, 32)
  v = init(m, x)
  assert apply(m, v, x).shape == (2, 128)
  assert apply(m, v, x, method="features").shape == (2, 2, 2, 64)


@pytest.mark.parametrize("train", [False, True])
def test_embed_features_of_features_is_the_call(train):
  m = ResCNN(embedding_dim=8, **SMALL)
  x = images(4, 32)
  v = with_trained_stats(m, init(m, x), x)
  kw = {"train": train, "mutable": ["batch_stats"]} if train else {"train": False}

  def run(*args, **extra):
    out = apply(m, v, *args, **kw, **extra)
    return out[0] if train else out

  f = run(x, method="features")
  np.testing.assert_allclose(run(f, method="embed_features"), run(x), atol=1e-6)


def test_embed_features_is_avg_plus_max_pooling_then_the_linear_head():
  m = ResCNN(embedding_dim=5, normalize=False, **SMALL)
  x = images(3, 32)
  v = init(m, x)
  f = np.asarray(apply(m, v, x, method="features"))
  head = v["params"]["head"]["embedding"]
  pooled = f.mean(axis=(1, 2)) + f.max(axis=(1, 2))
  expect = pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  np.testing.assert_allclose(apply(m, v, f, method="embed_features"), expect, atol=1e-5)


def test_feature_mixup_is_not_embedding_mixup():
  lam = 0.3
  x = images(6, 32, seed=3)

  def gap(model):
    v = init(model, x)
    f = apply(model, v, x, method="features")
    f1, f2 = f[:3], f[3:]
    e = lambda g: apply(model, v, g, method="embed_features")
    mixed_features = e(lam * f1 + (1 - lam) * f2)
    mixed_embeddings = lam * e(f1) + (1 - lam) * e(f2)
    scale = float(jnp.max(jnp.abs(mixed_embeddings)))
    return float(jnp.max(jnp.abs(mixed_features - mixed_embeddings))) / scale

  # a flatten-and-linear head commutes with mixing; average + max pooling does not
  assert gap(SmallCNN(embedding_dim=8, normalize=False)) < 1e-5
  assert gap(ResCNN(embedding_dim=8, normalize=False, **SMALL)) > 1e-2


def test_train_mode_updates_batch_stats_and_eval_mode_does_not():
  m = ResCNN(embedding_dim=8, **SMALL)
  x = images(8, 32) * 3.0 + 1.0
  v = init(m, x)
  leaves = lambda t: jax.tree.leaves(t)
  _, new = apply(m, v, x, train=True, mutable=["batch_stats"])
  changed = [not np.allclose(a, b) for a, b in zip(leaves(v["batch_stats"]),
                                                   leaves(new["batch_stats"]), strict=True)]
  assert all(changed)  # every BN's running mean and variance moved
  _, same = apply(m, v, x, train=False, mutable=["batch_stats"])
  for a, b in zip(leaves(v["batch_stats"]), leaves(same["batch_stats"]), strict=True):
    np.testing.assert_array_equal(a, b)
  # eval mode uses the running averages: new statistics change the eval output
  assert not np.allclose(apply(m, v, x), apply(m, {**v, **new}, x), atol=1e-4)
  # embed_features has no batch norm: nothing to update
  f = apply(m, v, x, method="features")
  _, head_state = apply(m, v, f, train=True, mutable=["batch_stats"], method="embed_features")
  for a, b in zip(leaves(v["batch_stats"]), leaves(head_state["batch_stats"]), strict=True):
    np.testing.assert_array_equal(a, b)


def test_train_mode_normalises_by_the_batch():
  # scaling the images is undone by the stem's batch norm in training mode (the stem convolution
  # has no bias and pads with zeros, so it scales too): the embeddings are unchanged (up to BN's
  # eps); in eval mode they change
  m = ResCNN(embedding_dim=8, **SMALL)
  x = images(8, 32)
  v = with_trained_stats(m, init(m, x), x)  # running means != 0: eval mode is not homogeneous
  train = lambda x: apply(m, v, x, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(train(3.0 * x), train(x), atol=1e-4)
  assert not np.allclose(apply(m, v, 3.0 * x), apply(m, v, x), atol=1e-3)


def test_through_the_training_steps_model_seam():
  m = ResCNN(embedding_dim=8, **SMALL)
  x = images(6, 32)
  v = init(m, x)
  params = {"model": v["params"], "loss": {}}
  state = {"batch_stats": v["batch_stats"]}
  batch, final_state = forward_with_seam(m, params, state, x, jnp.arange(6), jax.random.key(0))
  ref, ref_state = apply(m, v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(batch.embeddings, ref, atol=1e-5)
  assert batch.features.shape == (6, 2, 2, 12)
  for a, b in zip(jax.tree.leaves(final_state()), jax.tree.leaves(dict(ref_state)), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # the objective's head call embeds (mixed) features in training mode
  mixed = 0.5 * batch.features[:3] + 0.5 * batch.features[3:]
  np.testing.assert_allclose(batch.model.head(mixed),
                             apply(m, v, mixed, method="embed_features"), atol=1e-6)


def test_gradient_reaches_every_parameter():
  m = ResCNN(embedding_dim=8, **SMALL)
  x = images(6, 32)
  v = init(m, x)

  def loss(p):
    z, _ = apply(m, {**v, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(z[:, 0] * jnp.arange(6.0))

  g = jax.grad(loss)(v["params"])
  for path, leaf in jax.tree_util.tree_leaves_with_path(g):
    assert float(jnp.max(jnp.abs(leaf))) > 0, jax.tree_util.keystr(path)


def test_hyperbolic_head_lands_in_the_ball():
  m = ResCNN(embedding_dim=4, hyperbolic=True, poincare_c=0.1, clip_r=2.3, **SMALL)
  x = 10 * images(5, 32)
  v = init(m, x)
  z = apply(m, v, x)
  bound = np.tanh(np.sqrt(0.1) * 2.3) / np.sqrt(0.1)
  assert float(jnp.max(jnp.linalg.norm(z, axis=1))) <= bound + 1e-5
  assert float(jnp.max(jnp.linalg.norm(z, axis=1))) < 1 / np.sqrt(0.1)
  k = v["params"]["head"]["embedding"]["kernel"]
  np.testing.assert_allclose(k.T @ k, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("size", [32, 64])
def test_im2col_and_xla_convolutions_agree(size):
  a = ResCNN(embedding_dim=8, conv_impl="im2col", **SMALL)
  b = ResCNN(embedding_dim=8, conv_impl="xla", **SMALL)
  x = images(4, size)
  v = with_trained_stats(a, init(a, x), x)
  np.testing.assert_allclose(apply(a, v, x), apply(b, v, x), atol=1e-5)
  za, sa = apply(a, v, x, train=True, mutable=["batch_stats"])
  zb, sb = apply(b, v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(za, zb, atol=1e-5)
  for p, q in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
    np.testing.assert_allclose(p, q, atol=1e-5)


def test_space_to_depth_and_pools_against_loops():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 3)))
  s2d, avg, mx = np.asarray(space_to_depth_2x2(x)), avg_pool_2x2(x), max_pool_2x2(x)
  assert s2d.shape == (2, 2, 3, 12)
  for i in range(2):
    for j in range(3):
      patch = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :]  # [2, 2, 2, 3]
      for di in range(2):
        for dj in range(2):
          np.testing.assert_array_equal(s2d[:, i, j, (2 * di + dj) * 3:(2 * di + dj + 1) * 3],
                                        patch[:, di, dj])
      np.testing.assert_allclose(avg[:, i, j], patch.mean(axis=(1, 2)), atol=1e-6)
      np.testing.assert_allclose(mx[:, i, j], patch.max(axis=(1, 2)))


def test_residual_block_shortcuts():
  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3)))
  zero = lambda t: jax.tree.map(jnp.zeros_like, t)
  # identity shortcut: with zero convolution kernels (and fresh statistics) the branch is 0
  same = ResBlock(3)
  v = init(same, x)
  p = {**v["params"], "conv1": zero(v["params"]["conv1"]), "conv2": zero(v["params"]["conv2"])}
  np.testing.assert_allclose(apply(same, {**v, "params": p}, x, train=False), x, atol=1e-6)
  # downsampling + projection: relu(BN(avg_pool(x) @ W)) with fresh statistics (mean 0, var 1)
  down = ResBlock(5, downsample=True)
  v = init(down, x, seed=1)
  p = {**v["params"], "conv1": zero(v["params"]["conv1"]), "conv2": zero(v["params"]["conv2"])}
  w = v["params"]["proj"]["kernel"][0, 0]
  expect = jax.nn.relu(jnp.einsum("bhwc,cf->bhwf", avg_pool_2x2(x), w) / np.sqrt(1 + 1e-5))
  out = apply(down, {**v, "params": p}, x, train=False)
  assert out.shape == (2, 2, 2, 5)
  np.testing.assert_allclose(out, expect, atol=1e-5)


def test_errors():
  m = ResCNN(embedding_dim=4, **SMALL)
  with pytest.raises(ValueError, match="multiples of 16"):
    init(m, images(2, 24))
  with pytest.raises(ValueError, match="grey images"):
    init(m, jnp.ones((2, 32, 32, 3)))
  with pytest.raises(ValueError, match="same length"):
    init(ResCNN(widths=(4, 8), blocks=(1,)), images(2, 32))
  with pytest.raises(ValueError, match=">= 1"):
    init(ResCNN(widths=(4, 8), blocks=(1, 0)), images(2, 32))


def test_train_step_seconds_runs_both_kinds_of_model():
  t = train_step_seconds(ResCNN(embedding_dim=4, **SMALL), batch_size=4, image_size=16,
                         repeats=2)
  assert 0.0 < t < 10.0
  assert train_step_seconds(SmallCNN(embedding_dim=4), batch_size=4, image_size=8,
                            repeats=1) > 0.0
  with pytest.raises(ValueError, match="repeats"):
    train_step_seconds(SmallCNN(), repeats=0)
  with pytest.raises(ValueError, match="batch_size"):
    train_step_seconds(SmallCNN(), batch_size=1.5)


@pytest.mark.parametrize("which", ["max_pool_2x2", "global_max"])
def test_max_pool_gradient_of_a_fused_input_is_the_first_maximum(which):
  # regression: as a reshape + jnp.max, the gradient of max pooling after an affine map and a
  # ReLU, compiled as one program at XLA's lowest optimisation level (as this suite compiles),
  # compared two differently rounded recomputations of the input and was wrong or 0 / 0
  from jaxdml.models.heads import global_max  # noqa: PLC0415

  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 4)))
  pool_fn = max_pool_2x2 if which == "max_pool_2x2" else global_max
  loss = lambda x: jnp.sum(jnp.sin(pool_fn(jax.nn.relu(1.3 * x - 0.2))))
  g = np.asarray(jax.jit(jax.grad(loss))(x))
  # reference in NumPy: d/dx = cos(max) * 1.3 at the window's first maximum (where it is > 0)
  y = np.maximum(1.3 * x.astype(np.float64) - 0.2, 0.0)
  ref = np.zeros_like(y)
  k = 2 if which == "max_pool_2x2" else 8
  for b in range(6):
    for c in range(4):
      for i in range(0, 8, k):
        for j in range(0, 8, k):
          win = y[b, i:i + k, j:j + k, c]
          di, dj = np.unravel_index(np.argmax(win), win.shape)
          if win[di, dj] > 0:
            ref[b, i + di, j + dj, c] = 1.3 * np.cos(win[di, dj])
  np.testing.assert_allclose(g, ref, atol=1e-5)
