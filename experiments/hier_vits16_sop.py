"""Proxy-Anchor + HIER, ViT-S/16, 128-d, Stanford Online Products: the authors' recipe (CVPR 2023).

    jaxdml train --config experiments/hier_vits16_sop.py \
        --data-dir ~/tensorflow_datasets \
        --pretrained vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors

Weights: timm's `vit_small_patch16_224.augreg_in21k_ft_in1k` (ImageNet-21k pre-training,
ImageNet-1k fine-tuning at 224; `model.safetensors` of that Hugging Face repository, renamed).
The official code calls `timm.create_model("vit_small_patch16_224", pretrained=True)` with the
pinned timm 0.4.12 (environment.yml). The timm sources of that period map the name to Google's
augreg checkpoint `S_16-i21k-300ep-...--imagenet2012-steps_20k-lr_0.03-res_224.npz`, the same
weights (not checked against 0.4.12 itself); the paper's table marks ViT as pre-trained on
ImageNet-21k.

Source: Kim, Jeong, Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical
Regularization", CVPR 2023, and its code, github.com/tjddus9597/HIER-CVPR23 (read at 3986a74):
  - scripts/ViT/hier_SOP.sh (2 GPUs):
    `--lr 1e-5 --epochs 150 --batch_size 90 --num_hproxies 512 --clip_r 2.3 --hyp_c 0.1
    --warmup_epochs 5 --weight_decay 1e-4 --use_fp16 True --clip_grad 1.0 --eval_freq 5
    --lambda1 1 --lambda2 0.5 --topk 20 --mrg 0.1 --dataset SOP
    --model vit_small_patch16_224 --IPC 2 --loss PA --emb 128 --use_lastnorm True
    --optimizer adamw --fc_lr_scale 1e2`.
  - hier/train.py: AdamW (eps 1e-4 under `--use_fp16 True`) on four parameter groups, all with
    `--weight_decay` (hier/utils.py get_params_groups): the backbone x 1, the head ("last"
    parameters) x `--fc_lr_scale`, the hierarchical proxies x 50, the Proxy-Anchor proxies
    x 1e4; the learning rate scaled by (90 x 2 GPUs) / 180 = 1; the backbone's learning rate is
    0 during the first `--warmup_epochs` epochs (a frozen warm-up, not a linear one); with
    `--lr_decay` a per-iteration step schedule equal to StepLR (`step_scheduler`), without it a
    constant rate; gradients clipped by value at 10 on the model and both losses
    (`clip_gradients_value`; `--clip_grad` only switches it on); loss = `--lambda1` x
    Proxy-Anchor + `--lambda2` x HIER on the embeddings of both GPUs (all-gathered); test-set
    Recall@1 every `--eval_freq` epochs once the warm-up is over (on SOP and In-shop from epoch
    40), by hyperbolic distance.
  - hier/sampler.py (UniqueClassSampler with `--IPC 2`): each global batch holds 90 distinct
    classes, 2 images of each drawn with replacement; len(train) // 180 batches an epoch.
  - hier/models/model.py: head = LayerNorm without affine parameters -> Linear (orthogonal
    init, zero bias) -> ToPoincare(c 0.1, clip_r 2.3, Riemannian gradient); ViT: timm's model with
    class-token pooling, the patch embedding frozen (`freeze(body, 0)`).
  - hier/losses.py: HIERLoss with 512 proxies (initialised as randn / sqrt(d) x 2.3 x 0.9),
    margin 0.1, tau 0.1, top-20 reciprocal neighbours (`--topk 20`), 50 triplets per anchor;
    PALoss_Angle: Proxy-Anchor on the cosine of the normalised embeddings and proxies, margin
    0.1, alpha 32, proxies kaiming-normal (fan_out).
  - hier/utils.py (MultiTransforms) and hier/helpers.py: random resized crop 224 at scale
    (0.2, 1), bicubic, and flip for training; resize 256 (bicubic) + centre crop 224 for testing;
    mean 0.5, std 0.5 for ViT (hier/train.py).

Target (the paper's Table 1, misc/table.png of the repository, HIER V^128):
Recall@1 85.6 (R@10 94.6, R@100 97.8). Hyp (Ermolov et al.) with the same backbone and
dimension: 85.5.
The code logs every evaluation; which epoch the paper reports is not stated (compare with the best
evaluation).

Deviations:
  - Precision: float32 here; the official runs use fp16 autocast with a gradient scaler, and
    AdamW's eps 1e-4 that goes with it (ours: optax's default 1e-8).
  - Two GPUs: the official loss sees both GPUs' embeddings but each GPU back-propagates through
    its own half only and DistributedDataParallel averages the model's gradients (half the
    full gradient); the loss modules are outside DistributedDataParallel, so each GPU updates
    its own copy of the proxies. Ours: one loss and one update on the batch of 180. Under Adam
    the factor of 2 matters only through eps and the clipping at 10.
  - Warm-up: our frozen backbone keeps its optimiser state; the official AdamW still updates the
    backbone's moment estimates while its learning rate is 0.
  - Batches: 90 distinct classes x 2 images, as the official sampler, which draws a class's two
    images with replacement (the same image can come twice); ours draws them without
    replacement. ceil(n / 180) steps an epoch against the official floor(n / 180).
  - Crops: random resized crop at scale (0.08, 1) with jaxdml's bilinear resize; the official
    ViT runs use scale (0.2, 1) and bicubic interpolation.
  - Patch embedding: trained here; the official code freezes it.
  - Evaluation every 5 epochs from the start, as `--eval_freq 5` (the official code starts
    at epoch 40).
"""

from jaxdml.train import TrainConfig, recipes


def get_config() -> TrainConfig:
  return recipes.hier("hier_vits16_sop", "sop", "vit_small_patch16",
      embedding_dim=128, learning_rate=1e-5, weight_decay=1e-4, epochs=150, warm_epochs=5,
      head_lr_mult=100.0, eval_every_epochs=5)
