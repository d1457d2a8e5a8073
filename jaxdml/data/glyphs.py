"""The glyphs benchmark: real typefaces, class-disjoint, zero-shot, hierarchical, offline.

Built from the TrueType files that matplotlib installs with itself (`FACES`, in
`matplotlib/mpl-data/fonts/ttf/`); fontTools reads each face's character map and Pillow renders.
Nothing is fetched. See shared/design/glyphs_benchmark.md for the purpose.

Faces. The 23 text faces: DejaVu Sans, Sans Mono and Serif (four styles each), STIX General (four
styles) and seven Computer Modern faces. Left out: Last Resort (a placeholder for every code
point), the STIX size variants and DejaVu Display faces (the same designs drawn for other point
sizes, which after scaling to the ink box would duplicate the text faces), STIX Non-Unicode and
cmex10 (no glyph of a code point of the categories used). The Computer Modern files are TeX
encoded (their character map sends ASCII positions to other glyphs: in cmsy10 "!" is an arrow),
so their coverage is read from the glyph names instead (Adobe Glyph List; a Greek letter name
also counts for that Greek letter): a glyph named "quotedblright" counts for U+201D and is
rendered through the position that holds it.

Classes. A class is a code point of Unicode category L, N, P or S (`unicodedata`) that at least
`min_faces` faces draw. A face does not count when its rendering is blank or equals its own
missing-glyph (.notdef) rendering. Homoglyphs are then merged (union-find over pairs; the group
keeps its smallest code point as the representative, `code_points`, and lists the others in
`merged`). Two classes merge when their clean 32 x 32 renderings, binarised at half intensity,
differ in fewer than 3% of their ink pixels (|A xor B| / |A or B| < 0.03) as the median over
the faces that draw both, and those shared faces are at least half of the less covered class's
faces. Candidate pairs are those whose mean renderings (over each class's faces, 16 x 16) have
cosine similarity above 0.9. So Latin A, Greek Alpha and Cyrillic A become one class, as do
Greek tonos / oxia twins and many Braille patterns that differ only in where their dots sit
(the ink box hides it); O and Q, e and é, À and Á, l and I stay apart. The rule is applied at
32 x 32 whatever `size` is, so the classes do not depend on `size`.

Hierarchy, three labels per image:
  fine   = the class (its representative code point);
  middle = the first code point of the representative's canonical decomposition (NFD), case
           kept: é -> e, É -> E, ё -> Cyrillic е;
  coarse = defined from the middle character, so every fine class has one middle and every
           middle one coarse parent. For letters it is the first word of the Unicode name
           ("Latin", "Greek", "Modifier", "Double-struck", ...). Otherwise it is a symbol family:
           digits (Nd), punctuation (P), currency (Sc) or modifier symbols (Sk); then by
           Unicode block (`_BLOCKS`: super- and subscripts, number forms, arrows, math
           operators, technical, enclosed alphanumerics, box drawing, block elements, geometric
           shapes, misc symbols, Braille, letterlike symbols); else math operators (Sm), number
           forms (N) or other symbols. A group of fewer than 4 classes of the full build is
           folded into "other letters" or "other symbols", and those into "other" if they are
           still that small. A `max_classes` subset keeps the full build's groups.

Images. Each (class, face) is rendered once, clean. The glyph is drawn with an ink box of about
max(72, 2 x box) pixels and reduced with a box filter so that its ink box fits `size - 2 *
(size // 8)` pixels, aspect kept. It is centred, stored as grey uint8 with its peak stretched to
255, white ink on black. Each image is one face's clean rendering (faces drawn round-robin,
shuffled per class) with a fresh, seeded augmentation:
  - stroke width jitter: a blend of -0.4 .. +0.6 towards the grey erosion / dilation by the
    diamond |dy| + |dx| <= `size // 32`;
  - an affine map: rotation within +-8 degrees, scale 0.9 .. 1.1, aspect +-5%, shear +-0.15,
    shift within +-`size / 16` pixels;
  - a light elastic distortion: a smooth field interpolated from a 4 x 4 grid of normal
    displacements, sd `0.03 * size` pixels;
  - the peak stretched back to full scale, then Gaussian noise with sd drawn within 0 .. 0.04 of
    full scale.

Splits. The pool (`pool_fraction` of each coarse group) is taken out first. Each group's
remaining classes are then split in half (train / test), so every group of at least 2 classes
(3 with a pool) is in both halves. `max_classes` first picks a stratified subset: at least 2
per group (3 with a pool), the rest in proportion; if that many groups do not fit, the largest
groups are kept. With `unseen_faces=True` the faces are split in two halves within each family
(seeded). Test images then come only from the test faces, and train and pool images only from
the train faces. A class that the faces of one side only draw is placed on that side: a class
only test faces draw is a test class, and one only train faces draw goes to train or the pool.
The other classes fill the stratified quotas (at the default `min_faces`, seeds 0 to 2 leave
no class one-sided).

Measured on the default build (matplotlib 3.11, Pillow 13, Python's Unicode 14, on two shared
CPU cores): 3,204 code points of the 23 faces, of which 255 are merged away (185 groups). That
leaves 2,949 classes (1,475 train, 1,474 test), 47,184 images of 32 x 32, 26 coarse groups and
2,169 middles. It is built in 21 s from an empty cache (clean renderings and merging 12.5 s,
augmented images 8 s), and loads from the cache in 0.1 s. `size=64` adds 21 s of renderings the
first time.

The instance-retrieval variant (`make_glyph_instances`) follows the landmark protocol of the
Revisited Oxford / Paris: see its docstring.

Everything is deterministic given the seed (bit-identical arrays across builds on one system)
and cached on disk (`cache_dir`, else `$JAXDML_CACHE`, else `~/.cache/jaxdml`) under a key of
every parameter, `BUILDER_VERSION`, the font files (names, sizes, SHA-256) and the Pillow,
FreeType, NumPy and Unicode versions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: bump when the built data change for the same parameters (part of every cache key)
BUILDER_VERSION = 1

#: the font files used, in matplotlib's fonts/ttf folder; fixed so the data set is the same
#: everywhere (the order fixes the face ids)
FACES: tuple[str, ...] = (
  "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
  "DejaVuSans-BoldOblique.ttf",
  "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
  "DejaVuSansMono-BoldOblique.ttf",
  "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
  "DejaVuSerif-BoldItalic.ttf",
  "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
  "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf",
  "cmsy10.ttf",
)

#: families for the unseen-faces split (longest prefix first)
_FAMILIES = (("DejaVuSansMono", "DejaVu Sans Mono"), ("DejaVuSans", "DejaVu Sans"),
             ("DejaVuSerif", "DejaVu Serif"), ("STIXGeneral", "STIX General"),
             ("cm", "Computer Modern"))
_CATEGORIES = "LNPS"
_ANALYSIS_SIZE = 32        # homoglyph merging and the blank / .notdef test use this size
_PROBE_EM = 64             # font size (pixels per em) at which ink boxes are measured
_DRAWN_PIXELS = 72         # glyphs are drawn with an ink box of about max(this, 2 x final)
_EM_STEPS = 4              # drawing sizes are quantised to 2 ** (1 / _EM_STEPS) steps
_MAX_EM = 8192
_MIN_PEAK = 32.0           # a reduced rendering whose brightest pixel is fainter is blank
_NOTDEF_PROBE = "\U0010fffd"  # a private-use code point no face maps: renders the .notdef glyph
_CANDIDATE_SIMILARITY = 0.9
_HOMOGLYPH_DISTANCE = 0.03
_MIN_GROUP = 4
_CHUNK = 2048              # images per augmentation chunk (fixed: it seeds the noise streams)

# augmentation amplitudes (fractions are of `size`)
_ROTATION_DEG = 8.0
_SCALE = 0.1
_ASPECT = 0.05
_SHEAR = 0.15
_SHIFT = 1.0 / 16.0
_STROKE = (-0.4, 0.6)
_ELASTIC_GRID = 4
_ELASTIC = 0.03
_NOISE = 0.04

#: instance variant: a view is easy when at least this share of the glyph's ink survives, junk
#: below JUNK_SURVIVAL, hard in between
EASY_SURVIVAL = 0.8
JUNK_SURVIVAL = 0.4
_MAX_REMOVAL = 0.8         # view strengths are spread over [0, _MAX_REMOVAL)

#: symbol families by Unicode block (first match wins), for non-letters of the categories
#: that `_symbol_family` does not group by category
_BLOCKS = (
  (0x00B2, 0x00B3, "super- and subscripts"), (0x00B9, 0x00B9, "super- and subscripts"),
  (0x00BC, 0x00BE, "number forms"), (0x2070, 0x209F, "super- and subscripts"),
  (0x2100, 0x214F, "letterlike symbols"), (0x2150, 0x218F, "number forms"),
  (0x2190, 0x21FF, "arrows"), (0x2200, 0x22FF, "math operators"), (0x2300, 0x23FF, "technical"),
  (0x2460, 0x24FF, "enclosed alphanumerics"), (0x2500, 0x257F, "box drawing"),
  (0x2580, 0x259F, "block elements"), (0x25A0, 0x25FF, "geometric shapes"),
  (0x2600, 0x27BF, "misc symbols"), (0x27C0, 0x27EF, "math operators"),
  (0x27F0, 0x27FF, "arrows"), (0x2800, 0x28FF, "Braille"), (0x2900, 0x297F, "arrows"),
  (0x2980, 0x2AFF, "math operators"), (0x2B00, 0x2BFF, "arrows"),
)


@dataclasses.dataclass(frozen=True)
class Glyphs:
  """A built glyphs benchmark (module docstring).

  Attributes:
    train_images, test_images, pool_images: uint8 [N, size, size], white ink on black.
    train_labels, test_labels, pool_labels: int32 fine class ids (indices into `code_points`).
      The pool's labels are kept for analysis only: a self-training method must not read them.
    train_faces, test_faces, pool_faces: int16 indices into `faces` of each image's face.
    code_points: int32 [C], fine id -> representative code point.
    merged: representative -> the code points merged into it (merged classes only).
    middle, coarse: int32 [C], fine id -> middle id / coarse id (`levels`).
    middle_names: each middle's character; coarse_names: each coarse group's name.
    faces: the font file names (`FACES`).
    train_classes, test_classes, pool_classes: int32 fine ids of each split, ascending.
    train_face_ids, test_face_ids: int16 the faces train (and pool) and test images may use (all
      of them unless `unseen_faces`).
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  train_faces: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  test_faces: np.ndarray
  pool_images: np.ndarray
  pool_labels: np.ndarray
  pool_faces: np.ndarray
  code_points: np.ndarray
  merged: dict[int, tuple[int, ...]]
  middle: np.ndarray
  coarse: np.ndarray
  middle_names: tuple[str, ...]
  coarse_names: tuple[str, ...]
  faces: tuple[str, ...]
  train_classes: np.ndarray
  test_classes: np.ndarray
  pool_classes: np.ndarray
  train_face_ids: np.ndarray
  test_face_ids: np.ndarray

  @property
  def num_classes(self) -> int:
    return len(self.code_points)

  @property
  def image_shape(self) -> tuple[int, int]:
    return tuple(self.train_images.shape[1:])

  def levels(self, labels) -> dict[str, np.ndarray]:
    """{"fine": labels, "middle": their middle ids, "coarse": their coarse ids}."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"labels must be fine class ids in [0, {self.num_classes}), got values "
                       f"in [{labels.min()}, {labels.max()}].")
    return {"fine": labels, "middle": self.middle[labels], "coarse": self.coarse[labels]}

  def character(self, label: int) -> str:
    """The representative character of fine class `label`."""
    return chr(int(self.code_points[label]))


@dataclasses.dataclass(frozen=True)
class GlyphInstances:
  """The instance-retrieval variant: landmarks (test classes), one clean query each, and a
  database of graded views followed by distractors.

  `gnd[q]` holds the database indices of query q's views by how much of the glyph's ink survives
  (`database_survival`): "easy" (>= EASY_SURVIVAL), "hard" (>= JUNK_SURVIVAL) and "junk" (the
  rest), as the Revisited Oxford / Paris ground truth does (Medium: easy + hard are positives,
  junk ignored; Hard: hard positives, easy and junk ignored). Distractors (`database_labels` -1,
  survival NaN) come after all views; `database_source_labels` keeps their real class.

  Labels are the fine ids of `make_glyphs(seed, min_faces=...)` (indices into `code_points`);
  `database_strength` is each view's removal strength s (NaN for distractors).
  """

  query_images: np.ndarray
  query_labels: np.ndarray
  query_faces: np.ndarray
  database_images: np.ndarray
  database_labels: np.ndarray
  database_faces: np.ndarray
  database_source_labels: np.ndarray
  database_survival: np.ndarray
  database_strength: np.ndarray
  gnd: list[dict[str, np.ndarray]]
  num_views: int
  code_points: np.ndarray
  faces: tuple[str, ...]

  @property
  def num_distractors(self) -> int:
    return len(self.database_labels) - self.num_views

  def ground_truth(self):
    """`gnd` as a `jaxdml.evaluation.LandmarkGroundTruth`, for `landmark_metrics` (Easy /
    Medium / Hard mAP over the whole database, distractors included)."""
    from jaxdml.evaluation import LandmarkGroundTruth  # noqa: PLC0415

    return LandmarkGroundTruth.from_revisitop(self.gnd)


# ------------------------------------------------------------------------------------------------
# fonts


def font_folder() -> Path:
  """matplotlib's folder of TrueType files."""
  import matplotlib  # noqa: PLC0415

  return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _face_paths(faces: Sequence[str]) -> list[Path]:
  folder = font_folder()
  paths = []
  for name in faces:
    path = folder / name
    if not path.is_file():
      import matplotlib  # noqa: PLC0415

      raise FileNotFoundError(
          f"the glyphs benchmark needs the font file {name!r}, which is missing from {folder} "
          f"(matplotlib {matplotlib.__version__}); reinstall matplotlib, or a version that "
          f"ships it.")
    paths.append(path)
  return paths


