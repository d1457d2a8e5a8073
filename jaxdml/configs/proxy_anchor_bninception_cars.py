"""Proxy-Anchor, BN-Inception, 512-d, Cars196: the authors' recipe (Kim et al., CVPR 2020).

    jaxdml train --config proxy_anchor_bninception_cars \
        --data-dir ~/tensorflow_datasets --pretrained bn_inception-52deb4733.pth

Weights: Cadene's ImageNet BN-Inception, `bn_inception-52deb4733.pth` (the file the official code
loads in code/net/bn_inception.py).

Source: github.com/tjddus9597/Proxy-Anchor-CVPR2020. The README's Cars-196 / Inception-BN command:
`--embedding-size 512 --batch-size 180 --lr 1e-4 --warm 1 --bn-freeze 1 --lr-decay-step 20`. The
defaults of code/train.py for everything else: 60 epochs, AdamW with weight decay 1e-4 on every
parameter group (the proxies' group included), proxies at 100x the learning rate, StepLR per epoch
with gamma 0.5, gradients clipped by value at 10 (`clip_grad_value_` on the model and the
proxies), alpha 32, margin 0.1; for the first `--warm` epochs only the embedding layer and the
proxies train. code/net/bn_inception.py: global average + global max pooling (summed), a linear
512-d embedding (kaiming normal, fan_out), L2-normalised; `--bn-freeze 1` keeps BatchNorm in eval
mode. code/dataset/utils.py: random resized crop 224 and flip for training, resize 256 + centre
crop 224 for testing, BGR in [0, 255] minus (104, 117, 128).

Target: Recall@1 86.4 (R@2 91.9, R@4 95.0, R@8 97.0), the README's table for this command (the
README notes that it beats the paper's numbers). The official code evaluates on the test set after
every epoch and reports the best epoch, so compare with the best of the per-epoch evaluations.

Deviations:
  - Batches: the official loader draws 180 images uniformly at random (the README commands do not
    set `--IPC`); ours draws P classes x M images. A random batch of 180 holds about 83 of the 98
    training classes, about 2 images each, so this config uses 90 x 2.
  - Epoch length: ceil(8054 / 180) = 45 steps; the official loader drops the last partial batch
    (44 steps).
  - BatchNorm: the official code freezes BN's scale and bias as well as its statistics, but when
    the `--warm` epochs end it re-enables gradients on every backbone parameter, BN's scale and
    bias included (its statistics stay frozen). `frozen_bn=True` here keeps scale and bias fixed
    for the whole run.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.proxy_anchor("proxy_anchor_bninception_cars", "cars196", "bn_inception",
      classes_per_batch=90, per_class=2, learning_rate=0.0001, warm_epochs=1, frozen_bn=True,
      decay_step=20)
