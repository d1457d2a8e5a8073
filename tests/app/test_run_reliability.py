"""A run never loses work or lies, at the application level: a changed config is refused,
`jaxdml eval` leaves the run as it was, a loss defined in a config file trains, resumes and
evaluates, Ctrl-C saves and tells how to resume, a diverged run exits non-zero."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxdml import cli
from jaxdml.app import config as cfg
from jaxdml.app.experiment import ConfigMismatchError, load_run_config, run
from jaxdml.app.inference import evaluate

SMALL = ["eval.baselines=false", "loop.epochs=2", "data.train_images_per_class=12",
         "data.test_images_per_class=6", "loop.tensorboard=false"]


def small(workdir, *more):
  return cfg.apply_overrides(cfg.Config(), SMALL + [f"loop.workdir={workdir}", *more])


def snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run") / "w"
  result = run(small(workdir), progress=False, verbose=False)
  return workdir, result


def test_a_changed_config_is_refused_and_lists_the_fields(finished, tmp_path):
  workdir, _ = finished
  before = (workdir / "config.json").read_text()
  changed = cfg.apply_overrides(small(workdir), ["objective.loss=contrastive",
                                                 "optim.learning_rate=0.01"])
  with pytest.raises(ConfigMismatchError) as err:
    run(changed, progress=False, verbose=False)
  message = str(err.value)
  assert "objective.loss: 'multi_similarity' -> 'contrastive'" in message
  assert "optim.learning_rate: 0.001 -> 0.01" in message and "--restart" in message
  assert (workdir / "config.json").read_text() == before  # nothing rewritten


def test_fields_that_do_not_change_the_run_may_differ_on_resume(finished, capsys):
  workdir, first = finished
  again = cfg.apply_overrides(small(workdir), ["eval.recall_ks=1,2", "loop.log_every=7"])
  result = run(again, progress=False, verbose=True)
  assert result["resumed_from"] == first["step"] == result["step"]
  out = capsys.readouterr().out
  assert f"resumed from step {first['step']}" in out and "nothing to train" in out


def test_restart_moves_the_previous_run_aside(tmp_path):
  workdir = tmp_path / "w"
  run(small(workdir, "loop.epochs=1"), progress=False, verbose=False)
  changed = small(workdir, "loop.epochs=1", "objective.loss=contrastive")
  result = run(changed, progress=False, verbose=False, restart=True)
  assert result["resumed_from"] is None
  (moved,) = [p for p in workdir.iterdir() if p.name.startswith("replaced-")]
  assert json.loads((moved / "config.json").read_text())["objective"]["loss"] == \
      "multi_similarity"
  assert json.loads((workdir / "config.json").read_text())["objective"]["loss"] == "contrastive"


def test_eval_writes_nothing_into_the_run_and_reports_its_step(finished, capsys):
  workdir, first = finished
  before = snapshot(workdir)
  result = evaluate(load_run_config(workdir))
  assert snapshot(workdir) == before
  assert result["step"] == first["step"]
  assert abs(result["final"]["map@r"] - first["final"]["map@r"]) < 1e-6
  assert f"checkpoint step {first['step']}" in capsys.readouterr().out
  lines = (workdir / "metrics.jsonl").read_text().count("\n")
  evaluate(small(workdir), log=True, verbose=False)
  assert (workdir / "metrics.jsonl").read_text().count("\n") == lines + 1


def test_eval_of_an_older_step_and_a_missing_one(finished):
  workdir, first = finished
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) >= 2  # one per epoch by default
  older = evaluate(small(workdir), step=steps[0], verbose=False)
  assert older["step"] == steps[0]
  with pytest.raises(ValueError, match=f"no checkpoint of step 999 .*{steps}"):
    evaluate(small(workdir), step=999, verbose=False)


USER_LOSS = '''
"""Digit pairs with a loss of one's own: a squared hinge on cosine similarities."""
import jax.numpy as jnp

from jaxdml import objectives
from jaxdml.app import config as cfg


