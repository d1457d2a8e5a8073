"""The digit-pairs benchmark: real handwriting, class-disjoint, zero-shot, offline.

Built from scikit-learn's 1,797 handwritten 8x8 digits. A class is an ordered tuple of digits
(a, b) (or (a, b, c)); an image of that class is the horizontal concatenation of one handwritten
image of each digit. Half the classes train, the other half test (unseen classes), and the test
images are drawn from a disjoint half of the handwriting (unseen writers' strokes).

Label hierarchy, for multi-level methods:
  fine   = the tuple, id sum(d_i * 10**(n-1-i))  (100 or 1,000 classes)
  middle = the first digit                        (10 classes)
  coarse = whether the first digit is < 5         (2 classes)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DigitPairs:
  """A generated split pair. Images are float32 in [0, 1], shape [N, 8, 8 * digits_per_image]."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  digits_per_image: int
  train_classes: np.ndarray
  test_classes: np.ndarray

  def middle(self, labels: np.ndarray) -> np.ndarray:
    """Middle level of the hierarchy: the first digit."""
    return np.asarray(labels) // 10 ** (self.digits_per_image - 1)

  def coarse(self, labels: np.ndarray) -> np.ndarray:
    """Coarse level: 1 if the first digit is < 5, else 0."""
    return (self.middle(labels) < 5).astype(np.int32)

  @property
  def image_shape(self) -> tuple[int, int]:
    return tuple(self.train_images.shape[1:])


def _compose(pools: list[np.ndarray], images: np.ndarray, classes: np.ndarray, per_class: int,
             digits_per_image: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  out = np.empty((len(classes) * per_class, 8, 8 * digits_per_image), np.float32)
  labels = np.repeat(classes, per_class).astype(np.int32)
  for position in range(digits_per_image):
    digit = (labels // 10 ** (digits_per_image - 1 - position)) % 10
    for d in range(10):
      rows = np.nonzero(digit == d)[0]
      picks = rng.choice(pools[d], size=len(rows), replace=True)
      out[rows, :, 8 * position:8 * (position + 1)] = images[picks]
  return out, labels


def make_digit_pairs(
    seed: int = 0,
    *,
    digits_per_image: int = 2,
    train_images_per_class: int = 40,
    test_images_per_class: int = 20,
) -> DigitPairs:
  """Builds the digit-pairs benchmark deterministically from `seed`.

  Args:
    seed: seeds the handwriting split, the class split and the image composition.
    digits_per_image: 2 (100 classes, 50/50) or 3 (1,000 classes, 500/500).
    train_images_per_class: images per training class, drawn from handwriting pool A.
    test_images_per_class: images per test class, drawn from the disjoint pool B.

  Returns:
    A `DigitPairs` with train/test images and fine labels (see the module docstring for the
    hierarchy).
  """
  if digits_per_image not in (2, 3):
    raise ValueError(f"digits_per_image must be 2 or 3, got {digits_per_image}.")
  for name, v in (("train_images_per_class", train_images_per_class),
                  ("test_images_per_class", test_images_per_class)):
    if int(v) < 1:
      raise ValueError(f"{name} must be >= 1, got {v}.")
  from sklearn.datasets import load_digits  # local import: sklearn is only needed here

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  targets = digits.target
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(images))
  half = len(images) // 2
  pool_a, pool_b = order[:half], order[half:]
  pools_a = [pool_a[targets[pool_a] == d] for d in range(10)]
  pools_b = [pool_b[targets[pool_b] == d] for d in range(10)]

  num_classes = 10 ** digits_per_image
  class_order = rng.permutation(num_classes)
  train_classes = np.sort(class_order[:num_classes // 2])
  test_classes = np.sort(class_order[num_classes // 2:])
  x_tr, y_tr = _compose(pools_a, images, train_classes, train_images_per_class,
                        digits_per_image, rng)
  x_te, y_te = _compose(pools_b, images, test_classes, test_images_per_class,
                        digits_per_image, rng)
  return DigitPairs(x_tr, y_tr, x_te, y_te, digits_per_image, train_classes, test_classes)
