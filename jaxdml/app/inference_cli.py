"""The commands that use a trained model: `jaxdml embed`, `jaxdml index` and `jaxdml search`.

  jaxdml embed --workdir RUN --data IMAGES --out emb.npz [--index-out index.npz]
  jaxdml embed --workdir RUN --split test --out emb.npz        the run's own data
  jaxdml index --embeddings emb.npz --out index.npz
  jaxdml search --index index.npz --query emb.npz --k 10 [--out neighbours.json]
  jaxdml search --index index.npz --query IMAGES --workdir RUN

IMAGES is a folder (one sub-folder per class gives labels from the folder names, and the file
paths are the ids; else the images directly in it, unlabelled), an .npy array of images (labels
from `--labels`), or an .npz with "images" and optionally "labels" and "ids".

An embeddings file (`embed --out`) is an .npz with "format" ("jaxdml.embeddings"), "version",
"embeddings" [N, d], "ids" [N], "labels" [N] when known, "similarity", "c", "workdir" and
"step"; `np.load` reads it. An index file is `jaxdml.Index.save`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from jaxdml.index import write_npz

EMBEDDINGS_FORMAT = "jaxdml.embeddings"
EMBEDDINGS_VERSION = 1
NEIGHBOURS_FORMAT = "jaxdml.neighbours"
EXIT_BAD_INPUT = 2


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def save_embeddings(path: str, embeddings: np.ndarray, *, labels: np.ndarray | None,
                    ids: np.ndarray, similarity: str, c: float, workdir: str = "",
                    step: int = -1) -> str:
  """Writes an embeddings file (see the module docstring)."""
  arrays = {"format": np.array(EMBEDDINGS_FORMAT), "version": np.array(EMBEDDINGS_VERSION),
            "embeddings": np.asarray(embeddings), "ids": np.asarray(ids),
            "similarity": np.array(similarity), "c": np.array(float(c)),
            "workdir": np.array(os.path.abspath(workdir) if workdir else ""),
            "step": np.array(int(step))}
  if labels is not None:
    arrays["labels"] = np.asarray(labels)
  return write_npz(path, arrays)


def _format_of(archive) -> str | None:
  return str(archive["format"]) if "format" in archive.files else None


def _open_npz(path: str, what: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} {path!r} does not exist.")
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{what} {path!r} is not a NumPy file ({e}).") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{what} {path!r} holds one array; expected an .npz archive.")
  return archive


def load_embeddings(path: str) -> dict[str, Any]:
  """The contents of an embeddings file: embeddings, labels (or None), ids, similarity, c, ..."""
  with _open_npz(path, "embeddings file") as archive:
    fmt = _format_of(archive)
    if fmt != EMBEDDINGS_FORMAT:
      raise ValueError(f"{path} is not an embeddings file of `jaxdml embed` (format {fmt!r}, "
                       f"expected {EMBEDDINGS_FORMAT!r}).")
    version = int(archive["version"])
    if version != EMBEDDINGS_VERSION:
      raise ValueError(f"{path} is an embeddings file of format version {version}; this jaxdml "
                       f"reads version {EMBEDDINGS_VERSION}.")
    out = {k: archive[k] for k in archive.files}
  out["labels"] = out.get("labels")
  out["similarity"], out["c"] = str(out["similarity"]), float(out["c"])
  return out


class _FileImages:
  """Image files as a sequence of uint8 RGB arrays, decoded when read (`len` and slices)."""

  def __init__(self, root: str, names: list[str]):
    self.root, self.names = root, names

  def __len__(self) -> int:
    return len(self.names)

  def _read(self, name: str) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415
    with Image.open(os.path.join(self.root, name)) as image:
      return np.asarray(image.convert("RGB"), np.uint8)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self._read(self.names[i]) for i in range(*index.indices(len(self)))]
    return self._read(self.names[int(index)])


def _read_folder(root: str) -> tuple[Any, np.ndarray | None, np.ndarray]:
  from jaxdml.data.sources import IMAGE_EXTENSIONS, ImageFolderSource  # noqa: PLC0415
  entries = sorted(os.listdir(root))
  if any(os.path.isdir(os.path.join(root, e)) for e in entries):
    source = ImageFolderSource(root)  # one sub-folder per class
    return _FileImages(root, list(source.paths)), np.asarray(source.labels), np.asarray(
        source.paths)
  names = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)
           and os.path.isfile(os.path.join(root, e))]
  if not names:
    raise ValueError(f"no images in {root!r} (files ending in {', '.join(IMAGE_EXTENSIONS)}, "
                     "or one sub-folder of them per class).")
  return _FileImages(root, names), None, np.asarray(names)


def read_images(data: str, labels_path: str | None = None
                ) -> tuple[Any, np.ndarray | None, np.ndarray]:
  """(images, labels or None, ids) of a folder, .npy or .npz of images (module docstring)."""
  if os.path.isdir(data):
    images, labels, ids = _read_folder(data)
  elif not os.path.exists(data):
    raise FileNotFoundError(f"--data {data!r} does not exist.")
  elif data.endswith(".npy"):
    images = np.load(data, allow_pickle=False)
    labels, ids = None, np.arange(len(images))
  elif data.endswith(".npz"):
    with _open_npz(data, "--data") as archive:
      if _format_of(archive) == EMBEDDINGS_FORMAT:
        raise ValueError(f"{data} holds embeddings already, not images.")
      if "images" not in archive.files:
        raise ValueError(f"{data} has no 'images' array (it has {sorted(archive.files)}).")
      images = archive["images"]
      labels = archive["labels"] if "labels" in archive.files else None
      ids = archive["ids"] if "ids" in archive.files else np.arange(len(images))
  else:
    raise ValueError(f"--data {data!r} must be a folder of images, an .npy or an .npz file.")
  if labels_path is not None:
    labels = np.load(labels_path, allow_pickle=False)
  if labels is not None and len(labels) != len(images):
    raise ValueError(f"{len(labels)} labels for {len(images)} images.")
  return images, labels, ids


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------


def _errors() -> tuple[type[BaseException], ...]:
  return (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError)


def _fail(e: BaseException) -> int:
  print(f"error: {e}", file=sys.stderr)
  return EXIT_BAD_INPUT


def _embed_run(args, data: str | None, split: str | None, labels_path: str | None = None):
  """(run, embeddings, labels, ids) of --data or --split, embedded by the run in --workdir."""
  from jaxdml.app.inference import load  # noqa: PLC0415
  run = load(args.workdir, args.step)
  if split is not None:
    images, labels, ids = run.split(split)
  else:
    images, labels, ids = read_images(data, labels_path)
  return run, run.embed(images, batch_size=args.batch_size), labels, ids


def _embed(args) -> int:
  try:
    run, emb, labels, ids = _embed_run(args, args.data, args.split, args.labels)
    save_embeddings(args.out, emb, labels=labels, ids=ids, similarity=run.similarity, c=run.c,
                    workdir=run.workdir, step=run.step)
    print(f"{len(emb)} embeddings of dimension {emb.shape[1]} (checkpoint step {run.step}, "
          f"{run.similarity}) -> {args.out}")
    if args.index_out:
      from jaxdml.index import Index  # noqa: PLC0415
      Index(emb, labels, ids, similarity=run.similarity, c=run.c).save(args.index_out)
      print(f"index of {len(emb)} items -> {args.index_out}")
  except _errors() as e:
    return _fail(e)
  return 0


def _index(args) -> int:
  from jaxdml.index import Index  # noqa: PLC0415
  try:
    e = load_embeddings(args.embeddings)
    index = Index(e["embeddings"], e["labels"], e["ids"], similarity=e["similarity"], c=e["c"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    index.save(args.out)
  except _errors() as err:
    return _fail(err)
  print(f"{index!r} -> {args.out}")
  return 0


def _queries(args, index) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
  """(embeddings, labels, ids) of --query: an embeddings file, or images embedded by --workdir."""
  if args.query.endswith(".npz") and os.path.isfile(args.query):
    with _open_npz(args.query, "--query") as archive:
      is_embeddings = _format_of(archive) == EMBEDDINGS_FORMAT
    if is_embeddings:
      e = load_embeddings(args.query)
      _same_similarity(e["similarity"], e["c"], index, f"the embeddings in {args.query}")
      return e["embeddings"], e["labels"], e["ids"]
  if not args.workdir:
    raise ValueError(f"--query {args.query!r} holds images: give --workdir, the run that embeds "
                     "them (or embed them first with `jaxdml embed`).")
  run, emb, labels, ids = _embed_run(args, args.query, None)
  _same_similarity(run.similarity, run.c, index, f"the run in {args.workdir}")
  return emb, labels, ids


def _same_similarity(similarity: str, c: float, index, what: str) -> None:
  if similarity != index.similarity or (similarity == "poincare" and c != index.c):
    raise ValueError(f"{what} are compared by {similarity!r} (c={c}) but the index by "
                     f"{index.similarity!r} (c={index.c}): they come from different runs.")


def _plain(x) -> Any:
  return x.item() if isinstance(x, np.generic) else x


def _write_neighbours(path: str, query_ids, scores, ids, rows, labels, query_labels) -> None:
  if path.endswith(".json"):
    rows_out = []
    for i, qid in enumerate(query_ids):
      entry = {"query": _plain(qid)}
      if query_labels is not None:
        entry["label"] = _plain(query_labels[i])
      entry["neighbours"] = [
          {"id": _plain(ids[i, j]), "score": float(scores[i, j]),
           **({"label": _plain(labels[i, j])} if labels is not None else {})}
          for j in range(scores.shape[1])]
      rows_out.append(entry)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(rows_out, f, indent=1)
    return
  arrays = {"format": np.array(NEIGHBOURS_FORMAT), "query_ids": np.asarray(query_ids),
            "scores": scores, "ids": ids, "indices": rows}
  if labels is not None:
    arrays["labels"] = labels
  if query_labels is not None:
    arrays["query_labels"] = np.asarray(query_labels)
  write_npz(path, arrays)


def _search(args) -> int:
  from jaxdml.index import Index  # noqa: PLC0415
  try:
    index = Index.load(args.index)
    queries, query_labels, query_ids = _queries(args, index)
    scores, rows = index.search(queries, args.k, returns="indices")
  except _errors() as e:
    return _fail(e)
  ids = index.ids[rows]
  labels = None if index.labels is None else index.labels[rows]
  shown = len(rows) if args.print < 0 else min(args.print, len(rows))
  for i in range(shown):
    label = f" (label {_plain(query_labels[i])})" if query_labels is not None else ""
    print(f"query {_plain(query_ids[i])}{label}:")
    for j in range(rows.shape[1]):
      extra = f"  label {_plain(labels[i, j])}" if labels is not None else ""
      print(f"  {j + 1:3d}. {_plain(ids[i, j])}  {scores[i, j]:.4f}{extra}")
  if shown < len(rows):
    print(f"... {len(rows) - shown} more queries" + ("" if args.out else " (--out writes all)"))
  if args.out:
    try:
      _write_neighbours(args.out, query_ids, scores, ids, rows, labels, query_labels)
    except _errors() as e:
      return _fail(e)
    print(f"{len(rows)} queries x {args.k} neighbours -> {args.out}")
  return 0


def _run_options(p: argparse.ArgumentParser, *, required: bool) -> None:
  p.add_argument("--workdir", required=required,
                 help="the trained run's directory (config.json and checkpoints/)"
                 + ("" if required else "; needed when --query holds images (default: none)"))
  p.add_argument("--step", type=int, default=None,
                 help="the checkpoint step to load (default: the newest)")
  p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                 help="images per embedding step (default: the run's eval.batch_size)")


def add_commands(subparsers) -> None:
  """Adds `embed`, `index` and `search` to the `jaxdml` command's sub-parsers.

  Each sets `handler`: `args.handler(args)` runs the command and returns the exit status (0, or
  2 after a one-line error on stderr).
  """
  embed = subparsers.add_parser(
      "embed", help="embed images with a trained run",
      description="Embed images with a trained run (eval mode, the run's own preprocessing) and "
      "write embeddings, labels and ids to an .npz file.")
  _run_options(embed, required=True)
  source = embed.add_mutually_exclusive_group(required=True)
  source.add_argument("--data", help="a folder of images (one sub-folder per class gives "
                      "labels; file paths are the ids), an .npy array of images, or an .npz "
                      "with 'images' (and 'labels', 'ids'); required unless --split")
  source.add_argument("--split", help="a split of the run's own data instead, e.g. test or "
                      "train (digit pairs); query, gallery (In-shop); required unless --data")
  embed.add_argument("--labels", default=None,
                     help="an .npy of integer labels for --data (default: from the data, if any)")
  embed.add_argument("--out", required=True, help="the embeddings file to write (.npz)")
  embed.add_argument("--index-out", dest="index_out", default=None,
                     help="also write a search index of the embeddings here (default: none)")
  embed.set_defaults(handler=_embed)

  index = subparsers.add_parser(
      "index", help="make a search index of an embeddings file",
      description="Make a search index (one .npz file) of an embeddings file of `jaxdml "
      "embed`, searched by the run's similarity.")
  index.add_argument("--embeddings", required=True, help="an embeddings file of `jaxdml embed`")
  index.add_argument("--out", required=True, help="the index file to write (.npz)")
  index.set_defaults(handler=_index)

  search = subparsers.add_parser(
      "search", help="find the nearest neighbours of queries in an index",
      description="Exact k-nearest-neighbour search of queries in an index: prints each query's "
      "neighbours (id, score, label) and optionally writes them all.")
  search.add_argument("--index", required=True, help="an index file (`jaxdml index`)")
  search.add_argument("--query", required=True,
                      help="an embeddings file of `jaxdml embed`, or images (a folder, .npy or "
                      ".npz as for `embed --data`) with --workdir")
  search.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
  _run_options(search, required=False)
  search.add_argument("--out", default=None,
                      help="write every query's neighbours: .json (a list of queries) or .npz "
                      "(query_ids, scores, ids, indices, labels) (default: none)")
  search.add_argument("--print", type=int, default=10,
                      help="queries whose neighbours are printed, -1 for all (default: 10)")
  search.set_defaults(handler=_search)
