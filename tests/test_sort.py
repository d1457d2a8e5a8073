import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml._sort import _bitonic_argsort, argsort_rows


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_bitonic_matches_stable_argsort_with_ties_and_inf(n):
  rng = np.random.default_rng(n)
  keys = rng.integers(0, 4, (5, n)).astype(np.float32)
  keys[:, ::3] = np.inf
  got = np.asarray(jax.jit(_bitonic_argsort)(jnp.asarray(keys)))
  np.testing.assert_array_equal(got, np.argsort(keys, axis=1, kind="stable"))


def test_argsort_rows_has_no_gradient_path_but_gathers_do():
  x = jnp.array([[3.0, 1.0, 2.0]])
  g = jax.grad(lambda x: jnp.sum(jnp.take_along_axis(x, argsort_rows(x), 1) * jnp.arange(3.0)))(x)
  np.testing.assert_allclose(g, [[2.0, 0.0, 1.0]])
