"""Grain input pipelines: class-balanced (P x M) training batches and ordered evaluation batches.

Training uses `grain.DataLoader` with `MPerClassSampler`: every record the sampler emits is a
pure function of its index and the seed, so the loader's iterator state (`get_state` /
`set_state`) restores a run exactly, with or without worker processes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from jaxdml.data import transforms


def _mark_flags_parsed() -> None:
  # Grain's worker processes read absl flags; outside an absl app they are unparsed and grain
  # 0.2.18 raises UnparsedFlagAccessError. Marking them parsed keeps every default value.
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class MPerClassSampler:
  """Grain sampler of class-balanced batches: P classes x M examples, contiguous per batch.

  Record `i` belongs to batch `b = i // (P * M)` (with `interleave` 1, see below), slot
  `j = i % (P * M)`: class `j // M` of the batch, its `(j % M)`-th drawn example. Everything is a
  pure function of (seed, i), so any index can be recomputed after a restart.

  * Epochs: an epoch is `ceil(N / (P * M))` batches, N = len(labels). Each epoch walks through
    seeded shuffles of the eligible classes (seeded by (seed, epoch)), P classes per batch; a
    class is drawn again only after every class has been drawn, and a batch never holds a class
    twice (a class that would repeat within a batch is deferred to the next batch). Over an
    epoch every class is therefore drawn `floor` or `ceil` of `batches * P / C` times (up to the
    deferrals at a reshuffle).
  * Examples: the M examples of a class in batch b are drawn (seeded by (seed, b, slot))
    without replacement, or, when the class has fewer than M examples, all of them plus random
    repeats.
  * Classes with a single example cannot form a positive pair and are never drawn (when
    M >= 2); their examples are simply not used. A ValueError is raised if fewer than P classes
    remain.
  * Each record carries a generator for augmentation seeded by (seed, b, j).
  * `interleave`: how many readers take the sampler's indices in a stride (Grain's DataLoader
    gives shard s of S the indices `l * S + s` and splits those among W worker processes by
    another stride). With `interleave = S * max(W, 1)`, index i maps to batch
    `(i // T // (P * M)) * T + i % T`, T = interleave, so every reader's consecutive P * M
    records form one whole batch, readers get distinct batches, and the batch stream the
    loader yields is the same for any worker count. `make_train_loader` sets it.

  Args:
    labels: [N] integer labels of the source.
    classes_per_batch: P.
    per_class: M.
    seed: non-negative integer seed.
    num_epochs: None for an endless stream, else the number of epochs (the total number of
      batches is rounded down to a multiple of `interleave`).
    interleave: number of strided readers (see above); 1 for a plain sequential reader.
  """

  def __init__(
      self,
      labels: np.ndarray,
      classes_per_batch: int,
      per_class: int,
      *,
      seed: int = 0,
      num_epochs: int | None = None,
      interleave: int = 1,
  ):
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
      raise ValueError(f"labels must be 1-D integers, got {labels.dtype} {labels.shape}.")
    if classes_per_batch < 1 or per_class < 1:
      raise ValueError("classes_per_batch and per_class must be >= 1.")
    if seed < 0:
      raise ValueError(f"seed must be non-negative, got {seed}.")
    if interleave < 1:
      raise ValueError(f"interleave must be >= 1, got {interleave}.")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}.")
    self.classes_per_batch = int(classes_per_batch)
    self.per_class = int(per_class)
    self.batch_size = self.classes_per_batch * self.per_class
    self.seed = int(seed)
    self.num_epochs = num_epochs
    self.interleave = int(interleave)
    self.num_examples = len(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    eligible = counts >= min(2, self.per_class)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(counts)[:-1])
    self.classes = classes[eligible].astype(np.int64)
    self._members = [m.astype(np.int64) for m, keep in zip(members, eligible, strict=True) if keep]
    if len(self.classes) < self.classes_per_batch:
      raise ValueError(
          f"classes_per_batch={classes_per_batch} exceeds the {len(self.classes)} classes with "
          f"at least {min(2, self.per_class)} examples.")
    self.batches_per_epoch = max(math.ceil(self.num_examples / self.batch_size), 1)
    if num_epochs is None:
      self.num_batches = None
    else:
      total = num_epochs * self.batches_per_epoch
      self.num_batches = total - total % self.interleave
      if self.num_batches == 0:
        raise ValueError(f"{total} batches cannot be split among {self.interleave} readers.")
    self._digest = _labels_digest(labels)
    self._epoch_cache: tuple[int, np.ndarray] | None = None
    self._batch_cache: tuple[int, np.ndarray] | None = None

  def __len__(self) -> int:
    if self.num_batches is None:
      return sys.maxsize - sys.maxsize % (self.batch_size * self.interleave)
    return self.num_batches * self.batch_size

  def __repr__(self) -> str:
    return (f"MPerClassSampler(classes_per_batch={self.classes_per_batch}, "
            f"per_class={self.per_class}, seed={self.seed}, num_epochs={self.num_epochs}, "
            f"interleave={self.interleave}, num_examples={self.num_examples}, "
            f"labels_digest={self._digest})")

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state["_epoch_cache"] = None
    state["_batch_cache"] = None
    return state

  def position(self, index: int) -> tuple[int, int]:
    """(batch, slot) of sampler index `index`."""
    t = self.interleave
    p, r = divmod(int(index), t)
    k, j = divmod(p, self.batch_size)
    return k * t + r, j

  def epoch_classes(self, epoch: int) -> np.ndarray:
    """Class ids drawn in each batch of `epoch`: int64 [batches_per_epoch, P]."""
    if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
      return self._epoch_cache[1]
    rng = np.random.default_rng([self.seed, 0, epoch])
    num_classes = len(self.classes)
    table = np.empty((self.batches_per_epoch, self.classes_per_batch), np.int64)
    queue: list[int] = []
    head = 0
    for b in range(self.batches_per_epoch):
      chosen: list[int] = []
      deferred: list[int] = []
      while len(chosen) < self.classes_per_batch:
        if head == len(queue):
          queue = deferred + [int(c) for c in rng.permutation(num_classes)]
          deferred, head = [], 0
          continue
        c = queue[head]
        head += 1
        (deferred if c in chosen else chosen).append(c)
      queue = deferred + queue[head:]
      head = 0
      table[b] = chosen
    self._epoch_cache = (epoch, table)
    return table

  def batch_indices(self, batch: int) -> np.ndarray:
    """Source indices of batch `batch` (global batch number): int64 [P * M], class-major."""
    if self._batch_cache is not None and self._batch_cache[0] == batch:
      return self._batch_cache[1]
    epoch, within = divmod(batch, self.batches_per_epoch)
    chosen = self.epoch_classes(epoch)[within]
    m = self.per_class
    out = np.empty(self.batch_size, np.int64)
    for slot, c in enumerate(chosen):
      members = self._members[c]
      rng = np.random.default_rng([self.seed, 1, batch, slot])
      if len(members) >= m:
        picks = rng.choice(len(members), m, replace=False)
      else:
        picks = np.concatenate([rng.permutation(len(members)),
                                rng.integers(0, len(members), m - len(members))])
      out[slot * m:(slot + 1) * m] = members[picks]
    self._batch_cache = (batch, out)
    return out

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    index = int(index)
    if index < 0 or index >= len(self):
      raise IndexError(f"Index {index} out of range for a sampler of length {len(self)}.")
    batch, slot = self.position(index)
    key = int(self.batch_indices(batch)[slot])
    rng = np.random.default_rng([self.seed, 2, batch, slot])
    return grain.RecordMetadata(index=index, record_key=key, rng=rng)


def _labels_digest(labels: np.ndarray) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top

  return hashlib.sha1(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()[:16]


class TrainMap(grain.transforms.RandomMap):
  """Random resized crop, flip and normalisation; keeps "label" (int32) and `extra_keys`."""

  def __init__(self, image_size: int = 224, normalization: str = "imagenet",
               extra_keys: Sequence[str] = ()):
    if normalization not in transforms.NORMALIZATIONS:
      raise ValueError(f"Unknown normalization {normalization!r}.")
    self.image_size = image_size
    self.normalization = normalization
    self.extra_keys = tuple(extra_keys)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    out = {"image": transforms.train_transform(element["image"], rng, image_size=self.image_size,
                                               normalization=self.normalization),
           "label": np.int32(element["label"])}
    for key in self.extra_keys:
      out[key] = np.int32(element[key])
    return out

  def __repr__(self) -> str:
    return (f"TrainMap(image_size={self.image_size}, normalization={self.normalization!r}, "
            f"extra_keys={self.extra_keys})")


class EvalMap(grain.transforms.Map):
  """Resize, centre crop and normalisation; keeps "label", "mask" and `extra_keys`."""

  def __init__(self, image_size: int = 224, resize_size: int = 256,
               normalization: str = "imagenet", extra_keys: Sequence[str] = ()):
    if normalization not in transforms.NORMALIZATIONS:
      raise ValueError(f"Unknown normalization {normalization!r}.")
    self.image_size = image_size
    self.resize_size = resize_size
    self.normalization = normalization
    self.extra_keys = tuple(extra_keys)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    out = {"image": transforms.eval_transform(element["image"], image_size=self.image_size,
                                              resize_size=self.resize_size,
                                              normalization=self.normalization),
           "label": np.int32(element["label"]),
           "mask": np.bool_(element["mask"])}
    for key in self.extra_keys:
      out[key] = np.int32(element[key])
    return out


class _PaddedSource:
  """`source` extended to `length` examples by repeating its last one with mask False, label -1."""

  def __init__(self, source: Any, length: int, extra_keys: Sequence[str] = ()):
    self.source = source
    self.length = length
    self.extra_keys = tuple(extra_keys)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    n = len(self.source)
    example = dict(self.source[min(index, n - 1)])
    example["mask"] = index < n
    if index >= n:
      example["label"] = -1
      for key in self.extra_keys:
        example[key] = -1
    return example

  def __repr__(self) -> str:
    return f"_PaddedSource({self.source!r}, length={self.length})"


def make_train_loader(
    source: Any,
    *,
    classes_per_batch: int,
    per_class: int,
    image_size: int = 224,
    normalization: str = "imagenet",
    seed: int = 0,
    num_workers: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    extra_keys: Sequence[str] = (),
    worker_buffer_size: int = 1,
) -> grain.DataLoaderIterator:
  """An iterator of augmented class-balanced training batches (grain.DataLoader).

  Each batch holds P = `classes_per_batch` classes x M = `per_class` examples, grouped by class
  (see `MPerClassSampler`). With `shard_count` > 1 (one shard per JAX process) every process
  gets its own whole P x M batch per step: the global batch stream is dealt out round-robin, so
  process s receives global batches s, S + s, 2S + s, ... (S = shard_count); all processes share
  `seed` and together traverse one global epoch in `ceil(N / (P * M)) / S` steps.

  Args:
    source: a source (`labels` attribute; examples {"image": uint8 [H, W, 3], "label", ...}).
    classes_per_batch: P.
    per_class: M.
    image_size: output side of the random resized crop.
    normalization: "imagenet" or "bn_inception" (see `transforms.normalize`).
    seed: sampling and augmentation seed.
    num_workers: Grain worker processes (0: in this process). The batches do not depend on it,
      but a state saved with one worker count restores only with the same count.
    num_epochs: None for endless iteration, else the number of epochs.
    shard_index: this process's shard.
    shard_count: number of shards.
    extra_keys: further integer columns of the source to keep (e.g. "super_label").
    worker_buffer_size: batches each worker prepares in advance.

  Returns:
    A `grain.DataLoaderIterator` yielding {"image": float32 [P*M, size, size, 3],
    "label": int32 [P*M], **extra_keys}; it has `get_state()` / `set_state(state)`.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count}).")
  if num_workers > 0:
    _mark_flags_parsed()
  sampler = MPerClassSampler(
      source.labels, classes_per_batch, per_class, seed=seed, num_epochs=num_epochs,
      interleave=shard_count * max(num_workers, 1))
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[TrainMap(image_size, normalization, extra_keys),
                  grain.transforms.Batch(batch_size=sampler.batch_size, drop_remainder=True)],
      worker_count=num_workers,
      worker_buffer_size=worker_buffer_size,
      shard_options=grain.sharding.ShardOptions(shard_index=shard_index,
                                                shard_count=shard_count,
                                                drop_remainder=True),
  )
  return iter(loader)


