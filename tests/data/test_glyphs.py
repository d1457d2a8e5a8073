import shutil
import unicodedata

import numpy as np
import pytest

from jaxdml.data import glyphs
from jaxdml.data.glyphs import FACES, make_glyph_instances, make_glyphs

SMALL = {"max_classes": 60, "images_per_class": 4, "pool_fraction": 0.25}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("glyphs-cache")


@pytest.fixture(scope="module")
def full(cache):
  """Every class of the default build, one image each (renders the catalogue once)."""
  return make_glyphs(0, images_per_class=1, cache_dir=cache)


@pytest.fixture(scope="module")
def small(cache, full):
  del full  # the catalogue comes from the cache
  return make_glyphs(0, cache_dir=cache, **SMALL)


def _arrays(g):
  return {f.name: getattr(g, f.name) for f in glyphs.dataclasses.fields(g)
          if isinstance(getattr(g, f.name), np.ndarray)}


def _copy_catalogues(src, dst):
  (dst / "glyphs").mkdir(parents=True, exist_ok=True)
  for f in (src / "glyphs").glob("catalogue-*.npz"):
    shutil.copy(f, dst / "glyphs" / f.name)


def _cls(g, char):
  hits = np.nonzero(g.code_points == ord(char))[0]
  return int(hits[0]) if len(hits) else None


# --- images and splits ---------------------------------------------------------------------------


def test_images_have_ink_and_types(small):
  for split in ("train", "test", "pool"):
    x = getattr(small, f"{split}_images")
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32) and len(x) > 0
    assert getattr(small, f"{split}_labels").dtype == np.int32
    assert getattr(small, f"{split}_faces").dtype == np.int16
    peak = x.reshape(len(x), -1).max(1)
    assert peak.min() >= 200  # every image has ink
    assert np.median(x) < 16  # on a dark background
  assert small.code_points.dtype == small.middle.dtype == small.coarse.dtype == np.int32


def test_splits_are_class_disjoint_and_complete(small):
  tr, te, po = (set(small.train_classes), set(small.test_classes), set(small.pool_classes))
  assert not tr & te and not tr & po and not te & po
  assert tr | te | po == set(range(small.num_classes))
  for split, classes in (("train", tr), ("test", te), ("pool", po)):
    labels = getattr(small, f"{split}_labels")
    assert set(labels) == classes
    assert np.bincount(labels, minlength=small.num_classes)[sorted(classes)].tolist() == (
        [SMALL["images_per_class"]] * len(classes))


def test_every_group_is_in_every_split(full, small):
  everything = set(range(len(full.coarse_names)))
  assert set(full.coarse[full.train_classes]) == everything
  assert set(full.coarse[full.test_classes]) == everything
  groups = set(range(len(small.coarse_names)))
  for classes in (small.train_classes, small.test_classes, small.pool_classes):
    assert set(small.coarse[classes]) == groups
  assert abs(len(full.train_classes) - len(full.test_classes)) <= 1
  # the pool is about pool_fraction of each group
  assert 0.15 < len(small.pool_classes) / small.num_classes < 0.35


def test_max_classes_is_a_stratified_subset(full, small):
  assert small.num_classes == SMALL["max_classes"]
  assert np.bincount(small.coarse).min() >= 3  # room for train, test and pool
  assert set(small.coarse_names) <= set(full.coarse_names)
  for i, cp in enumerate(small.code_points):  # the same parents as in the full build
    j = _cls(full, chr(cp))
    assert small.coarse_names[small.coarse[i]] == full.coarse_names[full.coarse[j]]
    assert small.middle_names[small.middle[i]] == full.middle_names[full.middle[j]]


def test_faces_round_robin_with_fresh_augmentation(cache, full):
  del full
  cat = glyphs._catalogue(8, 32, cache)
  g = make_glyphs(0, max_classes=8, images_per_class=len(FACES) + 3, cache_dir=cache)
  x, y, f = g.train_images, g.train_labels, g.train_faces
  for c in g.train_classes:
    counts = np.bincount(f[y == c])
    drawn = counts[counts > 0]
    assert drawn.max() - drawn.min() <= 1  # every face of the class, evenly
    k = np.searchsorted(cat.code_points, g.code_points[c])
    assert len(drawn) == (cat.pair_class == k).sum()  # the faces that draw it
  same = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))
          if y[i] == y[j] and f[i] == f[j]]
  assert same
  assert all(not np.array_equal(x[i], x[j]) for i, j in same)


# --- hierarchy and homoglyphs --------------------------------------------------------------------


