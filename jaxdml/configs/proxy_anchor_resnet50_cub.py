"""Proxy-Anchor, ResNet-50, 512-d, CUB-200-2011: the authors' recipe (Kim et al., CVPR 2020).

    jaxdml train --config proxy_anchor_resnet50_cub \
        --data-dir ~/tensorflow_datasets --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code calls torchvision's `resnet50(pretrained=True)`).

Source: github.com/tjddus9597/Proxy-Anchor-CVPR2020. The README's CUB-200-2011 / ResNet-50
command: `--embedding-size 512 --batch-size 120 --lr 1e-4 --warm 5 --bn-freeze 1
--lr-decay-step 5`. The defaults of code/train.py for everything else: 60 epochs, AdamW with
weight decay 1e-4 on every parameter group (the proxies' group included), proxies at 100x the
learning rate, StepLR per epoch with gamma 0.5, gradients clipped by value at 10
(`clip_grad_value_` on the model and the proxies), alpha 32, margin 0.1; for the first `--warm`
epochs only the embedding layer and the proxies train. code/net/resnet.py (Resnet50): global
average + global max pooling (summed), a linear 512-d embedding (kaiming normal, fan_out),
L2-normalised; `--bn-freeze 1` keeps BatchNorm in eval mode. code/dataset/utils.py: random
resized crop 224 and flip for training, resize 256 + centre crop 224 for testing, ImageNet mean /
std.

Target: Recall@1 69.9 (R@2 79.6, R@4 86.6, R@8 91.4), the README's table for this command (the
README notes that it beats the paper's numbers). The official code evaluates on the test set after
every epoch and reports the best epoch, so compare with the best of the per-epoch evaluations.

Deviations:
  - Batches: the official loader draws 120 images uniformly at random (the README commands do not
    set `--IPC`); ours draws P classes x M images. A random batch of 120 holds about 70 of the 100
    training classes, 1.7 images each, so this config uses 60 x 2.
  - Epoch length: ceil(5864 / 120) = 49 steps; the official loader drops the last partial batch
    (48 steps).
  - BatchNorm: the official code freezes BN's scale and bias as well as its statistics, but when
    the `--warm` epochs end it re-enables gradients on every backbone parameter, BN's scale and
    bias included (its statistics stay frozen). `frozen_bn=True` here keeps scale and bias fixed
    for the whole run.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.proxy_anchor("proxy_anchor_resnet50_cub", "cub200", "resnet50",
      classes_per_batch=60, per_class=2, learning_rate=0.0001, warm_epochs=5, frozen_bn=True,
      decay_step=5)
