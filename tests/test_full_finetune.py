"""The full_finetune protocol (RAda's FFT setting) and its baselines: the text-initialized head equals zero-shot
CLIP at init, LP-FT's first stage leaves the image tower untouched exactly, L2-SP's penalty and FLYP's
symmetric InfoNCE by hand, and a toy run end to end."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from workbench.engine.staged import Stage, fit_staged
from workbench.engine.train import TrainConfig
from workbench.methods import build_method
from workbench.methods.base import ClassTask
from workbench.methods.flyp import symmetric_infonce


@pytest.fixture
def backbone(tiny_backbone):
    return copy.deepcopy(tiny_backbone)  # these methods train the towers: never the shared fixture


def images(n=6, seed=0):
    return torch.rand(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def hand_zero_shot_logits(backbone, x, classnames, templates):
    """s · cos(image, class), each class the normalized mean of its normalized prompt features."""
    with torch.no_grad():
        img = backbone.encode_image(x)
        img = img / img.norm(dim=-1, keepdim=True)
        rows = []
        for c in classnames:
            t = backbone.encode_text(backbone.tokenize([tpl.format(c) for tpl in templates]))
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(t / t.norm())
        return backbone.logit_scale * img @ torch.stack(rows).t()


@pytest.mark.parametrize("name", ["finetune", "lp_ft", "l2sp", "rada_fft", "flyp"])
def test_head_initialized_from_text_features_gives_the_zero_shot_logits_at_init(backbone, color_dataset, name):
    task = ClassTask.from_splits(color_dataset)
    method = build_method(name, backbone, task, preset="toy")
    method.eval()
    method.prepare_eval(task, "base")
    x = images()
    expected = hand_zero_shot_logits(backbone, x, task.classnames, task.templates)
    torch.testing.assert_close(method.eval_logits(x), expected, rtol=1e-4, atol=1e-4)


def _adamw(lr, epochs=1):
    return TrainConfig(optimizer="adamw", lr=lr, weight_decay=0.1, epochs=epochs, batch_size=8, warmup_epochs=0,
                       schedule="constant", precision="fp32")


def test_lp_ft_stage_one_leaves_the_image_tower_untouched_and_stage_two_trains_it(backbone, color_dataset):
    method = build_method("lp_ft", backbone, ClassTask.from_splits(color_dataset), preset="toy")
    tower0 = {k: v.clone() for k, v in backbone.clip.visual.state_dict().items()}
    text0 = {k: v.clone() for k, v in backbone.clip.state_dict().items() if not k.startswith("visual.")}
    head0 = method.head.weight.detach().clone()
    plan = method.stage_plan(_adamw(1e-3))
    assert [k for k, _ in plan] == ["head", "all"] and plan[0][1].lr == method.config.lp_lr
    fit_staged(method, color_dataset, [Stage("head", plan[0][1])], progress=False)
    for k, v in backbone.clip.visual.state_dict().items():
        assert torch.equal(v, tower0[k]), k  # exactly: stage 1 trains the head only
    assert not torch.equal(method.head.weight, head0)
    head1 = method.head.weight.detach().clone()
    fit_staged(method, color_dataset, [Stage("all", _adamw(1e-3))], progress=False)
    assert any(not torch.equal(v, tower0[k]) for k, v in backbone.clip.visual.state_dict().items())
    assert not torch.equal(method.head.weight, head1)
    for k, v in backbone.clip.state_dict().items():  # the text tower is replaced by the head: never trained
        if not k.startswith("visual."):
            assert torch.equal(v, text0[k]), k


def test_l2sp_penalty_is_half_alpha_times_the_squared_distance_to_the_initial_weights(backbone, color_dataset):
    method = build_method("l2sp", backbone, ClassTask.from_splits(color_dataset), preset="toy",
                          overrides={"l2sp_alpha": 0.3})
    start = {k: v.clone() for k, v in backbone.clip.visual.state_dict().items()}
    head0 = method.head.weight.detach().clone(), method.head.bias.detach().clone()
    for p in method.stage_parameters("all"):
        p.requires_grad_(True)
    assert float(method.l2sp_penalty().detach()) == 0.0
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(backbone.clip.visual.parameters())[:3] + [method.head.weight]:
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    by_hand = 0.0
    for k, v in backbone.clip.visual.state_dict().items():
        by_hand += float(((v.double() - start[k].double()) ** 2).sum())
    by_hand += float(((method.head.weight.double() - head0[0].double()) ** 2).sum())
    by_hand += float(((method.head.bias.double() - head0[1].double()) ** 2).sum())
    penalty = method.l2sp_penalty()
    assert float(penalty) == pytest.approx(0.5 * 0.3 * by_hand, rel=1e-5)
    penalty.backward()  # gradient α (θ − θ₀)
    torch.testing.assert_close(method.head.weight.grad, 0.3 * (method.head.weight.detach() - head0[0]))


def test_flyp_loss_is_the_symmetric_infonce_written_out(backbone, color_dataset):
    g = torch.Generator().manual_seed(0)
    img, txt, s = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), 7.0
    i_n = [v / math.sqrt(sum(float(e) ** 2 for e in v)) for v in img]
    t_n = [v / math.sqrt(sum(float(e) ** 2 for e in v)) for v in txt]
    sim = [[s * float((a * b).sum()) for b in t_n] for a in i_n]
    img_to_txt = -sum(sim[i][i] - math.log(sum(math.exp(x) for x in sim[i])) for i in range(5)) / 5
    txt_to_img = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(5))) for j in range(5)) / 5
    assert float(symmetric_infonce(img, txt, s)) == pytest.approx((img_to_txt + txt_to_img) / 2, rel=1e-5)

    # the method: image i against the caption of image i's class (one template: no random choice)
    ds = color_dataset
    ds.templates = ["a photo of a {} square."]
    method = build_method("flyp", backbone, ClassTask.from_splits(ds), preset="toy")
    x, labels = images(4), torch.tensor([0, 2, 2, 4])
    loss = method.training_loss(x, labels).loss
    with torch.no_grad():
        captions = backbone.tokenize([f"a photo of a {ds.classnames[int(y)]} square." for y in labels])
        expected = symmetric_infonce(backbone.encode_image(x), backbone.encode_text(captions), backbone.logit_scale)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert "logit_scale" in [n for n, p in backbone.clip.named_parameters()
                             if any(p is q for q in method.stage_parameters("all"))]


def test_rada_fft_regularizes_the_mask_only_while_the_tower_is_frozen(backbone, color_dataset):
    method = build_method("rada_fft", backbone, ClassTask.from_splits(color_dataset), preset="toy")
    assert method.stages == ("mask", "all")
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        for p in method.mask.parameters():  # a mask away from 1
            p.add_(0.05)
    frozen = method.training_loss(x, y)
    assert frozen.scalars["mask_reg"] > 0
    assert float(frozen.loss) == pytest.approx(frozen.scalars["ce"] + 1.5 * frozen.scalars["mask_reg"], rel=1e-5)
    for p in method.stage_parameters("all"):
        p.requires_grad_(True)
    assert method.training_loss(x, y).scalars["mask_reg"] == 0.0  # Eq. 15: CE only


@pytest.mark.slow  # evaluates the 2 × 1440 toy test images
def test_full_finetune_protocol_trains_in_stages_and_scores_source_and_shifted_target(toy_data_root, tmp_path):
    from workbench.protocols import build_spec
    from workbench.runs import Registry
    from workbench.runs.execute import execute

    spec = build_spec("lp_ft", "full_finetune", ["toy_objects", "toy_objects_shifted"], shots=1, seed=1,
                      backbone="wb-tiny-vit", settings={"method.lp_epochs": 1, "train.epochs": 1})
    run = execute(spec, Registry(tmp_path / "runs"), device="cpu", progress=False)
    m = run.metrics
    assert {"toy_objects", "toy_objects_shifted", "average"} <= set(m) and m["missing_targets"] == 0
    assert m["average"] == m["toy_objects_shifted"]
    assert [(r["stage"], r["epoch"]) for r in run.history().to_dict("records")] == [("head", 0), ("all", 1)]
    with pytest.raises(Exception, match="exactly|at least|source"):
        build_spec("lp_ft", "full_finetune", ["toy_objects"], shots=1, backbone="wb-tiny-vit")


def test_flyp_caption_templates_come_from_its_own_checkpointed_generator(backbone):
    task = ClassTask("x", ("cat", "dog"), ("a {}.", "the {}.", "one {}."))
    torch.manual_seed(5)
    method = build_method("flyp", backbone, task, preset="toy")
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    first = method.captions(labels)
    saved = method.trainable_state_dict()["state_caption_rng"]
    rng_before = torch.get_rng_state()
    second = method.captions(labels)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the augmentations' global RNG is not touched
    method.load_trainable_state_dict({"state_caption_rng": saved})
    assert torch.equal(method.captions(labels), second)  # resumed: the same draws
    allowed = {tuple(method.class_tokens[y, k].tolist()) for y in (0, 1) for k in range(3)}
    assert {tuple(row.tolist()) for row in torch.cat([first, second])} <= allowed
