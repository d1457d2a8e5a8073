"""Multi-similarity + Metrix, ResNet-50, 512-d, CUB-200-2011: the authors' recipe (ICLR 2022).

    jaxdml train --config metrix_resnet50_cub \
        --data-dir ~/tensorflow_datasets --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code calls torchvision's `resnet50(pretrained=True)`).

Source: Venkataramanan et al., "It Takes Two to Tango: Mixup for Deep Metric Learning", ICLR
2022, and its code, github.com/billpsomas/Metrix_ICLR22. The README's tables put the paper's
headline numbers on multi-similarity + Metrix (Metrix on feature maps, `--mode feature`; the
README calls feature mixup plain "Metrix" and says it performs best), so that is the recipe here.
The README's command ("MultiSimilarity + Metrix", CUB): `--dataset cub --batch_size 100
--embedding_size 512 --num_epochs 100 --lr 1e-4 --lr_decay_gamma 0.5 --loss multisimilarity
--mode feature --alpha 2.0`.
What each value rests on:
  - Verified in the README: the loss, `--mode feature`, `--alpha 2.0` (lambda ~ Beta(2, 2)),
    batch 100, 512-d, 100 epochs, lr 1e-4, gamma 0.5.
  - Read in the official code (main.py:171-176 at b679703; `jaxdml.methods.metrix.recipe`): the
    multi-similarity values alpha 17.97, beta 75.66, base 0.77 and its miner's epsilon 0.39.
  - Not verified: the multi-similarity path with feature mixup itself (the release's train.py
    shows feature mixup for the contrastive loss only: the pairing and the weight are taken from
    there); the values the commands leave to main.py's argparse defaults, read in main.py at
    7ce730c: `--lr_decay_step 10`, `--warm 5`, `--weight_decay 1e-4` and `--bn_freeze 1`.
  - What every Metrix config shares, with what it rests on and their common
    deviations: `recipes.metrix` (configs/recipes.py).

Target (the README's table, "MultiSimilarity + Metrix"): Recall@1 71.4 (R@2 80.6, R@4 86.8);
the same code's multi-similarity baseline: 67.8 (77.8, 85.6). The code keeps the best of its
per-epoch evaluations, so compare with the best evaluation.

Deviations:
  - Batches: the official loader draws 100 images uniformly at random (shuffled, last partial
    batch dropped); ours draws P classes x M images. A random batch of 100 from the 100
    training classes holds about 63 classes: about 37 images without a positive and about 26
    classes with two images or more. This config uses 50 x 2 (multi-similarity and the
    positive-negative mixup need positive pairs). Then every anchor has a positive, so on
    the steps whose coin flip picks anchor-negative mixing (anchors without a positive only,
    as in the code) nothing is mixed and the loss is the clean one; in the official random
    batches those steps mix the ~37 lone images with their negatives.
  - Epoch length: ceil(5864 / 100) = 59 steps (the official loader: 58).
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.metrix("metrix_resnet50_cub", "cub200",
      classes_per_batch=50, per_class=2, learning_rate=1e-4, decay_step=10, decay_rate=0.5,
      warm_epochs=5, frozen_bn=True)