def _family(face: str) -> str:
  for prefix, family in _FAMILIES:
    if face.startswith(prefix):
      return family
  return Path(face).stem.split("-")[0]


def _tex_encoded(face: str) -> bool:
  return face.startswith("cm")


def _stat(path: Path) -> tuple[int, int]:
  st = path.stat()
  return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> tuple[int, str]:
  """(size, SHA-256) of a file; memoised by path, size and modification time."""
  del mtime_ns
  return size, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _system_key(paths: Sequence[Path]) -> dict:
  """What the renderings depend on besides the parameters: font files and library versions."""
  import PIL  # noqa: PLC0415
  from PIL import features  # noqa: PLC0415

  fonts = [[path.name, *_file_digest(str(path), *_stat(path))] for path in paths]
  return {"fonts": fonts, "pillow": PIL.__version__, "freetype": features.version("freetype2"),
          "numpy": np.__version__, "unicode": unicodedata.unidata_version,
          "version": BUILDER_VERSION}


def _glyph_name_code_points(name: str) -> list[int]:
  """The code points a glyph name stands for: its Adobe Glyph List code point (when it is one
  character) and, for a Greek letter's name ("Omega", "mu"), that Greek letter."""
  from fontTools import agl  # noqa: PLC0415

  text = agl.toUnicode(name)
  out = [ord(text)] if len(text) == 1 else []
  case = "CAPITAL" if name[:1].isupper() else "SMALL"
  try:
    out.append(ord(unicodedata.lookup(f"GREEK {case} LETTER {name.upper()}")))
  except KeyError:
    pass
  return out


