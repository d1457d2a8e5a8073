"""Aspect-ratio-grouped batches: one group per batch, each image at most once per epoch,
determinism, the buckets' ratios and shapes, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdml.data import aspect_ratio_batches, bucket_shape


def _sizes(n=300, seed=0):
  rng = np.random.default_rng(seed)
  h = rng.integers(200, 800, n)
  w = (h * np.exp(rng.normal(0.0, 0.4, n))).astype(int) + 1
  return w, h


def test_every_batch_is_one_bucket_and_an_epoch_uses_each_image_once():
  w, h = _sizes()
  batches, bucket, ratios = aspect_ratio_batches(w, h, 16, num_buckets=4, seed=3)
  log_r = np.log(w / h)
  edges = np.sort(log_r)[[0, 75, 150, 225]]  # 4 equal buckets of 75, in ratio order
  assert batches.shape == (4 * (75 // 16), 16) and bucket.shape == (len(batches),)
  for b, k in zip(batches, bucket, strict=True):
    assert np.all((np.searchsorted(edges, log_r[b], side="right") - 1) == k)
  assert len(np.unique(batches)) == batches.size  # no image twice within the epoch
  assert np.all(np.diff(ratios) > 0)
  for k in range(4):  # the bucket's ratio is the median of its members'
    members = np.argsort(log_r, kind="stable")[75 * k:75 * (k + 1)]
    assert ratios[k] == pytest.approx(np.exp(np.median(log_r[members])))
  assert len(set(bucket[:8].tolist())) > 1  # the buckets' batches are shuffled together


def test_deterministic_and_longer_runs_reshuffle():
  w, h = _sizes()
  a = aspect_ratio_batches(w, h, 16, seed=1)
  b = aspect_ratio_batches(w, h, 16, seed=1)
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
  long, _, _ = aspect_ratio_batches(w, h, 16, num_batches=40, seed=1)
  np.testing.assert_array_equal(long[:len(a[0])], a[0])
  assert not np.array_equal(long[len(a[0]):2 * len(a[0])], a[0])
  one, which, r = aspect_ratio_batches(w, h, 30, num_buckets=1)
  assert set(which.tolist()) == {0} and len(r) == 1 and one.shape == (10, 30)


def test_bucket_shapes_keep_the_long_side():
  assert bucket_shape(1.5, 512) == (352, 512) and bucket_shape(1 / 1.5, 512) == (512, 352)
  assert bucket_shape(20.0, 256) == (32, 256)  # at least one multiple
  with pytest.raises(ValueError, match="ratio must be > 0"):
    bucket_shape(0.0, 512)


@pytest.mark.parametrize("kwargs,match", [
    (dict(widths=[10, 0], heights=[5, 5], batch_size=1), "must be positive"),
    (dict(widths=[10, 20], heights=[5], batch_size=1), "one length"),
    (dict(widths=[10, 20, 30], heights=[5, 5, 5], batch_size=2, num_buckets=2),
     r"batch_size=2 exceeds the smallest aspect-ratio bucket \(1 images"),
])
def test_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    aspect_ratio_batches(**kwargs)
