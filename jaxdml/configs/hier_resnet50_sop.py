"""Proxy-Anchor + HIER, ResNet-50, 512-d, Stanford Online Products: the authors' recipe (CVPR 2023).

    jaxdml train --config hier_resnet50_sop \
        --data-dir ~/tensorflow_datasets --pretrained resnet50-0676ba61.pth

Weights: torchvision's ImageNet ResNet-50, `ResNet50_Weights.IMAGENET1K_V1`
(`resnet50-0676ba61.pth`; the official code calls torchvision's `resnet50(pretrained=True)`).

Source: Kim, Jeong, Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical
Regularization", CVPR 2023, and its code, github.com/tjddus9597/HIER-CVPR23 (read at 3986a74):
  - scripts/Resnet50/hier_SOP.sh (2 GPUs):
    `--lr 6e-4 --epochs 150 --batch_size 90 --num_hproxies 512 --clip_r 2.3 --hyp_c 0.1
    --warmup_epochs 5 --weight_decay 1e-4 --use_fp16 True --clip_grad 1.0 --eval_freq 5
    --lambda1 1 --lambda2 0.5 --topk 20 --mrg 0.1 --dataset SOP --model resnet50 --IPC 2
    --loss PA --emb 512 --bn_freeze False --use_lastnorm True --optimizer adamw
    --fc_lr_scale 1 --lr_decay 25 --lr_decay_gamma 0.3`.
  - Everything the HIER configs share (hier/train.py, sampler.py, models/, losses.py,
    utils.py), and the deviations they share: `recipes.hier` (configs/recipes.py).

Target (the paper's Table 1, misc/table.png of the repository, HIER R^512):
Recall@1 80.2 (R@10 91.5, R@100 96.6).
The code logs every evaluation; which epoch the paper reports is not stated (compare with the best
evaluation).

Deviations: those of `recipes.hier` (configs/recipes.py), and
  - Evaluation every 5 epochs from the start, as `--eval_freq 5` (the official code starts
    at epoch 40).
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.hier("hier_resnet50_sop", "sop", "resnet50",
      embedding_dim=512, learning_rate=6e-4, weight_decay=1e-4, epochs=150, warm_epochs=5,
      decay_step=25, decay_rate=0.3, eval_every_epochs=5)
