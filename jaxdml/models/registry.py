"""Backbones by name, and putting imported weights into an `EmbeddingModel`'s variables."""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.models.weights import load_state_dict


def _module(name: str):
  # the package re-exports functions named like some modules (resnet, bn_inception)
  return importlib.import_module(f"jaxdml.models.{name}")

Loader = Callable[[str | os.PathLike], dict]


def _resnet_entry(depth: int, frozen_bn: bool, dtype) -> tuple[nn.Module, Loader]:
  resnet = _module("resnet")
  model = resnet.resnet(depth, frozen_bn=frozen_bn, dtype=dtype)
  # strict=False: DML checkpoints often carry an embedding layer or other heads besides fc
  return model, lambda path: resnet.resnet_variables_from_torch(load_state_dict(path), model,
                                                                strict=False)


def _bn_inception_entry(frozen_bn: bool, dtype) -> tuple[nn.Module, Loader]:
  _bni = _module("bn_inception")
  model = _bni.bn_inception(frozen_bn=frozen_bn, dtype=dtype)
  return model, lambda path: _bni.bn_inception_variables_from_torch(load_state_dict(path))


def _vit_entry(name: str, dtype) -> tuple[nn.Module, Loader]:
  _vit = _module("vit")
  model = getattr(_vit, name)(dtype=dtype)

  def load(path):
    sd = load_state_dict(path)
    if any(k.startswith(("vit.", "embeddings.", "encoder.")) for k in sd):
      return _vit.vit_variables_from_hf(sd, model)
    return _vit.vit_variables_from_timm(sd, model)

  return model, load


def _mobilenet_entry(frozen_bn: bool, dtype) -> tuple[nn.Module, Loader]:
  _mnv2 = _module("mobilenet")
  model = _mnv2.MobileNetV2(frozen_bn=frozen_bn, dtype=dtype)
  return model, lambda path: _mnv2.mobilenet_v2_variables_from_torch(load_state_dict(path), model)


def _efficientnet_entry(variant: str, frozen_bn: bool, dtype) -> tuple[nn.Module, Loader]:
  _eff = _module("efficientnet")
  model = _eff.EfficientNet(variant=variant, frozen_bn=frozen_bn, dtype=dtype)
  return model, lambda path: _eff.efficientnet_variables_from_timm(load_state_dict(path), model)


BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "bn_inception",
             "vit_small_patch16", "deit_small_patch16", "mobilenet_v2", "efficientnet_b3")


def backbone_from_name(name: str, *, frozen_bn: bool = False, dtype: Any = jnp.float32
                       ) -> tuple[nn.Module, Loader]:
  """(backbone module, `load(path) -> backbone variables`) for a backbone name.

  Args:
    name: one of `BACKBONES`.
    frozen_bn: batch norm in inference mode with fixed affine parameters (CNNs; the DML
      convention for ImageNet-pretrained ResNet / BN-Inception / MobileNetV2). Ignored by ViTs
      (no batch norm).
    dtype: computation dtype (parameters stay float32).
  """
  if name.startswith("resnet") and name[6:].isdigit():
    return _resnet_entry(int(name[6:]), frozen_bn, dtype)
  if name == "bn_inception":
    return _bn_inception_entry(frozen_bn, dtype)
  if name in ("vit_small_patch16", "deit_small_patch16"):
    return _vit_entry(name, dtype)
  if name == "mobilenet_v2":
    return _mobilenet_entry(frozen_bn, dtype)
  if name == "efficientnet_b3":  # timm's tf_efficientnet_b3 (TF padding, BN eps 1e-3)
    return _efficientnet_entry("b3", frozen_bn, dtype)
  raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}.")


def with_backbone_weights(variables: Any, backbone_variables: Any, name: str = "backbone") -> dict:
  """`variables` of an `EmbeddingModel` with the backbone's collections replaced.

  Args:
    variables: `{"params": {name: ..., ...}, "batch_stats": {name: ...}, ...}`.
    backbone_variables: the imported `{"params": ..., "batch_stats": ...}` of the backbone.
    name: the backbone's module name inside the model.

  Raises:
    ValueError: when a tree structure or a shape differs (e.g. weights of another depth).
  """
  out = {k: dict(v) for k, v in variables.items()}
  for collection, tree in backbone_variables.items():
    if collection not in out or name not in out[collection]:
      raise ValueError(f"the model has no {collection}/{name} to receive imported weights.")
    current = out[collection][name]
    if jax.tree.structure(current) != jax.tree.structure(tree):
      raise ValueError(f"imported {collection} do not have the model's structure: "
                       f"{jax.tree.structure(tree)} vs {jax.tree.structure(current)}.")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(current), jax.tree.leaves(tree),
                            strict=True):
      if np.shape(a) != np.shape(b):
        raise ValueError(f"imported {collection}{jax.tree_util.keystr(path)} has shape "
                         f"{np.shape(b)}, the model expects {np.shape(a)}.")
    out[collection][name] = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), current, tree)
  return out
