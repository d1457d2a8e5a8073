"""Using a trained run: `jaxdml.load`, `Run.embed` against the training library's own evaluation
path, a run with its own loss, and the `embed` / `index` / `search` commands end to end."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings

import jax
import numpy as np
import pytest

import jaxdml
from jaxdml import cli
from jaxdml.app import build, inference_cli
from jaxdml.app.experiment import load_run_config
from jaxdml.data import make_digit_pairs
from jaxdml.train.checkpoint import Checkpointer
from jaxdml.train.evaluate import Embedder
from jaxdml.train.sharding import make_mesh
from jaxdml.train.state import init_state

OWN_LOSS = '''
import jax.numpy as jnp

from jaxdml import losses, objectives
from jaxdml.app.config import (Config, DataConfig, EvalConfig, LoopConfig, ModelConfig,
                               ObjectiveConfig, register_loss)


def build(setup, scale=1.0):
  """Multi-similarity times a learned scale: the objective has a parameter of its own."""
  def loss_fn(params, z, y, key):
    return params["scale"] * losses.multi_similarity_loss(z, y)
  return objectives.from_fn(loss_fn, name="scaled_ms",
                            init=lambda key: {"scale": jnp.full((), scale)})


register_loss("scaled_ms_inference_test", build)


def get_config():
  return Config(name="own", objective=ObjectiveConfig(loss="scaled_ms_inference_test"),
                model=ModelConfig(embedding_dim=16),
                data=DataConfig(train_images_per_class=8, test_images_per_class=4),
                loop=LoopConfig(epochs=2, checkpoint_every_epochs=1, tensorboard=False),
                eval=EvalConfig(baselines=False))
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A two-epoch digit-pairs run of a loss its config file defines (with a parameter of its
  own), a checkpoint after each epoch; its directory and reported result."""
  root = tmp_path_factory.mktemp("run")
  own = root / "own.py"
  own.write_text(OWN_LOSS)
  workdir, out = root / "run", root / "result.json"
  assert cli.main(["train", "--config", str(own), "--no-progress", "--workdir", str(workdir),
                   "--output", str(out)]) == 0
  return workdir, json.loads(out.read_text())


@pytest.fixture(scope="module")
def run(trained):
  return jaxdml.load(trained[0])


@pytest.fixture(scope="module")
def test_set(run):
  d = run.config.data
  data = make_digit_pairs(d.data_seed, digits_per_image=d.digits_per_image,
                          train_images_per_class=d.train_images_per_class,
                          test_images_per_class=d.test_images_per_class)
  return data.test_images, data.test_labels


def _training_library_embeddings(workdir, images, step=None):
  """What the run's evaluation computes: the whole train state restored as training restores
  it (built from the config, objective and optimiser included), embedded by `Embedder`."""
  config = load_run_config(workdir)
  mesh = make_mesh()
  model, _ = build.build_model(config)
  objective = build.build_objective(config, num_classes=50)
  tx = build.build_optimizer(config, 6, objective)
  target = init_state(jax.random.PRNGKey(0), model, objective, images[:2], tx, mesh)
  with Checkpointer(workdir / "checkpoints") as ckpt:
    state, _ = ckpt.restore(target, step)
  return Embedder(model, mesh).arrays(state.params, state.model_state, images)


def test_two_lines_embed_as_the_runs_own_evaluation(trained, run, test_set):
  workdir, result = trained
  images, labels = test_set
  assert run.step == result["step"] == max(run.steps) and len(run.steps) == 2
  z = run.embed(images, batch_size=1000)  # the digit task's own evaluation batch
  assert z.shape == (len(images), 16) and z.dtype == np.float32
  np.testing.assert_array_equal(z, _training_library_embeddings(workdir, images))
  # another batch size changes only float rounding
  np.testing.assert_allclose(run.embed(images), z, atol=1e-6)
  # ... and scores exactly as the run reported
  metrics = jaxdml.Index.from_run(run, images, labels).evaluate(
      ks=run.config.eval.recall_ks)
  for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision"):
    assert metrics[key] == pytest.approx(result["final"][key], abs=1e-6), key


def test_an_older_step_and_the_model_variables(trained, run, test_set):
  workdir, _ = trained
  images, _ = test_set
  first = jaxdml.load(workdir, step=min(run.steps))
  assert first.step == min(run.steps) < run.step
  z_first = first.embed(images, batch_size=1000)
  np.testing.assert_array_equal(
      z_first, _training_library_embeddings(workdir, images, step=min(run.steps)))
  assert not np.allclose(z_first, run.embed(images, batch_size=1000))
  direct = run.model.apply(run.variables, images[:5], train=False)
  np.testing.assert_allclose(np.asarray(direct), run.embed(images[:5]), atol=1e-6)
  assert (run.similarity, run.dim, run.input_shape) == ("cosine", 16, (8, 16))


