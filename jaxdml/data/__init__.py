"""Datasets, sources, transforms, samplers and the grain input pipeline.

TFDS builders for manually downloaded datasets live in `jaxdml.data.tfds_builders` (imported on
demand: importing it registers "deepfashion_inshop" and "dyml" with TFDS).
"""

from jaxdml.data import transforms
from jaxdml.data.digits import DigitPairs, make_digit_pairs
from jaxdml.data.glyphs import GlyphInstances, Glyphs, make_glyph_instances, make_glyphs
from jaxdml.data.samplers import (
    aspect_ratio_batches,
    bucket_shape,
    class_balanced_batches,
    random_batches,
)
from jaxdml.data.sources import (
  ArraySource,
  ImageFolderSource,
  SubsetSource,
  TFDSSource,
  dml_split,
  relabel,
)
from jaxdml.data.verify import UndecodableImagesError, verify_images

_PIPELINE = ("MPerClassSampler", "make_eval_loader", "make_train_loader")


def __getattr__(name):  # the grain pipeline is imported on first use (grain takes ~1.5 s)
  if name in _PIPELINE:
    from jaxdml.data import pipeline  # noqa: PLC0415
    return getattr(pipeline, name)
  raise AttributeError(f"module 'jaxdml.data' has no attribute {name!r}")


__all__ = ["transforms", "DigitPairs", "make_digit_pairs", "Glyphs", "make_glyphs",
           "GlyphInstances", "make_glyph_instances", "MPerClassSampler", "make_eval_loader",
           "make_train_loader", "class_balanced_batches", "ArraySource", "ImageFolderSource",
           "SubsetSource", "TFDSSource", "dml_split", "relabel", "UndecodableImagesError",
           "verify_images", "random_batches", "aspect_ratio_batches", "bucket_shape"]
