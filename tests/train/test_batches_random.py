import numpy as np
import pytest

from jaxdml.data import class_balanced_batches
from jaxdml.train.batches import ArrayBatches, Stacked


def data(n=53, classes=7):
  """Images [n, 2, 3] where image i is filled with i, and labels i % classes."""
  images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 2, 3)).copy()
  return images, np.arange(n) % classes


def ids(batch):
  """The dataset index of each image (images[i] is filled with i)."""
  return batch["image"][..., 0, 0].astype(np.int64)


def test_default_sampler_is_the_class_balanced_one_with_the_same_epoch_seeds():
  x, y = data()
  b = ArrayBatches(x, y, classes_per_batch=3, per_class=2, seed=5)
  assert b.sampler == "m_per_class" and b.batch_size == 6
  for e in range(2):
    ref = class_balanced_batches(y, 3, 2, seed=5 * 100003 + e)
    assert b.steps_per_epoch == len(ref)
    for row in ref:
      np.testing.assert_array_equal(ids(next(b)), row)


def test_random_sampler_shapes_and_each_index_once_per_epoch():
  x, y = data()
  b = ArrayBatches(x, y, classes_per_batch=3, per_class=2, seed=1, sampler="random",
                   batch_size=10)
  assert b.steps_per_epoch == 5  # 53 // 10, the tail dropped
  epochs = []
  for _ in range(3):
    items = [next(b) for _ in range(b.steps_per_epoch)]
    assert all(it["image"].shape == (10, 2, 3) and it["label"].shape == (10,) for it in items)
    seen = np.concatenate([ids(it) for it in items])
    assert len(np.unique(seen)) == 50
    for it in items:
      np.testing.assert_array_equal(it["label"], y[ids(it)])
    epochs.append(seen)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_random_batch_size_defaults_to_p_times_m():
  x, y = data()
  b = ArrayBatches(x, y, classes_per_batch=4, per_class=3, sampler="random")
  assert b.batch_size == 12 and b.steps_per_epoch == 4
  assert next(b)["image"].shape == (12, 2, 3)


def test_random_sampler_is_deterministic_per_seed():
  x, y = data()
  make = lambda seed: ArrayBatches(x, y, classes_per_batch=3, per_class=2, seed=seed,
                                   sampler="random", batch_size=8)
  a, b, c = make(2), make(2), make(3)
  ra = [ids(next(a)) for _ in range(9)]
  rb = [ids(next(b)) for _ in range(9)]
  rc = [ids(next(c)) for _ in range(9)]
  np.testing.assert_array_equal(ra, rb)
  assert not np.array_equal(ra, rc)


def test_stacked_epochs_in_random_mode():
  x, y = data()
  b = ArrayBatches(x, y, classes_per_batch=3, per_class=2, seed=4, stack_epoch=True,
                   sampler="random", batch_size=10)
  assert b.steps_per_item == 5
  flat = ArrayBatches(x, y, classes_per_batch=3, per_class=2, seed=4, sampler="random",
                      batch_size=10)
  for _ in range(2):
    item = next(b)
    assert item["image"].shape == (5, 10, 2, 3)
    ref = np.stack([ids(next(flat)) for _ in range(5)])
    np.testing.assert_array_equal(ids(item), ref)


@pytest.mark.parametrize("stack", [False, True])
def test_random_mode_resumes_through_get_and_set_state(stack):
  x, y = data()
  make = lambda: ArrayBatches(x, y, classes_per_batch=3, per_class=2, seed=9, stack_epoch=stack,
                              sampler="random", batch_size=7)
  a = make()
  for _ in range(8 if not stack else 2):
    next(a)
  state = a.get_state()
  assert set(state) == {"position"}
  expected = [ids(next(a)) for _ in range(4)]
  b = make()
  b.set_state(state)
  np.testing.assert_array_equal([ids(next(b)) for _ in range(4)], expected)


def test_stacked_wrapper_works_in_random_mode():
  x, y = data()
  s = Stacked(ArrayBatches(x, y, classes_per_batch=3, per_class=2, sampler="random",
                           batch_size=6), 3)
  assert next(s)["image"].shape == (3, 6, 2, 3)
  assert s.get_state() == {"position": 3}


def test_sampler_errors():
  x, y = data()
  with pytest.raises(ValueError, match="sampler must be one of"):
    ArrayBatches(x, y, classes_per_batch=3, per_class=2, sampler="class_random")
  with pytest.raises(ValueError, match="batch_size is the random sampler's"):
    ArrayBatches(x, y, classes_per_batch=3, per_class=2, batch_size=8)
  with pytest.raises(ValueError, match="batch_size=60 exceeds num_examples=53"):
    ArrayBatches(x, y, classes_per_batch=3, per_class=2, sampler="random", batch_size=60)
  with pytest.raises(ValueError, match="batch_size"):
    ArrayBatches(x, y, classes_per_batch=3, per_class=2, sampler="random", batch_size=0)
