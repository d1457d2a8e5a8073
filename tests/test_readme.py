"""README is the front door: every `jaxdml train` command in it builds a valid config (the flags
and dotted overrides parse; training itself is covered by the end-to-end tests), and the Python
examples of "Using the library" run."""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex

import pytest

from jaxdml import cli

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands() -> list[str]:
  blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
  text = "\n".join(blocks).replace("\\\n", " ")
  lines = [line.split("  #")[0].strip() for line in text.splitlines()]  # drop comments
  return [line for line in lines if line.startswith("jaxdml train")]


def _parse(command: str, monkeypatch) -> argparse.Namespace:
  """The arguments `jaxdml train` would train with (the training itself replaced)."""
  seen = {}
  monkeypatch.setattr(cli, "_train", lambda args, argv: seen.setdefault("args", args) and 0)
  assert cli.main(shlex.split(command)[1:]) == 0
  return seen["args"]


COMMANDS = _commands()


def test_the_readme_has_train_commands():
  assert len(COMMANDS) >= 10
  assert "pip install -e . && jaxdml train" in README


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_train_command_builds_its_config(command, monkeypatch):
  if "objective.aml.teacher=" in command:  # the teacher run the command before it trains
    from jaxdml.app import config as config_module  # noqa: PLC0415
    from jaxdml.methods import aml  # noqa: PLC0415
    dim = int(re.search(r"model.embedding_dim=(\d+)", command).group(1)) if (
        "model.embedding_dim=" in command) else 128
    monkeypatch.setattr(aml, "teacher_from_run", lambda run: aml.Teacher(lambda v, x: x, {}, dim))
    monkeypatch.setattr(config_module, "load_run", lambda workdir, step=None: None)
  args = _parse(command, monkeypatch)
  args.no_workdir = True
  config = cli._config_from_args(args)
  assert config.loop.workdir in (None, args.workdir)


def test_the_library_examples_run():
  section = README[README.index("## Using the library"):README.index("## Layout")]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) >= 4
  namespace: dict = {}
  exec("\n".join(blocks[:4]), namespace)  # the last block is a sketch (model, batches, images)
  obj = namespace["norm_wrap"](namespace["obj"])
  assert obj.name == "mine+metrix+norm"
  assert sorted(namespace["aux"]) == ["base_loss", "hier_loss", "mix_loss"]
