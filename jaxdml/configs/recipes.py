"""The published training recipes as config builders (the paper configs beside it call these).

They are configs, not library code: each returns a `jaxdml.app.config.Config`.

Each builder fills the values its paper's code shares across datasets; the per-dataset values
(batch composition, learning rate, schedule, batch-norm freezing) are arguments, set by the
experiment files with their sources.
"""

from __future__ import annotations

import dataclasses

from jaxdml.app.config import (
    Config,
    DataConfig,
    EvalConfig,
    LoopConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
)
from jaxdml.configs import glyphs as glyphs_config
from jaxdml.methods import das as das_method
from jaxdml.methods import hier as hier_method
from jaxdml.methods import metrix as metrix_method

RECALL_KS = {"cub200": (1, 2, 4, 8), "cars196": (1, 2, 4, 8), "sop": (1, 10, 100, 1000),
             "inshop": (1, 10, 20, 30, 40)}
PRETRAINED_FILES = {"bn_inception": "bn_inception-52deb4733.pth",
                    "resnet50": "resnet50-0676ba61.pth"}


def _run(dataset: str, epochs: int, eval_every_epochs: int, checkpoint_every_epochs: int
         ) -> dict:
  """The loop and evaluation sections every recipe shares: its epochs, periodic evaluation and
  checkpoints, and the data set's Recall@K."""
  return {"loop": LoopConfig(epochs=epochs, eval_every_epochs=eval_every_epochs,
                             checkpoint_every_epochs=checkpoint_every_epochs),
          "eval": EvalConfig(recall_ks=RECALL_KS[dataset])}


def proxy_anchor(name: str, dataset: str, model: str, *, classes_per_batch: int, per_class: int,
                 learning_rate: float, warm_epochs: int, frozen_bn: bool, decay_step: int,
                 decay_rate: float = 0.5, epochs: int = 60, eval_every_epochs: int = 1,
                 checkpoint_every_epochs: int = 10) -> Config:
  """Proxy-Anchor (Kim et al., CVPR 2020), as its official training script runs it.

  Shared values: 512-d linear embedding (L2-normalised) on avg + max pooling, Proxy-Anchor with
  alpha 32 and margin 0.1, AdamW with weight decay 1e-4 on every group (proxies included),
  proxies at 100x the learning rate, gradients clipped by value at 10, StepLR every
  `decay_step` epochs by `decay_rate`, the backbone frozen for the `warm_epochs` first epochs,
  random resized crop 224 for training and resize 256 + centre crop 224 for testing.
  """
  return Config(
      name=name,
      data=DataConfig(dataset=dataset, image_size=224, resize_size=256, num_workers=8,
                      classes_per_batch=classes_per_batch, per_class=per_class),
      model=ModelConfig(name=model, embedding_dim=512, pooling="avg+max", frozen_bn=frozen_bn),
      objective=ObjectiveConfig(loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0}),
      optim=OptimConfig(optimizer="adamw", learning_rate=learning_rate, weight_decay=1e-4,
                        loss_lr_mult=100.0, loss_weight_decay=None, schedule="step",
                        lr_decay_epochs=tuple(range(decay_step, epochs, decay_step)),
                        lr_decay_rate=decay_rate, freeze_backbone_epochs=warm_epochs,
                        clip_value=10.0),
      **_run(dataset, epochs, eval_every_epochs, checkpoint_every_epochs))


def multi_similarity(name: str, dataset: str, model: str, *, eval_every_epochs: int = 3,
                     checkpoint_every_epochs: int = 10) -> Config:
  """Multi-similarity loss (Wang et al., CVPR 2019), as its official CUB configs run it.

  Shared values: batches of 16 classes x 5 images, 512-d linear embedding (L2-normalised) on
  global max pooling (BN-Inception) or average pooling (ResNet-50), frozen batch norm, MS loss
  alpha 2, beta 40, base 0.5 with pair mining epsilon 0.1, Adam at 3e-5 with an L2 penalty of
  5e-4, 3000 iterations on CUB = 41 epochs with the learning rate x 0.1 at epochs 16 and 32,
  crops of 227 from images resized to 256.
  """
  return Config(
      name=name,
      data=DataConfig(dataset=dataset, image_size=227, resize_size=256, num_workers=8,
                      classes_per_batch=16, per_class=5),
      model=ModelConfig(name=model, embedding_dim=512,
                        pooling="max" if model == "bn_inception" else "avg", frozen_bn=True),
      objective=ObjectiveConfig(loss="multi_similarity",
                                loss_kwargs={"alpha": 2.0, "beta": 40.0, "base": 0.5},
                                miner="multi_similarity", miner_kwargs={"epsilon": 0.1}),
      optim=OptimConfig(optimizer="adam", learning_rate=3e-5, weight_decay=5e-4,
                        schedule="step", lr_decay_epochs=(16, 32), lr_decay_rate=0.1),
      **_run(dataset, 41, eval_every_epochs, checkpoint_every_epochs))


