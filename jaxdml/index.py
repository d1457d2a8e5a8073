"""A searchable gallery of embeddings: exact k-NN search, retrieval metrics, one file on disk.

    index = Index(embeddings, labels=labels, ids=paths)   # or Index.from_run(run, images, labels)
    scores, ids = index.search(queries, k=10)             # [Q, k] each, best first
    index.evaluate(queries, query_labels)                 # recall@k, map@r, ... against the gallery
    index.save("index.npz"); index = Index.load("index.npz")

The search is exact (`jaxdml.evaluation.knn`, or `sharded_knn` over the devices of a mesh) and
uses the similarity the embeddings were trained for: "cosine" for a Euclidean head, "poincare"
(hyperbolic distance in the ball of curvature parameter `c`) for a hyperbolic one. A run gives
its own (`Run.similarity`, `Run.c`), and `Index.from_run` takes them from it.

An index file is a NumPy .npz archive (read without pickle) holding "format" ("jaxdml.index"),
"version", "similarity", "c", "embeddings" [N, d], "ids" [N], "labels" [N] when there are
labels, and "meta/<name>" [N, ...] for each metadata column.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxdml import _checks, evaluation
from jaxdml import similarity as similarity_lib
from jaxdml.geometry import poincare

FORMAT = "jaxdml.index"
VERSION = 1
#: the similarities an index searches by ("poincare": hyperbolic distance)
SIMILARITIES = (*sorted(similarity_lib.SIMILARITIES), "poincare")
RETURNS = ("ids", "labels", "indices")


def _finite(x: np.ndarray, name: str) -> None:
  bad = ~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
  if bad.any():
    raise ValueError(f"`{name}` holds non-finite values (NaN or inf), first in row "
                     f"{int(np.argmax(bad))}.")


def _check_embeddings(x: Any, name: str, similarity: str, c: float) -> np.ndarray:
  x = np.asarray(x)
  _checks.embeddings(x, name)
  _finite(x, name)
  if similarity == "poincare" and len(x):
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    radius = poincare.ball_radius(c)
    if (norms >= radius).any():
      i = int(np.argmax(norms >= radius))
      raise ValueError(f"`{name}` row {i} lies outside the Poincare ball of c={c} (norm "
                       f"{norms[i]:.6g} >= radius {radius:.6g}).")
  return x


def _check_ids(ids: Any, n: int) -> np.ndarray:
  if ids is None:
    return np.arange(n, dtype=np.int64)
  if not isinstance(ids, np.ndarray):
    ids = np.asarray([os.fspath(i) if isinstance(i, os.PathLike) else i for i in ids])
  if ids.ndim != 1 or len(ids) != n:
    raise ValueError(f"`ids` must be [N] with N = {n} (one per embedding), got shape "
                     f"{ids.shape}.")
  if ids.dtype.kind not in "iuUS":
    raise TypeError(f"`ids` must be integers or strings, got dtype {ids.dtype}.")
  values, counts = np.unique(ids, return_counts=True)
  if (counts > 1).any():
    first = int(np.argmax(counts > 1))
    raise ValueError(f"`ids` must be unique; {values[first].item()!r} appears "
                     f"{int(counts[first])} times.")
  return ids


def _check_metadata(metadata: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
  out = {}
  for name, values in (metadata or {}).items():
    if not isinstance(name, str) or not name or "/" in name:
      raise ValueError(f"`metadata` names must be non-empty strings without '/', got {name!r}.")
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != n:
      raise ValueError(f"`metadata[{name!r}]` must have one entry per embedding ({n}), got "
                       f"shape {values.shape}.")
    if values.dtype.kind == "O":
      raise TypeError(f"`metadata[{name!r}]` must be numbers or strings, got dtype object.")
    out[name] = values
  return out


def split_queries(labels: Any, queries_per_class: int = 1, *, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Rows of a labelled set split into queries and a gallery, class by class.

  Each class with at least two items gives `min(queries_per_class, size - 1)` randomly drawn
  queries, so every query keeps a relevant item in the gallery; a class of one item stays in the
  gallery (a distractor).

  Args:
    labels: [N] integer labels.
    queries_per_class: queries drawn from each class.
    seed: seeds the draw.

  Returns:
    (query_rows, gallery_rows): sorted int64 row indices, together every row once.

  >>> q, g = split_queries([0, 0, 0, 1, 1, 2])
  >>> len(q), len(g), sorted(set(q) | set(g)) == list(range(6))
  (2, 4, True)
  """
  labels = np.asarray(labels)
  _checks.labels(labels, labels.shape[0] if labels.ndim else -1, "labels")
  _checks.positive_int(queries_per_class, "queries_per_class")
  rng = np.random.default_rng(seed)
  is_query = np.zeros(len(labels), bool)
  for label in np.unique(labels):
    rows = np.nonzero(labels == label)[0]
    take = min(queries_per_class, len(rows) - 1)
    if take > 0:
      is_query[rng.choice(rows, size=take, replace=False)] = True
  return np.nonzero(is_query)[0], np.nonzero(~is_query)[0]


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> str:
  """Writes `arrays` to the .npz file `path` whole: into a temporary file of its folder (created
  if missing), renamed when complete, so a reader never sees half a file."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


class Index:
  """Embeddings with their labels, ids and metadata, searched exactly.

  Args:
    embeddings: [N, d] floating-point embeddings (finite); kept as given (dtype included).
    labels: [N] integer labels, or None.
    ids: [N] unique integers or strings (e.g. file paths) returned by `search`; None: 0..N-1.
    similarity: "cosine", "dot", "neg_squared_euclidean", or "poincare" for points of the
      Poincare ball (hyperbolic distance, curvature parameter `c`).
    c: the ball's curvature parameter, for "poincare".
    metadata: further columns, name -> [N, ...] numbers or strings, saved with the index.

  >>> index = Index(np.eye(3, dtype=np.float32), labels=np.array([0, 1, 1]), ids=["a", "b", "c"])
  >>> scores, ids = index.search(np.array([[0.9, 0.1, 0.0]], np.float32), k=2)
  >>> ids.tolist()
  [['a', 'b']]
  """

  def __init__(self, embeddings: Any, labels: Any = None, ids: Any = None, *,
               similarity: str = "cosine", c: float = poincare.DEFAULT_C,
               metadata: Mapping[str, Any] | None = None):
    _checks.one_of(similarity, SIMILARITIES, "similarity")
    _checks.positive(c, "c")
    self.similarity = similarity
    self.c = float(c)
    self.embeddings = _check_embeddings(embeddings, "embeddings", similarity, self.c)
    n = len(self.embeddings)
    if n == 0:
      raise ValueError("`embeddings` is empty: an index needs at least one item.")
    if labels is not None:
      labels = np.asarray(labels)
      _checks.labels(labels, n, "labels")
    self.labels = labels
    self.ids = _check_ids(ids, n)
    self.metadata = _check_metadata(metadata, n)
    self._device = None

  @classmethod
  def from_run(cls, run: Any, images: Any, labels: Any = None, ids: Any = None, *,
               batch_size: int | None = None,
               metadata: Mapping[str, Any] | None = None) -> Index:
    """The index of `images` embedded by a trained run (`jaxdml.load`), with its similarity.

    Args:
      run: anything with `embed(images, batch_size=...)`, `similarity` and `c` (a `jaxdml.Run`).
      images: raw images as the run's data gives them (see `Run.embed`).
      labels, ids, metadata: as in `Index`.
      batch_size: images per embedding batch (None: the run's evaluation batch size).
    """
    return cls(run.embed(images, batch_size=batch_size), labels, ids,
               similarity=run.similarity, c=run.c, metadata=metadata)

  def __len__(self) -> int:
    return len(self.embeddings)

  @property
  def dim(self) -> int:
    return int(self.embeddings.shape[1])

  def __repr__(self) -> str:
    labels = "no labels" if self.labels is None else f"{len(np.unique(self.labels))} labels"
    return (f"Index({len(self)} x {self.dim}, similarity={self.similarity!r}"
            f"{f', c={self.c}' if self.similarity == 'poincare' else ''}, {labels})")

  # ----------------------------------------------------------------------------------------------
  # Search and evaluation
  # ----------------------------------------------------------------------------------------------

  def _check_queries(self, queries: Any, name: str = "queries") -> np.ndarray:
    q = np.asarray(queries)
    _checks.check_rank(q, 2, name, "[queries, dim]")
    if q.shape[1] != self.dim:
      raise ValueError(f"`{name}` have dimension {q.shape[1]} but the index holds dimension "
                       f"{self.dim}.")
    return _check_embeddings(q, name, self.similarity, self.c)

  def _gallery(self):
    if self._device is None:
      self._device = jnp.asarray(self.embeddings)
    return self._device

  def search(self, queries: Any, k: int = 10, *, returns: str = "ids", mesh=None,
             chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar items of the index for each query (exact).

    Args:
      queries: [Q, d] embeddings (finite), or one [d] query.
      k: neighbours per query, at most the size of the index.
      returns: what identifies a neighbour: "ids" (the index's ids), "labels" or "indices"
        (rows of the index).
      mesh: split the gallery over the devices of this mesh (`sharded_knn`); None: one device.
        The "poincare" search always runs on one device.
      chunk_size: queries per search step (memory O(chunk_size x N)).

    Returns:
      (scores, neighbours): [Q, k] similarities in decreasing order (negative hyperbolic
      distances for "poincare") and the neighbours' ids, labels or rows; [k] each for one [d]
      query.
    """
    _checks.one_of(returns, RETURNS, "returns")
    if returns == "labels" and self.labels is None:
      raise ValueError("`returns`='labels' but the index has no labels.")
    one = np.ndim(queries) == 1
    q = self._check_queries(np.asarray(queries)[None] if one else queries)
    _checks.positive_int(k, "k")
    if k > len(self):
      raise ValueError(f"`k`={k} exceeds the size of the index ({len(self)} items).")
    q = jnp.asarray(q)
    if self.similarity == "poincare":
      scores, rows = poincare.hyperbolic_knn(q, self._gallery(), k, c=self.c,
                                             chunk_size=chunk_size)
    elif mesh is None:
      scores, rows = evaluation.knn(q, self._gallery(), k, similarity=self.similarity,
                                    chunk_size=chunk_size)
    else:
      scores, rows = evaluation.sharded_knn(q, self._gallery(), k, similarity=self.similarity,
                                            chunk_size=chunk_size, mesh=mesh)
    scores, rows = np.asarray(scores), np.asarray(rows)
    found = {"ids": lambda: self.ids[rows], "labels": lambda: self.labels[rows],
             "indices": lambda: rows}[returns]()
    return (scores[0], found[0]) if one else (scores, found)

  def evaluate(self, queries: Any = None, query_labels: Any = None, *,
               ks: Sequence[int] = (1, 2, 4, 8), mesh=None,
               full_map: bool = True) -> dict[str, float]:
    """Retrieval metrics of labelled queries against the index (`evaluation.retrieval_metrics`).

    Args:
      queries: [Q, d] query embeddings; None: every item of the index is a query against the
        others (leave-one-out, the protocol of CUB, Cars, SOP and the digit pairs).
      query_labels: [Q] integer labels of `queries`.
      ks: the k of Recall@k.
      mesh: split the search over the devices of this mesh.
      full_map: also the full-ranking "map" (not for "poincare").

    Returns:
      {"recall@<k>", "precision@1", "r_precision", "map@r", "map"}: floats.
    """
    if self.labels is None:
      raise ValueError("evaluation needs labels, and the index has none.")
    kw = {"ks": tuple(ks), "similarity": self.similarity, "c": self.c, "mesh": mesh,
          "full_map": full_map}
    if self.similarity == "poincare":
      kw["mesh"] = None
    if queries is None:
      if query_labels is not None:
        raise ValueError("`query_labels` given without `queries`.")
      return evaluation.retrieval_metrics(jnp.asarray(self.embeddings),
                                          jnp.asarray(self.labels), **kw)
    if query_labels is None:
      raise ValueError("`query_labels` are needed to evaluate `queries`.")
    q = self._check_queries(queries)
    query_labels = np.asarray(query_labels)
    _checks.labels(query_labels, len(q), "query_labels")
    return evaluation.retrieval_metrics(jnp.asarray(q), jnp.asarray(query_labels),
                                        self._gallery(), jnp.asarray(self.labels), **kw)

  # ----------------------------------------------------------------------------------------------
  # Subsets
  # ----------------------------------------------------------------------------------------------

  def subset(self, rows: Any) -> Index:
    """The index of the items at `rows` (integer row indices), with the same similarity."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
      raise ValueError(f"`rows` must be a 1-D array of row indices, got shape {rows.shape} and "
                       f"dtype {rows.dtype}.")
    if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
      raise ValueError(f"`rows` must be in [0, {len(self)}), got {rows.min()}..{rows.max()}.")
    return Index(self.embeddings[rows], None if self.labels is None else self.labels[rows],
                 self.ids[rows], similarity=self.similarity, c=self.c,
                 metadata={k: v[rows] for k, v in self.metadata.items()})

  def split(self, queries_per_class: int = 1, *, seed: int = 0) -> tuple[Index, Index]:
    """(queries, gallery) of a labelled index, class by class (`split_queries`).

    >>> index = Index(np.eye(4, dtype=np.float32), labels=np.array([0, 0, 1, 1]))
    >>> queries, gallery = index.split()
    >>> len(queries), len(gallery)
    (2, 2)
    """
    if self.labels is None:
      raise ValueError("a query/gallery split needs labels, and the index has none.")
    q, g = split_queries(self.labels, queries_per_class, seed=seed)
    return self.subset(q), self.subset(g)

  # ----------------------------------------------------------------------------------------------
  # One file
  # ----------------------------------------------------------------------------------------------

  def save(self, path: str | os.PathLike) -> str:
    """Writes the index to `path` (one .npz file, replaced whole; its folder is created)."""
    path = os.fspath(path)
    arrays = {"format": np.array(FORMAT), "version": np.array(VERSION, np.int64),
              "similarity": np.array(self.similarity), "c": np.array(self.c, np.float64),
              "embeddings": self.embeddings, "ids": self.ids}
    if self.labels is not None:
      arrays["labels"] = self.labels
    arrays.update({f"meta/{k}": v for k, v in self.metadata.items()})
    return write_npz(path, arrays)

  @classmethod
  def load(cls, path: str | os.PathLike) -> Index:
    """The index saved at `path` by `save`; refuses a file of another format or version."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no index file at {path!r}.")
    try:
      archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} is not a jaxdml index file (not a NumPy archive: {e}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError(f"{path} holds one NumPy array, not a jaxdml index file (.npz).")
    with archive:
      files = set(archive.files)
      fmt = str(archive["format"]) if "format" in files else None
      if fmt != FORMAT:
        hint = (" It is an embeddings file: `jaxdml index --embeddings FILE --out INDEX` makes "
                "an index of it." if fmt == "jaxdml.embeddings" else "")
        raise ValueError(f"{path} is not a jaxdml index file (format {fmt!r}, expected "
                         f"{FORMAT!r}).{hint}")
      version = int(archive["version"])
      if version != VERSION:
        raise ValueError(f"{path} is an index of format version {version}; this jaxdml reads "
                         f"version {VERSION}.")
      return cls(archive["embeddings"], archive["labels"] if "labels" in files else None,
                 archive["ids"], similarity=str(archive["similarity"]),
                 c=float(archive["c"]),
                 metadata={f[len("meta/"):]: archive[f] for f in sorted(files)
                           if f.startswith("meta/")})


def asymmetric_evaluation(student: Any, teacher: Any, images: Any, labels: Any, *,
                          queries_per_class: int = 2, seed: int = 0,
                          ks: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, dict[str, float]]:
  """Symmetric and asymmetric testing of a student on one query / gallery split.

  The gallery is indexed once by each network (`Index`); the queries are the rows
  `split_queries(labels, queries_per_class, seed=seed)` draws, so the three
  protocols rank the same queries against the same images:

  * "symmetric": student queries against the student's gallery;
  * "asymmetric": student queries against the teacher's gallery (the device model swapped in
    without re-indexing);
  * "teacher": teacher queries against the teacher's gallery (the reference).

  Args:
    student, teacher: anything with `embed(images) -> [N, d]` (a `jaxdml.Run`), of the same
      dimension.
    images: what both embed (raw images of the run's data, e.g. `run.split("test")[0]`).
    labels: [N] integer labels.
    queries_per_class, seed: the split.
    ks: Recall@k cut-offs.

  Returns:
    {"symmetric", "asymmetric", "teacher"} -> `Index.evaluate`'s metrics.
  """
  labels = np.asarray(labels)
  q, g = split_queries(labels, queries_per_class, seed=seed)
  zs, zt = student.embed(images), teacher.embed(images)
  if zs.shape != zt.shape:
    raise ValueError(f"the student's embeddings {zs.shape} and the teacher's {zt.shape} differ: "
                     "asymmetric testing needs the teacher's dimension.")
  by_student, by_teacher = Index(zs[g], labels[g]), Index(zt[g], labels[g])
  return {"symmetric": by_student.evaluate(zs[q], labels[q], ks=ks),
          "asymmetric": by_teacher.evaluate(zs[q], labels[q], ks=ks),
          "teacher": by_teacher.evaluate(zt[q], labels[q], ks=ks)}