def hinge(sim, target, mask, *, margin=0.3):
  pos = jnp.where(target > 0, jnp.maximum(1.0 - sim, 0.0) ** 2, 0.0)
  neg = jnp.where(target > 0, 0.0, jnp.maximum(sim - margin, 0.0) ** 2)
  weight = jnp.ones_like(sim) if mask is None else mask
  return jnp.sum((pos + neg) * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def build(setup, margin=0.3):
  return objectives.pair_loss(lambda sim, target, mask: hinge(sim, target, mask, margin=margin),
                              name="squared_hinge")


cfg.register_loss("squared_hinge", build)


def get_config():
  return cfg.apply_overrides(cfg.Config(), ["objective.loss=squared_hinge",
                                            "objective.loss_kwargs.margin=0.2"])
'''


def test_a_loss_defined_in_a_config_file_trains_resumes_and_evaluates(tmp_path, monkeypatch,
                                                                      capsys):
  config_file = tmp_path / "mine.py"
  config_file.write_text(USER_LOSS)
  workdir = tmp_path / "w"
  argv = ["train", "--config", str(config_file), "--no-progress", "--workdir", str(workdir),
          "--epochs", "1", *sum((["--set", s] for s in SMALL if "epochs" not in s), [])]
  assert cli.main(argv) == 0, capsys.readouterr().err
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["plugins"] == [str(config_file.resolve())]
  # a new process knows nothing of the loss: the run's config.json brings its file back
  monkeypatch.setattr(cfg, "_USER_LOSSES", {})
  monkeypatch.setattr(cfg, "_SOURCE", {})
  assert cli.main(["eval", "--workdir", str(workdir)]) == 0, capsys.readouterr().err
  assert "checkpoint step" in capsys.readouterr().out
  monkeypatch.setattr(cfg, "_USER_LOSSES", {})
  assert cli.main(argv) == 0  # the same command resumes (finished: nothing to train)
  assert "nothing to train" in capsys.readouterr().out


def _cli(*args, **kw):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen([sys.executable, "-m", "jaxdml.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_that_resumes(tmp_path):
  workdir = tmp_path / "w"
  sets = sum((["--set", s] for s in SMALL if "epochs" not in s), [])
  proc = _cli("train", "--no-progress", "--workdir", str(workdir), "--epochs", "200",
              "--set", "loop.steps_per_call=1", *sets)
  deadline = time.time() + 240
  saved = lambda: (workdir / "checkpoints").is_dir() and any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
  while time.time() < deadline and proc.poll() is None and not saved():
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 130, err
  assert "SIGINT" in err and "saved checkpoint" in err, err
  command = err.strip().splitlines()[-1].strip()
  assert command.startswith("jaxdml train") and f"--workdir {workdir}" in command
  assert "Traceback" not in err


def test_a_diverged_run_exits_non_zero_and_names_the_step(tmp_path, capsys):
  code = cli.main(["train", "--no-progress", "--workdir", str(tmp_path / "w"), "--loss",
                   "contrastive", "--learning-rate", "1e30", "--epochs", "2",
                   *sum((["--set", s] for s in SMALL if "epochs" not in s), [])])
  assert code == 3
  err = capsys.readouterr().err
  assert "training stopped: step" in err and "NaN or infinite" in err


def test_output_into_a_missing_folder_is_created_first(tmp_path):
  out = tmp_path / "new" / "folder" / "m.json"
  assert cli.main(["train", "--no-progress", "--no-workdir", "--output", str(out), "--epochs",
                   "1", *sum((["--set", s] for s in SMALL if "epochs" not in s), [])]) == 0
  assert json.loads(out.read_text())["final"]["map@r"] > 0
  blocked = tmp_path / "file"
  blocked.write_text("")
  assert cli.main(["train", "--output", str(blocked / "m.json"), "--no-workdir"]) == 2


USER_METHOD = '''
"""Multi-similarity with a method of one's own: the inner loss scaled by a setting."""
import dataclasses
import types

from jaxdml import objectives
from jaxdml.app import config as cfg


@dataclasses.dataclass(frozen=True)
class Settings:
  scale: float = 2.0


def build(inner, settings, setup):
  def apply(params, state, batch, key):
    loss, state, aux = inner.apply(params, state, batch, key)
    return settings.scale * loss, state, aux
  return objectives.Objective(inner.name + "+scaled", inner.init, apply, inner.init_state,
                              inner.soft, inner.lr_mult)


cfg.register_method("scaled", types.SimpleNamespace(Settings=Settings, build=build))


def get_config():
  return cfg.apply_overrides(cfg.Config(), ["objective.methods=scaled",
                                            "objective.scaled.scale=3"])
'''


def test_a_method_defined_in_a_config_file_is_recorded_and_comes_back(tmp_path, monkeypatch):
  path = tmp_path / "scaled.py"
  path.write_text(USER_METHOD)
  config = cfg.load(str(path))
  assert config.plugins == (str(path.resolve()),)
  assert config.objective.methods["scaled"].scale == 3
  assert cfg.build_objective(config, num_classes=5).name == "multi_similarity+scaled"
  saved = json.loads(json.dumps(cfg.to_dict(config)))
  monkeypatch.setattr(cfg, "_USER_METHODS", {})  # a new process: only config.json is known
  monkeypatch.setattr(cfg, "_SOURCE", {})
  again = cfg.from_dict(saved)
  assert again == config or cfg.diff(again, config) == []
  path.unlink()
  monkeypatch.setattr(cfg, "_USER_METHODS", {})
  with pytest.raises(cfg.ConfigError, match="no longer exists"):
    cfg.from_dict(saved)


def test_registering_a_builtin_name_is_refused():
  with pytest.raises(ValueError, match="core loss"):
    cfg.register_loss("contrastive", lambda setup: None)
  with pytest.raises(ValueError, match="built-in method"):
    cfg.register_method("das", object())
  with pytest.raises(TypeError, match="Settings"):
    cfg.register_method("mine", object())
