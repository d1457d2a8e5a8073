"""The configs in experiments/: each loads and validates; the paper recipes carry the values of
the authors' code (Proxy-Anchor: tjddus9597/Proxy-Anchor-CVPR2020, multi-similarity:
msight-tech/research-ms-loss; the docstring of each config names the files)."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import cli
from jaxdml.train import TrainConfig, builders

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name != "__init__.py")
RECIPES = [p for p in CONFIGS if not p.stem.startswith("digits")]
DATASETS = {"cub": "cub200", "cars": "cars196", "sop": "sop", "inshop": "inshop"}
MODELS = {"bninception": "bn_inception", "resnet50": "resnet50"}
TRAIN_IMAGES = {"cub200": 5864, "cars196": 8054, "sop": 59551, "inshop": 25882}
RECALL_KS = {"cub200": (1, 2, 4, 8), "cars196": (1, 2, 4, 8), "sop": (1, 10, 100, 1000),
             "inshop": (1, 10, 20, 30, 40)}

# Proxy-Anchor README commands: (--batch-size, --lr, --warm, --bn-freeze, --lr-decay-step,
# --lr-decay-gamma); ResNet-50 on SOP / In-shop has none and is derived (see those configs).
PROXY_ANCHOR = {
    ("bninception", "cub"): (180, 1e-4, 1, True, 10, 0.5),
    ("resnet50", "cub"): (120, 1e-4, 5, True, 5, 0.5),
    ("bninception", "cars"): (180, 1e-4, 1, True, 20, 0.5),
    ("resnet50", "cars"): (120, 1e-4, 5, True, 10, 0.5),
    ("bninception", "sop"): (180, 6e-4, 1, False, 20, 0.25),
    ("bninception", "inshop"): (180, 6e-4, 1, False, 20, 0.25),
    ("resnet50", "sop"): (120, 6e-4, 1, False, 20, 0.25),
    ("resnet50", "inshop"): (120, 6e-4, 1, False, 20, 0.25),
}


def _load(path: pathlib.Path) -> TrainConfig:
  return cli.load_config(str(path))


def _parts(path: pathlib.Path) -> tuple[str, str, str]:
  """(loss, backbone, dataset) of a recipe's file name, e.g. ("ms", "resnet50", "cub")."""
  loss = "ms" if path.stem.startswith("ms_") else "proxy_anchor"
  net, data = path.stem[len(loss) + 1:].split("_")
  return loss, net, data


def test_every_recipe_is_there():
  expected = {f"{loss}_{net}_{data}" for loss in ("ms", "proxy_anchor") for net in MODELS
              for data in DATASETS}
  assert {p.stem for p in RECIPES} == expected


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
  config = _load(path)
  assert isinstance(config, TrainConfig)
  config.validate()
  builders.build_optimizer(config, steps_per_epoch=10)  # validates the optimiser fields
  assert f"jaxdml train --config experiments/{path.name}" in path.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_common_values(path):
  config = _load(path)
  _, net, data = _parts(path)
  assert config.name == path.stem
  assert config.dataset == DATASETS[data]
  assert config.model == MODELS[net]
  assert config.pretrained is None  # passed with --pretrained
  assert "--pretrained " in path.read_text()
  assert config.embedding_dim == 512 and config.normalize_embeddings
  assert config.recall_ks == RECALL_KS[config.dataset]
  assert config.resize_size == 256
  assert config.schedule == "step"
  if config.dataset == "inshop":
    assert "--manual-dir " in path.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_objective_runs(path):
  config = _load(path)
  objective = builders.build_objective(config, num_classes=6)
  key = jax.random.PRNGKey(0)
  params = objective.init(key)
  z = jax.random.normal(key, (12, config.embedding_dim))
  z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
  y = jnp.repeat(jnp.arange(6), 2)
  assert np.isfinite(float(objective.apply(params, objective.init_state(), z, y, key)[0]))


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.startswith("proxy_anchor_")],
                         ids=lambda p: p.stem)
def test_proxy_anchor_recipe(path):
  c = _load(path)
  _, net, data = _parts(path)
  batch, lr, warm, bn_freeze, step, gamma = PROXY_ANCHOR[(net, data)]
  assert c.loss == "proxy_anchor" and c.miner is None
  assert c.loss_kwargs == {"margin": 0.1, "alpha": 32.0}
  assert c.pooling == "avg+max"
  assert c.optimizer == "adamw" and c.weight_decay == 1e-4
  assert c.loss_weight_decay is None  # the proxies' group decays too
  assert c.backbone_lr_mult == 1.0 and c.head_lr_mult == 1.0 and c.loss_lr_mult == 100
  assert c.clip_value == 10 and c.clip_norm is None
  assert c.epochs == 60
  assert c.classes_per_batch * c.per_class == batch
  assert c.learning_rate == lr
  assert c.freeze_backbone_epochs == warm and c.warmup_epochs == 0
  assert c.frozen_bn == bn_freeze
  assert c.lr_decay_epochs == tuple(range(step, c.epochs, step))  # StepLR
  assert c.lr_decay_rate == gamma
  assert (c.image_size, c.resize_size) == (224, 256)
  # random batches in the official code: the nearest P x M (M = 2 on the 100-class datasets,
  # M = 1 on SOP / In-shop, where a random batch rarely holds two images of one class)
  assert c.per_class == (2 if data in ("cub", "cars") else 1)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.startswith("ms_")],
                         ids=lambda p: p.stem)
def test_multi_similarity_recipe(path):
  c = _load(path)
  _, net, _ = _parts(path)
  assert c.loss == "multi_similarity"
  assert c.loss_kwargs == {"alpha": 2.0, "beta": 40.0, "base": 0.5}  # SCALE_POS/NEG, thresh
  assert c.miner == "multi_similarity" and c.miner_kwargs == {"epsilon": 0.1}
  assert c.pooling == ("max" if net == "bninception" else "avg")
  assert c.frozen_bn
  assert c.optimizer == "adam" and c.learning_rate == 3e-5 and c.weight_decay == 5e-4
  assert c.backbone_lr_mult == 1.0 and c.head_lr_mult == 1.0
  assert (c.classes_per_batch, c.per_class) == (16, 5)
  assert c.lr_decay_rate == 0.1 and c.warmup_epochs == 0 and c.freeze_backbone_epochs == 0
  assert c.clip_value is None and c.clip_norm is None
  assert (c.image_size, c.resize_size) == (227, 256)
  # every dataset keeps the CUB run's length in epochs: 3000 iterations, lr drops at 1200 and
  # 2400, in epochs of ceil(5864 / 80) steps, each to within half an epoch
  steps = math.ceil(TRAIN_IMAGES["cub200"] / 80)
  assert abs(c.epochs * steps - 3000) <= steps / 2
  for epoch, iteration in zip(c.lr_decay_epochs, (1200, 2400), strict=True):
    assert abs(epoch * steps - iteration) <= steps / 2
