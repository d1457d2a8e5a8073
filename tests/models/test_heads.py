"""Pooling, GeM, EmbeddingHead and EmbeddingModel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models.heads import EmbeddingHead, EmbeddingModel, GeM, pool
from jaxdml.models.resnet import ResNet

# "rbg" keys: XLA compiles their generator much faster on CPU than the default threefry.
_KEY = jax.random.key(0, impl="rbg")


def test_pool_feature_maps_against_numpy(rng):
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  avg, mx = x.mean(axis=(1, 2)), x.max(axis=(1, 2))
  np.testing.assert_allclose(pool(x, "avg"), avg, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pool(x, "max"), mx)
  np.testing.assert_allclose(pool(x, "avg+max"), avg + mx, rtol=1e-6, atol=1e-6)
  gem = (np.maximum(x.astype(np.float64), 1e-6) ** 3).mean(axis=(1, 2)) ** (1 / 3)
  np.testing.assert_allclose(pool(x, "gem"), gem, rtol=1e-5)
  gem2 = (np.maximum(x.astype(np.float64), 0.1) ** 2.5).mean(axis=(1, 2)) ** (1 / 2.5)
  np.testing.assert_allclose(pool(x, "gem", p=jnp.array([2.5]), eps=0.1), gem2, rtol=1e-5)
  assert pool(jnp.asarray(x, jnp.bfloat16), "gem").dtype == jnp.bfloat16


def test_pool_tokens_against_numpy(rng):
  t = rng.normal(size=(2, 6, 4)).astype(np.float32)
  np.testing.assert_array_equal(pool(t, "cls"), t[:, 0])
  np.testing.assert_allclose(pool(t, "tokens_avg"), t[:, 1:].mean(axis=1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pool(t, "avg"), t.mean(axis=1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pool(t, "max"), t.max(axis=1))


def test_pool_errors():
  with pytest.raises(ValueError, match="pooling method"):
    pool(jnp.ones((2, 3, 3, 4)), "sum")
  with pytest.raises(ValueError, match="tokens"):
    pool(jnp.ones((2, 3, 3, 4)), "cls")
  with pytest.raises(ValueError, match="at least 2"):
    pool(jnp.ones((2, 1, 4)), "tokens_avg")
  with pytest.raises(ValueError, match="expected"):
    pool(jnp.ones((2, 4)), "avg")


def test_gem_module(rng):
  x = jnp.asarray(np.abs(rng.normal(size=(2, 3, 4, 5))) + 0.1, jnp.float32)
  gem = GeM()
  variables = gem.init(_KEY, x)
  assert variables["params"]["p"].shape == (1,)
  np.testing.assert_allclose(variables["params"]["p"], [3.0])
  np.testing.assert_allclose(gem.apply({"params": {"p": jnp.ones(1)}}, x), pool(x, "avg"),
                             rtol=1e-5)
  f = jax.jit(lambda p: jnp.sum(gem.apply({"params": {"p": p}}, x)))
  g = jax.jit(jax.grad(f))(jnp.array([3.0]))
  assert bool(jnp.all(jnp.isfinite(g)))
  h = 1e-2
  fd = (f(jnp.array([3.0 + h])) - f(jnp.array([3.0 - h]))) / (2 * h)
  np.testing.assert_allclose(g[0], fd, rtol=2e-2)
  # clamped: zeros and negatives give finite values and gradients
  z = jnp.zeros((1, 2, 2, 3)).at[0, 0, 0].set(-1.0)
  assert bool(jnp.all(jnp.isfinite(jax.grad(lambda p: jnp.sum(pool(z, "gem", p=p)))(3.0))))


def test_embedding_head_init_and_normalisation():
  head = EmbeddingHead()  # defaults: linear 512, no layer norm, L2-normalised
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 1024))
  variables = jax.jit(head.init)(_KEY, x)
  params = variables["params"]
  assert set(params) == {"embedding"}
  kernel = np.asarray(params["embedding"]["kernel"])
  assert kernel.shape == (1024, 512)
  np.testing.assert_array_equal(params["embedding"]["bias"], 0.0)
  # kaiming-normal, fan_out (= 512): std sqrt(2 / 512), an untruncated normal
  std = np.sqrt(2 / 512)
  np.testing.assert_allclose(kernel.std(), std, rtol=0.02)
  assert np.abs(kernel).max() > 3.5 * std
  z = head.apply(variables, x)
  assert z.shape == (3, 512) and z.dtype == jnp.float32
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  z16 = EmbeddingHead(dtype=jnp.bfloat16).apply(variables, x)
  assert z16.dtype == jnp.float32
  np.testing.assert_allclose(z16, z, atol=0.02)


def test_embedding_head_identity_and_layer_norm(rng):
  x = jnp.asarray(rng.normal(size=(3, 8)) * 5 + 2, jnp.float32)
  ident = EmbeddingHead(embedding_dim=None, normalize=False)
  assert ident.init(_KEY, x) == {}
  np.testing.assert_array_equal(ident.apply({}, x), x)
  ln = EmbeddingHead(embedding_dim=None, layer_norm=True, normalize=False)
  variables = ln.init(_KEY, x)
  y = np.asarray(ln.apply(variables, x), np.float64)
  np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=1), 1.0, rtol=1e-3)
  y = ln.clone(normalize=True).apply(variables, x)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=1), 1.0, rtol=1e-5)


def test_embedding_model_features_and_embed_features(rng):
  backbone = ResNet((1,), "basic", width=8)
  model = EmbeddingModel(backbone, pooling="gem", embedding_dim=16)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x, train=False))(_KEY)
  assert set(variables["params"]) == {"backbone", "gem", "head"}
  np.testing.assert_allclose(variables["params"]["gem"]["p"], [3.0])
  assert variables["params"]["head"]["embedding"]["kernel"].shape == (8, 16)

  def run(m, v, x):
    f = m.apply(v, x, train=False, method="features")
    return (m.apply(v, x, train=False), f,
            m.apply(v, f, train=False, method="embed_features"))

  z, f, z2 = jax.jit(lambda v, x: run(model, v, x))(variables, x)
  assert f.shape == (2, 8, 8, 8) and z.shape == (2, 16)
  np.testing.assert_allclose(z2, z, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)

  m16 = EmbeddingModel(ResNet((1,), "basic", width=8, dtype=jnp.bfloat16), pooling="gem",
                       embedding_dim=16, dtype=jnp.bfloat16)
  z16, f16, _ = jax.jit(lambda v, x: run(m16, v, x))(variables, x)
  assert f16.dtype == jnp.bfloat16 and z16.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(z16)))
  np.testing.assert_allclose(z16, z, atol=0.1)


def test_embedding_model_errors():
  model = EmbeddingModel(ResNet((1,), "basic", width=8), pooling="sum")
  with pytest.raises(ValueError, match="pooling"):
    jax.eval_shape(lambda: model.init(_KEY, jnp.zeros((1, 32, 32, 3)), train=False))
