"""Weight files: every unreadable file is one clear error that names it (no torch needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from jaxdml.models import weights

GARBAGE = bytes(range(256)) * 4  # 1 KiB that is no weight format


def _write(tmp_path, name, data=GARBAGE):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def test_round_trip_of_npz_and_safetensors(tmp_path):
  sd = {"conv.weight": np.arange(6, dtype=np.float64).reshape(2, 3), "bn.num": np.array(3)}
  np.savez(tmp_path / "w.npz", **sd)
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
  for name in ("w.npz", "w.safetensors"):
    assert weights.check_weight_file(tmp_path / name) == name.split(".")[1]
    out = weights.load_state_dict(tmp_path / name)
    assert out["conv.weight"].dtype == np.float32 and out["bn.num"].dtype.kind == "i"
    np.testing.assert_array_equal(out["conv.weight"], sd["conv.weight"])


@pytest.mark.parametrize("name,expected", [
    ("w.safetensors", "Expected a .safetensors file"),
    ("w.npz", "Expected a numpy archive"),
])
def test_garbage_file_names_itself_and_its_format(tmp_path, name, expected):
  path = _write(tmp_path, name)
  for fn in (weights.check_weight_file, weights.load_state_dict):
    with pytest.raises(ValueError, match=expected) as info:
      fn(path)
    message = str(info.value)
    assert repr(path) in message and "download or export it again" in message
    assert "allow_pickle" not in message and "header too large" not in message


def test_short_safetensors_and_a_header_that_is_not_json(tmp_path):
  with pytest.raises(ValueError, match="only 5 bytes"):
    weights.load_state_dict(_write(tmp_path, "short.safetensors", b"hello"))
  bad_json = (4).to_bytes(8, "little") + b"{oops" + b"\0" * 8
  with pytest.raises(ValueError, match="header is not JSON"):
    weights.load_state_dict(_write(tmp_path, "j.safetensors", bad_json))
  not_object = (2).to_bytes(8, "little") + b"[]"
  with pytest.raises(ValueError, match="not a JSON object"):
    weights.load_state_dict(_write(tmp_path, "o.safetensors", not_object))


def test_npz_of_object_arrays_is_refused_naming_the_file(tmp_path):
  path = tmp_path / "obj.npz"
  np.savez(path, names=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match="obj.npz") as info:
    weights.load_state_dict(path)
  assert "Expected a npz file" in str(info.value)


def test_pytorch_file_without_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
  path = _write(tmp_path, "w.pth")
  for fn in (weights.check_weight_file, weights.load_state_dict):
    with pytest.raises(ValueError, match="needs torch") as info:
      fn(path)
    message = str(info.value)
    assert repr(path) in message and "pip install torch" in message
    assert ".safetensors" in message
  with pytest.raises(ValueError, match="needs torch"):  # the reader itself, past the check
    weights._from_torch_file(path)


def test_garbage_pytorch_file_with_torch(tmp_path):
  pytest.importorskip("torch")
  path = _write(tmp_path, "w.pt")
  with pytest.raises(ValueError, match="neither a zip archive nor a pickle stream") as info:
    weights.load_state_dict(path)
  assert repr(path) in str(info.value)
  path = _write(tmp_path, "p.bin", b"\x80\x02garbage")  # looks like a pickle, is not one
  with pytest.raises(ValueError, match="not a readable PyTorch file") as info:
    weights.load_state_dict(path)
  assert repr(path) in str(info.value)


def test_missing_file_directory_and_unknown_suffix(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.safetensors' does not exist"):
    weights.load_state_dict(tmp_path / "nope.safetensors")
  with pytest.raises(FileNotFoundError, match="is a directory"):
    weights.check_weight_file(tmp_path)
  path = _write(tmp_path, "w.h5")
  with pytest.raises(ValueError, match=r"unknown suffix '\.h5'; supported: \.safetensors, "
                     r"\.pth, \.pt, \.bin, \.npz"):
    weights.load_state_dict(path)
