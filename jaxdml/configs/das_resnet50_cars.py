"""Multi-similarity + DAS, ResNet-50, 512-d, Cars196: the authors' Table 1 recipe (ECCV 2022).

    jaxdml train --config das_resnet50_cars \
        --data-dir ~/tensorflow_datasets --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code builds `pretrainedmodels`' resnet50 with
`pretrained="imagenet"`, which loads torchvision's `resnet50-19c8e357.pth`, the earlier file name
of these weights).

Source: Liu et al., "Densely-Anchored Sampling for Deep Metric Learning", ECCV 2022, and its code,
github.com/lizhaoliu-Lec/DAS (read at 4f2a357):
  - table1.sh, line "MS + R^{512}" of CARS: `--n_epochs 300 --tau 200 250 --bs 112
    --embed_dim 512 --samples_per_class 2 --loss multisimilarity
    --arch resnet50_double_frozen_normalize_... --embedding_producer_used --produce_type DAS
    --das_dfs_num_scale 8 --das_dfs_scale_left 0.99 --das_dfs_scale_right 1.01
    --das_mts_scale 0.01 --detach`. The line says `--dataset cub200` (a copy-paste slip: it
    stands under CARS and its BN-Inception neighbour says `cars196`); its settings equal those of
    the other CUB / Cars lines.
  - scripts/parameters.py, the defaults for everything else: Adam, lr 1e-5, weight decay 4e-4,
    MultiStepLR with gamma 0.3, the class_random sampler; MS pos weight 2, neg weight 40,
    margin 0.1, thresh 0.5 (the Revisiting-DML defaults); DAS: 3 generated embeddings per real
    one, a bank of 10 transformations per class, generated embeddings L2-normalised.
  - Everything every DAS config shares, and their common deviations:
    `recipes.das` (configs/recipes.py).
DAS here: `das.recipe("table1", "cars196", "multisimilarity")`: K = 8 scaled dimensions, scale
factors in [0.99, 1.01], shift scale 0.01, generated embeddings detached.

Target (paper Table 1, MS + DAS, R^512): Recall@1 87.84 (R@2 93.15, R@4 95.99, R@8 97.85). The
same code without DAS (MS†): 83.99 (90.39, 94.51, 96.80). Compare with the best of the per-epoch
evaluations (the code keeps the best epoch; the paper does not say which epoch it reports).

Deviations:
  - Batches: the official sampler draws 56 classes with replacement (a class can come twice) and
    2 images of each with replacement; ours draws 56 distinct classes x 2 images.
  - Epoch length: ceil(8054 / 112) = 72 steps; the official sampler yields floor(8054 / 112) = 71
    batches an epoch.
  - Loss reduction: the official MS skips an anchor whose mined positives or mined negatives are
    empty and averages over the anchors it keeps (of the 4 x 112 real and generated ones); ours
    keeps the non-empty term and divides by the number of embeddings.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.das("das_resnet50_cars", "cars196", classes_per_batch=56, weight_decay=4e-4)
