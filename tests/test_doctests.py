"""The `>>>` examples of the library's docstrings run as tests."""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "jaxdml").rglob("*.py") if ">>>" in p.read_text())


def test_the_documented_modules_are_found():
  assert {"jaxdml.objectives", "jaxdml.methods.das", "jaxdml.methods.metrix",
          "jaxdml.methods.hier", "jaxdml.app.config"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has no examples"
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


@pytest.mark.parametrize("name", ["jaxdml.objectives", "jaxdml.methods.das",
                                  "jaxdml.methods.metrix", "jaxdml.methods.hier", "jaxdml.pairs"])
def test_every_public_function_of_the_composition_modules_has_an_example(name):
  import inspect  # noqa: PLC0415
  module = importlib.import_module(name)
  missing = [n for n, f in vars(module).items() if not n.startswith("_")
             and inspect.isfunction(f) and f.__module__ == name and ">>>" not in (f.__doc__ or "")]
  assert not missing, missing
