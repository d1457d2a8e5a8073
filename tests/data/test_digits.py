import numpy as np
import pytest

from jaxdml.data import class_balanced_batches, make_digit_pairs


@pytest.fixture(scope="module")
def pairs():
  return make_digit_pairs(0)


def test_sizes_and_range(pairs):
  assert pairs.train_images.shape == (2000, 8, 16)
  assert pairs.test_images.shape == (1000, 8, 16)
  assert pairs.train_images.dtype == np.float32
  assert 0.0 <= pairs.train_images.min() and pairs.train_images.max() <= 1.0
  assert len(np.unique(pairs.train_labels)) == 50
  assert len(np.unique(pairs.test_labels)) == 50
  assert np.bincount(pairs.train_labels, minlength=100)[pairs.train_classes].tolist() == [40] * 50


def test_class_disjoint_and_deterministic(pairs):
  assert not set(pairs.train_classes) & set(pairs.test_classes)
  assert set(pairs.train_classes) | set(pairs.test_classes) == set(range(100))
  again = make_digit_pairs(0)
  np.testing.assert_array_equal(again.train_images, pairs.train_images)
  np.testing.assert_array_equal(again.test_labels, pairs.test_labels)
  other = make_digit_pairs(1)
  assert not np.array_equal(other.train_classes, pairs.train_classes)


def test_images_are_the_digits_of_their_class(pairs):
  from sklearn.datasets import load_digits
  d = load_digits()
  by_digit = {k: {img.tobytes() for img in (d.images[d.target == k] / 16.0).astype(np.float32)}
              for k in range(10)}
  for img, label in zip(pairs.test_images[::97], pairs.test_labels[::97], strict=True):
    a, b = divmod(int(label), 10)
    assert np.ascontiguousarray(img[:, :8]).tobytes() in by_digit[a]
    assert np.ascontiguousarray(img[:, 8:]).tobytes() in by_digit[b]


def test_test_handwriting_is_unseen(pairs):
  train = {np.ascontiguousarray(pairs.train_images[i, :, :8]).tobytes() for i in range(2000)}
  train |= {np.ascontiguousarray(pairs.train_images[i, :, 8:]).tobytes() for i in range(2000)}
  test = {np.ascontiguousarray(pairs.test_images[i, :, :8]).tobytes() for i in range(1000)}
  assert not train & test


def test_hierarchy(pairs):
  y = np.array([7, 42, 99, 50])
  np.testing.assert_array_equal(pairs.middle(y), [0, 4, 9, 5])
  np.testing.assert_array_equal(pairs.coarse(y), [1, 1, 0, 0])


def test_three_digits():
  p = make_digit_pairs(3, digits_per_image=3, train_images_per_class=2, test_images_per_class=1)
  assert p.train_images.shape == (1000, 8, 24) and p.test_images.shape == (500, 8, 24)
  assert p.middle(np.array([123]))[0] == 1


@pytest.mark.parametrize("kw", [dict(digits_per_image=4), dict(train_images_per_class=0)])
def test_bad_parameters(kw):
  with pytest.raises(ValueError, match=next(iter(kw))):
    make_digit_pairs(0, **kw)


def test_sampler_composition():
  labels = np.repeat(np.arange(10), 6)
  batches = class_balanced_batches(labels, 4, 3, num_batches=25, seed=3)
  assert batches.shape == (25, 12)
  for b in batches:
    groups = labels[b].reshape(4, 3)
    assert (groups == groups[:, :1]).all()  # M of one class, grouped
    assert len(set(groups[:, 0])) == 4  # P distinct classes
    assert len(set(b)) == 12  # distinct examples
  np.testing.assert_array_equal(batches, class_balanced_batches(labels, 4, 3, num_batches=25,
                                                                seed=3))
  # classes are visited in cycles: over 5 batches (20 class slots) each class appears twice
  counts = np.bincount(labels[batches[:5].ravel()] , minlength=10)
  assert (counts == 6).all()


def test_sampler_small_classes_and_errors():
  labels = np.array([0, 0, 0, 1, 2, 2, 2])
  b = class_balanced_batches(labels, 3, 2, num_batches=4, seed=0)
  assert (labels[b].reshape(4, 3, 2)[:, :, 0] == labels[b].reshape(4, 3, 2)[:, :, 1]).all()
  with pytest.raises(ValueError, match="classes_per_batch"):
    class_balanced_batches(labels, 4, 2)
  with pytest.raises(ValueError, match="1-D"):
    class_balanced_batches(labels[:, None], 2, 2)
