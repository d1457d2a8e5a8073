"""Checking once, before training, that every image of a source decodes.

A corrupt file found by the input pipeline in the middle of a run stops the run; `verify_images`
reads every example of a source once (through the source itself, so with the decoder training
uses), then raises one error listing the unreadable files, or returns the source without them.

The result can be kept in a small JSON file (`cache`), keyed by the source's `fingerprint()`:
its `repr` (name, split, labels) and the names, sizes and modification times of its files. A
later call with the same fingerprint (a resumed run) reads the result from there instead of
decoding everything again; any change to the files changes the fingerprint, and they are
checked again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxdml.data.sources import SubsetSource

MODES = ("error", "skip")
_CACHE_VERSION = 1
_BLOCK = 4096  # examples handed to the threads at a time


class UndecodableImagesError(ValueError):
  """Images of a source cannot be read or decoded.

  Attributes:
    bad: [(position in the source, description, reason)] of every such image.
  """

  def __init__(self, message: str, bad: Sequence[tuple[int, str, str]]):
    super().__init__(message)
    self.bad = list(bad)


def _reason(error: BaseException) -> str:
  first = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {first[:300]}"


def _describe(source: Any, index: int) -> str:
  describe = getattr(source, "describe", None)
  return describe(index) if describe is not None else f"example {index}"


def find_undecodable(source: Any, *, num_threads: int | None = None
                     ) -> list[tuple[int, str, str]]:
  """Every example of `source` whose image cannot be read, as (position, description, reason).

  Each example is read with `source[i]` (the decoder training uses), in `num_threads` threads
  (default: the CPU count, at most 16); PIL and file reads release the GIL.
  """
  n = len(source)
  threads = num_threads or min(16, os.cpu_count() or 1)

  def check(i: int) -> str | None:
    try:
      example = source[i]
      np.asarray(example["image"])
    except Exception as e:  # noqa: BLE001 - any failure to produce the image is reported
      return _reason(e)
    return None

  bad = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
    for start in range(0, n, _BLOCK):
      block = range(start, min(start + _BLOCK, n))
      for i, reason in zip(block, pool.map(check, block), strict=True):
        if reason is not None:
          bad.append((i, _describe(source, i), reason))
  return bad


def _key(source: Any) -> str | None:
  fingerprint = getattr(source, "fingerprint", None)
  value = fingerprint() if fingerprint is not None else None
  return None if value is None else hashlib.sha1(value.encode()).hexdigest()


def _read_cache(path: str | None, key: str | None, n: int) -> list[tuple[int, str, str]] | None:
  if path is None or key is None or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      entry = json.load(f)["sources"][key]
    if entry["n"] != n:
      return None
    return [(int(i), str(d), str(r)) for i, d, r in entry["bad"]]
  except (OSError, ValueError, KeyError, TypeError):  # unreadable or of another layout: check
    return None


def _write_cache(path: str, key: str, n: int, bad: list[tuple[int, str, str]],
                 log: Callable[[str], None] | None) -> None:
  try:
    with open(path) as f:
      data = json.load(f)
    if data.get("version") != _CACHE_VERSION:
      raise ValueError
  except (OSError, ValueError, AttributeError):
    data = {"version": _CACHE_VERSION, "sources": {}}
  data["sources"][key] = {"n": n, "bad": [list(b) for b in bad]}
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(data, f, indent=1)
    os.replace(tmp, path)
  except OSError as e:
    if log is not None:
      log(f"note: could not keep the image check in {path} ({e}); it runs again next time.")


def _listing(bad: Sequence[tuple[int, str, str]], shown: int) -> str:
  lines = [f"  {d}: {r}" for _, d, r in bad[:shown]]
  if len(bad) > shown:
    lines.append(f"  ... and {len(bad) - shown} more")
  return "\n".join(lines)


def verify_images(source: Any, *, mode: str = "error", name: str = "the source",
                  cache: str | os.PathLike | None = None,
                  log: Callable[[str], None] | None = None, hint: str = "",
                  shown: int = 5, num_threads: int | None = None) -> Any:
  """`source` once every image in it is known to decode (see the module docstring).

  Args:
    source: a source (`jaxdml.data.sources`); one with `in_memory` true is returned unchecked.
    mode: "error": raise `UndecodableImagesError` when an image does not decode; "skip": return
      a `SubsetSource` without those examples (same labels), and report how many were left out.
    name: what the messages call the source, e.g. "cub200 'train'".
    cache: a JSON file keeping the results by the source's fingerprint (None: no caching).
    log: receives one-line progress and skip notes (None: silent).
    hint: appended to the error message (e.g. how to skip the files instead).
    shown: how many bad images the error and the skip note list.
    num_threads: see `find_undecodable`.

  Returns:
    `source` itself when every image decodes, else (mode "skip") the subset that does.

  Raises:
    UndecodableImagesError (a ValueError): mode "error" and some image does not decode; the
      message gives the count and the first `shown` files or records with the reasons.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  if getattr(source, "in_memory", False):
    return source
  n = len(source)
  cache = None if cache is None else os.fspath(cache)
  key = _key(source)
  bad = _read_cache(cache, key, n)
  if bad is None:
    start = time.perf_counter()
    if log is not None and n >= 2000:
      log(f"checking that the {n} images of {name} decode (once"
          + (f"; the result is kept in {cache})" if cache and key else ")"))
    bad = find_undecodable(source, num_threads=num_threads)
    if log is not None and n >= 2000:
      log(f"  done in {time.perf_counter() - start:.1f} s")
    if cache is not None and key is not None:
      _write_cache(cache, key, n, bad, log)
  if not bad:
    return source
  if mode == "error":
    raise UndecodableImagesError(
        f"{len(bad)} of the {n} images of {name} cannot be decoded:\n{_listing(bad, shown)}"
        + (f"\n{hint}" if hint else ""), bad)
  if log is not None:
    log(f"note: left out {len(bad)} of the {n} images of {name}, which cannot be decoded:\n"
        f"{_listing(bad, shown)}")
  keep = np.setdiff1d(np.arange(n), [i for i, _, _ in bad])
  if keep.size == 0:
    raise UndecodableImagesError(f"none of the {n} images of {name} can be decoded:\n"
                                 f"{_listing(bad, shown)}", bad)
  return SubsetSource(source, keep, {k: np.asarray(v)[keep] for k, v in source.columns.items()})