def test_hierarchy_is_consistent(full):
  for i, cp in enumerate(full.code_points):
    assert full.middle_names[full.middle[i]] == unicodedata.normalize("NFD", chr(cp))[0]
  for m in range(len(full.middle_names)):  # one coarse parent per middle
    assert len(set(full.coarse[full.middle == m])) == 1
  e, e_acute, big_e_acute = _cls(full, "e"), _cls(full, "é"), _cls(full, "É")
  assert full.middle[e_acute] == full.middle[e]
  assert full.middle_names[full.middle[big_e_acute]] == "E"  # case kept
  names = {c: full.coarse_names[full.coarse[_cls(full, c)]] for c in "Aαж5→⣿─"}
  assert names == {"A": "Latin", "α": "Greek", "ж": "Cyrillic", "5": "digits", "→": "arrows",
                   "⣿": "Braille", "─": "box drawing"}
  lv = full.levels(full.test_labels[:5])
  np.testing.assert_array_equal(lv["fine"], full.test_labels[:5])
  np.testing.assert_array_equal(lv["middle"], full.middle[full.test_labels[:5]])
  np.testing.assert_array_equal(lv["coarse"], full.coarse[full.test_labels[:5]])
  with pytest.raises(ValueError, match="labels"):
    full.levels([full.num_classes])


def test_homoglyphs_merged(full):
  a = _cls(full, "A")
  assert a is not None and {0x391, 0x410} <= set(full.merged[ord("A")])  # Greek / Cyrillic A
  assert _cls(full, "\u0391") is None and _cls(full, "\u0410") is None
  for x, y in ("OQ", "eé", "ÀÁ", "lI"):  # look-alikes that a model can tell apart stay apart
    assert _cls(full, x) is not None and _cls(full, y) is not None
    assert ord(y) not in full.merged.get(ord(x), ()) and ord(x) not in full.merged.get(ord(y), ())
  merged = [c for v in full.merged.values() for c in v]
  assert len(merged) == len(set(merged)) and not set(merged) & set(full.code_points.tolist())
  assert all(rep < min(v) for rep, v in full.merged.items())  # smallest code point represents


def test_homoglyph_rule_by_hand():
  rng = np.random.default_rng(0)

  def blob():
    img = np.zeros((32, 32), np.uint8)
    img[4:28, 4:28] = (rng.random((24, 24)) < 0.5) * 255
    return img

  def moved(img, share, end):  # `share` of the ink pixels moved to empty pixels of the box
    out = img.copy()
    on = np.argwhere(out[4:28, 4:28] > 0) + 4
    off = np.argwhere(out[4:28, 4:28] == 0) + 4
    k = int(round(share * len(on)))
    pick = slice(None, k) if end == "first" else slice(len(on) - k, None)
    out[tuple(on[pick].T)] = 0
    out[tuple(off[pick].T)] = 255
    return out  # distance |xor| / |or| = 2k / (n + k) from `img`

  base = [blob() for _ in range(3)]
  other = blob()
  rows = []  # (class, face, image)
  for f in range(3):
    rows += [(0, f, base[f]),
             (1, f, base[f] if f < 2 else other),  # identical in 2 of 3 faces: merges
             (2, f, moved(base[f], 0.025, "first")),  # distance ~0.049 in every face: apart
             (3, f, moved(base[f], 0.01, "last")),  # distance ~0.020: merges
             (4, f, base[f] if f < 2 else other)]  # identical to class 1: same group
  rows += [(5, f, base[0]) for f in (0, 3, 4, 5)]  # identical to class 6 in the one face
  rows += [(6, f, base[0]) for f in (0, 6, 7, 8)]  # they share: too few to merge
  cls = np.array([r[0] for r in rows])
  face = np.array([r[1] for r in rows])
  images = np.stack([r[2] for r in rows])
  roots = glyphs.homoglyph_groups(cls, face, images, 7)
  assert roots.tolist() == [0, 0, 2, 0, 0, 5, 6]


def test_render_drops_blank_and_notdef():
  from fontTools.ttLib import TTFont

  path = glyphs.font_folder() / "DejaVuSans.ttf"
  with TTFont(path, lazy=True) as font:
    assert 0x10000 not in font.getBestCmap()
  imgs, ok = glyphs._render(path, ["A", " ", "\U00010000"], 32)
  assert ok.tolist() == [True, False, False]
  assert imgs[2].max() > 0  # the .notdef box is drawn, and rejected as such
  ys, xs = np.nonzero(imgs[0])
  assert ys.min() >= 4 and ys.max() < 28 and xs.min() >= 4 and xs.max() < 28  # the margin
  assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 == 24  # the ink box fits 24 px
  again, _ = glyphs._render(path, ["A"], 32)
  np.testing.assert_array_equal(again[0], imgs[0])


