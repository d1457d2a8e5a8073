"""Notebooks run top to bottom (figures go to a temporary folder), and are stored with their
outputs, so that their figures show where the notebooks are read.

To refresh the stored outputs after changing a notebook or the code it shows, run
`python tests/test_notebooks.py` (every notebook) or `python tests/test_notebooks.py
notebooks/03_poincare_ball.ipynb`; each is executed in a temporary folder and written back with
its outputs. The numbers a notebook's text quotes are those of its stored outputs: check them
after a refresh (the HIER run of notebook 03 moves with any change to its floating-point work).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import tempfile

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# a stored notebook stays small enough to read in a browser: figures, a few tables
MAX_BYTES = 1_500_000


@contextlib.contextmanager
def _environment(**values: str):
  """`os.environ` with `values` set (the kernel inherits it), restored afterwards."""
  previous = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in previous.items():
      if v is None:
        os.environ.pop(k)
      else:
        os.environ[k] = v


def execute(path: pathlib.Path, workdir: pathlib.Path):
  """The notebook at `path` executed in `workdir` (also where its figures are saved), importing
  jaxdml from this checkout whatever the current folder."""
  nb = nbformat.read(path, as_version=4)
  pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
  # the progress bars' warning that ipywidgets is missing would be stored as an output
  with _environment(JAXDML_FIGURES=str(workdir), PYTHONPATH=pythonpath,
                    PYTHONWARNINGS="ignore:IProgress not found"):
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(workdir)}}).execute()
  return nb


def _code_cells(nb) -> list:
  return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def _images(nb) -> int:
  return sum("image/png" in out.get("data", {}) for c in _code_cells(nb) for out in c.outputs)


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
  nb = execute(path, tmp_path)
  assert any(f.suffix == ".png" for f in tmp_path.iterdir())
  assert _images(nb) >= 1  # the figures show inline, not only in files
  errors = [out for c in _code_cells(nb) for out in c.outputs if out.output_type == "error"]
  assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_with_its_outputs(path):
  nb = nbformat.read(path, as_version=4)
  cells = _code_cells(nb)
  counts = [c.execution_count for c in cells]
  assert None not in counts, f"{path.name}: cells without outputs; run tests/test_notebooks.py"
  assert counts == list(range(1, len(cells) + 1)), f"{path.name}: not run top to bottom"
  assert _images(nb) >= 1, f"{path.name}: no figure stored"
  assert not [out for c in cells for out in c.outputs if out.output_type == "error"]
  assert path.stat().st_size < MAX_BYTES


def main(paths: list[str]) -> None:
  """Executes each notebook (all when `paths` is empty) and writes it back with its outputs."""
  for path in [pathlib.Path(p) for p in paths] or NOTEBOOKS:
    with tempfile.TemporaryDirectory() as workdir:
      nb = execute(path, pathlib.Path(workdir))
    nbformat.write(nb, path)
    print(f"{path}: {_images(nb)} figures, {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
  main(sys.argv[1:])