def test_preprocess_takes_the_images_as_the_data_gives_them(run, test_set):
  images, _ = test_set
  x = images[:6]
  np.testing.assert_array_equal(run.preprocess(x), x)  # float in [0, 1]: as the task feeds
  u8 = np.rint(x * 255).astype(np.uint8)
  np.testing.assert_array_equal(run.preprocess(u8), u8.astype(np.float32) / np.float32(255))
  rgb = np.repeat(u8[..., None], 3, -1)  # grey read from a PNG as RGB
  np.testing.assert_array_equal(run.preprocess(rgb), run.preprocess(u8))
  np.testing.assert_array_equal(run.preprocess(list(u8)), run.preprocess(u8))
  np.testing.assert_allclose(run.embed(u8), run.embed(x), atol=0.02)
  np.testing.assert_array_equal(run.embed(run.preprocess(u8), preprocess=False), run.embed(u8))
  nan = x.copy()
  nan[0, 0, 0] = np.nan
  assert np.isnan(run.preprocess(nan)[0, 0, 0])  # passed on, never mapped to a number
  with pytest.raises(ValueError, match=r"float digit-pair images hold values in \[0, 1\]"):
    run.preprocess(x * 255)
  with pytest.raises(ValueError, match=r"`images` must be digit-pair images \[N, 8, 16\]"):
    run.preprocess(np.zeros((2, 8, 8), np.float32))
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    run.embed(x, batch_size=0)
  assert run.embed(x[:0]).shape == (0, 16)


def _unloaded_run(config):
  """A `Run` of `config` without weights: enough for its preprocessing and similarity."""
  from jaxdml.app.inference import Run  # noqa: PLC0415
  return Run(workdir="", config=config, model=None, params={}, model_state={}, step=0,
             steps=[0], saved_objective=None, mesh=make_mesh())


def test_image_runs_preprocess_as_their_eval_loader_and_hyperbolic_runs_search_the_ball(rng):
  from jaxdml.app.config import Config, DataConfig, ModelConfig  # noqa: PLC0415
  from jaxdml.data.pipeline import EvalMap  # noqa: PLC0415
  config = Config(data=DataConfig(dataset="image_folder", image_size=32, resize_size=40),
                  model=ModelConfig(name="resnet18"))
  run = _unloaded_run(config)
  images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 48), dtype=np.uint8)]  # any size, grey or RGB
  loader = EvalMap(32, 40, "imagenet")
  want = np.stack([loader.map({"image": im, "label": 0, "mask": True})["image"]
                   for im in images])
  np.testing.assert_array_equal(run.preprocess(images), want)
  assert run.input_shape == (32, 32, 3) and run.similarity == "cosine"
  hyperbolic = _unloaded_run(Config(model=ModelConfig(head="hyperbolic", poincare_c=0.3)))
  assert (hyperbolic.similarity, hyperbolic.c) == ("poincare", 0.3)


