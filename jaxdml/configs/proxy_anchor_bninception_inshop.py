"""Proxy-Anchor, BN-Inception, 512-d, In-shop: the authors' recipe (Kim et al., CVPR 2020).

    jaxdml train --config proxy_anchor_bninception_inshop \
        --data-dir ~/tensorflow_datasets --manual-dir ~/deepfashion_inshop \
        --pretrained bn_inception-52deb4733.pth

Weights: Cadene's ImageNet BN-Inception, `bn_inception-52deb4733.pth` (the file the official code
loads in code/net/bn_inception.py). `--manual-dir`: the DeepFashion In-shop benchmark folder
holding `img/` and `Eval/list_eval_partition.txt` (read once, when the dataset is prepared).

Source: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020, and its code,
github.com/tjddus9597/Proxy-Anchor-CVPR2020. The README's In-Shop Clothes Retrieval / Inception-BN
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

Target: Recall@1 91.9 (R@10 98.1, R@20 98.7, R@30 99.0, R@40 99.1), the README's table for this
command (the README notes that it beats the paper's numbers). The official code evaluates the
queries against the gallery after every epoch and reports the best epoch.

Deviations:
  - Batches: the official loader draws 180 images uniformly at random (the README commands do not
    set `--IPC`); ours draws P classes x M images. With 3,997 training items of about 6.5 images
    each, a random batch of 180 holds about 176 distinct items, so this config uses 180 x 1
    (Proxy-Anchor needs no positive pair in the batch).
  - Epoch length: ceil(25882 / 180) = 144 steps; the official loader drops the last partial batch
    (143 steps). Within an epoch our sampler draws every item about 6.5 times, each time a random
    image of it, rather than every image exactly once.
  - Evaluation every 5 epochs instead of every epoch (each pass embeds 14,218 queries and 12,612
    gallery images); use `--set eval_every_epochs=1` for the official protocol.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.proxy_anchor("proxy_anchor_bninception_inshop", "inshop", "bn_inception",
      classes_per_batch=180, per_class=1, learning_rate=0.0006, warm_epochs=1, frozen_bn=False,
      decay_step=20, decay_rate=0.25, eval_every_epochs=5, checkpoint_every_epochs=5)
