"""Flax networks. Modules hold only networks; losses and state live elsewhere.

Backbones return their last feature map ([B, h, w, C], or tokens [B, 1 + N, D] for ViTs);
`EmbeddingModel` adds pooling and the embedding head. Weight files of torchvision / timm /
Hugging Face models are imported with the `*_variables_from_*` / `load_*` functions.
"""

from jaxdml.models.bn_inception import (
                                        BNInception,
                                        bn_inception,
                                        bn_inception_preprocess,
                                        bn_inception_variables_from_torch,
                                        load_bn_inception,
)
from jaxdml.models.cnn import ResCNN, SmallCNN, conv2d_same
from jaxdml.models.efficientnet import (
                                        EfficientNet,
                                        efficientnet_b3,
                                        efficientnet_variables_from_timm,
                                        load_efficientnet,
)
from jaxdml.models.glam import GLAM
from jaxdml.models.heads import EmbeddingHead, EmbeddingModel, GeM, l2_normalize, pool
from jaxdml.models.mobilenet import (
                                        MobileNetV2,
                                        load_mobilenet_v2,
                                        mobilenet_v2,
                                        mobilenet_v2_variables_from_torch,
)
from jaxdml.models.multiscale import multiscale_descriptor, resize_bilinear
from jaxdml.models.registry import BACKBONES, backbone_from_name, with_backbone_weights
from jaxdml.models.resnet import (
                                        ResNet,
                                        load_resnet,
                                        resnet,
                                        resnet18,
                                        resnet34,
                                        resnet50,
                                        resnet101,
                                        resnet_variables_from_torch,
)
from jaxdml.models.vit import (
                                        VisionTransformer,
                                        deit_small_patch16,
                                        load_vit,
                                        resample_pos_embed,
                                        vit_small_patch16,
                                        vit_variables_from_hf,
                                        vit_variables_from_timm,
)
from jaxdml.models.weights import load_state_dict

__all__ = ["EfficientNet", "efficientnet_b3", "efficientnet_variables_from_timm",
           "load_efficientnet", "GLAM", "multiscale_descriptor", "resize_bilinear", "MobileNetV2",
           "load_mobilenet_v2", "mobilenet_v2", "mobilenet_v2_variables_from_torch",
           "SmallCNN", "conv2d_same", "GeM", "EmbeddingHead", "EmbeddingModel", "l2_normalize",
           "pool", "BACKBONES", "backbone_from_name", "with_backbone_weights", "ResNet",
           "load_resnet", "resnet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet_variables_from_torch", "load_state_dict", "BNInception", "bn_inception",
           "bn_inception_preprocess", "bn_inception_variables_from_torch", "load_bn_inception",
           "VisionTransformer", "deit_small_patch16", "load_vit", "resample_pos_embed",
           "vit_small_patch16", "vit_variables_from_hf", "vit_variables_from_timm", "ResCNN"]