def test_tex_encoded_faces_read_glyph_names():
  folder = glyphs.font_folder()
  sy = glyphs._coverage(folder / "cmsy10.ttf", tex=True)
  assert sy[0x2192] == "!"  # cmsy10 draws "rightwards arrow" at the position of "!"
  assert 0x21 not in sy
  r = glyphs._coverage(folder / "cmr10.ttf", tex=True)
  assert r[0x201D] == '"' and 0x22 not in r and r[ord("A")] == "A"


# --- unseen faces --------------------------------------------------------------------------------


def test_unseen_faces_are_disjoint(cache, full):
  del full
  g = make_glyphs(0, unseen_faces=True, cache_dir=cache, **SMALL)
  tr, te = set(g.train_face_ids.tolist()), set(g.test_face_ids.tolist())
  assert not tr & te and tr | te == set(range(len(FACES)))
  assert set(g.test_faces.tolist()) <= te
  assert set(g.train_faces.tolist()) | set(g.pool_faces.tolist()) <= tr
  for fam in {glyphs._family(f) for f in FACES}:  # stratified by family
    ids = {i for i, f in enumerate(FACES) if glyphs._family(f) == fam}
    assert ids & tr and ids & te
  groups = set(range(len(g.coarse_names)))
  assert set(g.coarse[g.train_classes]) == set(g.coarse[g.test_classes]) == groups


def test_one_sided_classes_go_to_their_side():
  coarse = np.zeros(10, np.int64)
  train_ok = np.ones(10, bool)
  test_ok = np.ones(10, bool)
  train_ok[[0, 1]] = False  # only test faces draw classes 0 and 1
  test_ok[[2, 3, 4, 5, 6, 7]] = False  # only train faces draw 2..7
  for seed in range(5):
    tr, te, po = glyphs._split_classes(coarse, 0.2, np.random.default_rng(seed), train_ok,
                                       test_ok)
    assert {0, 1} <= set(te) and not {2, 3, 4, 5, 6, 7} & set(te)
    assert len(po) == 2 and not {0, 1} & set(po)
    assert sorted([*tr, *te, *po]) == list(range(10))


def test_allot():
  np.testing.assert_array_equal(glyphs._allot([10, 5, 1], 8, 2), [5, 2, 1])
  np.testing.assert_array_equal(glyphs._allot([10, 5, 1], 3, 2), [3, 0, 0])
  np.testing.assert_array_equal(glyphs._allot([10, 5, 1], 100, 2), [10, 5, 1])
  out = glyphs._allot([40, 30, 20, 10], 20, 3)
  assert out.sum() == 20 and out.min() >= 3 and np.all(np.diff(out) <= 0)


# --- augmentation --------------------------------------------------------------------------------


def _zero_params(n, size):
  p = glyphs._draw_params(np.random.default_rng(0), n, size)
  return {k: np.zeros_like(v) for k, v in p.items()}


def test_warp_identity_and_shift():
  x = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
  p = _zero_params(3, 16)
  np.testing.assert_allclose(glyphs._warp(x, p, 16), x, atol=1e-6)
  p["shift"][:, 0] = 1.0  # one pixel to the right
  out = glyphs._warp(x, p, 16)
  np.testing.assert_allclose(out[:, :, 1:], x[:, :, :-1], atol=1e-6)
  np.testing.assert_allclose(out[:, :, 0], 0.0)
  p = _zero_params(1, 16)
  p["angle"][:] = np.pi / 2  # a quarter turn about the centre
  np.testing.assert_allclose(glyphs._warp(x[:1], p, 16)[0], np.rot90(x[0], -1), atol=1e-5)


def test_stroke_jitter_is_the_diamond_dilation():
  rng = np.random.default_rng(1)
  x = (rng.random((2, 12, 12)) < 0.1).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
  naive = np.max([padded[:, 1 + dy:13 + dy, 1 + dx:13 + dx]
                  for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))], axis=0)
  np.testing.assert_array_equal(glyphs._stroke(x, np.ones(2), 32), naive)
  np.testing.assert_allclose(glyphs._stroke(x, np.full(2, 0.5), 32), (x + naive) / 2)
  np.testing.assert_array_equal(glyphs._stroke(x, np.zeros(2), 32), x)


