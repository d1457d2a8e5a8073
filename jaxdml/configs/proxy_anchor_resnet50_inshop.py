"""Proxy-Anchor, ResNet-50, 512-d, In-shop: derived from the authors' recipes (CVPR 2020).

    jaxdml train --config proxy_anchor_resnet50_inshop \
        --data-dir ~/tensorflow_datasets --manual-dir ~/deepfashion_inshop \
        --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code calls torchvision's `resnet50(pretrained=True)`).
`--manual-dir`: the DeepFashion In-shop benchmark folder holding `img/` and
`Eval/list_eval_partition.txt` (read once, when the dataset is prepared).

Not an official recipe: the README of github.com/tjddus9597/Proxy-Anchor-CVPR2020 gives an
In-shop command for Inception-BN only. This config takes that command (`--lr 6e-4 --warm 1
--bn-freeze 0 --lr-decay-step 20 --lr-decay-gamma 0.25`) and the batch size of the README's
ResNet-50 commands (`--batch-size 120`, against 180 for Inception-BN). Everything else is
code/train.py's defaults, as in the official commands: 60 epochs, AdamW with weight decay 1e-4 on
every parameter group (the proxies' group included), proxies at 100x the learning rate, StepLR per
epoch, gradients clipped by value at 10, alpha 32, margin 0.1, embedding layer and proxies alone
during the `--warm` epochs; code/net/resnet.py (Resnet50): global average + global max pooling
(summed), a linear 512-d embedding, L2-normalised; `--bn-freeze 0` leaves BatchNorm in training
mode; code/dataset/utils.py: random resized crop 224 and flip, resize 256 + centre crop 224 for
testing, ImageNet mean / std. The warm-up stays at 1 epoch (the In-shop command's; the ResNet-50
commands on the small datasets use 5).

Target: none quoted; the README has no number for this setting.

Deviations (besides the recipe being derived):
  - Batches: the official loader draws images uniformly at random (no `--IPC`); ours draws
    P classes x M images. A random batch of 120 from 3,997 items of about 6.5 images each holds
    about 118 distinct items, so this config uses 120 x 1 (Proxy-Anchor needs no positive pair in
    the batch).
  - Epoch length: ceil(25882 / 120) = 216 steps (215 with the official loader, which drops the
    last partial batch); within an epoch every item is drawn about 6.5 times, each time a random
    image of it.
  - Evaluation every 5 epochs (14,218 queries and 12,612 gallery images a pass); the official code
    evaluates every epoch.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.proxy_anchor("proxy_anchor_resnet50_inshop", "inshop", "resnet50",
      classes_per_batch=120, per_class=1, learning_rate=0.0006, warm_epochs=1, frozen_bn=False,
      decay_step=20, decay_rate=0.25, eval_every_epochs=5, checkpoint_every_epochs=5)
