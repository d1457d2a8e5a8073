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


def aspect_ratio_batches(
    widths: np.ndarray,
    heights: np.ndarray,
    batch_size: int,
    *,
    num_buckets: int = 4,
    num_batches: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Shuffled batches whose images have similar aspect ratios, to be resized to one shape each.

  Landmark retrieval trains on whole images of any shape (GLAM, after Yokoo et al. 2020): the
  images of a batch are resized jointly to one shape, so each batch is drawn from one group of
  similar aspect ratios. The groups are `num_buckets` quantile buckets of `log(w / h)` (equal
  counts, so no group is starved). Each epoch's worth shuffles every bucket, cuts it into full
  batches (its last partial batch dropped, as `drop_last`) and shuffles the batches of all
  buckets together; further epochs come from further shuffles of the same generator.

  Args:
    widths, heights: [N] image sizes in pixels (> 0).
    batch_size: images per batch (<= the smallest bucket's size).
    num_buckets: aspect-ratio groups (1: plain random batches).
    num_batches: batches to produce; default one epoch's worth.
    seed: numpy seed.

  Returns:
    (batches int32 [num_batches, batch_size], bucket int32 [num_batches], ratios float64
    [num_buckets]): each batch's indices, its bucket, and each bucket's median w / h (the
    shape to resize its images to: `bucket_shape`).
  """
  w, h = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
  if w.ndim != 1 or w.shape != h.shape:
    raise ValueError(f"widths and heights must be [N] arrays of one length, got {w.shape} and "
                     f"{h.shape}.")
  if len(w) == 0 or np.any(~(w > 0)) or np.any(~(h > 0)):
    raise ValueError("widths and heights must be positive (and there must be images).")
  _checks.positive_int(batch_size, "batch_size")
  _checks.positive_int(num_buckets, "num_buckets")
  log_r = np.log(w / h)
  order = np.argsort(log_r, kind="stable")
  buckets = np.array_split(order, num_buckets)  # equal counts, contiguous ratios
  smallest = min(len(b) for b in buckets)
  if batch_size > smallest:
    raise ValueError(f"batch_size={batch_size} exceeds the smallest aspect-ratio bucket "
                     f"({smallest} images of {len(w)} in {num_buckets} buckets); use fewer "
                     "buckets or smaller batches.")
  ratios = np.array([float(np.exp(np.median(log_r[b]))) for b in buckets])
  per_epoch = sum(len(b) // batch_size for b in buckets)
  if num_batches is None:
    num_batches = per_epoch
  _checks.positive_int(num_batches, "num_batches")
  rng = np.random.default_rng(seed)
  out, which = [], []
  while len(out) < num_batches:
    epoch, tags = [], []
    for k, members in enumerate(buckets):
      cut = rng.permutation(members)
      full = len(cut) // batch_size
      epoch += list(cut[:full * batch_size].reshape(full, batch_size))
      tags += [k] * full
    perm = rng.permutation(len(epoch))
    out += [epoch[i] for i in perm]
    which += [tags[i] for i in perm]
  return (np.stack(out[:num_batches]).astype(np.int32), np.asarray(which[:num_batches], np.int32),
          ratios)


def bucket_shape(ratio: float, size: int, *, multiple: int = 32) -> tuple[int, int]:
  """(height, width) for an aspect ratio w / h with the longer side `size`, both sides rounded
  to a multiple of `multiple` (at least one multiple), as a CNN's total stride wants.

  >>> bucket_shape(1.5, 512), bucket_shape(0.75, 512), bucket_shape(1.0, 500)
  ((352, 512), (512, 384), (512, 512))
  """
  _checks.positive_int(size, "size")
  _checks.positive_int(multiple, "multiple")
  if not ratio > 0:
    raise ValueError(f"ratio must be > 0, got {ratio}.")
  snap = lambda v: max(multiple, int(round(v / multiple)) * multiple)  # noqa: E731
  long = snap(size)
  return (long, snap(size * ratio)) if ratio < 1 else (snap(size / ratio), long)
