"""Batch samplers for metric learning (host-side numpy, deterministic from a seed)."""

from __future__ import annotations

import numpy as np

from jaxdml import _checks


def class_balanced_batches(
    labels: np.ndarray,
    classes_per_batch: int,
    per_class: int,
    *,
    num_batches: int | None = None,
    seed: int = 0,
) -> np.ndarray:
  """Index batches of P classes x M examples ("m-per-class" sampling).

  Each batch draws `classes_per_batch` (P) distinct classes and `per_class` (M) examples of each.
  Classes are visited in shuffled cycles (every class once before any class twice). Each class
  walks through a shuffled queue of its examples, M at a time, reshuffling when fewer than M are
  left, so a class with at least M examples gives M distinct ones; a class with fewer than M gives
  all of them plus random repeats (the only way to fill M slots).

  Args:
    labels: [N] integer labels.
    classes_per_batch: P, classes per batch (<= number of classes).
    per_class: M, examples per class per batch.
    num_batches: batches to produce; default `N // (P * M)` (one epoch's worth, as
      pytorch-metric-learning's MPerClassSampler with length N).
    seed: numpy seed; the same seed gives the same batches.

  Returns:
    int32 [num_batches, P * M] indices, grouped by class within each batch
    (class 0's M examples first).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
  classes = np.unique(labels)
  if classes_per_batch < 1 or per_class < 1:
    raise ValueError("classes_per_batch and per_class must be >= 1.")
  if classes_per_batch > len(classes):
    raise ValueError(
        f"classes_per_batch={classes_per_batch} exceeds the {len(classes)} classes in labels.")
  batch = classes_per_batch * per_class
  if num_batches is None:
    num_batches = max(len(labels) // batch, 1)
  rng = np.random.default_rng(seed)
  members = {c: np.nonzero(labels == c)[0] for c in classes}
  queues = {c: rng.permutation(members[c]) for c in classes}
  cursor = {c: 0 for c in classes}
  out = np.empty((num_batches, batch), np.int32)
  queue: list = []
  for b in range(num_batches):
    chosen, deferred = [], []
    while len(chosen) < classes_per_batch:
      if not queue:
        queue = list(rng.permutation(classes))
      c = queue.pop(0)
      (deferred if c in chosen else chosen).append(c)
    queue = deferred + queue
    for j, c in enumerate(chosen):
      if len(members[c]) >= per_class:
        if cursor[c] + per_class > len(queues[c]):
          queues[c] = rng.permutation(members[c])
          cursor[c] = 0
        take = queues[c][cursor[c]:cursor[c] + per_class]
        cursor[c] += per_class
      else:
        extra = rng.choice(members[c], per_class - len(members[c]), replace=True)
        take = np.concatenate([rng.permutation(members[c]), extra])
      out[b, j * per_class:(j + 1) * per_class] = take
  return out


def random_batches(
    num_examples: int,
    batch_size: int,
    *,
    num_batches: int | None = None,
    seed: int = 0,
) -> np.ndarray:
  """Plain shuffled index batches, without regard to labels ("random" sampling).

  The order of a PyTorch `DataLoader(shuffle=True, drop_last=True)`: each epoch is one random
  permutation of `range(num_examples)` cut into consecutive batches of `batch_size`, the last
  partial batch dropped. Batches past the first epoch's `num_examples // batch_size` come from
  further permutations (drawn from the same generator), so within every epoch's worth each index
  appears at most once. A batch may hold anchors without any positive.

  Args:
    num_examples: N, the dataset size.
    batch_size: examples per batch (<= N).
    num_batches: batches to produce; default `N // batch_size` (one epoch).
    seed: numpy seed; the same seed gives the same batches.

  Returns:
    int32 [num_batches, batch_size] indices into `range(num_examples)`.
  """
  _checks.positive_int(num_examples, "num_examples")
  _checks.positive_int(batch_size, "batch_size")
  if batch_size > num_examples:
    raise ValueError(f"batch_size={batch_size} exceeds num_examples={num_examples}; with "
                     "drop_last there would be no batch.")
  per_epoch = num_examples // batch_size
  if num_batches is None:
    num_batches = per_epoch
  _checks.positive_int(num_batches, "num_batches")
  rng = np.random.default_rng(seed)
  epochs = -(-num_batches // per_epoch)
  used = per_epoch * batch_size
  cuts = [rng.permutation(num_examples)[:used].reshape(per_epoch, batch_size)
          for _ in range(epochs)]
  return np.concatenate(cuts)[:num_batches].astype(np.int32)
