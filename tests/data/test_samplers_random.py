import numpy as np
import pytest

from jaxdml.data import random_batches


def test_one_epoch_is_one_permutation_with_the_tail_dropped():
  b = random_batches(23, 5, seed=3)
  assert b.shape == (4, 5) and b.dtype == np.int32
  flat = b.ravel()
  assert len(np.unique(flat)) == 20  # every index at most once
  assert flat.min() >= 0 and flat.max() < 23
  # exactly the first 20 entries of the seed's permutation, in order (DataLoader drop_last)
  np.testing.assert_array_equal(flat, np.random.default_rng(3).permutation(23)[:20])


def test_divisible_size_covers_every_index_once():
  b = random_batches(12, 4, seed=0)
  np.testing.assert_array_equal(np.sort(b.ravel()), np.arange(12))


def test_more_batches_than_an_epoch_take_further_permutations():
  b = random_batches(10, 3, num_batches=7, seed=1)  # 3 batches per epoch
  assert b.shape == (7, 3)
  for e in range(2):
    epoch = b[3 * e:3 * e + 3].ravel()
    assert len(np.unique(epoch)) == 9
  np.testing.assert_array_equal(b[:3], random_batches(10, 3, seed=1))
  assert len(np.unique(b[6])) == 3


def test_fewer_batches_are_a_prefix():
  np.testing.assert_array_equal(random_batches(50, 5, num_batches=3, seed=4),
                                random_batches(50, 5, seed=4)[:3])


def test_deterministic_per_seed_and_seeds_differ():
  np.testing.assert_array_equal(random_batches(100, 10, seed=7), random_batches(100, 10, seed=7))
  assert not np.array_equal(random_batches(100, 10, seed=7), random_batches(100, 10, seed=8))


def test_labels_play_no_part_batches_are_not_class_balanced():
  # with 50 classes of 2 and batches of 10, a shuffled batch almost never pairs every example
  labels = np.repeat(np.arange(50), 2)
  b = random_batches(100, 10, seed=0)
  counts = [np.bincount(labels[row], minlength=50) for row in b]
  assert any(np.any(c == 1) for c in counts)  # anchors without a positive


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="num_examples"):
    random_batches(0, 1)
  with pytest.raises(ValueError, match="batch_size"):
    random_batches(10, 0)
  with pytest.raises(ValueError, match="batch_size=11 exceeds num_examples=10"):
    random_batches(10, 11)
  with pytest.raises(ValueError, match="num_batches"):
    random_batches(10, 2, num_batches=0)
  with pytest.raises(ValueError, match="batch_size"):
    random_batches(10, 2.5)
  with pytest.raises(ValueError, match="num_examples"):
    random_batches(True, 1)