#: DAS's names of the datasets (the `--dataset` values of its scripts and `das.RECIPES`' keys).
DAS_DATASETS = {"cub200": "cub200", "cars196": "cars196", "sop": "online_products"}


def das(name: str, dataset: str, *, classes_per_batch: int = 56, weight_decay: float = 4e-4,
        eval_every_epochs: int = 1, checkpoint_every_epochs: int = 10) -> Config:
  """Multi-similarity + DAS (Liu et al., ECCV 2022), as the official Table 1 script runs it.

  Shared values (table1.sh and the argparse defaults of scripts/parameters.py): ResNet-50 with
  frozen batch norm, global average + max pooling (summed), a 512-d linear embedding
  (L2-normalised); batches of `classes_per_batch` classes x 2 images; the multi-similarity loss
  of the Revisiting-DML code base (pos weight 2, neg weight 40, threshold 0.5, pair mining
  margin 0.1); Adam at 1e-5 with an L2 penalty of `weight_decay` on every parameter; 300 epochs
  with the learning rate x 0.3 at epochs 200 and 250; DAS with the published Table 1 settings
  (`das.recipe("table1", dataset, "multisimilarity")`: K = 8 scaled dimensions, 3 generated
  embeddings per real one); random resized crop 224 for training, resize 256 + centre crop 224
  for testing.

  Sources shared by every das_*.py config (github.com/lizhaoliu-Lec/DAS at 4f2a357):
    - scripts/standard.py: one parameter group (no `--fc_lr`), Adam's `weight_decay` = `--decay`
      (an L2 penalty added to the gradient).
    - backbone/resnet50.py: "double" = global average + global max pooling (summed), a linear
      512-d embedding, "normalize" = L2-normalised, "frozen" = BatchNorm kept in eval mode.
    - loss/multisimilarity.py: per anchor, negatives with similarity + 0.1 above the lowest
      positive similarity and positives with similarity - 0.1 below the highest negative one, then
      the MS terms (= our multi-similarity miner with epsilon 0.1 and loss alpha 2, beta 40,
      base 0.5).
    - dataset/basic_dataset_scaffold.py: random resized crop 224 and flip for training, resize 256
      + centre crop 224 for testing, ImageNet mean / std.
    - scripts/_share.py: the test set is evaluated after every epoch (the best e_recall@1 is
      checkpointed).

  Deviations shared by every das_*.py config:
    - BatchNorm: the official code only keeps the statistics fixed (eval mode) and still trains
      BN's scale and bias; `frozen_bn=True` here fixes those too.
  """
  return Config(
      name=name,
      data=DataConfig(dataset=dataset, image_size=224, resize_size=256, num_workers=8,
                      classes_per_batch=classes_per_batch, per_class=2),
      model=ModelConfig(name="resnet50", embedding_dim=512, pooling="avg+max", frozen_bn=True),
      objective=ObjectiveConfig(
          loss="multi_similarity", loss_kwargs={"alpha": 2.0, "beta": 40.0, "base": 0.5},
          miner="multi_similarity", miner_kwargs={"epsilon": 0.1},
          methods={"das": das_method.recipe("table1", DAS_DATASETS[dataset],
                                            "multisimilarity")}),
      optim=OptimConfig(optimizer="adam", learning_rate=1e-5, weight_decay=weight_decay,
                        loss_lr_mult=1.0, loss_weight_decay=None, schedule="step",
                        lr_decay_epochs=(200, 250), lr_decay_rate=0.3),
      **_run(dataset, 300, eval_every_epochs, checkpoint_every_epochs))


_METRIX_MS = metrix_method.recipe("cub", "multisimilarity", "feature")


