import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml import models
from jaxdml.models import backbone_from_name, with_backbone_weights


@pytest.mark.parametrize("name,cls", [("resnet18", models.ResNet), ("resnet50", models.ResNet),
                                      ("bn_inception", models.BNInception),
                                      ("vit_small_patch16", models.VisionTransformer),
                                      ("deit_small_patch16", models.VisionTransformer),
                                      ("mobilenet_v2", models.MobileNetV2),
                                      ("efficientnet_b3", models.EfficientNet)])
def test_backbones_by_name(name, cls):
  backbone, load = backbone_from_name(name, frozen_bn=True, dtype=jnp.bfloat16)
  assert isinstance(backbone, cls) and callable(load)
  if hasattr(backbone, "frozen_bn"):
    assert backbone.frozen_bn


def test_unknown_backbone():
  with pytest.raises(ValueError, match="unknown backbone"):
    backbone_from_name("vgg16")


def variables():
  return {"params": {"backbone": {"conv": {"kernel": jnp.zeros((3, 3))}},
                     "head": {"kernel": jnp.ones((2,))}},
          "batch_stats": {"backbone": {"bn": {"mean": jnp.zeros(3)}}}}


def test_with_backbone_weights_replaces_only_the_backbone():
  new = {"params": {"conv": {"kernel": np.full((3, 3), 2.0, np.float32)}},
         "batch_stats": {"bn": {"mean": np.arange(3, dtype=np.float32)}}}
  out = with_backbone_weights(variables(), new)
  np.testing.assert_array_equal(out["params"]["backbone"]["conv"]["kernel"], 2.0)
  np.testing.assert_array_equal(out["batch_stats"]["backbone"]["bn"]["mean"], [0, 1, 2])
  np.testing.assert_array_equal(out["params"]["head"]["kernel"], 1.0)


def test_with_backbone_weights_errors():
  with pytest.raises(ValueError, match="shape"):
    with_backbone_weights(variables(), {"params": {"conv": {"kernel": np.zeros((3, 4))}}})
  with pytest.raises(ValueError, match="structure"):
    with_backbone_weights(variables(), {"params": {"other": {"kernel": np.zeros((3, 3))}}})
  with pytest.raises(ValueError, match="no batch_stats"):
    with_backbone_weights({"params": variables()["params"]},
                          {"batch_stats": {"bn": {"mean": np.zeros(3)}}})


def test_pretrained_resnet_file_reaches_the_embedding_model(tmp_path):
  """A torchvision-layout file goes into EmbeddingModel's backbone through the registry."""
  torch = pytest.importorskip("torch")
  import torch_reference  # tests/models/torch_reference.py

  net = torch_reference.torch_resnet(18)
  path = tmp_path / "r18.pth"
  torch.save(net.state_dict(), path)
  backbone, load = backbone_from_name("resnet18")
  model = models.EmbeddingModel(backbone=backbone, pooling="avg", embedding_dim=8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"),
                                             jnp.zeros((1, 32, 32, 3)), train=False))
  fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  out = with_backbone_weights(fresh, load(path))
  np.testing.assert_allclose(np.asarray(out["params"]["backbone"]["conv1"]["kernel"]),
                             net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
