"""Proxy-Anchor + HIER, ViT-S/16, 128-d, In-shop: the authors' recipe (CVPR 2023).

    jaxdml train --config hier_vits16_inshop \
        --data-dir ~/tensorflow_datasets --manual-dir ~/deepfashion_inshop \
        --pretrained vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors

Weights: timm's `vit_small_patch16_224.augreg_in21k_ft_in1k` (ImageNet-21k pre-training,
ImageNet-1k fine-tuning at 224; `model.safetensors` of that Hugging Face repository, renamed).
The official code calls `timm.create_model("vit_small_patch16_224", pretrained=True)` with the
pinned timm 0.4.12 (environment.yml). The timm sources of that period map the name to Google's
augreg checkpoint `S_16-i21k-300ep-...--imagenet2012-steps_20k-lr_0.03-res_224.npz`, the same
weights (not checked against 0.4.12 itself); the paper's table marks ViT as pre-trained on
ImageNet-21k.
`--manual-dir`: the DeepFashion In-shop benchmark folder holding `img/` and
`Eval/list_eval_partition.txt` (read once, when the dataset is prepared).

Source: Kim, Jeong, Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical
Regularization", CVPR 2023, and its code, github.com/tjddus9597/HIER-CVPR23 (read at 3986a74):
  - scripts/ViT/hier_Inshop.sh (2 GPUs):
    `--lr 1e-5 --epochs 150 --batch_size 90 --num_hproxies 512 --clip_r 2.3 --hyp_c 0.1
    --warmup_epochs 5 --weight_decay 1e-4 --use_fp16 True --clip_grad 1.0 --eval_freq 1
    --lambda1 1 --lambda2 0.5 --topk 20 --mrg 0.1 --dataset Inshop
    --model vit_small_patch16_224 --IPC 2 --loss PA --emb 512 --use_lastnorm True
    --optimizer adamw --fc_lr_scale 1e2`.
  - Everything the HIER configs share (hier/train.py, sampler.py, models/, losses.py,
    utils.py), and the deviations they share: `recipes.hier` (configs/recipes.py).

Target (the paper's Table 1, misc/table.png of the repository, HIER V^128):
Recall@1 92.7 (R@10 98.4, R@20 98.9). Hyp (Ermolov et al.) with the same backbone and
dimension: 92.7.
The code logs every evaluation; which epoch the paper reports is not stated (compare with the best
evaluation).

Deviations: those of `recipes.hier` (configs/recipes.py), and
  - Evaluation every epoch from the start (the official code starts at epoch 40).
"""

from jaxdml.app.config import Config
from jaxdml.configs import recipes


def get_config() -> Config:
  return recipes.hier("hier_vits16_inshop", "inshop", "vit_small_patch16",
      embedding_dim=128, learning_rate=1e-5, weight_decay=1e-4, epochs=150, warm_epochs=5,
      head_lr_mult=100.0)