def _coverage(path: Path, tex: bool) -> dict[int, str]:
  """code point -> the character to draw it with, for the code points of the used categories."""
  from fontTools.ttLib import TTFont  # noqa: PLC0415

  with TTFont(path, lazy=True) as font:
    cmap = font.getBestCmap()
  chars = {}
  if tex:
    for position, name in sorted(cmap.items()):
      for cp in _glyph_name_code_points(name):
        chars.setdefault(cp, chr(position))
  else:
    chars = {cp: chr(cp) for cp, name in cmap.items() if name != ".notdef"}
  return {cp: ch for cp, ch in chars.items()
          if unicodedata.category(chr(cp))[0] in _CATEGORIES}


def _margin(size: int) -> int:
  return max(1, size // 8)


def _render(path: Path, chars: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
  """Clean renderings uint8 [n, size, size] of `chars` in one face, and whether each counts (not
  blank, not the face's .notdef)."""
  from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

  box = size - 2 * _margin(size)
  fonts: dict[int, ImageFont.FreeTypeFont] = {}

  def font(em: int) -> ImageFont.FreeTypeFont:
    if em not in fonts:
      fonts[em] = ImageFont.truetype(str(path), em, layout_engine=ImageFont.Layout.BASIC)
    return fonts[em]

  probe = font(_PROBE_EM)
  todo = [*chars, _NOTDEF_PROBE]
  out = np.zeros((len(todo), size, size), np.uint8)
  ok = np.zeros(len(todo), bool)
  for i, ch in enumerate(todo):
    left, top, right, bottom = probe.getbbox(ch)
    if right <= left or bottom <= top:
      continue
    ratio = max(_DRAWN_PIXELS, 2 * box) / max(right - left, bottom - top)
    em = _PROBE_EM * 2.0 ** (math.ceil(_EM_STEPS * math.log2(ratio)) / _EM_STEPS)
    f = font(int(min(max(round(em), 4), _MAX_EM)))
    left, top, right, bottom = f.getbbox(ch)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4))
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), ch, font=f, fill=255)
    bbox = canvas.getbbox()
    if bbox is None:
      continue
    glyph = canvas.crop(bbox)
    w, h = glyph.size
    scale = box / max(w, h)
    w2, h2 = max(1, round(w * scale)), max(1, round(h * scale))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(glyph.resize((w2, h2), method), np.float32)
    peak = float(small.max())
    if peak < _MIN_PEAK:
      continue
    y, x = (size - h2) // 2, (size - w2) // 2
    out[i, y:y + h2, x:x + w2] = np.round(small * (255.0 / peak)).astype(np.uint8)
    ok[i] = True
  if ok[-1]:
    ok[:-1] &= ~np.all(out[:-1] == out[-1], axis=(1, 2))
  return out[:-1], ok[:-1]


# ------------------------------------------------------------------------------------------------
# the catalogue: classes, homoglyph merging and clean renderings


def _find(parent: np.ndarray, i: int) -> int:
  while parent[i] != i:
    parent[i] = parent[parent[i]]
    i = parent[i]
  return i


def homoglyph_groups(pair_class: np.ndarray, pair_face: np.ndarray, images: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """The merge rule of the module docstring: root class id per class (the smallest id of its
  group; class ids ascend with code point, so the root is the smallest code point).

  Args:
    pair_class, pair_face: the class and face of each clean rendering (one per pair).
    images: uint8 [P, S, S] the clean renderings.
    num_classes: the number of classes.
  """
  num_faces = int(pair_face.max()) + 1 if len(pair_face) else 0
  index = np.full((num_classes, num_faces), -1, np.int64)
  index[pair_class, pair_face] = np.arange(len(pair_class))
  coverage = (index >= 0).sum(1)
  s = images.shape[-1]
  flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
  mean = np.zeros((num_classes, s * s), np.float32)
  np.add.at(mean, pair_class, flat)
  mean /= np.maximum(coverage, 1)[:, None].astype(np.float32)
  half = s // 2
  low = mean.reshape(num_classes, half, 2, half, 2).mean((2, 4)).reshape(num_classes, -1)
  low /= np.maximum(np.linalg.norm(low, axis=1, keepdims=True), 1e-12)
  rows, cols = [], []
  for start in range(0, num_classes, 1024):
    sim = low[start:start + 1024] @ low.T
    r, c = np.nonzero(sim > _CANDIDATE_SIMILARITY)
    keep = c > r + start
    rows.append(r[keep] + start)
    cols.append(c[keep])
  a, b = np.concatenate(rows), np.concatenate(cols)
  bits = np.packbits(images.reshape(len(images), -1) > 127, axis=1)
  bits = np.concatenate([bits, np.zeros((1, bits.shape[1]), np.uint8)])  # row -1: no rendering
  popcount = np.array([bin(i).count("1") for i in range(256)], np.int32)
  parent = np.arange(num_classes)
  for start in range(0, len(a), 4096):
    ia, ib = index[a[start:start + 4096]], index[b[start:start + 4096]]
    shared = (ia >= 0) & (ib >= 0)
    xa, xb = bits[ia], bits[ib]
    differ = popcount[xa ^ xb].sum(-1)
    union = popcount[xa | xb].sum(-1)
    dist = np.where(shared, differ / np.maximum(union, 1), np.nan)
    num_shared = shared.sum(1)
    median = np.full(len(dist), np.inf)
    median[num_shared > 0] = np.nanmedian(dist[num_shared > 0], axis=1)
    fewer = np.minimum(coverage[a[start:start + 4096]], coverage[b[start:start + 4096]])
    merge = (num_shared > 0) & (2 * num_shared >= fewer) & (median < _HOMOGLYPH_DISTANCE)
    for i, j in zip(a[start:start + 4096][merge], b[start:start + 4096][merge], strict=True):
      ri, rj = _find(parent, int(i)), _find(parent, int(j))
      if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)
  return np.array([_find(parent, i) for i in range(num_classes)], np.int64)


