"""Proxy-Anchor, BN-Inception, 512-d, Stanford Online Products: the authors' recipe (CVPR 2020).

    jaxdml train --config proxy_anchor_bninception_sop \
        --data-dir ~/tensorflow_datasets --pretrained bn_inception-52deb4733.pth

Weights: Cadene's ImageNet BN-Inception, `bn_inception-52deb4733.pth` (the file the official code
loads in code/net/bn_inception.py).

Source: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020, and its code,
github.com/tjddus9597/Proxy-Anchor-CVPR2020. The README's Stanford Online Products / Inception-BN
command: `--embedding-size 512 --batch-size 180 --lr 6e-4 --warm 1 --bn-freeze 0
--lr-decay-step 20 --lr-decay-gamma 0.25`. The defaults of code/train.py for everything else:
60 epochs, AdamW with weight decay 1e-4 on every parameter group (the proxies' group included),
proxies at 100x the learning rate, StepLR per epoch, gradients clipped by value at 10
(`clip_grad_value_` on the model and the proxies), alpha 32, margin 0.1; for the first `--warm`
epochs only the embedding layer and the proxies train. code/net/bn_inception.py: global average +
global max pooling (summed), a linear 512-d embedding (kaiming normal, fan_out), L2-normalised;
`--bn-freeze 0` leaves BatchNorm in training mode (batch statistics, trained scale and bias).
code/dataset/utils.py: random resized crop 224 and flip for training, resize 256 + centre crop 224
for testing, BGR in [0, 255] minus (104, 117, 128).

Target: Recall@1 79.2 (R@10 90.7, R@100 96.2, R@1000 98.6), the README's table for this command
(the README notes that it beats the paper's numbers). The official code evaluates on the test set
after every epoch and reports the best epoch.

Deviations:
  - Batches: the official loader draws 180 images uniformly at random (the README commands do not
    set `--IPC`); ours draws P classes x M images. With 11,318 training products of about 5 images
    each, a random batch of 180 almost never holds two images of one product, so this config uses
    180 x 1 (Proxy-Anchor needs no positive pair in the batch).
  - Epoch length: ceil(59551 / 180) = 331 steps; the official loader drops the last partial batch
    (330 steps). Within an epoch our sampler draws every product about 5 times, each time a random
    image of it, rather than every image exactly once.
  - Evaluation every 5 epochs instead of every epoch (each pass embeds 60,502 test images); use
    `--set eval_every_epochs=1` for the official protocol.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.proxy_anchor("proxy_anchor_bninception_sop", "sop", "bn_inception",
      classes_per_batch=180, per_class=1, learning_rate=0.0006, warm_epochs=1, frozen_bn=False,
      decay_step=20, decay_rate=0.25, eval_every_epochs=5, checkpoint_every_epochs=5)