def metrix(name: str, dataset: str, *, classes_per_batch: int, per_class: int,
           learning_rate: float, decay_step: int, decay_rate: float, warm_epochs: int,
           frozen_bn: bool, epochs: int = 100, eval_every_epochs: int = 1,
           checkpoint_every_epochs: int = 10) -> Config:
  """Multi-similarity + Metrix (Venkataramanan et al., ICLR 2022), the README's recipe.

  Shared values: ResNet-50, global average + max pooling (summed), a 512-d linear embedding
  (L2-normalised); the official code's multi-similarity loss, alpha 17.97, beta 75.66, base
  0.77, with its pair miner (epsilon 0.39; `metrix.recipe`); Metrix on the last feature maps
  (`location="feature"`), lambda ~ Beta(2, 2), one lambda per step, the mixed loss weighted
  0.4, positive-negative or anchor-negative pairs by a coin flip per step; Adam with an L2
  penalty of 1e-4 on every parameter, one learning rate for the backbone and the embedding,
  StepLR every `decay_step` epochs by `decay_rate`, the backbone frozen for the `warm_epochs`
  first epochs, gradients clipped by value at 10; random resized crop 224 for training,
  resize 256 + centre crop 224 for testing.

  Sources shared by every metrix_*.py config (github.com/billpsomas/Metrix_ICLR22):
    - Verified in the code read (train.py of the release; main.py and net/feature_resnet.py of
      commit 7ce730c, the only main.py that could be read): gradients clipped by value at 10 on
      the model; feature mixup mixes the ResNet-50 layer4 maps before pooling, then global
      average + global max pooling (summed), the linear embedding and L2 normalisation; one lambda
      per step; a coin flip per step between positive-negative pairs (an anchor's first positive
      with each of its negatives) and anchor-negative pairs (anchors without a positive, with each
      of their negatives); the mixed loss weighted 0.4 and added to the clean loss; Adam with one
      learning rate for the backbone and the embedding and PyTorch's L2 `weight_decay`; the
      backbone frozen for the `--warm` first epochs (only the embedding trains); random batches
      on CUB / Cars, `BalancedSampler` (classes x `--images_per_class`) on SOP / In-shop; random
      resized crop 224 and flip for training, resize 256 + centre crop 224 for testing, ImageNet
      mean / std; `--bn_freeze 1` keeps BatchNorm in eval mode with its scale and bias fixed;
      test-set recall after every epoch, the best kept.

  Deviations shared by every metrix_*.py config:
    - Mixed loss: L_clean + 0.4 L_mix with the mixed multi-similarity term on its own soft labels
      (jaxdml.methods.metrix); the release's multi-similarity code with embedding mixup instead adds
      the mixed pairs (weighted by lambda or 1 - lambda, and by 0.4) inside the clean terms'
      log-sum-exp. Which form gave the README's numbers is not verified.
  """
  return Config(
      name=name,
      data=DataConfig(dataset=dataset, image_size=224, resize_size=256, num_workers=8,
                      classes_per_batch=classes_per_batch, per_class=per_class),
      model=ModelConfig(name="resnet50", embedding_dim=512, pooling="avg+max",
                        frozen_bn=frozen_bn),
      objective=ObjectiveConfig(
          loss="multi_similarity", loss_kwargs=dict(_METRIX_MS.loss_kwargs),
          miner="multi_similarity", miner_kwargs=dict(_METRIX_MS.miner_kwargs),
          methods={"metrix": metrix_method.Settings(location="feature", alpha=2.0, weight=0.4,
                                                    pairing="random",
                                                    per_example_lambda=False)}),
      optim=OptimConfig(optimizer="adam", learning_rate=learning_rate, weight_decay=1e-4,
                        loss_lr_mult=1.0, loss_weight_decay=None, schedule="step",
                        lr_decay_epochs=tuple(range(decay_step, epochs, decay_step)),
                        lr_decay_rate=decay_rate, freeze_backbone_epochs=warm_epochs,
                        clip_value=10.0),
      **_run(dataset, epochs, eval_every_epochs, checkpoint_every_epochs))


#: HIER's settings shared by every official script (hier/train.py arguments).
HIER_SETTINGS = hier_method.Settings(num_proxies=512, lambda1=1.0, lambda2=0.5, lr_mult=50.0,
                                     margin=0.1, tau=0.1, topk=20, triplets_per_anchor=50)


