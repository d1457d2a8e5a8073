"""End-to-end: the README's main command on the digit-pairs benchmark."""

import json

import pytest

from jaxdml import cli


def test_default_run_reaches_reference_quality(tmp_path, capsys):
  out = tmp_path / "metrics.json"
  run = tmp_path / "run"
  assert cli.main(["train", "--no-progress", "--output", str(out), "--workdir", str(run)]) == 0
  printed = capsys.readouterr().out
  for row in ("raw pixels", "untrained", "trained", "map@r", "recall@8", "nmi"):
    assert row in printed
  result = json.loads(out.read_text())
  m = result["metrics"]
  # digits_benchmark.md: reference 0.945 trained, 0.29 untrained, 0.31 raw pixels
  assert m["trained"]["map@r"] >= 0.90
  assert m["untrained"]["map@r"] < 0.45 and m["raw pixels"]["map@r"] < 0.45
  assert m["trained"]["recall@1"] > m["raw pixels"]["recall@1"]
  assert result["config"]["objective"]["loss"] == "multi_similarity"
  for name in ("config.json", "metrics.jsonl", "curves.png", "retrieval.png", "tensorboard",
               "checkpoints"):
    assert (run / name).exists(), name
  # `jaxdml eval` on the run directory restores the final checkpoint: the same figures
  again = tmp_path / "again.json"
  assert cli.main(["eval", "--workdir", str(run), "--output", str(again)]) == 0
  m2 = json.loads(again.read_text())["metrics"]["trained"]
  assert abs(m2["map@r"] - m["trained"]["map@r"]) < 1e-6


def test_flags_reach_the_config(tmp_path):
  out = tmp_path / "m.json"
  code = cli.main(["train", "--no-progress", "--loss", "triplet", "--miner", "batch_hard",
                   "--epochs", "1", "--embedding-dim", "16", "--classes-per-batch", "8",
                   "--per-class", "2", "--set", "eval.baselines=false", "--no-workdir", "--set",
                   "objective.loss_kwargs.margin=0.2", "--output", str(out)])
  assert code == 0
  cfg = json.loads(out.read_text())["config"]
  obj = cfg["objective"]
  assert (obj["loss"], obj["miner"], cfg["loop"]["epochs"], cfg["model"]["embedding_dim"]) == (
      "triplet", "batch_hard", 1, 16)
  assert (cfg["data"]["classes_per_batch"], cfg["data"]["per_class"], obj["loss_kwargs"]) == (
      8, 2, {"margin": 0.2})


@pytest.mark.parametrize("argv, message", [
    (["train", "--loss", "nope"], "unknown loss 'nope'"),
    (["train", "--set", "loop.epoch=2"], "loop has no field 'epoch'; closest: epochs"),
    (["train", "--set", "optim.learning_rate=fast"],
     "optim.learning_rate='fast': expected float"),
    (["train", "--set", "objective.hier.num_proxies=64"], "objective.hier is off"),
    (["train", "--per-class", "1"], "per_class"),
    (["train", "--epochs", "0"], "loop.epochs=0: epochs must be >= 1"),
    (["train", "--config", "does/not/exist.py"], "not found"),
])
def test_bad_input_is_a_one_line_error(argv, message, capsys):
  assert cli.main(argv + ["--no-progress", "--no-workdir"]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1, err


def test_switching_loss_drops_the_configs_loss_kwargs(tmp_path):
  out = tmp_path / "m.json"
  code = cli.main(["train", "--no-progress", "--loss", "proxy_anchor", "--epochs", "1",
                   "--set", "eval.baselines=false", "--output", str(out), "--no-workdir"])
  assert code == 0
  cfg = json.loads(out.read_text())["config"]["objective"]
  assert cfg["loss"] == "proxy_anchor" and cfg["loss_kwargs"] == {}


def test_eval_of_a_directory_without_a_run(tmp_path, capsys):
  assert cli.main(["eval", "--workdir", str(tmp_path)]) == 2
  assert "config.json" in capsys.readouterr().err


def test_no_command_prints_help_and_trains_nothing(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main([]) == 0
  out = capsys.readouterr().out
  assert "usage: jaxdml" in out and "train" in out and "search" in out
  assert not (tmp_path / "runs").exists()


def test_version(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["--version"])
  assert exit_.value.code == 0
  assert capsys.readouterr().out.startswith("jaxdml ")


def test_every_option_has_help_and_says_its_default():
  import argparse
  parser = cli.build_parser()
  (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  assert set(sub.choices) >= {"train", "eval", "embed", "index", "search"}
  for command, p in sub.choices.items():
    one_of_required = {a for g in p._mutually_exclusive_groups if g.required
                       for a in g._group_actions}  # exactly one is given: no default
    for action in p._actions:
      if isinstance(action, argparse._HelpAction):
        continue
      name = f"{command} {action.option_strings or action.dest}"
      assert action.help, name
      takes_value = action.nargs != 0
      if takes_value and not action.required and action not in one_of_required:
        assert "default" in action.help, name


def test_list_configs(capsys):
  assert cli.main(["train", "--list-configs"]) == 0
  lines = capsys.readouterr().out.splitlines()
  names = [line.split()[0] for line in lines]
  assert "digits" in names and "ms_resnet50_cub" in names


def test_resume_command_replaces_the_workdir_and_drops_restart():
  argv = ["train", "--loss", "contrastive", "--workdir", "old", "--restart", "--set", "a=b c"]
  assert cli.resume_command(argv, "runs/x") == (
      "jaxdml train --loss contrastive --set 'a=b c' --workdir runs/x")
  assert cli.resume_command(["--epochs", "3"], "w") == "jaxdml train --epochs 3 --workdir w"
