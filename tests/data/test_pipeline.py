"""M-per-class sampler and Grain loaders: batch structure, purity, checkpoint/restore, order."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest

from jaxdml.data import pipeline
from jaxdml.data.sources import ArraySource


def _labels(num_classes=10, per=6, seed=0):
  labels = np.repeat(np.arange(num_classes), per)
  return np.random.default_rng(seed).permutation(labels)


def _source(num_classes=8, per=5, size=10):
  labels = np.repeat(np.arange(num_classes), per)
  n = len(labels)
  images = np.zeros((n, size, size, 3), np.uint8)
  images[:, :, :, 0] = (np.arange(n) % 256)[:, None, None]  # red channel encodes the index
  images[:, :, :, 1] = (labels * 20)[:, None, None]
  return ArraySource(images, labels, super_label=labels // 2)


def _batch_keys(sampler, batch):
  size = sampler.batch_size
  return np.array([sampler[i].record_key for i in range(batch * size, (batch + 1) * size)])


def test_sampler_batches_have_p_distinct_classes_m_each():
  labels = _labels()
  s = pipeline.MPerClassSampler(labels, 4, 3, seed=1, num_epochs=2)
  assert len(s) == 2 * s.batches_per_epoch * 12
  assert s.batches_per_epoch == 5  # ceil(60 / 12)
  for b in range(2 * s.batches_per_epoch):
    keys = _batch_keys(s, b)
    classes = labels[keys].reshape(4, 3)
    assert np.all(classes == classes[:, :1])  # grouped by class, M consecutive
    assert len(set(classes[:, 0])) == 4
    assert all(len(set(keys[c * 3:(c + 1) * 3])) == 3 for c in range(4))  # no repeats
  with pytest.raises(IndexError):
    s[len(s)]


def test_sampler_is_pure_in_index_and_seeded():
  labels = _labels()
  a = pipeline.MPerClassSampler(labels, 3, 2, seed=7)
  b = pipeline.MPerClassSampler(labels, 3, 2, seed=7)
  c = pipeline.MPerClassSampler(labels, 3, 2, seed=8)
  order = [40, 3, 1000, 3, 41, 0]
  assert [a[i].record_key for i in order] == [b[i].record_key for i in reversed(order)][::-1]
  assert [a[i].record_key for i in range(60)] != [c[i].record_key for i in range(60)]
  x, y = a[5].rng.random(3), b[5].rng.random(3)
  np.testing.assert_array_equal(x, y)
  assert repr(a) == repr(b) != repr(c)
  restored = pickle.loads(pickle.dumps(a))
  assert [restored[i].record_key for i in range(30)] == [a[i].record_key for i in range(30)]


def test_sampler_covers_classes_evenly_per_epoch():
  labels = _labels(num_classes=12, per=4)
  s = pipeline.MPerClassSampler(labels, 4, 2, seed=3)
  for epoch in range(3):
    table = s.epoch_classes(epoch)
    assert table.shape == (6, 4)  # ceil(48 / 8) batches
    counts = collections.Counter(table.ravel().tolist())
    assert sorted(counts) == list(range(12))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_sampler_small_and_singleton_classes():
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])  # class 2 has one example
  s = pipeline.MPerClassSampler(labels, 3, 3, seed=0, num_epochs=20)
  seen = set()
  for b in range(len(s) // s.batch_size):
    keys = _batch_keys(s, b)
    for c in range(3):
      block = keys[c * 3:(c + 1) * 3]
      cls = labels[block[0]]
      seen.add(int(cls))
      assert np.all(labels[block] == cls)
      if cls == 1:  # two examples for three slots: both, plus one repeat
        assert set(block.tolist()) == {4, 5}
      else:
        assert len(set(block.tolist())) == 3
  assert seen == {0, 1, 3}
  with pytest.raises(ValueError):
    pipeline.MPerClassSampler(labels, 4, 2)


def test_sampler_interleave_deals_whole_batches():
  labels = _labels()
  plain = pipeline.MPerClassSampler(labels, 2, 2, seed=4)
  inter = pipeline.MPerClassSampler(labels, 2, 2, seed=4, interleave=3)
  for reader in range(3):
    keys = [inter[i].record_key for i in range(reader, 3 * 4 * 5, 3)]  # 5 batches per reader
    for k in range(5):
      expected = _batch_keys(plain, 3 * k + reader)
      assert keys[4 * k:4 * (k + 1)] == expected.tolist()


def test_train_loader_batches_and_augmentation():
  src = _source()
  it = pipeline.make_train_loader(src, classes_per_batch=3, per_class=2, image_size=8, seed=0,
                                  extra_keys=("super_label",))
  batch = next(it)
  assert batch["image"].shape == (6, 8, 8, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (6,)
  np.testing.assert_array_equal(batch["super_label"], batch["label"] // 2)
  labels = batch["label"].reshape(3, 2)
  assert np.all(labels == labels[:, :1]) and len(set(labels[:, 0])) == 3
  # The green channel encodes the label: normalised back, it matches the batch labels.
  green = batch["image"][:, 4, 4, 1] * 0.224 + 0.456
  np.testing.assert_allclose(green * 255, batch["label"] * 20, atol=1.0)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b, strict=True):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_state_restores_exactly(num_workers):
  src = _source()
  kw = dict(classes_per_batch=2, per_class=2, image_size=8, seed=3, num_workers=num_workers)
  it = pipeline.make_train_loader(src, **kw)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = pipeline.make_train_loader(src, **kw)
  fresh.set_state(state)
  _assert_same(_take(fresh, 4), expected)
  if num_workers:
    reference = pipeline.make_train_loader(src, **{**kw, "num_workers": 0})
    _take(reference, 3)
    _assert_same(_take(reference, 4), expected)  # the worker count does not change the stream


def test_train_loader_epochs_and_shards():
  src = _source(num_classes=8, per=5)  # 40 examples, P*M = 4: 10 batches per epoch
  kw = dict(classes_per_batch=2, per_class=2, image_size=8, seed=5, num_epochs=1)
  whole = list(pipeline.make_train_loader(src, **kw))
  assert len(whole) == 10
  shards = [list(pipeline.make_train_loader(src, shard_index=s, shard_count=2, **kw))
            for s in range(2)]
  assert [len(x) for x in shards] == [5, 5]
  for k in range(5):
    for s in range(2):
      np.testing.assert_array_equal(shards[s][k]["label"], whole[2 * k + s]["label"])
      np.testing.assert_array_equal(shards[s][k]["image"], whole[2 * k + s]["image"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_order_and_padding(num_workers):
  src = _source(num_classes=3, per=5)  # 15 examples
  batches = list(pipeline.make_eval_loader(src, batch_size=4, image_size=8, resize_size=10,
                                           num_workers=num_workers))
  assert len(batches) == 4
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert images.shape == (16, 8, 8, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(mask, np.arange(16) < 15)
  np.testing.assert_array_equal(labels[:15], src.labels)
  assert labels[15] == -1
  red = images[:15, 4, 4, 0] * 0.229 + 0.485
  np.testing.assert_allclose(red * 255, np.arange(15), atol=1.0)