def test_load_errors_say_what_is_wrong(trained, run, tmp_path):
  workdir, _ = trained
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    jaxdml.load(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="a jaxdml run directory"):
    jaxdml.load(tmp_path)
  shutil.copy(workdir / "config.json", tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    jaxdml.load(tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # loading creates nothing
  with pytest.raises(ValueError, match=rf"no checkpoint of step 999 .*available steps: "
                     rf"\[{run.steps[0]}, {run.steps[1]}\]"):
    jaxdml.load(workdir, step=999)
  with pytest.raises(TypeError, match="`step` must be an int"):
    jaxdml.load(workdir, step="last")
  other = tmp_path / "other"
  shutil.copytree(workdir, other)
  config = json.loads((other / "config.json").read_text())
  config["model"]["embedding_dim"] = 32
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"does not fit the model of its config.json .*"
                     r"\['embedding'\]\['bias'\] has shape \(16,\), the model's is \(32,\)"):
    jaxdml.load(other)


def test_a_run_with_its_own_loss_loads_without_building_it(trained, run, test_set, tmp_path):
  workdir, _ = trained
  with Checkpointer(workdir / "checkpoints") as ckpt:
    saved, _ = ckpt.restore()
  assert set(saved["params"]["loss"]) == {"scale"}  # the objective's own parameter
  assert run.saved_objective["loss"] == "scaled_ms_inference_test"
  # the file that defined the loss is gone: the model still loads, with a warning
  moved = tmp_path / "run"
  shutil.copytree(workdir, moved)
  config = json.loads((moved / "config.json").read_text())
  config["plugins"] = [str(tmp_path / "gone.py")]
  (moved / "config.json").write_text(json.dumps(config))
  with pytest.warns(UserWarning, match="objective cannot be rebuilt here"):
    again = jaxdml.load(moved)
  assert again.saved_objective["loss"] == "scaled_ms_inference_test"
  images, _ = test_set
  np.testing.assert_array_equal(again.embed(images, batch_size=1000),
                                run.embed(images, batch_size=1000))


SAVE_ON_TWO_DEVICES = """
import sys
import jax, numpy as np
from jaxdml.train.checkpoint import Checkpointer
from jaxdml.train.sharding import make_mesh, replicated
assert jax.device_count() == 2
w = jax.device_put(np.arange(6, dtype=np.float32).reshape(2, 3), replicated(make_mesh()))
with Checkpointer(sys.argv[1]) as ckpt:
  ckpt.save(1, {"params": {"model": {"w": w}}, "step": np.int32(1)})
"""


def test_a_checkpoint_written_on_two_devices_restores_on_one(tmp_path):
  """The saved shardings name devices this process lacks: a target-less restore puts every
  array on this process's first device."""
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", SAVE_ON_TWO_DEVICES, str(tmp_path / "ckpt")], env=env,
                 check=True, capture_output=True)
  assert jax.device_count() == 1
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    raw, _ = ckpt.restore()
  w = raw["params"]["model"]["w"]
  assert w.devices() == {jax.local_devices()[0]}
  np.testing.assert_array_equal(np.asarray(w), np.arange(6, dtype=np.float32).reshape(2, 3))


# ------------------------------------------------------------------------------------------------
# The commands
# ------------------------------------------------------------------------------------------------


def _command(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="jaxdml")
  inference_cli.add_commands(parser.add_subparsers(dest="command"))
  args = parser.parse_args(argv)
  return args.handler(args)


def test_every_option_has_help_and_its_default():
  parser = argparse.ArgumentParser(prog="jaxdml")
  sub = parser.add_subparsers(dest="command")
  inference_cli.add_commands(sub)
  for name in ("embed", "index", "search"):
    for action in sub.choices[name]._actions:
      if action.dest == "help":
        continue
      assert action.help, (name, action.dest)
      assert action.required or "default" in action.help or "required" in action.help, (
          name, action.dest)


def test_embed_index_search_end_to_end(trained, run, test_set, tmp_path, capsys):
  workdir, _ = trained
  images, labels = test_set
  emb_file, index_file = tmp_path / "emb.npz", tmp_path / "out" / "index.npz"
  assert _command(["embed", "--workdir", str(workdir), "--split", "test", "--out",
                   str(emb_file), "--index-out", str(index_file)]) == 0
  e = inference_cli.load_embeddings(str(emb_file))
  np.testing.assert_array_equal(e["embeddings"], run.embed(images))
  np.testing.assert_array_equal(e["labels"], labels)
  assert (e["similarity"], int(e["step"])) == ("cosine", run.step)
  assert _command(["index", "--embeddings", str(emb_file), "--out",
                   str(tmp_path / "i2.npz")]) == 0
  a, b = jaxdml.Index.load(index_file), jaxdml.Index.load(tmp_path / "i2.npz")
  np.testing.assert_array_equal(a.embeddings, b.embeddings)
  np.testing.assert_array_equal(a.labels, b.labels)
  capsys.readouterr()
  assert _command(["search", "--index", str(index_file), "--query", str(emb_file), "--k", "3",
                   "--print", "2", "--out", str(tmp_path / "n.json")]) == 0
  printed = capsys.readouterr().out
  assert printed.count("query ") == 2 and f"{len(images) - 2} more queries" in printed
  found = json.loads((tmp_path / "n.json").read_text())
  scores, ids = a.search(e["embeddings"], 3)
  assert len(found) == len(images)
  assert [[n["id"] for n in q["neighbours"]] for q in found] == ids.tolist()
  np.testing.assert_allclose([[n["score"] for n in q["neighbours"]] for q in found], scores)
  assert [q["label"] for q in found] == labels.tolist()


