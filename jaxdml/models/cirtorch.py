"""Importing the GeM retrieval networks of cirtorch (Radenovic et al., TPAMI 2018).

A cirtorch checkpoint (e.g. `retrievalSfM120k-resnet101-gem-b80fb85.pth`, AML's teacher) holds
`{"state_dict": ..., "meta": ...}`. Its state dict names the ResNet's children by position
(`features.0` conv1, `features.1` bn1, `features.4`-`features.7` layer1-layer4; 2 and 3 are
the ReLU and the max pool, without weights) and the GeM exponent `pool.p`; its meta holds the
input normalisation (`mean`, `std`) and, for the released networks, the learned whitening
`meta["Lw"][<training set>][<"ss" | "ms">] = {"m": [d, 1], "P": [d, d]}` (single- and
multi-scale), as numpy arrays. The network is a ResNet, GeM, L2: an `EmbeddingModel` without an
embedding layer; the whitening becomes `jaxdml.evaluation.Whitening` values to apply to its
descriptors (`apply_whitening`).

`torch.load(weights_only=True)` refuses the numpy arrays of the meta unless their types are
allowed; `read_checkpoint` allows exactly numpy's array reconstruction and dtypes, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.models import weights
from jaxdml.models.heads import EmbeddingModel
from jaxdml.models.resnet import ResNet, resnet, resnet_variables_from_torch

#: cirtorch's positional names of a ResNet's children -> torchvision's
_CHILDREN = {"features.0.": "conv1.", "features.1.": "bn1.", "features.4.": "layer1.",
             "features.5.": "layer2.", "features.6.": "layer3.", "features.7.": "layer4."}


def to_torchvision(state_dict: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], float]:
  """(the ResNet's state dict under torchvision's names, the GeM exponent) of a cirtorch one.

  Raises:
    KeyError: `pool.p` is missing or a name is neither a ResNet child's nor the pool's (e.g. a
      VGG or a network with a whitening layer in its state dict).
  """
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in state_dict.items()}
  if "pool.p" not in sd:
    raise KeyError("the state dict has no 'pool.p': not a cirtorch GeM network (its keys start "
                   f"with {sorted({k.split('.')[0] for k in sd})}).")
  out = {}
  for key, value in sd.items():
    if key == "pool.p":
      continue
    for old, new in _CHILDREN.items():
      if key.startswith(old):
        out[new + key[len(old):]] = value
        break
    else:
      raise KeyError(f"weight {key!r} is not a ResNet child of a cirtorch network "
                     f"(expected names starting with {sorted(_CHILDREN)} or 'pool.p').")
  return out, float(np.asarray(sd["pool.p"]).reshape(-1)[0])


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
  """`{"state_dict": {name: np.ndarray}, "meta": {...}}` of a cirtorch `.pth` file (needs torch),
  with numpy's arrays in the meta allowed and nothing else beyond `weights_only`'s types."""
  path = os.fspath(path)
  weights.check_weight_file(path)
  import torch  # noqa: PLC0415 - optional, only for PyTorch files

  allowed = [np.ndarray, np.dtype, _reconstruct()]
  allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
  with torch.serialization.safe_globals(allowed):
    obj = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
    raise ValueError(f"{path!r} is not a cirtorch checkpoint: expected a mapping with "
                     f"'state_dict' and 'meta'.")
  sd = {k: v.detach().cpu().float().numpy() for k, v in obj["state_dict"].items()
        if hasattr(v, "detach")}
  return {"state_dict": sd, "meta": dict(obj.get("meta") or {})}


def _reconstruct():
  core = getattr(np, "_core", None) or np.core  # numpy 2 renamed the module
  return core.multiarray._reconstruct


def whitening_of(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """The learned whitenings of a cirtorch meta: `{training set: {"ss" | "ms": Whitening}}`."""
  from jaxdml.evaluation import Whitening  # noqa: PLC0415

  out = {}
  for name, kinds in (meta.get("Lw") or {}).items():
    out[name] = {kind: Whitening(jnp.asarray(np.asarray(w["m"], np.float32).reshape(-1)),
                                 jnp.asarray(np.asarray(w["P"], np.float32)))
                 for kind, w in kinds.items()}
  return out


def load_resnet_gem(path_or_checkpoint: str | os.PathLike | Mapping[str, Any], depth: int = 101,
                    **resnet_kwargs: Any) -> tuple[EmbeddingModel, dict[str, Any], dict[str, Any]]:
  """A cirtorch ResNet-GeM network: (model, variables, info).

  Args:
    path_or_checkpoint: a `.pth` file, or what `read_checkpoint` returns.
    depth: the ResNet's depth (101 for AML's teacher).
    **resnet_kwargs: further `ResNet` fields (frozen_bn, dtype).

  Returns:
    model: `EmbeddingModel(ResNet, pooling "gem", no embedding layer, L2)`.
    variables: its `{"params", "batch_stats"}`, the GeM exponent at `params["gem"]["p"]`.
    info: `{"mean", "std"}` (the input normalisation, when the meta has it) and "whitening"
      (`whitening_of`).
  """
  ckpt = (read_checkpoint(path_or_checkpoint) if isinstance(path_or_checkpoint, (str, os.PathLike))
          else path_or_checkpoint)
  tv, p = to_torchvision(ckpt["state_dict"])
  backbone = resnet(depth, **resnet_kwargs)
  if not isinstance(backbone, ResNet):
    raise TypeError(f"depth {depth} did not give a ResNet.")
  model = EmbeddingModel(backbone=backbone, pooling="gem", embedding_dim=None, gem_p=p)
  b = resnet_variables_from_torch(tv, backbone)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  params = {"backbone": b["params"], "gem": {"p": jnp.full((1,), p, jnp.float32)}}
  variables = {"params": params, "batch_stats": {"backbone": b["batch_stats"]}}
  if jax.tree.structure(shapes) != jax.tree.structure(variables):
    raise ValueError("the imported variables do not have the model's structure.")
  meta = ckpt.get("meta", {})
  info = {k: [float(v) for v in meta[k]] for k in ("mean", "std") if k in meta}
  info["whitening"] = whitening_of(meta)
  return model, variables, info
