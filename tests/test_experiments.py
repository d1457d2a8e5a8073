"""The built-in configs (jaxdml/configs/, loaded by name): each loads and validates; the paper
recipes carry the values of the authors' code (Proxy-Anchor: tjddus9597/Proxy-Anchor-CVPR2020,
multi-similarity: msight-tech/research-ms-loss, DAS: lizhaoliu-Lec/DAS, Metrix:
billpsomas/Metrix_ICLR22, HIER: tjddus9597/HIER-CVPR23; the docstring of each config names the
files)."""

import ast
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import objectives
from jaxdml.app import build as builders
from jaxdml.app.config import Config, available_configs, load
from jaxdml.geometry import poincare
from jaxdml.methods import das as das_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CONFIGS = sorted(p for p in (ROOT / "jaxdml" / "configs").glob("*.py")
                 if p.name not in ("__init__.py", "recipes.py"))
# the paper recipes (the built-in benchmarks' configs are tested with their tasks)
RECIPES = [p for p in CONFIGS if not p.stem.startswith(("digits", "glyphs"))]
PA_MS = [p for p in RECIPES if p.stem.startswith(("ms_", "proxy_anchor_"))]
DAS = [p for p in RECIPES if p.stem.startswith("das_")]
METRIX = [p for p in RECIPES if p.stem.startswith("metrix_")]
HIER = [p for p in RECIPES if p.stem.startswith("hier_")]
DATASETS = {"cub": "cub200", "cars": "cars196", "sop": "sop", "inshop": "inshop"}
MODELS = {"bninception": "bn_inception", "resnet50": "resnet50", "vits16": "vit_small_patch16"}
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


def _load(path: pathlib.Path) -> Config:
  return load(path.stem)  # by name, as `jaxdml train --config ms_resnet50_cub` does


def _parts(path: pathlib.Path) -> tuple[str, str, str]:
  """(method, backbone, dataset) of a recipe's file name, e.g. ("ms", "resnet50", "cub")."""
  method = "proxy_anchor" if path.stem.startswith("proxy_anchor_") else path.stem.split("_")[0]
  net, data = path.stem[len(method) + 1:].split("_")
  return method, net, data


def test_every_recipe_is_there():
  expected = {f"{loss}_{net}_{data}" for loss in ("ms", "proxy_anchor")
              for net in ("bninception", "resnet50") for data in DATASETS}
  expected |= {f"das_resnet50_{data}" for data in ("cub", "cars", "sop")}
  expected |= {f"metrix_resnet50_{data}" for data in DATASETS}
  expected |= {f"hier_{net}_{data}" for net in ("resnet50", "vits16") for data in DATASETS}
  assert {p.stem for p in RECIPES} == expected
  assert sorted(PA_MS + DAS + METRIX + HIER) == RECIPES


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
  config = _load(path)
  assert isinstance(config, Config)
  builders.build_optimizer(config, steps_per_epoch=10)  # validates the optimiser fields
  builders.build_model(config)  # constructs (no weights): catches conflicting model settings
  assert f"jaxdml train --config {path.stem}" in path.read_text()


