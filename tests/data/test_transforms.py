"""Image transforms: shapes, determinism, crop geometry and normalisation constants."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdml.data import transforms


def _image(h=30, w=40, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_random_resized_crop_shape_and_determinism():
  img = _image()
  a = transforms.random_resized_crop(img, np.random.default_rng(3), 16)
  b = transforms.random_resized_crop(img, np.random.default_rng(3), 16)
  c = transforms.random_resized_crop(img, np.random.default_rng(4), 16)
  assert a.shape == (16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert transforms.random_resized_crop(img, np.random.default_rng(0), (8, 12)).shape == (8, 12, 3)


def test_random_resized_crop_box_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = transforms.random_resized_crop_box(100, 120, rng)
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 120
    assert 0.08 * 12000 * 0.8 <= h * w <= 12000
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


@pytest.mark.parametrize("height,width,expected", [
    (100, 100, (0, 0, 100, 100)),   # ratio 1 is inside [3/4, 4/3]: whole image
    (100, 300, (0, 83, 100, 133)),  # too wide: full height, width 4/3 * height, centred
    (300, 100, (83, 0, 133, 100)),  # too tall: full width, height width / (3/4), centred
])
def test_random_resized_crop_box_falls_back_to_center_crop(height, width, expected):
  # An area fraction above 1 never fits, so all 10 attempts fail.
  box = transforms.random_resized_crop_box(height, width, np.random.default_rng(0),
                                           scale=(2.0, 3.0))
  assert box == expected


def test_horizontal_flip():
  img = _image()
  np.testing.assert_array_equal(transforms.horizontal_flip(img, np.random.default_rng(0), p=1.0),
                                img[:, ::-1])
  np.testing.assert_array_equal(transforms.horizontal_flip(img, np.random.default_rng(0), p=0.0),
                                img)
  flips = [not np.array_equal(transforms.horizontal_flip(img, np.random.default_rng(s)), img)
           for s in range(200)]
  assert 60 < sum(flips) < 140


def test_resize_shorter_and_center_crop():
  img = _image(30, 60)
  assert transforms.resize_shorter(img, 20).shape == (20, 40, 3)
  assert transforms.resize_shorter(_image(60, 30), 20).shape == (40, 20, 3)
  ramp = np.tile(np.arange(10, dtype=np.uint8)[None, :, None], (6, 1, 3))
  crop = transforms.center_crop(ramp, (4, 4))
  np.testing.assert_array_equal(crop[0, :, 0], [3, 4, 5, 6])
  assert transforms.center_crop(_image(5, 5), 8).shape == (8, 8, 3)
  assert transforms.resize_center_crop(img, 16, 20).shape == (16, 16, 3)


def test_normalize_imagenet_and_bn_inception():
  img = np.zeros((2, 2, 3), np.uint8)
  img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
  out = transforms.normalize(img, "imagenet")
  assert out.dtype == np.float32 and out.shape == (2, 2, 3)
  expected = (np.array([255, 128, 0]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225])
  np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
  bgr = transforms.normalize(img, "bn_inception")
  assert bgr.dtype == np.float32
  np.testing.assert_allclose(bgr[0, 0], [0 - 104, 128 - 117, 255 - 128])
  half = transforms.normalize(img, "half")  # mean 0.5, std 0.5 of [0, 1] values
  np.testing.assert_allclose(half[0, 0], (np.array([255, 128, 0]) / 255 - 0.5) / 0.5, atol=1e-6)
  with pytest.raises(ValueError):
    transforms.normalize(img, "unknown")


def test_grey_and_alpha_images_become_rgb():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  rgb = transforms.as_rgb_uint8(grey)
  assert rgb.shape == (3, 4, 3)
  np.testing.assert_array_equal(rgb[..., 2], grey)
  assert transforms.as_rgb_uint8(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)


def test_train_and_eval_transform():
  img = _image(20, 28)
  out = transforms.train_transform(img, np.random.default_rng(0), image_size=12)
  assert out.shape == (12, 12, 3) and out.dtype == np.float32
  ev = transforms.eval_transform(img, image_size=12, resize_size=14)
  assert ev.shape == (12, 12, 3) and ev.dtype == np.float32
  np.testing.assert_array_equal(ev, transforms.eval_transform(img, image_size=12, resize_size=14))
