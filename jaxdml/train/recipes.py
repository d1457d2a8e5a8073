"""The published training recipes as config builders (the files in experiments/ call these).

Each builder fills the values its paper's code shares across datasets; the per-dataset values
(batch composition, learning rate, schedule, batch-norm freezing) are arguments, set by the
experiment files with their sources.
"""

from __future__ import annotations

from jaxdml.train.config import TrainConfig

RECALL_KS = {"cub200": (1, 2, 4, 8), "cars196": (1, 2, 4, 8), "sop": (1, 10, 100, 1000),
             "inshop": (1, 10, 20, 30, 40)}
PRETRAINED_FILES = {"bn_inception": "bn_inception-52deb4733.pth",
                    "resnet50": "resnet50-0676ba61.pth"}


def proxy_anchor(name: str, dataset: str, model: str, *, classes_per_batch: int, per_class: int,
                 learning_rate: float, warm_epochs: int, frozen_bn: bool, decay_step: int,
                 decay_rate: float = 0.5, epochs: int = 60, eval_every_epochs: int = 1,
                 checkpoint_every_epochs: int = 10) -> TrainConfig:
  """Proxy-Anchor (Kim et al., CVPR 2020), as its official training script runs it.

  Shared values: 512-d linear embedding (L2-normalised) on avg + max pooling, Proxy-Anchor with
  alpha 32 and margin 0.1, AdamW with weight decay 1e-4 on every group (proxies included),
  proxies at 100x the learning rate, gradients clipped by value at 10, StepLR every
  `decay_step` epochs by `decay_rate`, the backbone frozen for the `warm_epochs` first epochs,
  random resized crop 224 for training and resize 256 + centre crop 224 for testing.
  """
  return TrainConfig(
      name=name, dataset=dataset, image_size=224, resize_size=256, num_workers=8,
      classes_per_batch=classes_per_batch, per_class=per_class, epochs=epochs, model=model,
      pretrained=None, embedding_dim=512, pooling="avg+max", frozen_bn=frozen_bn,
      loss="proxy_anchor", loss_kwargs={"margin": 0.1, "alpha": 32.0}, optimizer="adamw",
      learning_rate=learning_rate, weight_decay=1e-4, backbone_lr_mult=1.0, head_lr_mult=1.0,
      loss_lr_mult=100.0, loss_weight_decay=None, schedule="step",
      lr_decay_epochs=tuple(range(decay_step, epochs, decay_step)), lr_decay_rate=decay_rate,
      freeze_backbone_epochs=warm_epochs, clip_value=10.0, eval_every_epochs=eval_every_epochs,
      checkpoint_every_epochs=checkpoint_every_epochs, recall_ks=RECALL_KS[dataset])


def multi_similarity(name: str, dataset: str, model: str, *, eval_every_epochs: int = 3,
                     checkpoint_every_epochs: int = 10) -> TrainConfig:
  """Multi-similarity loss (Wang et al., CVPR 2019), as its official CUB configs run it.

  Shared values: batches of 16 classes x 5 images, 512-d linear embedding (L2-normalised) on
  global max pooling (BN-Inception) or average pooling (ResNet-50), frozen batch norm, MS loss
  alpha 2, beta 40, base 0.5 with pair mining epsilon 0.1, Adam at 3e-5 with an L2 penalty of
  5e-4, 3000 iterations on CUB = 41 epochs with the learning rate x 0.1 at epochs 16 and 32,
  crops of 227 from images resized to 256.
  """
  return TrainConfig(
      name=name, dataset=dataset, image_size=227, resize_size=256, num_workers=8,
      classes_per_batch=16, per_class=5, epochs=41, model=model, pretrained=None,
      embedding_dim=512, pooling="max" if model == "bn_inception" else "avg", frozen_bn=True,
      loss="multi_similarity", loss_kwargs={"alpha": 2.0, "beta": 40.0, "base": 0.5},
      miner="multi_similarity", miner_kwargs={"epsilon": 0.1}, optimizer="adam",
      learning_rate=3e-5, weight_decay=5e-4, backbone_lr_mult=1.0, head_lr_mult=1.0,
      schedule="step", lr_decay_epochs=(16, 32), lr_decay_rate=0.1, warmup_epochs=0.0,
      freeze_backbone_epochs=0, clip_value=None, eval_every_epochs=eval_every_epochs,
      checkpoint_every_epochs=checkpoint_every_epochs, recall_ks=RECALL_KS[dataset])
