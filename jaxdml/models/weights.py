"""Reading pretrained weight files into flat `{name: numpy array}` dictionaries.

The architecture modules (`resnet`, `bn_inception`, `vit`) turn such a dictionary, keyed with the
PyTorch names of torchvision / timm / Hugging Face checkpoints, into a Flax variable pytree.

Formats:
  - `.safetensors` (timm, Hugging Face): read with numpy only (the `safetensors` package).
  - `.pth` / `.pt` / `.bin` (torchvision, PyTorch state dicts): needs torch, an optional
    dependency, imported only here and only when such a file is read.
  - `.npz`: a numpy archive of the same flat dictionary.

`check_weight_file` looks at a file's header only, so that a wrong path, a corrupt file or a
missing torch is reported (naming the file) before a run builds anything else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

StateDict = dict[str, np.ndarray]


SUFFIXES = {".safetensors": "safetensors", ".pth": "PyTorch", ".pt": "PyTorch",
            ".bin": "PyTorch", ".npz": "npz"}
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit


def _bad(path: str, kind: str, detail: str, expected: str) -> ValueError:
  return ValueError(f"weight file {path!r} is not a readable {kind} file: {detail}. Expected "
                    f"{expected}; the file may be truncated or of another format: download or "
                    "export it again.")


def _check_safetensors(path: str, size: int) -> None:
  expected = ("a .safetensors file (an 8-byte little-endian header size, a JSON header, then "
              "the tensor data)")
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise _bad(path, ".safetensors", f"it has only {size} bytes", expected)
    n = int.from_bytes(head, "little")
    if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
      raise _bad(path, ".safetensors", f"its header size field reads {n} bytes for a file of "
                 f"{size} bytes", expected)
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise _bad(path, ".safetensors", f"its header is not JSON ({e})", expected) from None
  if not isinstance(header, dict):
    raise _bad(path, ".safetensors", "its header is not a JSON object", expected)


def _torch_missing(path: str) -> ValueError:
  return ValueError(f"weight file {path!r} is a PyTorch file, and reading it needs torch, which "
                    "is not installed: pip install torch, or convert the file once to "
                    ".safetensors where torch is installed (safetensors.torch.save_file("
                    "torch.load(path), 'weights.safetensors')) and pass that file instead.")


def _check_torch(path: str) -> None:
  if importlib.util.find_spec("torch") is None:
    raise _torch_missing(path)
  with open(path, "rb") as f:
    head = f.read(2)
  # torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle stream
  if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
    raise _bad(path, "PyTorch", "it is neither a zip archive nor a pickle stream",
               "a file written by torch.save (a state dict)")


def check_weight_file(path: str | os.PathLike) -> str:
  """Checks that a weight file exists and looks like its format; returns the format.

  Reads only the file's header (cheap), so a wrong path or a corrupt file is reported before
  anything else runs; `load_state_dict` reads the whole file.

  Args:
    path: a `.safetensors`, `.pth` / `.pt` / `.bin` (PyTorch) or `.npz` file.

  Returns:
    "safetensors", "PyTorch" or "npz".

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: an unknown suffix, a header that does not match the format, or a PyTorch file
      without torch installed; the message names the file and what to do.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
    raise FileNotFoundError(f"weight file {path!r} {what}.")
  ext = os.path.splitext(path)[1].lower()
  if ext not in SUFFIXES:
    raise ValueError(f"weight file {path!r} has the unknown suffix {ext!r}; supported: "
                     f"{', '.join(SUFFIXES)}.")
  kind = SUFFIXES[ext]
  if kind == "safetensors":
    _check_safetensors(path, os.path.getsize(path))
  elif kind == "npz" and not zipfile.is_zipfile(path):
    raise _bad(path, ".npz", "it is not a zip archive",
               "a numpy archive written by np.savez of {name: array}")
  elif kind == "PyTorch":
    _check_torch(path)
  return kind


