"""GPU paths, skipped where there is no CUDA device (CI has none; run them on a GPU machine):
the backbone equals open_clip on the GPU, and every method trains an epoch under amp and bf16
autocast there and evaluates."""
from __future__ import annotations

import math

import pytest
import torch

from workbench.backbone import CLIPBackbone
from workbench.engine.evaluate import evaluate
from workbench.engine.train import TrainConfig, fit
from workbench.methods import ClassTask, build_method, get_method_class, list_methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_backbone_equals_open_clip_on_cuda():
    torch.manual_seed(0)
    backbone = CLIPBackbone.from_pretrained("ViT-B-16-quickgelu", device="cuda")
    images = torch.randn(2, 3, 224, 224, device="cuda")
    tokens = backbone.tokenizer(["a photo of a cat.", "a dog"]).to("cuda")
    with torch.no_grad():
        assert torch.allclose(backbone.encode_image(images), backbone.clip.encode_image(images), atol=1e-4)
        assert torch.allclose(backbone.encode_text(tokens), backbone.clip.encode_text(tokens), atol=1e-4)


@pytest.mark.parametrize("precision", ["amp", "bf16"])
@pytest.mark.parametrize("name", [m for m in list_methods() if not m.startswith("_")])  # not test doubles
def test_method_trains_and_evaluates_on_cuda(name, precision, color_dataset):
    torch.manual_seed(0)
    backbone = CLIPBackbone.from_pretrained("wb-tiny-vit", device="cuda")
    cls = get_method_class(name)
    preset = "toy" if "toy" in cls.presets else None  # sized for the 4-layer towers
    method = build_method(name, backbone, ClassTask.from_splits(color_dataset), preset=preset)
    train = {**cls.presets[preset or cls.default_preset].train, "epochs": 1, "precision": precision}
    result = fit(method, color_dataset, TrainConfig.from_dict(train), device="cuda", progress=False)
    scalars = [v for record in result.history for v in record.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in scalars)
    assert all(p.device.type == "cuda" for p in method.parameters())
    ev = evaluate(method, color_dataset, device="cuda", progress=False, max_embeddings=4)
    assert ev.logits.shape == (len(color_dataset.test), len(color_dataset.classnames))
    assert ev.extra["image_embeddings"].shape[0] == 4
