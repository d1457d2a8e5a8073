"""Multi-similarity + DAS, ResNet-50, 512-d, Stanford Online Products: Table 1 (ECCV 2022).

    jaxdml train --config das_resnet50_sop \
        --data-dir ~/tensorflow_datasets --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code builds `pretrainedmodels`' resnet50 with
`pretrained="imagenet"`, which loads torchvision's `resnet50-19c8e357.pth`, the earlier file name
of these weights).

Source: Liu et al., "Densely-Anchored Sampling for Deep Metric Learning", ECCV 2022, and its code,
github.com/lizhaoliu-Lec/DAS (read at 4f2a357):
  - table1.sh, line "MS + R^{512}" of SOP: `--dataset online_products --n_epochs 300 --tau 200 250
    --bs 112 --embed_dim 512 --samples_per_class 2 --loss multisimilarity
    --arch resnet50_double_frozen_normalize_... --embedding_producer_used --produce_type DAS
    --das_dfs_num_scale 8 --das_mts_scale 0.1 --no_train_metrics` (default scale range, no
    `--detach`).
  - scripts/parameters.py, the defaults for everything else: Adam, lr 1e-5, weight decay 4e-4,
    MultiStepLR with gamma 0.3, the class_random sampler; MS pos weight 2, neg weight 40,
    margin 0.1, thresh 0.5 (the Revisiting-DML defaults); DAS: 3 generated embeddings per real
    one, scale factors in [0.5, 2.0], a bank of 10 transformations per class, generated
    embeddings L2-normalised.
  - Everything every DAS config shares, and their common deviations:
    `recipes.das` (configs/recipes.py).
DAS here: `das.recipe("table1", "online_products", "multisimilarity")`: K = 8 scaled
dimensions, scale factors in [0.5, 2.0], shift scale 0.1, gradients through the generated
embeddings (no detach).

Target (paper Table 1, MS + DAS, R^512): Recall@1 80.59 (R@10 91.80, R@100 96.68, R@1000 98.95).
The same code without DAS (MS†): 79.53 (91.06, 96.30, 98.83). Compare with the best of the
evaluations (the code keeps the best epoch; the paper does not say which epoch it reports).

Deviations:
  - Batches: the official sampler draws 56 classes with replacement and 2 images of each with
    replacement; ours draws 56 distinct classes x 2 images (with 11,318 classes the two rarely
    differ).
  - Epoch length: ceil(59551 / 112) = 532 steps; the official sampler yields 531 batches.
  - Loss reduction: the official MS skips an anchor whose mined positives or mined negatives are
    empty and averages over the anchors it keeps (of the 4 x 112 real and generated ones); ours
    keeps the non-empty term and divides by the number of embeddings.
  - Evaluation every 5 epochs (60,502 test images a pass); the official code evaluates every
    epoch.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.das("das_resnet50_sop", "sop", classes_per_batch=56, weight_decay=4e-4,
                     eval_every_epochs=5)
