"""jaxdml.app.config: the typed, nested schema, dotted overrides, round trips and config files."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib

import pydantic
import pytest

import jaxdml.configs.digits_das as digits_das_config
from jaxdml.app import config as config_module
from jaxdml.app.config import (
    FLAT_ALIASES,
    Config,
    ConfigError,
    ModelConfig,
    ObjectiveConfig,
    apply_overrides,
    available_configs,
    diff,
    from_dict,
    load,
    parse_value,
    set_value,
    to_dict,
)
from jaxdml.methods import das, hier, metrix

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "jaxdml" / "configs"


def test_overrides_are_parsed_against_the_field_type():
  c = apply_overrides(Config(), [
      "optim.learning_rate=3e-4", "loop.epochs=5", "model.normalize_embeddings=false",
      "loop.num_devices=none", "eval.recall_ks=1,10,100", "optim.lr_decay_epochs=[10, 20]",
      "objective.loss=contrastive", "objective.loss_kwargs.neg_margin=0.5",
      "objective.loss_kwargs.distance=squared_euclidean", "seed=7", "name=mine",
      "optim.clip_value=10"])
  assert c.optim.learning_rate == 3e-4 and isinstance(c.optim.learning_rate, float)
  assert c.loop.epochs == 5 and c.model.normalize_embeddings is False
  assert c.loop.num_devices is None and c.eval.recall_ks == (1, 10, 100)
  assert c.optim.lr_decay_epochs == (10, 20) and c.optim.clip_value == 10.0
  assert c.objective.loss_kwargs == {"neg_margin": 0.5, "distance": "squared_euclidean"}
  assert (c.seed, c.name) == (7, "mine")
  assert diff(Config(), c) == sorted(diff(Config(), c), key=diff(Config(), c).index)
  assert "optim.learning_rate" in diff(Config(), c) and "seed" in diff(Config(), c)


@pytest.mark.parametrize("assignment, message", [
    ("optim.learning_rate=fast", "optim.learning_rate='fast': expected float."),
    ("loop.epochs=2.5", "loop.epochs='2.5': expected int"),
    ("model.head=hyperbolc", "expected one of 'linear', 'hyperbolic'; closest: 'hyperbolic'"),
    ("model.hed=linear", "model has no field 'hed'; closest: head"),
    ("optimm.learning_rate=1", "the config has no field 'optimm'; closest: optim"),
    ("objective.loss_kwargs.marginn=0.2", "unknown keyword argument(s) 'marginn'"),
    ("loop.epochs=0", "epochs must be >= 1, got 0"),
    ("optim.learning_rate=-1", "learning_rate must be > 0"),
    ("loop.epochs.x=1", "loop.epochs is a value, not a section"),
    ("objective.methods=dass", "jaxdml.methods has no method 'dass'; closest: das"),
    ("objective.das.shift_scale=0.1", "objective.das is off"),
    ("epochs", "is not of the form path=value"),
    ("hier={}", "methods are now objective.methods, e.g. --set objective.methods=hier"),
])
def test_a_wrong_override_is_one_line_naming_the_field(assignment, message):
  with pytest.raises(ConfigError) as err:
    apply_overrides(Config(), [assignment])
  text = str(err.value)
  assert message in text and "\n" not in text, text


def test_methods_by_name_in_order_with_their_own_settings():
  c = apply_overrides(Config(), ["model.head=hyperbolic", "objective.loss=proxy_anchor",
                                 "objective.methods=das,metrix,hier",
                                 "objective.das.scale_range=[0.99, 1.01]",
                                 "objective.metrix.location=input",
                                 "objective.hier.num_proxies=64"])
  methods = c.objective.methods
  assert list(methods) == ["das", "metrix", "hier"]
  assert methods["das"] == das.Settings(scale_range=(0.99, 1.01))
  assert methods["metrix"] == metrix.Settings(location="input")
  assert methods["hier"] == hier.Settings(num_proxies=64)
  assert c.objective.name == "proxy_anchor+das+metrix+hier"
  # keeping some methods keeps their settings, in the new order
  c2 = apply_overrides(c, ["objective.methods=hier,das"])
  assert list(c2.objective.methods) == ["hier", "das"]
  assert c2.objective.methods["hier"].num_proxies == 64
  assert apply_overrides(c, ["objective.methods=none"]).objective.methods == {}
  with pytest.raises(ConfigError, match="closest: num_proxies"):
    apply_overrides(c, ["objective.hier.num_proxie=3"])


def test_cross_section_checks_wait_for_all_overrides():
  c = apply_overrides(Config(), ["data.dataset=image_folder", "model.name=resnet18"])
  assert (c.data.dataset, c.model.name) == ("image_folder", "resnet18")
  with pytest.raises(ConfigError, match=r"image data sets need an image backbone .*\(after "
                     r"data.dataset='image_folder'\)"):
    apply_overrides(Config(), ["data.dataset=image_folder"])
  with pytest.raises(ConfigError, match="hyperbolic head"):
    apply_overrides(Config(), ["objective.methods=hier"])


def test_sections_check_types_and_values_when_built():
  with pytest.raises(pydantic.ValidationError, match="embedding_dim"):
    ModelConfig(embedding_dim="wide")
  with pytest.raises(pydantic.ValidationError, match="Unexpected keyword"):
    ModelConfig(embeding_dim=3)
  with pytest.raises(pydantic.ValidationError, match="the small CNN embeds"):
    ModelConfig(pooling="gem")
  with pytest.raises(pydantic.ValidationError, match="did you mean 'das'"):
    ObjectiveConfig(methods={"dass": {}})
  with pytest.raises(pydantic.ValidationError, match="closest: bank_size"):
    ObjectiveConfig(methods={"das": {"bank_sise": 3}})
  # a method's fields given as a dict become its Settings
  assert ObjectiveConfig(methods={"das": {"bank_size": 3}}).methods["das"] == das.Settings(
      bank_size=3)
  assert ObjectiveConfig(loss="ms").loss == "multi_similarity"


def test_flags_as_python_values_and_flat_aliases_with_a_note():
  notes = []
  c = apply_overrides(Config(), ["epochs=3", "learning_rate=0.01"],
                      values={"model.embedding_dim": 32}, warn=notes.append)
  assert (c.loop.epochs, c.optim.learning_rate, c.model.embedding_dim) == (3, 0.01, 32)
  assert notes == ["note: 'epochs' is now 'loop.epochs' (the flat name is accepted for one "
                   "release).", "note: 'learning_rate' is now 'optim.learning_rate' (the flat "
                   "name is accepted for one release)."]
  fields = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config)
            if dataclasses.is_dataclass(getattr(Config(), s.name))
            for f in dataclasses.fields(getattr(Config(), s.name))}
  assert set(FLAT_ALIASES.values()) <= fields
  assert set_value(Config(), "model.embedding_dim", 64).model.embedding_dim == 64
  with pytest.raises(ConfigError, match="loop.epochs=0: epochs must be >= 1"):
    set_value(Config(), "loop.epochs", 0)


def test_parse_value():
  assert parse_value("1,2", tuple[int, ...], "x") == (1, 2)
  assert parse_value("[0.5, 2]", tuple[float, float], "x") == (0.5, 2.0)
  assert parse_value("adamw", str, "x") == "adamw"
  assert parse_value("true", bool, "x") is True
  assert parse_value("null", float | None, "x") is None
  with pytest.raises(ConfigError, match="x='none': expected float"):
    parse_value("none", float, "x")


def test_round_trip_through_json_with_methods():
  c = apply_overrides(Config(), ["model.head=hyperbolic", "objective.loss=proxy_anchor",
                                 "objective.methods=das,hier", "objective.hier.num_proxies=8",
                                 "eval.recall_ks=1,5"])
  again = from_dict(json.loads(json.dumps(to_dict(c))))
  assert again == c and diff(again, c) == []
  assert list(again.objective.methods) == ["das", "hier"]
  with pytest.raises(ConfigError, match="loop.epochs"):
    from_dict({**to_dict(c), "loop": {**to_dict(c)["loop"], "epochs": "many"}})


def test_a_config_of_the_flat_format_still_loads():
  flat = {"name": "old", "epochs": 3, "loss": "proxy_anchor", "head": "hyperbolic",
          "hier": {"num_proxies": 16}, "das": {"recipe": ["table1", "cars196",
                                                          "multisimilarity"]},
          "metrix": None, "recall_ks": [1, 2], "eval_baselines": False}
  c = from_dict(flat)
  assert (c.name, c.loop.epochs, c.eval.recall_ks, c.eval.baselines) == ("old", 3, (1, 2),
                                                                          False)
  assert list(c.objective.methods) == ["das", "hier"]
  assert c.objective.methods["das"] == das.recipe("table1", "cars196", "multisimilarity")


def test_config_files_load_by_path(tmp_path):
  c = load(str(EXPERIMENTS / "das_resnet50_cub.py"))
  assert c.name == "das_resnet50_cub" and "das" in c.objective.methods
  own = tmp_path / "mine.py"
  own.write_text("from jaxdml.app.config import Config\n\n\ndef get_config():\n"
                 "  return Config(name='mine')\n")
  assert load(str(own)).name == "mine"
  (tmp_path / "bad.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match="defines no get_config"):
    load(str(tmp_path / "bad.py"))
  (tmp_path / "wrong.py").write_text("def get_config():\n  return {}\n")
  with pytest.raises(ValueError, match="must return a jaxdml.app.config.Config"):
    load(str(tmp_path / "wrong.py"))
  with pytest.raises(FileNotFoundError, match="config file 'nope/mine.py' not found.$"):
    load("nope/mine.py")


def test_a_name_loads_the_built_in_config_from_the_package():
  assert load("digits_das") == digits_das_config.get_config()
  assert load("digits_das").name == "digits_das" and "das" in load("digits_das").objective.methods
  assert load("digits") == Config(objective=ObjectiveConfig(
      loss="multi_similarity", loss_kwargs={"alpha": 2.0, "beta": 50.0, "base": 0.5}))
  # the checkout's experiments/ files of the same names are the built-in configs, by path too
  assert load(str(EXPERIMENTS / "digits_das.py")) == load("digits_das")
  assert load(str(EXPERIMENTS / "digits.py")) == load("digits")


def test_available_configs_are_the_built_in_modules_with_their_first_docstring_line():
  found = available_configs()
  files = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "recipes"))
  assert sorted(found) == files and len(files) == 41
  assert {"digits", "digits_contrastive", "digits_das", "digits_hier", "digits_metrix",
          "digits_proxy_anchor", "ms_resnet50_cub", "hier_vits16_sop"} <= set(found)
  for name, description in found.items():
    module = importlib.import_module(f"jaxdml.configs.{name}")
    assert description == module.__doc__.splitlines()[0], name
  assert found["digits"] == "Digit pairs, small CNN, multi-similarity loss: the README's main run."


def _own_experiments(tmp_path: pathlib.Path) -> pathlib.Path:
  """A folder of one's own configs: one using a neighbour, one named like a built-in config, a
  helper, a private file and a non-Python file."""
  folder = tmp_path / "own_experiments"
  folder.mkdir()
  (folder / "__init__.py").write_text("")
  (folder / "common.py").write_text("EPOCHS = 3\n")
  (folder / "mine.py").write_text(
      '"""My run: three epochs.\n\nMore text.\n"""\n'
      "from jaxdml.app.config import Config, LoopConfig\n"
      "from own_experiments import common\n\n\n"
      "def get_config():\n  return Config(name='mine', loop=LoopConfig(epochs=common.EPOCHS))\n")
  (folder / "digits.py").write_text(
      "from jaxdml.app.config import Config\n\n\ndef get_config():\n"
      "  return Config(name='shadowed')\n")
  (folder / "_private.py").write_text("def get_config():\n  return None\n")
  (folder / "notes.txt").write_text("def get_config(): pass\n")
  return folder


def test_a_name_not_built_in_is_looked_up_in_experiments(tmp_path, monkeypatch):
  folder = _own_experiments(tmp_path)
  monkeypatch.setattr(config_module, "EXPERIMENTS", folder)
  c = load("mine")
  assert (c.name, c.loop.epochs) == ("mine", 3)
  assert load("digits").name == "digits"  # the built-in config comes first
  assert load(str(folder / "digits.py")).name == "shadowed"  # its path still loads the file
  found = available_configs()
  assert found["mine"] == "My run: three epochs."
  assert found["digits"].startswith("Digit pairs")
  assert list(found)[-1] == "mine"  # after the built-in ones
  assert not {"common", "_private", "notes", "__init__"} & set(found)
  # an installed package has no experiments/ folder: only the built-in configs
  monkeypatch.setattr(config_module, "EXPERIMENTS", None)
  assert "mine" not in available_configs()
  with pytest.raises(FileNotFoundError, match="config 'mine' not found"):
    load("mine")


def test_an_unknown_name_is_one_line_with_the_closest_names_and_all_names():
  with pytest.raises(FileNotFoundError) as info:
    load("digits_dass")
  message = str(info.value)
  assert message.startswith("config 'digits_dass' not found; closest: digits_das")
  assert "\n" not in message
  assert all(name in message for name in available_configs())
  with pytest.raises(FileNotFoundError, match="config 'recipes' not found"):
    load("recipes")  # the recipe builders are not a config
  with pytest.raises(FileNotFoundError, match="not found"):
    load("no_such_config")


def test_a_missing_file_named_like_a_built_in_config_points_to_the_name(tmp_path):
  with pytest.raises(FileNotFoundError, match="'digits_hier' is a built-in config: give its name"):
    load(str(tmp_path / "digits_hier.py"))