def test_the_built_in_configs_are_those_load_finds_by_name():
  assert sorted(available_configs()) == [p.stem for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_experiments_file_of_a_built_in_config_is_that_config(path):
  """experiments/<name>.py keeps the path form working in a checkout; it imports the built-in
  config rather than holding a second copy."""
  stub = EXPERIMENTS / path.name
  tree = ast.parse(stub.read_text())
  assert not [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
  assert load(str(stub)) == load(path.stem)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_common_values(path):
  config = _load(path)
  _, net, data = _parts(path)
  text = path.read_text()
  assert config.name == path.stem
  assert config.data.dataset == DATASETS[data]
  assert config.model.name == MODELS[net]
  assert config.model.pretrained is None  # passed with --pretrained
  assert "--pretrained " in text
  assert config.eval.recall_ks == RECALL_KS[config.data.dataset]
  assert config.data.resize_size == 256
  if config.data.dataset == "inshop":
    assert "--manual-dir " in text
  if path in PA_MS:
    assert config.model.embedding_dim == 512 and config.model.normalize_embeddings
    assert config.optim.schedule == "step"
  else:  # the new recipes state their source, target and deviations
    assert config.data.image_size == 224
    assert "Source:" in text and "Target" in text and "Deviations:" in text


def _embeddings(config: Config, key: jax.Array, n: int = 12) -> jax.Array:
  """n embeddings as the model would give them: unit vectors, or points of the Poincare ball."""
  z = jax.random.normal(key, (n, config.model.embedding_dim))
  if config.model.head == "hyperbolic":
    return poincare.to_poincare(z, c=config.model.poincare_c, clip_r=config.model.clip_r)
  return z / jnp.linalg.norm(z, axis=1, keepdims=True)


def _objective_key(path: pathlib.Path) -> str:
  """The config fields that define a recipe's objective (configs that share them share it)."""
  c = _load(path)
  return repr((c.objective, c.model.head,
               c.model.poincare_c, c.model.clip_r, c.model.embedding_dim))


# One config per distinct objective (e.g. the four HIER ResNet-50 configs share theirs): HIER's
# loss runs op by op for seconds, and the machine is shared.
_FIRST_WITH_OBJECTIVE: dict[str, pathlib.Path] = {}
for _path in RECIPES:
  _FIRST_WITH_OBJECTIVE.setdefault(_objective_key(_path), _path)
OBJECTIVES = list(_FIRST_WITH_OBJECTIVE.values())


@pytest.mark.parametrize("path", OBJECTIVES, ids=lambda p: p.stem)
def test_recipe_objective_runs(path):
  config = _load(path)
  objective = builders.build_objective(config, num_classes=6)
  key = jax.random.PRNGKey(0)
  params = objective.init(key)
  z = _embeddings(config, key)
  y = jnp.repeat(jnp.arange(6), 2)
  # the model seam, standing in for the train step's network: features are the embeddings
  unit = lambda m: m / jnp.linalg.norm(m, axis=1, keepdims=True)
  fns = objectives.ModelFns(embed=unit, features=lambda x: x, head=unit)
  apply = jax.jit(lambda p, s, z, k: objective.apply(
      p, s, objectives.Batch(z, y, inputs=z, features=z, model=fns), k))
  loss, _, aux = apply(params, objective.init_state(), z, key)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(float(v)) for v in aux.values())


@pytest.mark.parametrize("path", [p for p in PA_MS if p.stem.startswith("proxy_anchor_")],
                         ids=lambda p: p.stem)
def test_proxy_anchor_recipe(path):
  c = _load(path)
  _, net, data = _parts(path)
  batch, lr, warm, bn_freeze, step, gamma = PROXY_ANCHOR[(net, data)]
  assert c.objective.loss == "proxy_anchor" and c.objective.miner is None
  assert c.objective.loss_kwargs == {"margin": 0.1, "alpha": 32.0}
  assert c.model.pooling == "avg+max"
  assert c.optim.optimizer == "adamw" and c.optim.weight_decay == 1e-4
  assert c.optim.loss_weight_decay is None  # the proxies' group decays too
  assert c.optim.backbone_lr_mult == 1.0
  assert c.optim.head_lr_mult == 1.0
  assert c.optim.loss_lr_mult == 100
  assert c.optim.clip_value == 10 and c.optim.clip_norm is None
  assert c.loop.epochs == 60
  assert c.data.classes_per_batch * c.data.per_class == batch
  assert c.optim.learning_rate == lr
  assert c.optim.freeze_backbone_epochs == warm and c.optim.warmup_epochs == 0
  assert c.model.frozen_bn == bn_freeze
  assert c.optim.lr_decay_epochs == tuple(range(step, c.loop.epochs, step))  # StepLR
  assert c.optim.lr_decay_rate == gamma
  assert (c.data.image_size, c.data.resize_size) == (224, 256)
  # random batches in the official code: the nearest P x M (M = 2 on the 100-class datasets,
  # M = 1 on SOP / In-shop, where a random batch rarely holds two images of one class)
  assert c.data.per_class == (2 if data in ("cub", "cars") else 1)


@pytest.mark.parametrize("path", [p for p in PA_MS if p.stem.startswith("ms_")],
                         ids=lambda p: p.stem)
def test_multi_similarity_recipe(path):
  c = _load(path)
  _, net, _ = _parts(path)
  assert c.objective.loss == "multi_similarity"
  # SCALE_POS / SCALE_NEG, thresh
  assert c.objective.loss_kwargs == {"alpha": 2.0, "beta": 40.0, "base": 0.5}
  assert c.objective.miner == "multi_similarity" and c.objective.miner_kwargs == {"epsilon": 0.1}
  assert c.model.pooling == ("max" if net == "bninception" else "avg")
  assert c.model.frozen_bn
  assert c.optim.optimizer == "adam"
  assert c.optim.learning_rate == 3e-5
  assert c.optim.weight_decay == 5e-4
  assert c.optim.backbone_lr_mult == 1.0 and c.optim.head_lr_mult == 1.0
  assert (c.data.classes_per_batch, c.data.per_class) == (16, 5)
  assert c.optim.lr_decay_rate == 0.1
  assert c.optim.warmup_epochs == 0
  assert c.optim.freeze_backbone_epochs == 0
  assert c.optim.clip_value is None and c.optim.clip_norm is None
  assert (c.data.image_size, c.data.resize_size) == (227, 256)
  # every dataset keeps the CUB run's length in epochs: 3000 iterations, lr drops at 1200 and
  # 2400, in epochs of ceil(5864 / 80) steps, each to within half an epoch
  steps = math.ceil(TRAIN_IMAGES["cub200"] / 80)
  assert abs(c.loop.epochs * steps - 3000) <= steps / 2
  for epoch, iteration in zip(c.optim.lr_decay_epochs, (1200, 2400), strict=True):
    assert abs(epoch * steps - iteration) <= steps / 2


# DAS table1.sh, "MS + R^{512}" lines: dataset -> (DAS's dataset name, --bs, --decay, and the DAS
# flags: --das_dfs_num_scale, scale range, --das_mts_scale, --detach).
DAS_TABLE1 = {
    "cub": ("cub200", 180, 8e-4, 8, (0.99, 1.01), 0.01, True),
    "cars": ("cars196", 112, 4e-4, 8, (0.99, 1.01), 0.01, True),
    "sop": ("online_products", 112, 4e-4, 8, (0.5, 2.0), 0.1, False),
}


@pytest.mark.parametrize("path", DAS, ids=lambda p: p.stem)
def test_das_recipe(path):
  c = _load(path)
  _, _, data = _parts(path)
  name, batch, decay, k, scale, shift, detach = DAS_TABLE1[data]
  assert list(c.objective.methods) == ["das"]
  recipe = c.objective.methods["das"]
  assert recipe == das_lib.recipe("table1", name, "multisimilarity")
  assert (recipe.num_scaled_dims, recipe.scale_range, recipe.shift_scale, recipe.detach) == (
      k, scale, shift, detach)
  # argparse defaults: 3 generated per real one, a bank of 10, normalised, no auxiliary loss
  assert (recipe.num_generated, recipe.bank_size, recipe.normalize, recipe.aux_weight) == (
      3, 10, True, None)
  # the Revisiting-DML multi-similarity loss: pos weight 2, neg weight 40, thresh 0.5, margin 0.1
  assert c.objective.loss == "multi_similarity"
  assert c.objective.loss_kwargs == {"alpha": 2.0, "beta": 40.0, "base": 0.5}
  assert c.objective.miner == "multi_similarity" and c.objective.miner_kwargs == {"epsilon": 0.1}
  assert c.model.name == "resnet50" and c.model.pooling == "avg+max" and c.model.frozen_bn
  assert c.model.embedding_dim == 512 and c.model.normalize_embeddings and c.model.head == "linear"
  assert c.optim.optimizer == "adam"
  assert c.optim.learning_rate == 1e-5
  assert c.optim.weight_decay == decay
  assert c.optim.backbone_lr_mult == 1.0 and c.optim.head_lr_mult == 1.0
  assert (c.data.classes_per_batch, c.data.per_class) == (batch // 2, 2)
  assert c.loop.epochs == 300
  assert c.optim.schedule == "step"
  assert c.optim.lr_decay_epochs == (200, 250)
  assert c.optim.lr_decay_rate == 0.3
  assert c.optim.warmup_epochs == 0 and c.optim.freeze_backbone_epochs == 0
  assert c.optim.clip_value is None and c.optim.clip_norm is None
  assert list(c.objective.methods) == ["das"]
  objective = builders.build_objective(c, num_classes=6)
  assert "das" in objective.init_state()


# Metrix README (multi-similarity + Metrix; Cars, SOP and In-shop with their baseline's values):
# dataset -> (classes x images per batch, lr, StepLR step, gamma, warm-up epochs, BN frozen).
METRIX_README = {
    "cub": ((50, 2), 1e-4, 10, 0.5, 5, True),
    "cars": ((50, 2), 1e-4, 10, 0.5, 5, True),
    "sop": ((20, 5), 6e-4, 20, 0.25, 1, False),
    "inshop": ((20, 5), 6e-4, 20, 0.25, 1, False),
}


@pytest.mark.parametrize("path", METRIX, ids=lambda p: p.stem)
def test_metrix_recipe(path):
  c = _load(path)
  _, _, data = _parts(path)
  batch, lr, step, gamma, warm, bn_frozen = METRIX_README[data]
  assert c.objective.loss == "multi_similarity"
  # main.py:171-176 of the official code
  assert c.objective.loss_kwargs == {"alpha": 17.97, "beta": 75.66, "base": 0.77}
  assert c.objective.miner == "multi_similarity" and c.objective.miner_kwargs == {"epsilon": 0.39}
  assert list(c.objective.methods) == ["metrix"]
  mx = c.objective.methods["metrix"]
  assert mx.location == "feature"  # --mode feature
  assert mx.alpha == 2.0 and mx.weight == 0.4  # --alpha 2.0; loss_clean + 0.4 loss_mix
  assert mx.pairing == "random" and not mx.per_example_lambda  # coin flip, one lambda
  assert (mx.positives, mx.negatives) == (1, None)  # first positive, all negatives
  assert builders.build_objective(c, num_classes=6).name == "multi_similarity+metrix"
  assert c.model.name == "resnet50"
  assert c.model.pooling == "avg+max"
  assert c.model.frozen_bn == bn_frozen
  assert c.model.embedding_dim == 512 and c.model.normalize_embeddings and c.model.head == "linear"
  assert (c.data.classes_per_batch, c.data.per_class) == batch
  assert c.data.classes_per_batch * c.data.per_class == 100
  assert c.optim.optimizer == "adam"
  assert c.optim.weight_decay == 1e-4
  assert c.optim.learning_rate == lr
  assert c.optim.backbone_lr_mult == 1.0 and c.optim.head_lr_mult == 1.0
  assert c.loop.epochs == 100
  assert c.optim.schedule == "step"
  assert c.optim.lr_decay_epochs == tuple(range(step, c.loop.epochs, step))
  assert c.optim.lr_decay_rate == gamma
  assert c.optim.freeze_backbone_epochs == warm and c.optim.warmup_epochs == 0
  assert c.optim.clip_value == 10 and c.optim.clip_norm is None


# HIER scripts/{Resnet50,ViT}/hier_<dataset>.sh: (backbone, dataset) -> (--emb, --lr,
# --weight_decay, --epochs, --warmup_epochs, --lr_decay, --lr_decay_gamma, --fc_lr_scale,
# --eval_freq). The ViT In-shop script says --emb 512; the config keeps the table's 128.
HIER_SCRIPTS = {
    ("resnet50", "cub"): (512, 1e-4, 1e-2, 100, 1, 5, 0.5, 1.0, 1),
    ("resnet50", "cars"): (512, 1e-4, 1e-2, 100, 1, 10, 0.5, 1.0, 1),
    ("resnet50", "sop"): (512, 6e-4, 1e-4, 150, 5, 25, 0.3, 1.0, 5),
    ("resnet50", "inshop"): (512, 6e-4, 1e-4, 150, 5, 20, 0.3, 1.0, 1),
    ("vits16", "cub"): (128, 1e-5, 1e-2, 100, 1, None, None, 1.0, 1),
    ("vits16", "cars"): (128, 1e-5, 1e-2, 100, 1, None, None, 1.0, 1),
    ("vits16", "sop"): (128, 1e-5, 1e-4, 150, 5, None, None, 100.0, 5),
    ("vits16", "inshop"): (128, 1e-5, 1e-4, 150, 5, None, None, 100.0, 1),
}


@pytest.mark.parametrize("path", HIER, ids=lambda p: p.stem)
def test_hier_recipe(path):
  c = _load(path)
  _, net, data = _parts(path)
  emb, lr, wd, epochs, warm, step, gamma, fc, eval_freq = HIER_SCRIPTS[(net, data)]
  # model: backbone -> LayerNorm (no affine) -> orthogonal linear -> Poincare ball (c 0.1, 2.3)
  assert c.model.head == "hyperbolic" and c.model.poincare_c == 0.1 and c.model.clip_r == 2.3
  assert not c.model.normalize_embeddings
  assert c.model.embedding_dim == emb
  if net == "resnet50":
    assert c.model.pooling == "avg+max"  # --bn_freeze is type=bool: "False" is true
    assert c.model.frozen_bn
    assert c.data.normalization == "imagenet"
  else:
    assert c.model.pooling == "cls" and not c.model.frozen_bn
    assert c.data.normalization == "half"  # the ImageNet-21k ViT weights' mean 0.5, std 0.5
  # loss: Proxy-Anchor (angle) + 0.5 HIER
  assert c.objective.loss == "proxy_anchor" and c.objective.miner is None
  assert c.objective.loss_kwargs == {"margin": 0.1, "alpha": 32.0}
  assert list(c.objective.methods) == ["hier"]
  h = c.objective.methods["hier"]
  assert h.num_proxies == 512 and h.lambda1 == 1.0 and h.lambda2 == 0.5
  assert h.topk == 20 and h.margin == 0.1 and h.tau == 0.1
  assert h.triplets_per_anchor == 50 and h.lr_mult == 50
  assert (h.c, h.clip_r) == (c.model.poincare_c, c.model.clip_r) == (0.1, 2.3)
  params = builders.build_objective(c, num_classes=6).init(jax.random.PRNGKey(0))
  assert params["hier"].shape == (512, emb) and params["proxies"].shape == (6, emb)
  # optimiser: AdamW, every group decayed; proxies x 1e4, hierarchical proxies x 50
  assert c.optim.optimizer == "adamw" and c.optim.learning_rate == lr and c.optim.weight_decay == wd
  assert c.optim.loss_weight_decay is None
  spec = builders.optimizer_spec(c, steps_per_epoch=10)
  assert spec.lr_mult == {"backbone": 1.0, "head": fc, "loss": 1e4, "loss/hier": 50.0}
  assert c.optim.clip_value == 10 and c.optim.clip_norm is None
  assert (c.data.classes_per_batch, c.data.per_class) == (90, 2)  # 90 per GPU x 2 GPUs, IPC 2
  assert c.loop.epochs == epochs
  assert c.optim.freeze_backbone_epochs == warm  # lr 0, not a linear ramp
  assert c.optim.warmup_epochs == 0
  if step is None:
    assert c.optim.schedule == "constant" and c.optim.lr_decay_epochs == ()
  else:
    assert c.optim.schedule == "step"
    assert c.optim.lr_decay_epochs == tuple(range(step, epochs, step))
    assert c.optim.lr_decay_rate == gamma
  assert c.loop.eval_every_epochs == eval_freq


def test_hyperbolic_recipe_model_has_the_hier_head_and_output_shape():
  """HIER's ViT-S/16 recipe, shapes only (`jax.eval_shape`: traced, not compiled)."""
  config = load("hier_vits16_cub")
  model, _ = builders.build_model(config)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  head = variables["params"]["head"]
  assert set(head) == {"embedding"}  # no affine layer norm, no output normalisation
  assert head["embedding"]["kernel"].shape == (384, config.model.embedding_dim)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (1, config.model.embedding_dim)