def test_embed_and_search_a_folder_of_images(trained, run, test_set, tmp_path):
  from PIL import Image  # noqa: PLC0415
  workdir, _ = trained
  images, labels = test_set
  keep = np.isin(labels, np.unique(labels)[:3])
  u8 = np.rint(images[keep] * 255).astype(np.uint8)
  names = []
  for i, (image, label) in enumerate(zip(u8, labels[keep], strict=True)):
    (tmp_path / "imgs" / f"{label:03d}").mkdir(parents=True, exist_ok=True)
    names.append(f"{label:03d}/{i:03d}.png")
    Image.fromarray(image).save(tmp_path / "imgs" / names[-1])
  out = tmp_path / "folder.npz"
  assert _command(["embed", "--workdir", str(workdir), "--data", str(tmp_path / "imgs"),
                   "--out", str(out), "--batch-size", "5"]) == 0
  e = inference_cli.load_embeddings(str(out))
  assert e["ids"].tolist() == names  # paths in folder order: the original order here
  np.testing.assert_array_equal(e["labels"], np.repeat(np.arange(3), keep.sum() // 3))
  np.testing.assert_array_equal(e["embeddings"], run.embed(u8, batch_size=5))
  # images as queries, embedded by the run
  index_file = tmp_path / "index.npz"
  assert _command(["index", "--embeddings", str(out), "--out", str(index_file)]) == 0
  hits = tmp_path / "hits.npz"
  assert _command(["search", "--index", str(index_file), "--query", str(tmp_path / "imgs"),
                   "--workdir", str(workdir), "--k", "2", "--batch-size", "5", "--out",
                   str(hits)]) == 0
  with np.load(hits) as f:
    assert f["query_ids"].tolist() == names and f["ids"].shape == (len(names), 2)
    np.testing.assert_array_equal(f["indices"],
                                  jaxdml.Index.load(index_file).search(e["embeddings"], 2,
                                                                       returns="indices")[1])
  # an .npy of images with its labels
  np.save(tmp_path / "x.npy", u8)
  np.save(tmp_path / "y.npy", labels[keep])
  assert _command(["embed", "--workdir", str(workdir), "--data", str(tmp_path / "x.npy"),
                   "--labels", str(tmp_path / "y.npy"), "--out", str(tmp_path / "x.npz")]) == 0
  x = inference_cli.load_embeddings(str(tmp_path / "x.npz"))
  np.testing.assert_array_equal(x["labels"], labels[keep])
  np.testing.assert_array_equal(x["embeddings"], run.embed(u8))


def test_command_errors_are_one_line(trained, tmp_path, capsys):
  workdir, _ = trained
  np.save(tmp_path / "x.npy", np.zeros((2, 8, 16), np.float32))
  cases = [
      (["embed", "--workdir", str(tmp_path / "none"), "--split", "test", "--out",
        str(tmp_path / "e.npz")], "is not a directory"),
      (["embed", "--workdir", str(workdir), "--split", "valid", "--out",
        str(tmp_path / "e.npz")], "splits 'train' and 'test'"),
      (["index", "--embeddings", str(tmp_path / "x.npy"), "--out", str(tmp_path / "i.npz")],
       "holds one array"),
      (["search", "--index", str(tmp_path / "missing.npz"), "--query", "q.npz"],
       "no index file"),
  ]
  for argv, message in cases:
    capsys.readouterr()
    assert _command(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
  jaxdml.Index(np.eye(3, 16, dtype=np.float32)).save(tmp_path / "i.npz")
  capsys.readouterr()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    code = _command(["search", "--index", str(tmp_path / "i.npz"), "--query",
                     str(tmp_path / "x.npy")])
  assert code == 2 and "give --workdir" in capsys.readouterr().err


def test_the_readme_example_runs(trained, test_set, tmp_path, monkeypatch):
  """README's "Use a trained model" block, on the trained run and its test images."""
  import pathlib
  import re
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = readme[readme.index("## Use a trained model"):]
  code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
  code = code.replace('"runs/digits-20260101-120000"', repr(str(trained[0])))
  images, labels = test_set
  monkeypatch.chdir(tmp_path)
  gallery, query = slice(0, None, 2), slice(1, None, 2)  # every class on both sides
  namespace = {"images": images, "gallery_images": images[gallery],
               "gallery_labels": labels[gallery],
               "paths": [f"img{i}" for i in range(len(labels[gallery]))],
               "query_images": images[query], "query_labels": labels[query]}
  exec(code, namespace)
  assert namespace["z"].shape == (len(images), namespace["run"].dim)
  assert namespace["ids"].shape == (len(labels[query]), 10)
  assert (tmp_path / "index.npz").exists() and len(namespace["index"]) == len(labels[gallery])
