"""Multi-scale descriptors: PyTorch's bilinear resizing, and the generalised mean over scales."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models import multiscale


@pytest.mark.parametrize("scale", [1 / math.sqrt(2), 0.5, 0.7, 1.5, 1.0])
@pytest.mark.parametrize("size", [(17, 23), (8, 8), (5, 31)])
def test_resize_matches_pytorch(scale, size):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *size, 3)).astype(np.float32)
  ours = np.asarray(multiscale.resize_bilinear(jnp.asarray(x), scale))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2),
                                        scale_factor=scale, mode="bilinear",
                                        align_corners=False).permute(0, 2, 3, 1).numpy()
  assert ours.shape == ref.shape
  # float32 weights: within 1e-6 of the values' scale (PyTorch's own float32 and float64 results
  # differ by as much)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def _toy_gem(x, p=3.0):
  """A 'network': GeM over the pixels of a non-negative image, L2-normalised."""
  v = jnp.mean(jnp.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1 / p)
  return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def test_multiscale_is_the_generalised_mean_of_the_scales():
  rng = np.random.default_rng(1)
  x = jnp.asarray(np.abs(rng.standard_normal((3, 20, 14, 4))).astype(np.float32))
  p = 3.0
  got = multiscale.multiscale_descriptor(_toy_gem, x, p=p)
  per_scale = [np.asarray(_toy_gem(multiscale.resize_bilinear(x, s)), np.float64)
               for s in (1, 2 ** -0.5, 0.5)]
  want = np.mean([v ** p for v in per_scale], axis=0) ** (1 / p)
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  # one scale: the descriptor itself; p = 1: the plain mean
  np.testing.assert_allclose(multiscale.multiscale_descriptor(_toy_gem, x, scales=(1,)),
                             _toy_gem(x), atol=1e-6)
  mean = np.mean(per_scale, axis=0)
  np.testing.assert_allclose(multiscale.multiscale_descriptor(_toy_gem, x),
                             mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)


def test_multiscale_errors():
  x = jnp.ones((1, 4, 4, 1))
  with pytest.raises(ValueError, match="scale"):
    multiscale.resize_bilinear(x, 0.1)  # 4 pixels -> 0
  with pytest.raises(ValueError, match="scale"):
    multiscale.resize_bilinear(x, -1.0)
  with pytest.raises(ValueError, match="batch, height"):
    multiscale.resize_bilinear(x[0], 0.5)
  with pytest.raises(ValueError, match="scales"):
    multiscale.multiscale_descriptor(_toy_gem, x, scales=())
  with pytest.raises(ValueError, match="`p`"):
    multiscale.multiscale_descriptor(_toy_gem, x, p=0.0)