def _cache_folder(cache_dir) -> Path:
  if cache_dir is not None:
    return Path(cache_dir)
  env = os.environ.get("JAXDML_CACHE")
  return Path(env) if env else Path.home() / ".cache" / "jaxdml"


def _key(kind: str, params: dict, system: dict) -> str:
  text = json.dumps({"kind": kind, "params": params, "system": system}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("__meta__")))
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None  # unreadable (e.g. truncated by a crash of another writer): rebuilt
  return arrays, meta


@dataclasses.dataclass(frozen=True)
class _Catalogue:
  code_points: np.ndarray    # int32 [C] representatives, ascending
  merged: dict[int, tuple[int, ...]]
  pair_class: np.ndarray     # int32 [P], ascending
  pair_face: np.ndarray      # int16 [P], ascending within a class
  pair_images: np.ndarray    # uint8 [P, size, size]
  num_code_points: int       # before merging


def _build_catalogue(paths: list[Path], faces: Sequence[str], min_faces: int,
                     size: int) -> _Catalogue:
  covers = [_coverage(p, _tex_encoded(f)) for p, f in zip(paths, faces, strict=True)]
  counts: dict[int, int] = {}
  for cover in covers:
    for cp in cover:
      counts[cp] = counts.get(cp, 0) + 1
  candidates = np.array(sorted(cp for cp, n in counts.items() if n >= min_faces), np.int64)
  pos = {int(cp): i for i, cp in enumerate(candidates)}
  classes, face_ids, images = [], [], []
  for f, (path, cover) in enumerate(zip(paths, covers, strict=True)):
    cps = [int(cp) for cp in candidates if int(cp) in cover]
    imgs, ok = _render(path, [cover[cp] for cp in cps], _ANALYSIS_SIZE)
    classes.append(np.array([pos[cp] for cp in cps], np.int64)[ok])
    face_ids.append(np.full(int(ok.sum()), f, np.int64))
    images.append(imgs[ok])
  pair_class = np.concatenate(classes)
  pair_face = np.concatenate(face_ids)
  pair_images = np.concatenate(images)
  kept = np.bincount(pair_class, minlength=len(candidates)) >= min_faces
  # drop the code points that fewer than min_faces faces really draw, renumber
  new_id = np.cumsum(kept) - 1
  sel = kept[pair_class]
  pair_class, pair_face, pair_images = new_id[pair_class[sel]], pair_face[sel], pair_images[sel]
  cps = candidates[kept]
  roots = homoglyph_groups(pair_class, pair_face, pair_images, len(cps))
  reps = np.unique(roots)
  merged = {int(cps[r]): tuple(int(c) for c in cps[(roots == r) & (np.arange(len(cps)) != r)])
            for r in reps if (roots == r).sum() > 1}
  # one rendering per (group, face): the representative's, else the smallest member's
  group = np.searchsorted(reps, roots)[pair_class]
  order = np.lexsort((pair_class, pair_face, group))
  group, face = group[order], pair_face[order]
  first = np.ones(len(order), bool)
  first[1:] = (group[1:] != group[:-1]) | (face[1:] != face[:-1])
  pick = order[first]
  if size != _ANALYSIS_SIZE:
    pair_images = _rerender(paths, covers, cps, pair_class[pick], pair_face[pick], size)
  else:
    pair_images = pair_images[pick]
  return _Catalogue(code_points=cps[reps].astype(np.int32), merged=merged,
                    pair_class=group[first].astype(np.int32),
                    pair_face=face[first].astype(np.int16), pair_images=pair_images,
                    num_code_points=len(cps))


def _rerender(paths, covers, cps, member, face, size) -> np.ndarray:
  out = np.zeros((len(member), size, size), np.uint8)
  for f, (path, cover) in enumerate(zip(paths, covers, strict=True)):
    rows = np.nonzero(face == f)[0]
    if len(rows):
      imgs, _ = _render(path, [cover[int(cps[m])] for m in member[rows]], size)
      out[rows] = imgs
  return out


def _catalogue(min_faces: int, size: int, cache_dir) -> _Catalogue:
  faces = tuple(FACES)
  paths = _face_paths(faces)
  system = _system_key(paths)
  path = _cache_folder(cache_dir) / "glyphs" / (
      f"catalogue-{_key('catalogue', {'min_faces': min_faces, 'size': size}, system)}.npz")
  loaded = _load(path)
  if loaded is not None:
    arrays, meta = loaded
    return _Catalogue(code_points=arrays["code_points"],
                      merged={int(k): tuple(v) for k, v in meta["merged"].items()},
                      pair_class=arrays["pair_class"], pair_face=arrays["pair_face"],
                      pair_images=arrays["pair_images"],
                      num_code_points=int(meta["num_code_points"]))
  cat = _build_catalogue(paths, faces, min_faces, size)
  _save(path, {"code_points": cat.code_points, "pair_class": cat.pair_class,
               "pair_face": cat.pair_face, "pair_images": cat.pair_images},
        {"merged": {str(k): list(v) for k, v in cat.merged.items()},
         "num_code_points": cat.num_code_points})
  return cat


# ------------------------------------------------------------------------------------------------
# hierarchy


def middle_code_point(cp: int) -> int:
  """The first code point of the canonical decomposition (NFD) of `cp` (case kept)."""
  return ord(unicodedata.normalize("NFD", chr(cp))[0])


def _letter_script(cp: int) -> str:
  name = unicodedata.name(chr(cp), "")
  return name.split(" ")[0].capitalize() if name else "other letters"


def _symbol_family(cp: int) -> str:
  cat = unicodedata.category(chr(cp))
  if cat == "Nd":
    return "digits"
  if cat[0] == "P":
    return "punctuation"
  if cat == "Sc":
    return "currency"
  if cat == "Sk":
    return "modifier symbols"
  for lo, hi, name in _BLOCKS:
    if lo <= cp <= hi:
      return name
  if cat == "Sm":
    return "math operators"
  if cat[0] == "N":
    return "number forms"
  return "other symbols"


