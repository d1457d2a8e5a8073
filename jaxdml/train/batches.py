"""Training-batch streams with a checkpointable position.

The trainer reads batches from any iterator with `get_state()` / `set_state(state)` (a grain
DataLoader iterator has both). `ArrayBatches` serves in-memory datasets (the digit-pairs and
glyphs benchmarks) without workers, class-balanced or plainly shuffled: its batches are a pure
function of (seed, batch number), so its state is one integer. `Stacked` groups k consecutive
batches of another stream into one [k, B, ...] batch for a multi-step call.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from jaxdml.data import class_balanced_batches, random_batches


class ArrayBatches:
  """Training batches from in-memory arrays, epoch by epoch.

  Two samplers:

  - "m_per_class" (default): class-balanced batches of P classes x M images; epoch e is
    `class_balanced_batches(labels, P, M, seed=seed * 100003 + e)`.
  - "random": plain shuffled batches of `batch_size` (default P * M), as a PyTorch DataLoader
    with `shuffle=True, drop_last=True` (Metrix's CUB / Cars runs); epoch e is
    `random_batches(N, batch_size, seed=seed * 100003 + e)`, so every image appears at most once
    per epoch and many anchors have no positive in their batch.

  With `stack_epoch=True` each item is the whole epoch stacked ([steps_per_epoch, B, ...]), for a
  one-call-per-epoch `lax.scan`; otherwise one batch per item. Either way the state is the number
  of batches consumed.

  Args:
    images: [N, ...] array.
    labels: [N] integer labels.
    classes_per_batch: P.
    per_class: M.
    seed: sampling seed.
    stack_epoch: yield whole epochs.
    sampler: "m_per_class" or "random".
    batch_size: the random sampler's batch size (None: P * M); an error with "m_per_class",
      whose batch is always P * M.
  """

  SAMPLERS = ("m_per_class", "random")

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, classes_per_batch: int,
               per_class: int, seed: int = 0, stack_epoch: bool = False,
               sampler: str = "m_per_class", batch_size: int | None = None):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels).astype(np.int32)
    if len(self.images) != len(self.labels):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
    if sampler not in self.SAMPLERS:
      raise ValueError(f"sampler must be one of {self.SAMPLERS}, got {sampler!r}.")
    if batch_size is not None and sampler != "random":
      raise ValueError(f"batch_size is the random sampler's batch size; with sampler={sampler!r} "
                       "a batch is classes_per_batch * per_class.")
    self.classes_per_batch = classes_per_batch
    self.per_class = per_class
    self.seed = seed
    self.stack_epoch = stack_epoch
    self.sampler = sampler
    self.batch_size = classes_per_batch * per_class if batch_size is None else batch_size
    self.steps_per_epoch = len(self._epoch(0))
    self._position = 0  # batches consumed

  def _epoch(self, e: int) -> np.ndarray:
    seed = self.seed * 100003 + e
    if self.sampler == "random":
      return random_batches(len(self.labels), self.batch_size, seed=seed)
    return class_balanced_batches(self.labels, self.classes_per_batch, self.per_class, seed=seed)

  @property
  def steps_per_item(self) -> int:
    return self.steps_per_epoch if self.stack_epoch else 1

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    e, b = divmod(self._position, self.steps_per_epoch)
    batches = self._epoch(e)
    if self.stack_epoch:
      if b:
        raise RuntimeError("stack_epoch streams must be positioned at an epoch start.")
      idx = batches
    else:
      idx = batches[b]
    self._position += self.steps_per_item
    return {"image": self.images[idx], "label": self.labels[idx]}

  def get_state(self) -> dict:
    return {"position": self._position}

  def set_state(self, state: dict) -> None:
    self._position = int(state["position"])


class Stacked:
  """Groups `k` consecutive items of `stream` into one item with a leading [k] axis."""

  def __init__(self, stream: Any, k: int):
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}.")
    self.stream = stream
    self.k = k
    self._iter = iter(stream)

  @property
  def steps_per_item(self) -> int:
    return self.k

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    items = [next(self._iter) for _ in range(self.k)]
    return {key: np.stack([np.asarray(it[key]) for it in items]) for key in items[0]}

  def get_state(self) -> Any:
    return self._iter.get_state()

  def set_state(self, state: Any) -> None:
    self._iter.set_state(state)
