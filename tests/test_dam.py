"""DAM on HPT's encoders: exact parameter count on ViT-B-16-quickgelu, the head's logits over HPT's
features, γ per dataset, the scalars it records, and a toy run that learns."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from workbench.backbone import CLIPBackbone
from workbench.methods import ClassTask, build_method
from workbench.methods import _dam_alignment as dam

CLASSES = ("red circle", "blue square", "green star")


def _task(tmp_path, dataset="toy_objects_base"):
    desc = {c: [f"a {c} drawn {i} times." for i in range(5)] for c in CLASSES}
    struct = {c: [{"Entities": [c.split()[1]], "Attributes": [c.split()[0]], "Entity-to-Entity Relationships": [],
                   "Entity-to-Attribute Relationships": [{"entity": c.split()[1], "relationship": "is",
                                                          "attribute": c.split()[0]}]}] * 5 for c in CLASSES}
    (tmp_path / "d.json").write_text(json.dumps(desc))
    (tmp_path / "s.json").write_text(json.dumps(struct))
    return ClassTask(dataset, CLASSES, ("a photo of a {}.",),
                     knowledge_files={"descriptions": str(tmp_path / "d.json"), "structures": str(tmp_path / "s.json")})


@pytest.fixture
def on_tiny(tiny_backbone):
    built = []

    def build(task, **overrides):
        tiny_backbone.clear_extensions()
        torch.manual_seed(0)
        m = build_method("dam", tiny_backbone, task, preset="toy", overrides=overrides)
        built.append(m)
        return m

    yield build
    tiny_backbone.clear_extensions()


def test_dam_adds_eleven_parameters_to_hpt_on_vit_b16(tmp_path):
    torch.manual_seed(0)
    backbone = CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")
    model = build_method("dam", backbone, _task(tmp_path))
    named = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    head = {n: k for n, k in named.items() if n.startswith("head.")}
    assert sum(named.values()) - sum(head.values()) == 295_960  # HPT's parameters: DAM's Table X, HPT row
    assert len(head) == 11 and sum(head.values()) == 11
    assert sum(p.numel() for p in model.trainable_parameters()) == 295_971
    backbone.clear_extensions()


def test_dam_logits_are_eq11_over_hpt_features(on_tiny, tmp_path):
    model = on_tiny(_task(tmp_path)).eval()
    images = torch.randn(2, 3, model.backbone.image_size, model.backbone.image_size)
    with torch.no_grad():
        out = model.hpt_forward(images)
        logits = model.score(out)
    v = model.head.learned_scalars()
    img = dam.sma(out.image, out.image_frozen, v["lambda_image_sma"], v["rho_image_sma"])
    txt = dam.sma(out.text, out.text_frozen, v["lambda_text_sma"], v["rho_text_sma"])
    d_cma = dam.cma(img, txt, v["lambda_itot"], v["lambda_ttoi"], v["mu_itot"], v["mu_ttoi"], v["alpha"], v["omega"])
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    want = float(model.backbone.logit_scale) * (v["beta"] * cos + (1 - v["beta"]) * d_cma)
    assert torch.allclose(logits, want, atol=1e-4)


def test_dam_without_alignments_scores_prompted_image_against_prompted_text(on_tiny, tmp_path):
    model = on_tiny(_task(tmp_path), sma_image=False, sma_text=False, cma=False).eval()
    images = torch.randn(2, 3, model.backbone.image_size, model.backbone.image_size)
    with torch.no_grad():
        out = model.hpt_forward(images)
        want = float(model.backbone.logit_scale) * out.image @ out.text.t()
        assert torch.allclose(model.score(out), want, atol=1e-5)
        loss = model.training_loss(images, torch.tensor([0, 2]))
    assert loss.scalars["sma_loss"] == 0.0


def test_gamma_follows_the_paper_per_dataset(on_tiny, tmp_path):
    assert on_tiny(_task(tmp_path, "fgvc_aircraft_base"), gamma=None).gamma == 4.0
    assert on_tiny(_task(tmp_path, "imagenet"), gamma=None).gamma == 9.0
    assert on_tiny(_task(tmp_path, "toy_objects_base"), gamma=None).gamma == 8.0  # not in the paper: fallback
    assert on_tiny(_task(tmp_path), gamma=2.5).gamma == 2.5


def test_dam_records_every_scalar_and_declares_their_plot(on_tiny, tmp_path):
    model = on_tiny(_task(tmp_path))
    recorded = model.learned_scalars()
    for name in ("lambda_image_sma", "rho_text_sma", "lambda_itot", "mu_ttoi", "alpha", "omega", "beta"):
        assert f"dam.{name}" in recorded
    assert any(p["columns"] == ["dam.*"] for p in model.plots)


def test_bad_dam_settings_are_refused(on_tiny, tmp_path):
    with pytest.raises(ValueError, match="method.directions must be one of"):
        on_tiny(_task(tmp_path), directions="up")
    with pytest.raises(ValueError, match="method.gamma must be >= 0"):
        on_tiny(_task(tmp_path), gamma=-1.0)


# ---- a short toy base-to-novel run ---------------------------------------------------------------
@pytest.mark.slow
def test_toy_dam_learns_base_above_zero_shot_and_records_scalars(toy_backbone, toy_data_root):
    from workbench.data import base_new_split, load_few_shot
    from workbench.engine.evaluate import evaluate
    from workbench.engine.train import TrainConfig, fit
    from workbench.methods.dam import DAM

    base, new = base_new_split(load_few_shot("toy_objects", 4, 1))
    zero = build_method("zeroshot", toy_backbone, ClassTask.from_splits(base))
    zs_base = evaluate(zero, base, domain="base", progress=False).top1
    model = build_method("dam", toy_backbone, ClassTask.from_splits(base), preset="toy")
    short = {**DAM.presets["toy"].train, "epochs": 3}
    history = fit(model, base, TrainConfig.from_dict(short), seed=1, progress=False).history
    dam_base = evaluate(model, base, domain="base", progress=False).top1
    print(f"toy b2n 4 shots: zero-shot base {zs_base:.1f} | DAM base {dam_base:.1f}")
    assert dam_base > zs_base + 2.0
    assert {"dam.beta", "dam.alpha", "dam.lambda_itot", "sma_loss"} <= set(history[-1])
    assert history[-1]["dam.beta"] != history[0]["dam.beta"]  # β learns
    toy_backbone.clear_extensions()
