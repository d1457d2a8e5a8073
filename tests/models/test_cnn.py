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
  assert shapes["Conv3x3_0"]["kernel"] == (3, 3, 1, 32)
  assert shapes["Conv3x3_1"]["kernel"] == (3, 3, 32, 64)
  assert shapes["Dense_0"]["kernel"] == (4 * 8 * 64, 16)
  xla = SmallCNN(embedding_dim=16, conv_impl="xla")
  np.testing.assert_allclose(xla.apply(params, x), z, atol=1e-5)