def make_eval_loader(
    source: Any,
    *,
    batch_size: int,
    image_size: int = 224,
    resize_size: int = 256,
    normalization: str = "imagenet",
    num_workers: int = 0,
    extra_keys: Sequence[str] = (),
) -> grain.DatasetIterator:
  """An iterator of evaluation batches in source order.

  Args:
    source: a source.
    batch_size: examples per batch; the last batch is padded to it.
    image_size: centre-crop side.
    resize_size: shorter side before the crop.
    normalization: "imagenet" or "bn_inception".
    num_workers: Grain worker processes (0: in this process); the order does not depend on it.
    extra_keys: further integer columns of the source to keep.

  Returns:
    An iterator of {"image": float32 [batch_size, size, size, 3], "label": int32 [batch_size],
    "mask": bool [batch_size], **extra_keys}, `ceil(len(source) / batch_size)` batches. Padding
    rows repeat the last image and have mask False and label (and extra keys) -1.
  """
  n = len(source)
  if n == 0:
    raise ValueError("source is empty.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  num_batches = math.ceil(n / batch_size)
  padded = _PaddedSource(source, num_batches * batch_size, extra_keys)
  ds = (grain.MapDataset.source(padded)
        .map(EvalMap(image_size, resize_size, normalization, extra_keys))
        .batch(batch_size))
  it_ds = ds.to_iter_dataset()
  if num_workers > 0:
    _mark_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)
