"""Multi-similarity loss, ResNet-50, 512-d, In-shop: derived from the authors' CUB recipe.

    jaxdml train --config ms_resnet50_inshop \
        --data-dir ~/tensorflow_datasets --manual-dir ~/deepfashion_inshop \
        --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`), as torchvision's `resnet50(pretrained=True)` in the official code.
`--manual-dir`: the DeepFashion In-shop benchmark folder holding `img/` and
`Eval/list_eval_partition.txt` (read once, when the dataset is prepared).

Not an official recipe: github.com/msight-tech/research-ms-loss (code of Wang et al.,
"Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning", CVPR 2019) ships
training configs for CUB-200-2011 only. This config keeps its ResNet-50 recipe
(configs/example_resnet50.yaml with ret_benchmark/config/defaults.py; see ms_resnet50_cub.py for the
files and values): Adam with lr 3e-5 and weight decay 5e-4 (L2), one learning rate for every
parameter, 16 classes x 5 images, lr x0.1 at 40% and 80% of training, no warm-up, alpha 2, beta 40
(SCALE_NEG), lambda 0.5, mining epsilon 0.1, a 512-d linear embedding with L2 normalisation, global
average pooling (ret_benchmark/modeling/backbone/resnet.py), RGB input with ImageNet mean / std,
BatchNorm in eval mode, crops of 227 and test images resized to 256. It keeps the CUB run's length
in epochs rather than in iterations: there, 3000 iterations of 80 images are 41 epochs with the
drops at epochs 16 and 32. Here the 25,882 training images (3,997 items) make ceil(25882 / 80) = 324
steps per epoch, so 41 epochs are 13284 steps, with the drops at steps 5184 and 10368. The paper's
own settings for this dataset are not in the public code and were not checked here.

Target: none for this recipe. The paper's abstract gives Recall@1 88.0 on In-Shop with the paper's
own settings for that dataset (not in the public code), which this derived recipe does not claim to
reproduce.

Deviations (besides the recipe being derived):
  - Crops: random resized crop to 227 at area scale (0.08, 1) of the original image; the official
    code resizes the shorter side to 256 first and crops at scale (0.16, 1).
  - BatchNorm: the official code only fixes the statistics (eval mode) and still trains BN's scale
    and bias; `frozen_bn=True` here fixes those too.
  - Loss reduction: the official code drops an anchor whose mined positives or mined negatives are
    empty; ours keeps the remaining term. Both divide by the batch size.
  - Batches: the official RandomIdentitySampler deals out each class's shuffled images in chunks of
    5 (padding a class of fewer than 5 with repeats), so a pass draws a class about n / 5 times and
    every image once; ours draws every class about equally often, 5 random images each time (with
    repeats below 5).
  - Evaluation every 5 epochs (1620 steps); each pass embeds 14,218 queries and 12,612 gallery
    images; the official code evaluates every 200 iterations.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.multi_similarity("ms_resnet50_inshop", "inshop", "resnet50", eval_every_epochs=5,
      checkpoint_every_epochs=5)