def hier(name: str, dataset: str, model: str, *, embedding_dim: int, learning_rate: float,
         weight_decay: float, epochs: int, warm_epochs: int, head_lr_mult: float = 1.0,
         decay_step: int | None = None, decay_rate: float = 1.0, eval_every_epochs: int = 1,
         checkpoint_every_epochs: int = 10) -> Config:
  """Proxy-Anchor + HIER (Kim et al., CVPR 2023), as the official scripts run it.

  Shared values (scripts/*/hier_*.sh and hier/train.py): batches of 90 classes x 2 images (90
  per GPU on 2 GPUs); the backbone's pooled features (ResNet-50: global average + max, summed,
  batch norm frozen; ViT: the class token) through a LayerNorm without affine parameters, an
  orthogonally initialised linear layer and the map into the Poincare ball (c 0.1, clip_r 2.3);
  Proxy-Anchor on the cosine of the embeddings (alpha 32, margin 0.1) plus 0.5 x the HIER loss
  (`HIER_SETTINGS`: 512 hierarchical proxies, margin 0.1, tau 0.1, top-20 reciprocal neighbours,
  50 triplets per anchor); AdamW with `weight_decay` on every group, the class proxies at 1e4 x
  and the hierarchical proxies at 50 x the learning rate, the head at `head_lr_mult` x; the
  backbone frozen for the `warm_epochs` first epochs; StepLR every `decay_step` epochs by
  `decay_rate` (None: constant); gradients clipped by value at 10; random resized crop 224 for
  training, resize 256 + centre crop 224 for testing, ImageNet mean / std for ResNet-50 and
  mean 0.5 / std 0.5 ("half") for the ImageNet-21k ViT; retrieval by hyperbolic distance.

  Sources (github.com/tjddus9597/HIER-CVPR23 at 3986a74), ResNet-50 runs:
    - hier/train.py: AdamW (eps 1e-4 under `--use_fp16 True`) on four parameter groups, all with
      `--weight_decay` (hier/utils.py get_params_groups): the backbone x 1, the head ("last"
      parameters) x `--fc_lr_scale`, the hierarchical proxies x 50, the Proxy-Anchor proxies
      x 1e4; the learning rate scaled by (90 x 2 GPUs) / 180 = 1; the backbone's learning rate is
      0 during the first `--warmup_epochs` epochs (a frozen warm-up, not a linear one); with
      `--lr_decay` a per-iteration step schedule equal to StepLR (`step_scheduler`), without it a
      constant rate; gradients clipped by value at 10 on the model and both losses
      (`clip_gradients_value`; `--clip_grad` only switches it on); loss = `--lambda1` x
      Proxy-Anchor + `--lambda2` x HIER on the embeddings of both GPUs (all-gathered); test-set
      Recall@1 every `--eval_freq` epochs once the warm-up is over (on SOP and In-shop from epoch
      40), by hyperbolic distance.
    - hier/sampler.py (UniqueClassSampler with `--IPC 2`): each global batch holds 90 distinct
      classes, 2 images of each drawn with replacement; len(train) // 180 batches an epoch.
    - hier/models/model.py: head = LayerNorm without affine parameters -> Linear (orthogonal
      init, zero bias) -> ToPoincare(c 0.1, clip_r 2.3, Riemannian gradient); hier/models/resnet.py:
      global average + global max pooling (summed); `--bn_freeze` keeps BatchNorm in eval mode
      (its scale and bias still train).
    - hier/losses.py: HIERLoss with 512 proxies (initialised as randn / sqrt(d) x 2.3 x 0.9),
      margin 0.1, tau 0.1, top-20 reciprocal neighbours (`--topk 20`), 50 triplets per anchor;
      PALoss_Angle: Proxy-Anchor on the cosine of the normalised embeddings and proxies, margin
      0.1, alpha 32, proxies kaiming-normal (fan_out).
    - hier/utils.py (MultiTransforms) and hier/helpers.py: random resized crop 224 at scale
      (0.08, 1), bicubic, and flip for training; resize 256 (bicubic) + centre crop 224 for testing;
      ImageNet mean / std.

  ViT-S/16 runs, where they differ:
    - hier/models/model.py: head = LayerNorm without affine parameters -> Linear (orthogonal
      init, zero bias) -> ToPoincare(c 0.1, clip_r 2.3, Riemannian gradient); ViT: timm's model with
      class-token pooling, the patch embedding frozen (`freeze(body, 0)`).
    - hier/utils.py (MultiTransforms) and hier/helpers.py: random resized crop 224 at scale
      (0.2, 1), bicubic, and flip for training; resize 256 (bicubic) + centre crop 224 for testing;
      mean 0.5, std 0.5 for ViT (hier/train.py).

  Deviations of every config:
    - Precision: float32 here; the official runs use fp16 autocast with a gradient scaler, and
      AdamW's eps 1e-4 that goes with it (ours: optax's default 1e-8).
    - Two GPUs: the official loss sees both GPUs' embeddings but each GPU back-propagates through
      its own half only and DistributedDataParallel averages the model's gradients (half the
      full gradient); the loss modules are outside DistributedDataParallel, so each GPU updates
      its own copy of the proxies. Ours: one loss and one update on the batch of 180. Under Adam
      the factor of 2 matters only through eps and the clipping at 10.
    - Warm-up: our frozen backbone keeps its optimiser state; the official AdamW still updates the
      backbone's moment estimates while its learning rate is 0.
    - Batches: 90 distinct classes x 2 images, as the official sampler, which draws a class's two
      images with replacement (the same image can come twice); ours draws them without
      replacement. ceil(n / 180) steps an epoch against the official floor(n / 180).

  ResNet-50 only:
    - BatchNorm: frozen, scale and bias included (`frozen_bn=True`); the official code keeps the
      statistics fixed but trains BN's scale and bias.
    - Resizing: jaxdml's bilinear resize; the official code resizes bicubically.

  ViT-S/16 only:
    - Crops: random resized crop at scale (0.08, 1) with jaxdml's bilinear resize; the official
      ViT runs use scale (0.2, 1) and bicubic interpolation.
    - Patch embedding: trained here; the official code freezes it.
  """
  schedule = "constant" if decay_step is None else "step"
  return Config(
      name=name,
      data=DataConfig(dataset=dataset, image_size=224, resize_size=256, num_workers=8,
                      normalization="imagenet" if model == "resnet50" else "half",
                      classes_per_batch=90, per_class=2),
      model=ModelConfig(name=model, embedding_dim=embedding_dim,
                        pooling="avg+max" if model == "resnet50" else "cls",
                        frozen_bn=model == "resnet50", head="hyperbolic", poincare_c=0.1,
                        clip_r=2.3, normalize_embeddings=False),
      objective=ObjectiveConfig(loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0},
                                methods={"hier": HIER_SETTINGS}),
      optim=OptimConfig(optimizer="adamw", learning_rate=learning_rate,
                        weight_decay=weight_decay, head_lr_mult=head_lr_mult, loss_lr_mult=1e4,
                        loss_weight_decay=None, schedule=schedule,
                        lr_decay_epochs=() if decay_step is None else tuple(
                            range(decay_step, epochs, decay_step)),
                        lr_decay_rate=decay_rate, freeze_backbone_epochs=warm_epochs,
                        clip_value=10.0),
      **_run(dataset, epochs, eval_every_epochs, checkpoint_every_epochs))

