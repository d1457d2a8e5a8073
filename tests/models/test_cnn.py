import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models import SmallCNN, conv2d_same


def test_im2col_equals_xla_conv_values_and_gradients():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(k1, (3, 6, 7, 4))
  w = jax.random.normal(k2, (3, 3, 4, 5))
  b = jnp.arange(5.0)
  a = conv2d_same(x, w, b, impl="im2col")
  r = conv2d_same(x, w, b, impl="xla")
  np.testing.assert_allclose(a, r, atol=1e-5)
  f = lambda impl: jax.grad(lambda x, w: jnp.sum(jnp.sin(conv2d_same(x, w, impl=impl))),
                            argnums=(0, 1))(x, w)
  for ga, gr in zip(f("im2col"), f("xla"), strict=True):
    np.testing.assert_allclose(ga, gr, atol=1e-4)


def test_conv_errors():
  with pytest.raises(ValueError, match="odd"):
    conv2d_same(jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1)))
  with pytest.raises(ValueError, match="channels"):
    conv2d_same(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 1)))
  with pytest.raises(ValueError, match="impl"):
    conv2d_same(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), impl="fft")


def test_small_cnn_shapes_and_norm():
  m = SmallCNN(embedding_dim=16)
  x = jnp.ones((5, 8, 16))
  params = m.init(jax.random.PRNGKey(0), x)
  z = m.apply(params, x)
  assert z.shape == (5, 16)
  np.testing.assert_allclose(jnp.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  shapes = jax.tree.map(jnp.shape, params)["params"]
  assert shapes["conv1"]["kernel"] == (3, 3, 1, 32)
  assert shapes["conv2"]["kernel"] == (3, 3, 32, 64)
  assert shapes["head"]["embedding"]["kernel"] == (4 * 8 * 64, 16)
  xla = SmallCNN(embedding_dim=16, conv_impl="xla")
  np.testing.assert_allclose(xla.apply(params, x), z, atol=1e-5)


def test_small_cnn_feature_split_and_identical_feature_mix():
  m = SmallCNN(embedding_dim=8)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 6, 6))
  v = m.init(jax.random.PRNGKey(0), x)
  f = m.apply(v, x, method="features")
  assert f.shape == (3, 3, 3, 64)
  np.testing.assert_allclose(m.apply(v, f, method="embed_features"), m.apply(v, x), atol=1e-6)
  # mixing a feature map with itself is the identity, for any lambda (methods_spec 4.7.4)
  for lam in (0.0, 0.3, 1.0):
    mixed = lam * f + (1 - lam) * f
    np.testing.assert_allclose(m.apply(v, mixed, method="embed_features"), m.apply(v, x),
                               atol=1e-6)


def test_small_cnn_hyperbolic_head_lands_in_the_ball():
  m = SmallCNN(embedding_dim=4, hyperbolic=True, poincare_c=0.1, clip_r=2.3)
  x = 10 * jax.random.normal(jax.random.PRNGKey(1), (5, 6, 6))
  v = m.init(jax.random.PRNGKey(0), x)
  assert set(v["params"]["head"]) == {"embedding"}  # the pre-norm has no parameters
  z = m.apply(v, x)
  # the clipped radius 2.3 maps to tanh(sqrt(c) 2.3) / sqrt(c) < 1 / sqrt(c)
  bound = np.tanh(np.sqrt(0.1) * 2.3) / np.sqrt(0.1)
  assert float(jnp.max(jnp.linalg.norm(z, axis=1))) <= bound + 1e-5
  k = v["params"]["head"]["embedding"]["kernel"]
  np.testing.assert_allclose(k.T @ k, np.eye(4), atol=1e-5)  # orthogonal columns
