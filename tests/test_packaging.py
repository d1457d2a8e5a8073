"""The package as a user installs it: a wheel built from this checkout, installed (not editable)
into a fresh environment and run from a folder outside the checkout, trains with its built-in
configs.

The environment sees the system's packages (`--system-site-packages`), so the dependencies need
no network, but imports jaxdml from its own copy: the test checks where jaxdml is imported from.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# what a build never needs, and what would leak into it (setuptools reuses a stale build/)
_NOT_COPIED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     ".venv", "runs", ".pytest_cache", ".ruff_cache")

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: pathlib.Path, env: dict | None = None, timeout: float = 180):
  out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, f"{argv} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
  return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel of a copy of the checkout (the checkout itself gets no build folders)."""
  tmp = tmp_path_factory.mktemp("build")
  source = tmp / "source"
  shutil.copytree(ROOT, source, ignore=_NOT_COPIED)
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(tmp / "dist"), str(source)], cwd=tmp)
  (found,) = (tmp / "dist").glob("jaxdml-*.whl")
  return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
  """(the environment's bin folder, the environment for its commands, a folder to run in)."""
  tmp = tmp_path_factory.mktemp("venv")
  venv = tmp / "venv"
  _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
       cwd=tmp)
  bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
  env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
  elsewhere = tmp / "elsewhere"
  elsewhere.mkdir()
  # the system's pip, run by the environment's interpreter, installs into the environment;
  # --ignore-installed: the checkout's own (editable) install stays where it is, unused
  _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed",
        "--no-warn-script-location", "-q", str(wheel)], cwd=elsewhere, env=env)
  return bin_dir, env, elsewhere


def test_the_wheel_has_the_built_in_configs_and_no_tests(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  configs = {n.removeprefix("jaxdml/configs/") for n in names if n.startswith("jaxdml/configs/")}
  assert {"__init__.py", "recipes.py", "digits.py", "digits_contrastive.py", "digits_das.py",
          "digits_hier.py", "digits_metrix.py", "digits_proxy_anchor.py",
          "ms_resnet50_cub.py", "hier_vits16_sop.py"} <= configs
  assert configs == {p.name for p in (ROOT / "jaxdml" / "configs").glob("*.py")}
  tops = {n.split("/")[0] for n in names}
  assert not {"tests", "experiments", "notebooks", "benchmarks"} & tops, tops
  assert not [n for n in names if "/tests/" in n or n.startswith("tests")]
  assert all(t == "jaxdml" or t.startswith("jaxdml-") for t in tops), tops


def test_the_installed_package_is_imported_and_finds_every_config_by_name(installed):
  bin_dir, env, elsewhere = installed
  script = (
      "import pathlib, sys, jaxdml\n"
      "from jaxdml.app import config\n"
      "print(pathlib.Path(jaxdml.__file__).resolve())\n"
      "assert config.EXPERIMENTS is None, config.EXPERIMENTS\n"
      "names = config.available_configs()\n"
      "assert all(config.load(n).name for n in names)\n"
      "print(len(names))\n")
  out = _run([str(bin_dir / "python"), "-c", script], cwd=elsewhere, env=env).split()
  venv = bin_dir.parent.resolve()
  assert pathlib.Path(out[0]).is_relative_to(venv), out[0]
  assert not pathlib.Path(out[0]).is_relative_to(ROOT)
  assert int(out[1]) == len(list((ROOT / "jaxdml" / "configs").glob("*.py"))) - 2


def test_jaxdml_train_runs_from_the_installed_wheel(installed):
  bin_dir, env, elsewhere = installed
  out = _run([str(bin_dir / "jaxdml"), "train", "--epochs", "1", "--no-progress",
              "--no-workdir"], cwd=elsewhere, env=env, timeout=300)
  table = out[out.index("retrieval on the test classes"):]
  assert "recall@1" in table and "map@r" in table
  rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:] if line.strip()}
  assert {"raw", "untrained", "trained"} <= set(rows)
  assert 0.0 <= float(rows["trained"][0]) <= 1.0
  assert not list(elsewhere.iterdir())  # --no-workdir: nothing written