# ---------------------------------------------------------------------- glyphs

# The glyphs runs of DAS, Metrix and HIER at their published settings, with their baselines
# and the controls that isolate each method's own idea (`benchmarks/methods.py` runs them all;
# builders `glyph_das`, `glyph_metrix`, `glyph_hier`).
#
# Every run keeps the glyphs recipe's network, data and budget (`glyphs.get_config()`: `ResCNN`,
# 8 epochs of 128 images, 1,472 steps, AdamW at 1e-3): only the objective, the batches and, for
# HIER, the head and the optimiser's published settings change. The glyphs network is trained
# from scratch, so its base learning rate is the recipe's 1e-3, not the 1e-4 / 1e-5 at which the
# papers fine-tune ImageNet backbones; where a paper sets a multiplier for a parameter group, the
# multiplier below keeps that group's absolute rate at the paper's (written at each builder).
#
#   - `glyph_das(method)`: DAS Table 1's multi-similarity run
#     (`das.full_recipe("table1", "cub200")`): MS alpha 2, beta 40, base 0.5 with its pair miner
#     (epsilon 0.1), batches of 64 classes x 2 images, DAS with K 8 and the table's other
#     settings. method "none" is the baseline (the same loss, miner and batches), "off" the
#     control whose generated embeddings are exact copies of the real ones (the same batch size
#     and loss; only the generation differs).
#   - `glyph_metrix(location)`: Metrix's official multi-similarity run (`metrix.recipe("cub")`):
#     MS alpha 17.97, beta 75.66, base 0.77 with its miner (epsilon 0.39) on plain random
#     batches of 100 (as on CUB-200 / Cars-196); location None is the baseline, "input",
#     "feature" or "embedding" the mixup's location. On glyphs a random batch of 100 holds a
#     positive for an anchor with probability 99 x 15 / 23,599 ~ 6% (about 0.98 expected
#     positives on CUB-200's 5,864 training images of 100 classes): most anchors have no
#     positive, the situation for which Metrix's anchor-negative mixing was written.
#   - `glyph_hier(head, weight)`: Proxy-Anchor (margin 0.1, alpha 32) on the linear or the
#     Poincare-ball head, with HIER's loss at `weight` (lambda2; None: no HIER). The optimiser
#     is HIER's (hier/train.py, hier/utils.py): AdamW with eps 1e-4 and weight decay 1e-2 on
#     every group, the class proxies at 1e3 x and the 512 hierarchical proxies at 5 x the base
#     rate, which are the absolute rates of the official CUB run (1e4 x and 50 x its 1e-4: 1.0
#     and 5e-3), gradients clipped by value at 10. The baselines (no HIER) run with the same
#     optimiser.

