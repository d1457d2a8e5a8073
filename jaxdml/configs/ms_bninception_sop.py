"""Multi-similarity, BN-Inception, 512-d, Stanford Online Products: derived from the CUB recipe.

    jaxdml train --config ms_bninception_sop \
        --data-dir ~/tensorflow_datasets --pretrained bn_inception-52deb4733.pth

Weights: Cadene's ImageNet BN-Inception, `bn_inception-52deb4733.pth` (the file named in the
official README and ret_benchmark/config/model_path.py).

Not an official recipe: github.com/msight-tech/research-ms-loss (code of Wang et al.,
"Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning", CVPR 2019) ships
training configs for CUB-200-2011 only. This config keeps its BN-Inception recipe
(configs/example.yaml with ret_benchmark/config/defaults.py; see ms_bninception_cub.py for the files
and values): Adam with lr 3e-5 and weight decay 5e-4 (L2), one learning rate for every parameter, 16
classes x 5 images, lr x0.1 at 40% and 80% of training, no warm-up, alpha 2, beta 40 (SCALE_NEG),
lambda 0.5, mining epsilon 0.1, a 512-d linear embedding with L2 normalisation, global max pooling
(ret_benchmark/modeling/backbone/bninception.py), BGR input minus (104, 117, 128) on [0, 255],
BatchNorm in eval mode, crops of 227 and test images resized to 256. It keeps the CUB run's length
in epochs rather than in iterations: there, 3000 iterations of 80 images are 41 epochs with the
drops at epochs 16 and 32. Here the 59,551 training images (11,318 products) make ceil(59551 / 80) =
745 steps per epoch, so 41 epochs are 30545 steps, with the drops at steps 11920 and 23840. The
paper's own settings for this dataset are not in the public code and were not checked here.

Target: none quoted. The paper's result on this benchmark comes from the paper's own settings (not
in the public code, and the paper text was not checked here), which this derived recipe does not
claim to reproduce.

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
  - Evaluation every 5 epochs (3725 steps); each pass embeds 60,502 test images; the official code
    evaluates every 200 iterations.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.multi_similarity("ms_bninception_sop", "sop", "bn_inception",
      eval_every_epochs=5, checkpoint_every_epochs=5)