# --- determinism and the cache -------------------------------------------------------------------


def test_deterministic_and_seeded(cache, small, tmp_path):
  _copy_catalogues(cache, tmp_path)  # the clean renderings are reused, the rest is rebuilt
  again = make_glyphs(0, cache_dir=tmp_path, **SMALL)
  for name, value in _arrays(small).items():
    np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
  assert again.merged == small.merged and again.coarse_names == small.coarse_names
  other = make_glyphs(1, cache_dir=tmp_path, **SMALL)
  assert not np.array_equal(other.code_points, small.code_points)


def test_cache_is_used_and_keyed(cache, small, monkeypatch, tmp_path):
  folder = cache / "glyphs"
  before = set(folder.glob("glyphs-*.npz"))

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt although cached")

  with monkeypatch.context() as m:
    m.setattr(glyphs, "_catalogue", fail)
    m.setattr(glyphs, "_augment", fail)
    cached = make_glyphs(0, cache_dir=cache, **SMALL)
  np.testing.assert_array_equal(cached.train_images, small.train_images)
  changed = make_glyphs(0, cache_dir=cache, **{**SMALL, "images_per_class": 5})
  assert len(changed.train_images) == 5 * len(changed.train_classes)
  assert len(set(folder.glob("glyphs-*.npz")) - before) == 1
  # $JAXDML_CACHE is the default folder; an unreadable file is rebuilt
  _copy_catalogues(cache, tmp_path)
  monkeypatch.setenv("JAXDML_CACHE", str(tmp_path))
  make_glyphs(0, **SMALL)
  (written,) = (tmp_path / "glyphs").glob("glyphs-*.npz")
  written.write_bytes(b"not an npz file")
  rebuilt = make_glyphs(0, **SMALL)
  np.testing.assert_array_equal(rebuilt.train_images, small.train_images)
  assert not list((tmp_path / "glyphs").glob("*.tmp"))


def test_missing_font_file_raises(monkeypatch, tmp_path):
  monkeypatch.setattr(glyphs, "FACES", (*FACES, "Missing-Face.ttf"))
  with pytest.raises(FileNotFoundError, match=r"Missing-Face\.ttf.*fonts.*ttf.*matplotlib \d"):
    make_glyphs(0, cache_dir=tmp_path)
  monkeypatch.setattr(glyphs, "FACES", FACES)
  monkeypatch.setattr(glyphs, "font_folder", lambda: tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="DejaVuSans.ttf.*nowhere"):
    make_glyph_instances(0, cache_dir=tmp_path)


def test_invalid_arguments():
  for kwargs, name in (({"size": 4}, "size"), ({"min_faces": 0}, "min_faces"),
                       ({"min_faces": len(FACES) + 1}, "min_faces"),
                       ({"images_per_class": 0}, "images_per_class"),
                       ({"pool_fraction": 1.0}, "pool_fraction"),
                       ({"max_classes": 3}, "max_classes"),
                       ({"unseen_faces": "yes"}, "unseen_faces")):
    with pytest.raises(ValueError, match=name):
      make_glyphs(0, **kwargs)
  with pytest.raises(ValueError, match="seed"):
    make_glyphs(-1)
  for kwargs, name in (({"num_landmarks": 0}, "num_landmarks"),
                       ({"views_per_landmark": 0}, "views_per_landmark"),
                       ({"num_distractors": -1}, "num_distractors")):
    with pytest.raises(ValueError, match=name):
      make_glyph_instances(0, **kwargs)


# --- instance retrieval --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instances(cache, full):
  del full
  return make_glyph_instances(0, num_landmarks=12, views_per_landmark=10, num_distractors=30,
                              cache_dir=cache)


def test_instance_ground_truth(instances, full):
  gi = instances
  v = gi.num_views
  assert v == 120 and gi.num_distractors == 30 and len(gi.database_images) == 150
  assert len(gi.gnd) == len(gi.query_images) == 12
  assert set(gi.query_labels.tolist()) <= set(full.test_classes.tolist())  # same split
  for q, g in enumerate(gi.gnd):
    parts = [set(g[k].tolist()) for k in ("easy", "hard", "junk")]
    assert all(0 <= i < v for p in parts for i in p)  # never a distractor
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    rows = set(np.nonzero(gi.database_labels == gi.query_labels[q])[0].tolist())
    assert set().union(*parts) == rows and len(rows) == 10
    s = gi.database_survival
    assert np.all(s[g["easy"]] >= glyphs.EASY_SURVIVAL)
    assert np.all(s[g["junk"]] < glyphs.JUNK_SURVIVAL)
  assert np.all(gi.database_labels[v:] == -1) and np.all(gi.database_labels[:v] >= 0)
  assert np.all(np.isnan(gi.database_survival[v:]))
  distractors = set(gi.database_source_labels[v:].tolist())
  assert distractors <= set(full.train_classes.tolist())
  peak = gi.database_images.reshape(len(gi.database_images), -1).max(1)
  assert peak.min() >= 200


