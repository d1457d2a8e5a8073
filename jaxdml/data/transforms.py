"""Image transforms for metric-learning training and evaluation (numpy and PIL, host side).

Every function takes a uint8 image [H, W, 3] (and, when random, a `numpy.random.Generator`) and
returns a new array; nothing is mutated and the same generator state gives the same output.

Training: `random_resized_crop` -> `horizontal_flip` -> `normalize` (`train_transform`).
Evaluation: `resize_shorter` -> `center_crop` -> `normalize` (`eval_transform`), 256 -> 224 by
default, the protocol used by most deep-metric-learning papers on CUB, Cars, SOP and In-shop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_INCEPTION_MEAN_BGR = (104.0, 117.0, 128.0)
NORMALIZATIONS = ("imagenet", "bn_inception", "half")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, int | np.integer):
    return int(size), int(size)
  height, width = size
  return int(height), int(width)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """Returns `image` as uint8 [H, W, 3]: grey is repeated, an alpha channel dropped.

  Args:
    image: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] array; non-uint8 values are clipped to
      [0, 255].

  Returns:
    uint8 [H, W, 3].
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Expected an image [H, W] or [H, W, 1|3|4], got shape {image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[:, :, :3]
  return np.ascontiguousarray(image)


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Bilinear resize (PIL, antialiased) of a uint8 image to `size` = (height, width) or a side."""
  height, width = _pair(size)
  image = as_rgb_uint8(image)
  if image.shape[:2] == (height, width):
    return image.copy()
  out = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(out, dtype=np.uint8)


def crop_box(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
  """The [top:top+height, left:left+width] window of `image` (a copy)."""
  return np.array(image[top:top + height, left:left + width])


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
  """Samples a crop window (top, left, h, w) as torchvision's `RandomResizedCrop` does.

  Up to `attempts` times, draw an area fraction uniformly from `scale` and a log-uniform aspect
  ratio (w / h) from `ratio`; accept the first window that fits inside the image at a uniformly
  random position. If none fits, fall back to the largest centred window whose aspect ratio is
  clamped into `ratio`.

  Args:
    height: image height.
    width: image width.
    rng: generator.
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio width / height.
    attempts: tries before the fallback.

  Returns:
    (top, left, crop_height, crop_width).
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  h, w = max(min(h, height), 1), max(min(w, width), 1)
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int | Sequence[int] = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """Crops a random window (see `random_resized_crop_box`) and resizes it to `size`.

  Args:
    image: uint8 [H, W, 3].
    rng: generator.
    size: output side or (height, width).
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio width / height.

  Returns:
    uint8 [size, size, 3].
  """
  image = as_rgb_uint8(image)
  top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
  return resize(crop_box(image, top, left, h, w), size)


def horizontal_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """Mirrors the image left-right with probability `p` (one uniform draw from `rng`)."""
  if rng.uniform() < p:
    return np.ascontiguousarray(image[:, ::-1])
  return np.array(image)


def resize_shorter(image: np.ndarray, size: int = 256) -> np.ndarray:
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  image = as_rgb_uint8(image)
  height, width = image.shape[:2]
  if height <= width:
    new_h, new_w = size, max(int(round(width * size / height)), 1)
  else:
    new_h, new_w = max(int(round(height * size / width)), 1), size
  return resize(image, (new_h, new_w))


def center_crop(image: np.ndarray, size: int | Sequence[int] = 224) -> np.ndarray:
  """The centred (height, width) window; an image smaller than that is resized up first."""
  height, width = _pair(size)
  image = as_rgb_uint8(image)
  if image.shape[0] < height or image.shape[1] < width:
    scale = max(height / image.shape[0], width / image.shape[1])
    image = resize(image, (max(height, int(math.ceil(image.shape[0] * scale))),
                           max(width, int(math.ceil(image.shape[1] * scale)))))
  top = (image.shape[0] - height) // 2
  left = (image.shape[1] - width) // 2
  return crop_box(image, top, left, height, width)


def resize_center_crop(image: np.ndarray, crop_size: int = 224,
                       resize_size: int = 256) -> np.ndarray:
  """Resizes the shorter side to `resize_size`, then takes the centred `crop_size` square."""
  return center_crop(resize_shorter(image, resize_size), crop_size)


def normalize(image: np.ndarray, method: str = "imagenet") -> np.ndarray:
  """Converts a uint8 RGB image to the float32 input a backbone expects.

  Args:
    image: uint8 [H, W, 3], RGB.
    method: "imagenet" (RGB scaled to [0, 1], minus mean (0.485, 0.456, 0.406), divided by
      std (0.229, 0.224, 0.225); torchvision models) or "bn_inception" (channels reversed to BGR,
      kept in [0, 255], minus mean (104, 117, 128); the Caffe-converted BN-Inception used by
      many metric-learning papers) or "half" (RGB scaled to [0, 1], minus 0.5, divided by 0.5,
      i.e. [-1, 1]; the ImageNet-21k ViT weights of timm that HIER and Hyp-ViT use).

  Returns:
    float32 [H, W, 3].
  """
  image = as_rgb_uint8(image).astype(np.float32)
  if method == "imagenet":
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (image / np.float32(255.0) - mean) / std
  if method == "bn_inception":
    return image[:, :, ::-1] - np.asarray(BN_INCEPTION_MEAN_BGR, np.float32)
  if method == "half":
    return image / np.float32(127.5) - np.float32(1.0)
  raise ValueError(f"Unknown normalization {method!r}; expected one of {NORMALIZATIONS}.")


def train_transform(image: np.ndarray, rng: np.random.Generator, *, image_size: int = 224,
                    normalization: str = "imagenet") -> np.ndarray:
  """Random resized crop to `image_size`, random horizontal flip, normalisation (float32)."""
  image = random_resized_crop(image, rng, image_size)
  image = horizontal_flip(image, rng)
  return normalize(image, normalization)


def eval_transform(image: np.ndarray, *, image_size: int = 224, resize_size: int = 256,
                   normalization: str = "imagenet") -> np.ndarray:
  """Shorter side to `resize_size`, centre crop `image_size`, normalisation (float32)."""
  return normalize(resize_center_crop(image, image_size, resize_size), normalization)
