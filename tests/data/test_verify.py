"""The check that every image of a source decodes: errors name the files, skip leaves them out."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxdml.data import sources, verify


def _png(value, size=(6, 5)):
  buffer = io.BytesIO()
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
  """a/0.png a/1.png b/0.png b/1.jpg (not an image) b/2.png c/0.png."""
  for name, count in (("a", 2), ("b", 3), ("c", 1)):
    os.makedirs(tmp_path / name)
    for i in range(count):
      (tmp_path / name / f"{i}.png").write_bytes(_png(10 * i + ord(name)))
  os.remove(tmp_path / "b" / "1.png")
  (tmp_path / "b" / "1.jpg").write_bytes(b"these bytes are not a JPEG")
  return tmp_path


def test_error_names_the_corrupt_file(folder):
  src = sources.ImageFolderSource(folder)
  assert len(src) == 6
  with pytest.raises(verify.UndecodableImagesError) as info:
    verify.verify_images(src, name="the folder", hint="do something")
  message = str(info.value)
  bad = os.path.join(str(folder), "b", "1.jpg")
  assert message.startswith("1 of the 6 images of the folder cannot be decoded:\n")
  assert f"  {bad}: ValueError: cannot decode the image {bad!r}" in message
  assert message.endswith("\ndo something")
  assert info.value.bad == [(3, bad, info.value.bad[0][2])]
  assert isinstance(info.value, ValueError)
  # reading the file in the pipeline names it too
  with pytest.raises(ValueError, match=r"cannot decode the image .*1\.jpg"):
    src[3]


def test_skip_leaves_the_corrupt_file_out_and_says_so(folder):
  src = sources.ImageFolderSource(folder)
  notes = []
  out = verify.verify_images(src, mode="skip", name="train", log=notes.append)
  assert len(out) == 5 and isinstance(out, sources.SubsetSource)
  np.testing.assert_array_equal(out.indices, [0, 1, 2, 4, 5])
  np.testing.assert_array_equal(out.labels, [0, 0, 1, 1, 2])  # labels kept, not renumbered
  assert out[3]["image"][0, 0, 0] == 20 + ord("b")  # b/2.png
  assert len(notes) == 1 and notes[0].startswith(
      "note: left out 1 of the 6 images of train, which cannot be decoded:")
  assert "1.jpg" in notes[0]
  assert repr(out) == repr(verify.verify_images(src, mode="skip"))  # deterministic


def test_a_clean_source_is_returned_as_is(folder):
  os.remove(folder / "b" / "1.jpg")
  src = sources.ImageFolderSource(folder)
  assert verify.verify_images(src) is src
  assert verify.find_undecodable(src, num_threads=1) == []


def test_truncated_image_is_found(folder):
  data = _png(7, size=(64, 64))
  (folder / "a" / "0.png").write_bytes(data[: len(data) // 2])
  bad = verify.find_undecodable(sources.ImageFolderSource(folder))
  assert [d.rsplit(os.sep, 2)[-2:] for _, d, _ in bad] == [["a", "0.png"], ["b", "1.jpg"]]


class _Counting(sources.ArraySource):
  reads = 0

  def __getitem__(self, index):
    type(self).reads += 1
    return super().__getitem__(index)


def test_in_memory_sources_are_not_read():
  src = _Counting(np.zeros((4, 2, 2, 3), np.uint8), [0, 0, 1, 1])
  assert verify.verify_images(src) is src and _Counting.reads == 0
  sub = sources.SubsetSource(src, [1, 2], {"label": [0, 1]})
  assert verify.verify_images(sub) is sub and _Counting.reads == 0


def test_the_result_is_cached_by_the_files(folder, tmp_path_factory, monkeypatch):
  cache = tmp_path_factory.mktemp("run") / "check.json"
  src = sources.ImageFolderSource(folder)
  with pytest.raises(verify.UndecodableImagesError):
    verify.verify_images(src, cache=cache)
  saved = json.loads(cache.read_text())
  assert saved["version"] == 1 and len(saved["sources"]) == 1
  calls = []
  real = verify.find_undecodable
  monkeypatch.setattr(verify, "find_undecodable", lambda s, **kw: calls.append(1) or real(s))
  out = verify.verify_images(src, mode="skip", cache=cache)  # read from the cache
  assert calls == [] and len(out) == 5
  # a changed file (the corrupt one replaced by an image) changes the key: checked again
  (folder / "b" / "1.jpg").write_bytes(_png(1))
  again = sources.ImageFolderSource(folder)
  assert verify.verify_images(again, cache=cache) is again and calls == [1]
  assert len(json.loads(cache.read_text())["sources"]) == 2
  assert verify.verify_images(again, cache=cache) is again and calls == [1]


def test_an_unreadable_cache_is_ignored(folder, tmp_path_factory):
  cache = tmp_path_factory.mktemp("run") / "check.json"
  cache.write_text("{not json")
  src = sources.ImageFolderSource(folder)
  with pytest.raises(verify.UndecodableImagesError):
    verify.verify_images(src, cache=cache)
  assert json.loads(cache.read_text())["version"] == 1


def test_nothing_decodes_and_bad_mode(folder):
  for p in folder.rglob("*.png"):
    p.write_bytes(b"x")
  with pytest.raises(verify.UndecodableImagesError, match="none of the 6 images"):
    verify.verify_images(sources.ImageFolderSource(folder), mode="skip")
  with pytest.raises(ValueError, match="mode must be one of"):
    verify.verify_images(sources.ImageFolderSource(folder), mode="ignore")


tfds = pytest.importorskip("tensorflow_datasets")


class _EncodedRecords:
  """A TFDS data source stand-in: PNG bytes per record, decoded unless the image is skipped."""

  def __init__(self, images, decode):
    self.images, self.decode = images, decode

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    data = self.images[i]
    image = data
    if self.decode:
      with Image.open(io.BytesIO(data)) as img:
        image = np.asarray(img.convert("RGB"))
    return {"image": image, "label": i % 3, "image/filename": f"img_{i:03d}.jpg".encode()}


def test_tfds_records_that_do_not_decode_are_named():
  images = [_png(i) for i in range(9)]
  images[4] = b"\xff\xd8 broken jpeg"

  def as_data_source(self, split, decoders=None, **kwargs):
    del split, kwargs
    return _EncodedRecords(images, decode="image" not in (decoders or {}))

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    src = sources.TFDSSource("caltech_birds2011", "train")
  np.testing.assert_array_equal(src.labels, np.arange(9) % 3)  # the scan reads no image
  sub = sources.SubsetSource(src, [2, 4, 6, 8], {"label": [0, 1, 2, 3]})
  with pytest.raises(verify.UndecodableImagesError) as info:
    verify.verify_images(sub, name="cub200 'train'")
  assert "1 of the 4 images of cub200 'train'" in str(info.value)
  assert "caltech_birds2011 'train' record 4 (img_004.jpg): " in str(info.value)
  out = verify.verify_images(sub, mode="skip")
  np.testing.assert_array_equal(out.labels, [0, 2, 3])
  assert out[1]["image"][0, 0, 0] == 6
