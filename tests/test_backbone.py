"""The offline backbone: real ImageNet weights, pinned hash, clear errors for bad names and files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmeraser.shared.backbone import load_backbone, state_dict_sha256
from lmeraser.shared.errors import BackboneError

PALACE, DAISY = 698, 985


def _imagenet_top3(name: str) -> list[int]:
    from sklearn.datasets import load_sample_image

    backbone = load_backbone(input_size=224)
    pixels = torch.from_numpy(load_sample_image(name).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    height, width = pixels.shape[-2:]
    scale = 256 / min(height, width)
    resized = F.interpolate(pixels, size=(round(height * scale), round(width * scale)), mode="bicubic",
                            align_corners=False).clamp(0, 1)
    top, left = (resized.shape[-2] - 224) // 2, (resized.shape[-1] - 224) // 2
    crop = resized[..., top:top + 224, left:left + 224]
    normalized = (crop - 0.5) / 0.5
    with torch.no_grad():
        logits = backbone.model(normalized.contiguous(memory_format=torch.channels_last))
    return logits[0].topk(3).indices.tolist()


def test_default_weights_rank_palace() -> None:
    assert PALACE in _imagenet_top3("china.jpg")


def test_default_weights_rank_daisy() -> None:
    assert DAISY in _imagenet_top3("flower.jpg")


def test_backbone_frozen_with_stable_hash() -> None:
    backbone = load_backbone(input_size=32)
    assert backbone.feature_dim == 1280
    assert backbone.mean == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.sha256 == state_dict_sha256(backbone.model)
    assert backbone.sha256 == load_backbone(input_size=224).sha256


def test_normalisation_override() -> None:
    backbone = load_backbone(input_size=32, mean="0.4,0.5,0.6", std="0.2,0.2,0.2")
    assert backbone.mean == (0.4, 0.5, 0.6)
    assert backbone.std == (0.2, 0.2, 0.2)
    with pytest.raises(BackboneError, match="expected one value per RGB channel, got 2"):
        load_backbone(input_size=32, mean="0.5,0.5")


def test_invalid_timm_name_rejected() -> None:
    with pytest.raises(BackboneError, match="unknown timm model 'no_such_net'"):
        load_backbone("no_such_net", "", 32)


def test_missing_checkpoint_rejected(tmp_path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        load_backbone("tf_efficientnet_lite0", str(tmp_path / "absent.pth"), 32)


def test_mismatched_checkpoint_rejected(tmp_path) -> None:
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneError, match="does not match the architecture 'tf_efficientnet_lite0'"):
        load_backbone("tf_efficientnet_lite0", str(path), 32)


def test_matching_checkpoint_loads(tmp_path) -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone("resnet18", str(path), 32)
    assert backbone.feature_dim == 512
    assert backbone.sha256 == state_dict_sha256(model)