def raw_coarse_name(middle_cp: int) -> str:
  """The coarse group of a middle character before small groups are folded."""
  if unicodedata.category(chr(middle_cp))[0] == "L":
    return _letter_script(middle_cp)
  return _symbol_family(middle_cp)


def _hierarchy(code_points: np.ndarray):
  """(middle ids [C], middle names, coarse ids [C], coarse names) of the classes; coarse names of
  groups with fewer than _MIN_GROUP classes are folded (module docstring)."""
  middles = np.array([middle_code_point(int(cp)) for cp in code_points], np.int64)
  uniq, middle = np.unique(middles, return_inverse=True)
  letter = np.array([unicodedata.category(chr(int(m)))[0] == "L" for m in uniq])
  names = np.array([raw_coarse_name(int(m)) for m in uniq], object)

  def fold(names_of_middle: np.ndarray, mask: np.ndarray, into: str) -> np.ndarray:
    per_class = names_of_middle[middle]
    counts = {n: int((per_class == n).sum()) for n in set(per_class)}
    small = np.array([counts[n] < _MIN_GROUP for n in names_of_middle]) & mask
    out = names_of_middle.copy()
    out[small] = into
    return out

  names = fold(names, letter, "other letters")
  names = fold(names, ~letter, "other symbols")
  names = fold(names, np.isin(names, ["other letters", "other symbols"]), "other")
  coarse_names, coarse_of_middle = np.unique(names.astype(str), return_inverse=True)
  return (middle.astype(np.int32), tuple(chr(int(m)) for m in uniq),
          coarse_of_middle[middle].astype(np.int32), tuple(str(n) for n in coarse_names))


# ------------------------------------------------------------------------------------------------
# splits


def _allot(sizes: np.ndarray, total: int, floor: int) -> np.ndarray:
  """Per-group counts summing to min(total, sum(sizes)): `floor` each (as many groups as fit,
  largest first), the rest in proportion to the room left (largest remainders), capped by the
  sizes."""
  sizes = np.asarray(sizes, np.int64)
  total = min(int(total), int(sizes.sum()))
  out = np.zeros(len(sizes), np.int64)
  left = total
  for g in np.lexsort((np.arange(len(sizes)), -sizes)):
    take = min(floor, int(sizes[g]))
    if take > left:
      break
    out[g], left = take, left - take
  active = out > 0
  while left > 0:
    room = np.where(active, sizes - out, 0)
    if not room.any():
      break
    share = left * room / room.sum()
    add = np.floor(share).astype(np.int64)
    if add.sum() == 0:
      open_ = np.nonzero(room > 0)[0]
      add[open_[np.argsort(-share[open_], kind="stable")][:left]] = 1
    out += add
    left -= int(add.sum())
  return out


def _subset(coarse: np.ndarray, max_classes: int, floor: int,
            rng: np.random.Generator) -> np.ndarray:
  groups = np.unique(coarse)
  members = [np.nonzero(coarse == g)[0] for g in groups]
  take = _allot(np.array([len(m) for m in members]), max_classes, floor)
  picked = [rng.choice(m, size=int(t), replace=False) for m, t in zip(members, take, strict=True)]
  return np.sort(np.concatenate(picked)).astype(np.int64)


def _split_classes(coarse: np.ndarray, pool_fraction: float, rng: np.random.Generator,
                   train_ok: np.ndarray, test_ok: np.ndarray):
  """(train, test, pool) class ids: per coarse group, the pool first, then half and half; a class
  drawn on one side only goes to that side."""
  train, test, pool = [], [], []
  odd = 0
  for g in np.unique(coarse):
    order = rng.permutation(np.nonzero(coarse == g)[0])
    n = len(order)
    n_pool = 0
    if pool_fraction > 0 and n >= 3:
      n_pool = min(n - 2, max(1, round(pool_fraction * n)))
    p = order[train_ok[order]][:n_pool]
    rest = order[~np.isin(order, p)]
    n_test = (len(rest) + odd) // 2
    if len(rest) % 2:
      odd ^= 1
    forced = rest[~train_ok[rest]]
    free = rest[train_ok[rest] & test_ok[rest]]
    t = np.concatenate([forced, free[:max(0, n_test - len(forced))]])
    pool.append(p)
    test.append(t)
    train.append(rest[~np.isin(rest, t)])
  cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64)  # noqa: E731
  return cat(train), cat(test), cat(pool)


