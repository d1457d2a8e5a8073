"""Reading pretrained weight files into flat `{name: numpy array}` dictionaries.

The architecture modules (`resnet`, `bn_inception`, `vit`) turn such a dictionary, keyed with the
PyTorch names of torchvision / timm / Hugging Face checkpoints, into a Flax variable pytree.

Formats:
  - `.safetensors` (timm, Hugging Face): read with numpy only (the `safetensors` package).
  - `.pth` / `.pt` / `.bin` (torchvision, PyTorch state dicts): needs torch, an optional
    dependency, imported only here and only when such a file is read.
  - `.npz`: a numpy archive of the same flat dictionary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

StateDict = dict[str, np.ndarray]


def _from_torch_file(path: str) -> StateDict:
  try:
    import torch  # noqa: PLC0415 - optional dependency, only for PyTorch files
  except ImportError as e:
    raise ImportError(
        f"reading the PyTorch file {path!r} needs torch (pip install torch); "
        "or convert it once to .safetensors / .npz where torch is installed") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "model_state_dict"):  # common training-checkpoint wrappers
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path!r} does not hold a state dict (a mapping of names to tensors), "
                     f"but a {type(obj).__name__}.")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
          for k, v in obj.items() if hasattr(v, "detach")}


def load_state_dict(path: str | os.PathLike, *, strip_prefix: str | None = None) -> StateDict:
  """Reads a weight file into a flat `{name: np.ndarray}` dict.

  Args:
    path: a `.safetensors`, `.pth` / `.pt` / `.bin` (PyTorch) or `.npz` file.
    strip_prefix: removed from the start of every name that has it (e.g. "module." for
      checkpoints saved from DataParallel, "backbone.").

  Returns:
    The state dict with float tensors as float32 numpy arrays (integer buffers keep their dtype).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weight file {path!r} does not exist.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file  # noqa: PLC0415 - keep import cost off `import jaxdml`
    sd = dict(load_file(path))
  elif ext in (".pth", ".pt", ".bin"):
    sd = _from_torch_file(path)
  elif ext == ".npz":
    with np.load(path) as f:
      sd = {k: f[k] for k in f.files}
  else:
    raise ValueError(f"unknown weight file type {ext!r} of {path!r}; expected .safetensors, "
                     ".pth, .pt, .bin or .npz.")
  if strip_prefix:
    sd = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in sd.items()}
  return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
          else np.asarray(v) for k, v in sd.items()}


def take(sd: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...] | None = None
         ) -> np.ndarray:
  """`sd[name]`, with an error naming the key (and the expected shape) when missing or wrong."""
  if name not in sd:
    near = sorted(k for k in sd if k.split(".")[0] == name.split(".")[0])[:8]
    raise KeyError(f"weight {name!r} is missing from the state dict"
                   + (f"; names with the same prefix: {near}" if near else ""))
  value = np.asarray(sd[name])
  if shape is not None and tuple(value.shape) != tuple(shape):
    raise ValueError(f"weight {name!r} has shape {value.shape}, expected {tuple(shape)}.")
  return value