def test_instance_protocol_on_raw_pixels(instances):
  """The landmark protocol runs on the variant; on raw pixels Easy > Medium > Hard, as views
  lose more of the glyph (and all three are far above chance)."""
  from jaxdml import evaluation
  gi = instances

  def flat(x):
    x = x.reshape(len(x), -1).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  gt = gi.ground_truth()
  assert gt.num_queries == 12 and gt.max_index < gi.num_views
  m = evaluation.landmark_metrics(flat(gi.query_images), flat(gi.database_images), gt)
  assert m["easy/map"] > m["medium/map"] > m["hard/map"]
  chance = np.mean([len(g["hard"]) for g in gi.gnd]) / len(gi.database_images)
  assert m["hard/map"] > 2 * chance


def test_instance_junk_keeps_less_ink_than_easy(instances):
  ink = (instances.database_images > 127).reshape(len(instances.database_images), -1).sum(1)
  ratios = [ink[g["junk"]].mean() / ink[g["easy"]].mean() for g in instances.gnd
            if len(g["easy"]) and len(g["junk"])]
  assert len(ratios) >= 6
  assert max(ratios) < 1.0 and np.mean(ratios) < 0.6
  tags = sum(len(g[k]) for g in instances.gnd for k in ("easy", "hard", "junk"))
  assert tags == instances.num_views
  assert all(len(g["easy"]) and len(g["hard"]) for g in instances.gnd)  # graded per landmark


def test_instance_queries_are_clean_renderings(instances):
  gi = instances
  checked = 0
  for q in range(len(gi.query_images)):
    face = gi.faces[gi.query_faces[q]]
    cp = int(gi.code_points[gi.query_labels[q]])
    cover = glyphs._coverage(glyphs.font_folder() / face, glyphs._tex_encoded(face))
    if cp not in cover:
      continue  # this face draws another member of the merged class
    img, ok = glyphs._render(glyphs.font_folder() / face, [cover[cp]], 32)
    assert ok[0]
    np.testing.assert_array_equal(gi.query_images[q], img[0])
    checked += 1
  assert checked >= 6


def test_instances_cached(instances, cache, monkeypatch):
  monkeypatch.setattr(glyphs, "_build_instances", lambda *a: (_ for _ in ()).throw(
      AssertionError("rebuilt although cached")))
  again = make_glyph_instances(0, num_landmarks=12, views_per_landmark=10, num_distractors=30,
                               cache_dir=cache)
  np.testing.assert_array_equal(again.database_images, instances.database_images)
  assert [g["hard"].tolist() for g in again.gnd] == [g["hard"].tolist() for g in instances.gnd]


STIX = ("STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")


def test_size_64_has_the_same_classes(monkeypatch, tmp_path):
  monkeypatch.setattr(glyphs, "FACES", STIX)  # two faces: a quick catalogue
  g64 = make_glyphs(0, size=64, min_faces=2, max_classes=20, images_per_class=2,
                    cache_dir=tmp_path)
  assert g64.train_images.shape[1:] == (64, 64) and g64.faces == STIX
  assert g64.train_images.reshape(len(g64.train_images), -1).max(1).min() >= 200
  g32 = make_glyphs(0, min_faces=2, max_classes=20, images_per_class=2, cache_dir=tmp_path)
  np.testing.assert_array_equal(g64.code_points, g32.code_points)  # classes independent of size
  np.testing.assert_array_equal(g64.train_faces, g32.train_faces)
  cold = make_glyphs(0, min_faces=2, max_classes=20, images_per_class=2,
                     cache_dir=tmp_path / "again")
  for name, value in _arrays(g32).items():
    np.testing.assert_array_equal(getattr(cold, name), value, err_msg=name)


@pytest.mark.slow
def test_cold_rebuild_is_bit_identical(small, tmp_path):
  again = make_glyphs(0, cache_dir=tmp_path, **SMALL)  # renders and merges everything again
  for name, value in _arrays(small).items():
    np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
  assert again.merged == small.merged