def _face_split(faces: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Two disjoint halves of the faces, each family split in half (odd extras alternate)."""
  families = sorted({_family(f) for f in faces})
  train, test = [], []
  extra = 0
  for fam in families:
    ids = rng.permutation([i for i, f in enumerate(faces) if _family(f) == fam])
    k = (len(ids) + extra) // 2
    if len(ids) % 2:
      extra ^= 1
    test.extend(ids[:k])
    train.extend(ids[k:])
  return np.sort(np.array(train, np.int64)), np.sort(np.array(test, np.int64))


# ------------------------------------------------------------------------------------------------
# augmentation


def _draw_params(rng: np.random.Generator, n: int, size: int, extra=0.0) -> dict:
  """Per-image augmentation parameters; `extra` (scalar or [n], >= 0) strengthens the
  distortion: rotation range x (1 + 2 extra), elastic and noise amplitude x (1 + extra)."""
  extra = np.broadcast_to(np.asarray(extra, np.float64), (n,))
  u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
  return {
    "angle": np.deg2rad(u(-1, 1) * _ROTATION_DEG * (1 + 2 * extra)),
    "log_scale": u(-1, 1) * math.log1p(_SCALE),
    "log_aspect": u(-1, 1) * _ASPECT,
    "shear": u(-1, 1) * _SHEAR,
    "shift": rng.uniform(-1, 1, (n, 2)) * _SHIFT * size,
    "stroke": u(*_STROKE),
    "elastic": rng.normal(0, 1, (n, 2, _ELASTIC_GRID, _ELASTIC_GRID))
               * (_ELASTIC * size * (1 + extra))[:, None, None, None],
    "noise": u(0, 1) * _NOISE * (1 + extra),
  }


def _interp_matrix(size: int, grid: int) -> np.ndarray:
  """[size, grid] linear interpolation weights from a grid spanning the canvas to its pixels."""
  pos = np.linspace(0, grid - 1, size)
  lo = np.minimum(np.floor(pos).astype(int), grid - 2)
  w = pos - lo
  m = np.zeros((size, grid))
  m[np.arange(size), lo] = 1 - w
  m[np.arange(size), lo + 1] = w
  return m


def _sample(images: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Bilinear samples of float32 images [n, S, S] at (ys, xs) [n, S, S], zero outside."""
  n, s, _ = images.shape
  w = s + 3  # one zero row / column before, two after: clipped coordinates land on zeros
  padded = np.zeros((n, w, w), np.float32)
  padded[:, 1:s + 1, 1:s + 1] = images
  flat = padded.reshape(-1)
  ys = np.clip(ys, -1.0, float(s)).astype(np.float32)
  xs = np.clip(xs, -1.0, float(s)).astype(np.float32)
  y0, x0 = np.floor(ys), np.floor(xs)
  wy, wx = ys - y0, xs - x0
  index = (y0.astype(np.int32) + 1) * w + (x0.astype(np.int32) + 1)
  index += (np.arange(n, dtype=np.int32) * (w * w))[:, None, None]
  top = flat.take(index)
  top += (flat.take(index + 1) - top) * wx
  index += w
  bottom = flat.take(index)
  bottom += (flat.take(index + 1) - bottom) * wx
  return top + (bottom - top) * wy


def _cross_filter(images: np.ndarray, op, radius: int) -> np.ndarray:
  """Grey dilation (op=np.maximum) or erosion (np.minimum) by the diamond |dy| + |dx| <= radius
  (`radius` passes of the 3 x 3 cross), zero outside the canvas."""
  out = images
  for _ in range(radius):
    p = np.pad(out, ((0, 0), (1, 1), (1, 1)))
    out = op(op(op(p[:, :-2, 1:-1], p[:, 2:, 1:-1]), op(p[:, 1:-1, :-2], p[:, 1:-1, 2:])), out)
  return out


def _stroke(images: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
  """Stroke width jitter: blend towards the dilation (weight > 0) or erosion (weight < 0)."""
  r = max(1, size // 32)
  w = weight[:, None, None].astype(np.float32)
  grown = _cross_filter(images, np.maximum, r)
  shrunk = _cross_filter(images, np.minimum, r)
  return images + np.maximum(w, 0) * (grown - images) + np.maximum(-w, 0) * (shrunk - images)


def _warp(images: np.ndarray, p: dict, size: int) -> np.ndarray:
  """Affine + elastic warp of float images [n, S, S] by parameters `p` (rows of _draw_params)."""
  n = len(images)
  c = (size - 1) / 2.0
  cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
  sx = np.exp(p["log_scale"] + p["log_aspect"])
  sy = np.exp(p["log_scale"] - p["log_aspect"])
  # forward map A = R @ Shear @ diag(sx, sy) on (x, y); the sampler needs its inverse
  a = np.empty((n, 2, 2))
  a[:, 0, 0], a[:, 0, 1] = cos * sx, (cos * p["shear"] - sin) * sy
  a[:, 1, 0], a[:, 1, 1] = sin * sx, (sin * p["shear"] + cos) * sy
  inv = np.linalg.inv(a)
  grid = np.arange(size, dtype=np.float64) - c
  gx = grid[None, None, :] - p["shift"][:, 0, None, None]
  gy = grid[None, :, None] - p["shift"][:, 1, None, None]
  xs = inv[:, 0, 0, None, None] * gx + inv[:, 0, 1, None, None] * gy + c
  ys = inv[:, 1, 0, None, None] * gx + inv[:, 1, 1, None, None] * gy + c
  m = _interp_matrix(size, _ELASTIC_GRID)
  field = m @ p["elastic"] @ m.T  # [n, 2, S, S]
  return _sample(images, ys + field[:, 0], xs + field[:, 1])


def _finish(warped: np.ndarray, noise_sd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  peak = warped.reshape(len(warped), -1).max(1)
  out = warped / np.maximum(peak, 1e-6)[:, None, None]
  out = out + rng.standard_normal(out.shape, dtype=np.float32) * noise_sd[:, None, None].astype(
      np.float32)
  return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _rows(p: dict, sl: slice) -> dict:
  return {k: v[sl] for k, v in p.items()}


def _augment(clean: np.ndarray, p: dict, seed: Sequence[int], size: int) -> np.ndarray:
  """Augmented uint8 images of clean uint8 renderings [n, S, S] with parameters `p`."""
  out = np.empty_like(clean)
  for k, start in enumerate(range(0, len(clean), _CHUNK)):
    sl = slice(start, start + _CHUNK)
    q = _rows(p, sl)
    x = clean[sl].astype(np.float32) / 255.0
    x = _warp(_stroke(x, q["stroke"], size), q, size)
    out[sl] = _finish(x, q["noise"], np.random.default_rng([*seed, k]))
  return out


# ------------------------------------------------------------------------------------------------
# builders


def _check(name: str, value, low, *, integer=True) -> None:
  if integer and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value!r}.")


def _draw(cat: _Catalogue, classes: np.ndarray, allowed: np.ndarray, per_class: int,
          rng: np.random.Generator) -> np.ndarray:
  """Catalogue pair indices of `per_class` images per class (in class order): the faces in
  `allowed` that draw the class, round-robin, shuffled per class."""
  starts = np.searchsorted(cat.pair_class, np.arange(len(cat.code_points) + 1))
  pairs = np.empty(len(classes) * per_class, np.int64)
  for i, c in enumerate(classes):
    rows = np.arange(starts[c], starts[c + 1])
    rows = rows[np.isin(cat.pair_face[rows], allowed)]
    rows = rng.permutation(rows)
    pairs[i * per_class:(i + 1) * per_class] = rows[np.arange(per_class) % len(rows)]
  return pairs


def _side_coverage(cat: _Catalogue, face_ids: np.ndarray) -> np.ndarray:
  hit = np.isin(cat.pair_face, face_ids)
  return np.bincount(cat.pair_class[hit], minlength=len(cat.code_points)) > 0


def _class_split(cat: _Catalogue, seed: int, unseen_faces: bool, pool_fraction: float,
                 max_classes: int | None):
  """Selected classes (catalogue ids), their hierarchy and the train / test / pool split."""
  middle_all, middle_names_all, coarse_all, coarse_names_all = _hierarchy(cat.code_points)
  floor = 3 if pool_fraction > 0 else 2
  keep = np.arange(len(cat.code_points))
  if max_classes is not None and max_classes < len(keep):
    keep = _subset(coarse_all, max_classes, floor, np.random.default_rng([seed, 1]))
  # a subset keeps the full build's groups (no re-folding), renumbered to those present
  used_middle, middle = np.unique(middle_all[keep], return_inverse=True)
  used_coarse, coarse = np.unique(coarse_all[keep], return_inverse=True)
  middle, coarse = middle.astype(np.int32), coarse.astype(np.int32)
  middle_names = tuple(middle_names_all[i] for i in used_middle)
  coarse_names = tuple(coarse_names_all[i] for i in used_coarse)
  all_faces = np.arange(len(FACES))
  if unseen_faces:
    train_faces, test_faces = _face_split(FACES, np.random.default_rng([seed, 3]))
  else:
    train_faces = test_faces = all_faces
  train_ok = _side_coverage(cat, train_faces)[keep]
  test_ok = _side_coverage(cat, test_faces)[keep]
  train, test, pool = _split_classes(coarse, pool_fraction, np.random.default_rng([seed, 2]),
                                     train_ok, test_ok)
  return keep, (middle, middle_names, coarse, coarse_names), (train, test, pool), (
      train_faces, test_faces)


def make_glyphs(seed: int = 0, *, size: int = 32, min_faces: int = 8, images_per_class: int = 16,
                unseen_faces: bool = False, pool_fraction: float = 0.0,
                max_classes: int | None = None, cache_dir=None) -> Glyphs:
  """Builds (or loads from the disk cache) the glyphs benchmark, deterministically from `seed`.

  Args:
    seed: seeds the class subset, the splits, the face split, the face draws and augmentation.
    size: image side in pixels (32; 64 for GPU runs), >= 8.
    min_faces: a code point is a class when at least this many faces draw it (1 .. len(FACES)).
    images_per_class: images of each class (faces round-robin, each freshly augmented).
    unseen_faces: test images only from faces never used for training (module docstring).
    pool_fraction: share of each coarse group's classes set aside as the unlabelled pool, in
      [0, 1).
    max_classes: a stratified subset of this many classes (None: all), >= 4.
    cache_dir: the cache folder (default `$JAXDML_CACHE`, else `~/.cache/jaxdml`).

  Returns:
    A `Glyphs`.
  """
  _check("seed", seed, 0)
  _check("size", size, 8)
  _check("min_faces", min_faces, 1)
  _check("images_per_class", images_per_class, 1)
  if min_faces > len(FACES):
    raise ValueError(f"min_faces must be <= {len(FACES)} (the number of faces), got {min_faces}.")
  if max_classes is not None:
    _check("max_classes", max_classes, 4)
  if not isinstance(unseen_faces, (bool, np.bool_)):
    raise ValueError(f"unseen_faces must be a bool, got {unseen_faces!r}.")
  if not (isinstance(pool_fraction, (int, float)) and 0.0 <= pool_fraction < 1.0):
    raise ValueError(f"pool_fraction must be in [0, 1), got {pool_fraction!r}.")
  params = {"seed": int(seed), "size": int(size), "min_faces": int(min_faces),
            "images_per_class": int(images_per_class), "unseen_faces": bool(unseen_faces),
            "pool_fraction": float(pool_fraction),
            "max_classes": None if max_classes is None else int(max_classes)}
  paths = _face_paths(FACES)
  path = _cache_folder(cache_dir) / "glyphs" / (
      f"glyphs-{_key('glyphs', params, _system_key(paths))}.npz")
  loaded = _load(path)
  if loaded is not None:
    return _glyphs_from(*loaded)

  cat = _catalogue(min_faces, size, cache_dir)
  keep, (middle, middle_names, coarse, coarse_names), (train, test, pool), (
      train_faces, test_faces) = _class_split(cat, seed, unseen_faces, pool_fraction,
                                              max_classes)
  draw_rng = np.random.default_rng([seed, 4])
  arrays = {}
  for k, (name, classes, allowed) in enumerate((("train", train, train_faces),
                                               ("test", test, test_faces),
                                               ("pool", pool, train_faces))):
    pairs = _draw(cat, keep[classes], allowed, images_per_class, draw_rng)
    p = _draw_params(np.random.default_rng([seed, 5, k]), len(pairs), size)
    arrays[f"{name}_images"] = _augment(cat.pair_images[pairs], p, [seed, 6, k], size)
    arrays[f"{name}_labels"] = np.repeat(classes, images_per_class).astype(np.int32)
    arrays[f"{name}_faces"] = cat.pair_face[pairs].astype(np.int16)
  code_points = cat.code_points[keep]
  arrays.update(code_points=code_points.astype(np.int32), middle=middle, coarse=coarse,
                train_classes=train.astype(np.int32), test_classes=test.astype(np.int32),
                pool_classes=pool.astype(np.int32), train_face_ids=train_faces.astype(np.int16),
                test_face_ids=test_faces.astype(np.int16))
  kept_cps = set(int(c) for c in code_points)
  meta = {"merged": {str(k): list(v) for k, v in cat.merged.items() if k in kept_cps},
          "middle_names": list(middle_names), "coarse_names": list(coarse_names),
          "faces": list(FACES)}
  _save(path, arrays, meta)
  return _glyphs_from(arrays, meta)


def _glyphs_from(arrays: dict[str, np.ndarray], meta: dict) -> Glyphs:
  return Glyphs(
      **{k: arrays[k] for k in ("train_images", "train_labels", "train_faces", "test_images",
                                "test_labels", "test_faces", "pool_images", "pool_labels",
                                "pool_faces", "code_points", "middle", "coarse",
                                "train_classes", "test_classes", "pool_classes",
                                "train_face_ids", "test_face_ids")},
      merged={int(k): tuple(int(c) for c in v) for k, v in meta["merged"].items()},
      middle_names=tuple(meta["middle_names"]), coarse_names=tuple(meta["coarse_names"]),
      faces=tuple(meta["faces"]))


# ------------------------------------------------------------------------------------------------
# instance retrieval


def _ink_box(ink: np.ndarray):
  rows, cols = ink.any(2), ink.any(1)
  s = ink.shape[-1]
  y0, y1 = rows.argmax(1), s - 1 - rows[:, ::-1].argmax(1)
  x0, x1 = cols.argmax(1), s - 1 - cols[:, ::-1].argmax(1)
  return y0, y1, x0, x1


def _removal(warped: np.ndarray, strength: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Keep masks [n, S, S]: an occlusion (a rectangle of `strength` of the ink box's area around
  a random ink pixel) or a crop (a band of `strength` of the ink box from a random side), half
  each; an occlusion that would leave under 2% of the ink is replaced by the crop."""
  n, s, _ = warped.shape
  peak = warped.reshape(n, -1).max(1)[:, None, None]
  ink = warped > 0.25 * peak
  y0, y1, x0, x1 = _ink_box(ink)
  h, w = (y1 - y0 + 1).astype(np.float64), (x1 - x0 + 1).astype(np.float64)
  yy = np.arange(s)[None, :, None]
  xx = np.arange(s)[None, None, :]
  side = rng.integers(0, 4, n)
  use_crop = rng.random(n) < 0.5
  u = rng.random(n)
  t = strength
  col = lambda v: v[:, None, None]  # noqa: E731
  crop = np.where(col(side == 0), yy < col(y0 + t * h),
         np.where(col(side == 1), yy > col(y1 - t * h),
         np.where(col(side == 2), xx < col(x0 + t * w), xx > col(x1 - t * w))))
  flat = ink.reshape(n, -1)
  cum = np.cumsum(flat, 1)
  pick = (cum > (u * cum[:, -1])[:, None]).argmax(1)
  cy, cx = pick // s, pick % s
  rh, rw = np.sqrt(t) * h / 2, np.sqrt(t) * w / 2
  occ = (np.abs(yy - col(cy)) <= col(rh)) & (np.abs(xx - col(cx)) <= col(rw))
  total = warped.reshape(n, -1).sum(1)
  occ_left = (warped * ~occ).reshape(n, -1).sum(1) / np.maximum(total, 1e-6)
  use_crop |= occ_left < 0.02
  return ~np.where(col(use_crop), crop, occ)


def make_glyph_instances(seed: int = 0, *, size: int = 32, num_landmarks: int = 100,
                         views_per_landmark: int = 20, num_distractors: int = 0,
                         min_faces: int = 8, cache_dir=None) -> GlyphInstances:
  """Builds the instance-retrieval variant (landmark protocol), deterministically from `seed`.

  Landmarks are `num_landmarks` of the test classes of `make_glyphs(seed, min_faces=...)` (no
  pool, all faces). A landmark's query is the clean rendering of one face (drawn at random). Its
  database views (faces round-robin, shuffled) are augmented as in `make_glyphs`, with strengths
  s spread evenly over [0, 0.8) (one per view, jittered): the rotation range, elastic amplitude
  and noise grow by 1 + 2s, 1 + s and 1 + s, and a share s of the glyph is removed, by an
  occlusion (a rectangle of s of the ink box's area around a random ink pixel) or a crop (a band
  of s of the ink box from one side), half each. The share of the ink that survives the removal
  tags the view: easy >= 0.8 (EASY_SURVIVAL), hard >= 0.4 (JUNK_SURVIVAL), junk below.
  Distractors are training-class images (classes round-robin, shuffled; plain augmentation),
  appended after all views with label -1.

  Args:
    seed: seeds the split, the landmarks, faces, strengths, removals and augmentation.
    size: image side in pixels, >= 8.
    num_landmarks: landmarks (queries), 1 .. the number of test classes.
    views_per_landmark: database views of each landmark, >= 1.
    num_distractors: distractor images after the views, >= 0.
    min_faces: as in `make_glyphs`.
    cache_dir: as in `make_glyphs`.

  Returns:
    A `GlyphInstances`.
  """
  _check("seed", seed, 0)
  _check("size", size, 8)
  _check("num_landmarks", num_landmarks, 1)
  _check("views_per_landmark", views_per_landmark, 1)
  _check("num_distractors", num_distractors, 0)
  _check("min_faces", min_faces, 1)
  if min_faces > len(FACES):
    raise ValueError(f"min_faces must be <= {len(FACES)} (the number of faces), got {min_faces}.")
  params = {"seed": int(seed), "size": int(size), "num_landmarks": int(num_landmarks),
            "views_per_landmark": int(views_per_landmark),
            "num_distractors": int(num_distractors), "min_faces": int(min_faces)}
  paths = _face_paths(FACES)
  path = _cache_folder(cache_dir) / "glyphs" / (
      f"instances-{_key('instances', params, _system_key(paths))}.npz")
  loaded = _load(path)
  if loaded is None:
    arrays, meta = _build_instances(seed, size, num_landmarks, views_per_landmark,
                                    num_distractors, min_faces, cache_dir)
    _save(path, arrays, meta)
  else:
    arrays, meta = loaded
  survival = arrays["database_survival"]
  gnd = []
  for q in range(len(arrays["query_labels"])):
    rows = np.arange(q * views_per_landmark, (q + 1) * views_per_landmark)
    s = survival[rows]
    gnd.append({"easy": rows[s >= EASY_SURVIVAL],
                "hard": rows[(s >= JUNK_SURVIVAL) & (s < EASY_SURVIVAL)],
                "junk": rows[s < JUNK_SURVIVAL]})
  return GlyphInstances(
      **{k: arrays[k] for k in ("query_images", "query_labels", "query_faces",
                                "database_images", "database_labels", "database_faces",
                                "database_source_labels", "database_survival",
                                "database_strength", "code_points")},
      gnd=gnd, num_views=int(meta["num_views"]), faces=tuple(meta["faces"]))


def _build_instances(seed, size, num_landmarks, views, num_distractors, min_faces, cache_dir):
  cat = _catalogue(min_faces, size, cache_dir)
  keep, _, (train, test, _), _ = _class_split(cat, seed, False, 0.0, None)
  if num_landmarks > len(test):
    raise ValueError(f"num_landmarks must be <= {len(test)} (the test classes), got "
                     f"{num_landmarks}.")
  rng = np.random.default_rng([seed, 10])
  landmarks = np.sort(rng.choice(test, size=num_landmarks, replace=False))
  all_faces = np.arange(len(FACES))
  query_pairs = _draw(cat, keep[landmarks], all_faces, 1, rng)
  view_pairs = _draw(cat, keep[landmarks], all_faces, views, rng)
  n = len(view_pairs)
  strength = (_MAX_REMOVAL * (np.tile(np.arange(views), num_landmarks) + rng.random(n))
              / views)
  p = _draw_params(np.random.default_rng([seed, 11]), n, size, extra=strength)
  view_images = np.empty((n, size, size), np.uint8)
  survival = np.empty(n, np.float32)
  for k, start in enumerate(range(0, n, _CHUNK)):
    sl = slice(start, start + _CHUNK)
    q = _rows(p, sl)
    x = cat.pair_images[view_pairs[sl]].astype(np.float32) / 255.0
    x = _warp(_stroke(x, q["stroke"], size), q, size)
    chunk_rng = np.random.default_rng([seed, 12, k])
    keep_mask = _removal(x, strength[sl], chunk_rng)
    total = x.reshape(len(x), -1).sum(1)
    survival[sl] = (x * keep_mask).reshape(len(x), -1).sum(1) / np.maximum(total, 1e-6)
    view_images[sl] = _finish(x * keep_mask, q["noise"], chunk_rng)
  d_rng = np.random.default_rng([seed, 13])
  d_classes = d_rng.permutation(train)[np.arange(num_distractors) % len(train)]
  d_pairs = np.empty(num_distractors, np.int64)
  for c in np.unique(d_classes):
    where = np.nonzero(d_classes == c)[0]
    d_pairs[where] = _draw(cat, keep[[c]], all_faces, len(where), d_rng)
  dp = _draw_params(np.random.default_rng([seed, 14]), num_distractors, size)
  d_images = _augment(cat.pair_images[d_pairs], dp, [seed, 15], size)
  arrays = {
    "query_images": cat.pair_images[query_pairs],
    "query_labels": landmarks.astype(np.int32),
    "query_faces": cat.pair_face[query_pairs].astype(np.int16),
    "database_images": np.concatenate([view_images, d_images]),
    "database_labels": np.concatenate([np.repeat(landmarks, views),
                                       np.full(num_distractors, -1)]).astype(np.int32),
    "database_faces": np.concatenate([cat.pair_face[view_pairs],
                                      cat.pair_face[d_pairs]]).astype(np.int16),
    "database_source_labels": np.concatenate([np.repeat(landmarks, views),
                                              d_classes]).astype(np.int32),
    "database_survival": np.concatenate([survival, np.full(num_distractors, np.nan,
                                                           np.float32)]),
    "database_strength": np.concatenate([strength.astype(np.float32),
                                         np.full(num_distractors, np.nan, np.float32)]),
    "code_points": cat.code_points[keep].astype(np.int32),
  }
  return arrays, {"num_views": n, "faces": list(FACES)}