GLYPH_DAS_METHODS = ("none", "on", "off")
GLYPH_METRIX_LOCATIONS = (None, "input", "feature", "embedding")
GLYPH_HIER_HEADS = ("linear", "hyperbolic")
#: HIER's hierarchical proxies (the paper's 512; glyphs has 1,475 training classes)
GLYPH_HIER_PROXIES = 512


#: GLAM's ablation rows (the seed's table): the branches each variant switches on
GLYPH_GLAM_VARIANTS = {
    "baseline": (),
    "local_channel": ("local_channel",),
    "local_spatial": ("local_spatial",),
    "local": ("local_channel", "local_spatial"),
    "global_channel": ("global_channel",),
    "global_spatial": ("global_spatial",),
    "global": ("global_channel", "global_spatial"),
    "global_local": ("local_channel", "local_spatial", "global_channel", "global_spatial"),
}
#: the glyph side of the GLAM runs: 64 x 64 gives `ResCNN` a 4 x 4 last map (32 x 32: 2 x 2,
#: too few positions for spatial attention)
GLYPH_GLAM_SIZE = 64
#: landmarks, views of each and distractors of the instance evaluation
GLYPH_GLAM_INSTANCES = (200, 20, 2000)


def _renamed(config: Config, name: str, **sections) -> Config:
  return dataclasses.replace(config, name=name, **sections)


def glyph_das(method: str = "on") -> Config:
  """MS at DAS's Table 1 recipe: "none" (baseline), "on" (+ DAS) or "off" (generation off)."""
  if method not in GLYPH_DAS_METHODS:
    raise ValueError(f"method must be one of {GLYPH_DAS_METHODS}, got {method!r}.")
  base = glyphs_config.get_config()
  r = das_method.full_recipe("table1", "cub200")
  methods = {} if method == "none" else {
      "das": dataclasses.replace(r.settings, generation=method)}
  objective = ObjectiveConfig(loss=r.loss, loss_kwargs=dict(r.loss_kwargs), miner=r.miner,
                              miner_kwargs=dict(r.miner_kwargs), methods=methods)
  data = dataclasses.replace(base.data, classes_per_batch=128 // r.per_class,
                             per_class=r.per_class)
  return _renamed(base, f"glyphs_das_{method}", objective=objective, data=data)


def glyph_metrix(location: str | None = "feature", weight: float | None = None) -> Config:
  """MS at Metrix's official recipe, without (None) or with mixup at `location`; `weight`
  replaces the recipe's mixup-loss weight (0.4); 0 keeps only the mixed images' forward pass,
  whose batch statistics still reach the BatchNorm running averages (a control)."""
  if location not in GLYPH_METRIX_LOCATIONS:
    raise ValueError(f"location must be one of {GLYPH_METRIX_LOCATIONS}, got {location!r}.")
  if weight is not None and location is None:
    raise ValueError("`weight` is the mixup loss's: give a location.")
  base = glyphs_config.get_config()
  r = metrix_method.recipe("cub", "multisimilarity", "feature")
  settings = None if location is None else dataclasses.replace(r.settings, location=location)
  if weight is not None:
    settings = dataclasses.replace(settings, weight=float(weight))
  methods = {} if settings is None else {"metrix": settings}
  objective = ObjectiveConfig(loss=r.loss, loss_kwargs=dict(r.loss_kwargs), miner=r.miner,
                              miner_kwargs=dict(r.miner_kwargs), methods=methods)
  data = dataclasses.replace(base.data, sampler="random", batch_size=r.batch_size)
  name = f"glyphs_metrix_{location or 'none'}" + ("" if weight is None else f"_w{weight:g}")
  return _renamed(base, name, objective=objective, data=data)