def _from_torch_file(path: str) -> StateDict:
  try:
    import torch  # noqa: PLC0415 - optional dependency, only for PyTorch files
  except ImportError:
    raise _torch_missing(path) from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "model_state_dict"):  # common training-checkpoint wrappers
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  if not isinstance(obj, Mapping):
    raise ValueError(f"weight file {path!r} does not hold a state dict (a mapping of names to "
                     f"tensors), but a {type(obj).__name__}.")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
          for k, v in obj.items() if hasattr(v, "detach")}


def _from_npz(path: str) -> StateDict:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _read(path: str, kind: str) -> StateDict:
  if kind == "safetensors":
    from safetensors.numpy import load_file  # noqa: PLC0415 - keep import cost off `import jaxdml`
    return dict(load_file(path))
  if kind == "npz":
    return _from_npz(path)
  return _from_torch_file(path)


def load_state_dict(path: str | os.PathLike, *, strip_prefix: str | None = None) -> StateDict:
  """Reads a weight file into a flat `{name: np.ndarray}` dict.

  Args:
    path: a `.safetensors`, `.pth` / `.pt` / `.bin` (PyTorch) or `.npz` file.
    strip_prefix: removed from the start of every name that has it (e.g. "module." for
      checkpoints saved from DataParallel, "backbone.").

  Returns:
    The state dict with float tensors as float32 numpy arrays (integer buffers keep their dtype).

  Raises:
    FileNotFoundError, ValueError: see `check_weight_file`; also a ValueError naming the file when
      its contents cannot be read past the header.
  """
  path = os.fspath(path)
  kind = check_weight_file(path)
  try:
    sd = _read(path, kind)
  except ValueError as e:
    if path in str(e):  # already names the file
      raise
    raise _bad(path, kind, str(e), f"a {kind} file of named numeric arrays") from e
  except Exception as e:  # noqa: BLE001 - the readers' own error types (SafetensorError, ...)
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    raise _bad(path, kind, f"{type(e).__name__}: {first_line}",
               f"a {kind} file of named numeric arrays") from e
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


#: Flax leaf name -> PyTorch parameter / buffer name
LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                 "var": "running_var"}


def torch_key(path: tuple[str, ...]) -> str:
  """A Flax variable path whose module names spell PyTorch's with "_" for ".", as the CNNs here
  name them: ("layer1_0", "downsample_0", "kernel") -> "layer1.0.downsample.0.weight"."""
  return ".".join([p.replace("_", ".") for p in path[:-1]] + [LEAF_TO_TORCH[path[-1]]])


def conv_variables_from_torch(shapes: Any, state_dict: Mapping[str, Any], *,
                              ignored: Callable[[str], bool], strict: bool = True,
                              what: str = "the model",
                              hint: str = "another configuration or prefix?",
                              key_of: Callable[[tuple[str, ...]], str] = torch_key
                              ) -> dict[str, Any]:
  """Flax variables of the structure `shapes` (`jax.eval_shape` of an init) from a state dict
  keyed by `key_of(path)` (default `torch_key`): kernels transposed from OIHW to HWIO (a
  depthwise [C, 1, k, k] becomes [k, k, 1, C]), other leaves as they are, float32 copies.

  Raises:
    KeyError: a weight is missing, or (strict) a name other than the `ignored` ones is unused.
    ValueError: a weight has the wrong shape.
  """
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import traverse_util  # noqa: PLC0415

  sd = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in state_dict.items()}
  flat, used = {}, set()
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    collection, mod_path = path[0], path[1:]
    key = key_of(mod_path)
    if mod_path[-1] == "kernel":  # HWIO in Flax, OIHW in PyTorch
      h, w, i, o = leaf.shape
      value = take(sd, key, (o, i, h, w)).transpose(2, 3, 1, 0)
    else:
      value = take(sd, key, leaf.shape)
    flat[(collection, *mod_path)] = jnp.array(np.array(value, np.float32))  # no aliasing
    used.add(key)
  unused = sorted(k for k in sd if k not in used and not ignored(k))
  if strict and unused:
    raise KeyError(f"{len(unused)} weight(s) in the state dict are not used by {what} "
                   f"({hint} pass strict=False to ignore): {unused[:8]}")
  return traverse_util.unflatten_dict(flat)
