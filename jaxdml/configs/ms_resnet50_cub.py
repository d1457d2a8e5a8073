"""Multi-similarity loss, ResNet-50, 512-d, CUB-200-2011: the authors' recipe (CVPR 2019).

    jaxdml train --config ms_resnet50_cub \
        --data-dir ~/tensorflow_datasets --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code builds torchvision's `resnet50(pretrained=True)` and
loads `resnet50-19c8e357.pth`, torchvision's earlier file name for these weights).

Source: Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning",
CVPR 2019, and its code, github.com/msight-tech/research-ms-loss:
  - configs/example_resnet50.yaml: backbone resnet50, RGB input with ImageNet mean / std; Adam,
    BASE_LR 3e-5, WEIGHT_DECAY 5e-4 (PyTorch Adam's L2 penalty); MAX_ITERS 3000, STEPS
    [1200, 2400], WARMUP_ITERS 0; TRAIN_BATCHSIZE 80 with NUM_INSTANCES 5 (16 classes x 5 images,
    RandomIdentitySampler).
  - ret_benchmark/config/defaults.py: head linear_norm, DIM 512 (linear + L2 normalisation);
    SCALE_POS 2.0, SCALE_NEG 40.0 (not overridden by the yaml); GAMMA 0.1; ORIGIN_SIZE 256,
    CROP_SIZE 227, CROP_SCALE [0.16, 1], flip 0.5; VALIDATION.VERBOSE 200 (test-set recall every
    200 iterations, best kept).
  - ret_benchmark/losses/multi_similarity_loss.py: thresh (lambda) 0.5, mining margin
    (epsilon) 0.1.
  - ret_benchmark/modeling/backbone/resnet.py: torchvision's global average pooling; every
    BatchNorm layer kept in eval mode (ret_benchmark/engine/trainer.py also sets it each
    iteration).
  - ret_benchmark/solver/build.py: one learning rate for every parameter (a backbone `lr_mul`
    of 0.1 is stored in the parameter groups, but neither the optimiser nor WarmupMultiStepLR
    reads it).

Iterations to epochs: the 5,864 training images (classes 1-100) make 73.3 batches of 80; our epoch
is ceil(5864 / 80) = 74 steps. 3000 iterations -> 41 epochs (3034 steps); the lr drops x0.1 at
iterations 1200 and 2400 -> epochs 16 and 32 (steps 1184 and 2368).

Target: none quoted; the repository README reports only the BN-Inception run (65.7 in the paper,
above 66 with the code). The code reports the best test-set Recall@1 over its evaluations.

beta is 40 (SCALE_NEG), the value the official code trains with; 50 is pytorch-metric-learning's
default and what the Proxy-Anchor code's MS baseline (code/losses.py there) uses.

Deviations:
  - Crops: random resized crop to 227 at area scale (0.08, 1) of the original image; the official
    code resizes the shorter side to 256 first and crops at scale (0.16, 1).
  - BatchNorm: the official code only fixes the statistics (eval mode) and still trains BN's
    scale and bias; `frozen_bn=True` here fixes those too.
  - Loss reduction: the official code drops an anchor whose mined positives or mined negatives
    are empty; ours keeps the remaining term. Both divide by the batch size.
  - Batches: the official RandomIdentitySampler deals out each class's shuffled images in chunks
    of 5, so a pass draws a class about n / 5 times and every image once; ours draws every class
    about equally often, 5 random images each time.
  - Evaluation every 3 epochs (222 steps) instead of every 200 iterations.
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.multi_similarity("ms_resnet50_cub", "cub200", "resnet50")