def glyph_hier(head: str = "hyperbolic", weight: float | None = 0.5) -> Config:
  """Proxy-Anchor on the `head`, plus HIER's loss at `weight` (None: without HIER)."""
  if head not in GLYPH_HIER_HEADS:
    raise ValueError(f"head must be one of {GLYPH_HIER_HEADS}, got {head!r}.")
  if weight is not None and head != "hyperbolic":
    raise ValueError("HIER's loss lives in the Poincare ball: use head='hyperbolic'.")
  base = glyphs_config.get_config()
  methods = {} if weight is None else {"hier": hier_method.Settings(
      num_proxies=GLYPH_HIER_PROXIES, lambda2=weight, lr_mult=5.0, weight_decay=1e-2)}
  objective = ObjectiveConfig(loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0},
                              methods=methods)
  model = dataclasses.replace(base.model, head=head)
  optim = dataclasses.replace(base.optim, weight_decay=1e-2, loss_weight_decay=None,
                              loss_lr_mult=1e3, eps=1e-4, clip_value=10.0)
  name = f"glyphs_pa_{head}" + ("" if weight is None else f"_hier_{weight:g}")
  return _renamed(base, name, objective=objective, model=model, optim=optim)


def glyph_glam(variant: str = "global_local") -> Config:
  """GLAM's training recipe on glyphs, with the branches of `variant` (`GLYPH_GLAM_VARIANTS`;
  "baseline" has no attention module, everything else the same).

  The seed's recipe is a ResNet-101 with GeM pooling, a 512-d descriptor (FC, L2) and an ArcFace
  head on GLDv2-clean, tested on Revisited Oxford / Paris by Medium and Hard mAP. Here: `ResCNN`
  on 64 x 64 glyphs (a 4 x 4 x 64 last map), GLAM after it, GeM (p 3, learnable), FC to 512 and
  L2; ArcFace over the 1,475 training code points, on random batches of 128 (a classification
  loss needs no P x M batches); scored on the instance-retrieval variant (200 unseen landmarks,
  20 graded views each, 2,000 distractors) by Easy / Medium / Hard mAP. Choices the seed leaves
  open: ArcFace margin 0.3 and scale 30 (within the usual 0.15-0.3 and 30-45 of landmark
  retrieval); the glyph recipe's AdamW 1e-3 and 8 epochs, with the class weights at the
  library's proxy rate (`optim.loss_lr_mult` 100): on 300 classes for 4 epochs the baseline
  reached MAP@R 0.396 with it and 0.291 with the classifier at the network's rate (margin 0.1
  there: 0.294); GLAM's own settings are the module's defaults (`jaxdml.models.glam`).
  """
  if variant not in GLYPH_GLAM_VARIANTS:
    raise ValueError(f"variant must be one of {tuple(GLYPH_GLAM_VARIANTS)}, got {variant!r}.")
  base = glyphs_config.get_config()
  on = GLYPH_GLAM_VARIANTS[variant]
  switches = {b: b in on for b in GLYPH_GLAM_VARIANTS["global_local"]}
  landmarks, views, distractors = GLYPH_GLAM_INSTANCES
  glyph = dataclasses.replace(base.data.glyphs, size=GLYPH_GLAM_SIZE,
                              instance_landmarks=landmarks, instance_views=views,
                              instance_distractors=distractors)
  data = dataclasses.replace(base.data, sampler="random", batch_size=128, glyphs=glyph)
  model = dataclasses.replace(base.model, embedding_dim=512, pooling="gem",
                              neck=None if not on else "glam",
                              neck_kwargs={} if not on else switches)
  objective = ObjectiveConfig(loss="arcface", loss_kwargs={"margin": 0.3, "scale": 30.0})
  return _renamed(base, f"glyphs_glam_{variant}", data=data, model=model, objective=objective)
