"""Baselines as their released code runs them: class names with underscores prompt as words, the
template sets and presets hold what the released files say (values transcribed from those files)."""
from __future__ import annotations

import re

import pytest
import torch

from workbench.data.templates import list_template_sets, load_template_set
from workbench.engine.features import class_text_features
from workbench.methods import ClassTask, build_method, get_method_class
from workbench.methods.common import method_templates

UNDERSCORED = ClassTask("oxford_pets", ("american_bulldog", "great_pyrenees", "abyssinian"),
                        ("a photo of a {}, a type of pet.",))
SPACED = ClassTask("oxford_pets", ("american bulldog", "great pyrenees", "abyssinian"),
                   ("a photo of a {}, a type of pet.",))
TEXT_METHODS = ("zeroshot", "coop", "cocoop", "kgcoop", "prograd", "ivlp", "maple", "promptsrc", "clip_adapter",
                "clip_lora", "tip_adapter")
SMALL = {"ivlp": {"depth_text": 2, "depth_vision": 2}, "maple": {"depth": 2},
         "promptsrc": {"depth_text": 2, "depth_vision": 2}}


def built(name, backbone, task):
    backbone.clear_extensions()
    torch.manual_seed(0)
    method = build_method(name, backbone, task, overrides=SMALL.get(name))
    method.eval()
    return method


def test_underscores_change_the_tokens_so_the_check_below_is_not_vacuous(tiny_backbone):
    a, b = tiny_backbone.tokenize(["a american_bulldog.", "a american bulldog."])
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_underscored_and_spaced_class_names_give_equal_logits(name, tiny_backbone):
    torch.manual_seed(1)
    images = torch.randn(2, 3, tiny_backbone.image_size, tiny_backbone.image_size)
    logits, teachers = [], []  # teachers: the frozen text features the method trains against
    for task in (UNDERSCORED, SPACED):
        method = built(name, tiny_backbone, task)
        with torch.no_grad():
            method.prepare_eval(task, "base")
            inputs = tiny_backbone.encode_image(images) if method.inputs == "features" else images
            logits.append(method.eval_logits(inputs))
        teachers.append({k: v.clone() for k, v in method.named_buffers()
                         if k in ("clip_text", "zero_shot_text", "frozen_text", "train_text")})
        tiny_backbone.clear_extensions()
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    assert teachers[0].keys() == teachers[1].keys()
    for key in teachers[0]:
        assert torch.allclose(teachers[0][key], teachers[1][key], atol=1e-6), key


def test_zero_shot_engine_prompts_underscored_names_as_words(tiny_backbone):
    assert torch.allclose(class_text_features(tiny_backbone, ["american_bulldog"], ["a photo of a {}."]),
                          class_text_features(tiny_backbone, ["american bulldog"], ["a photo of a {}."]))


# ---- template sets: counts and entries of the released files ------------------------------------

def test_promptsrc_teacher_is_the_released_60_imagenet_templates():
    t = load_template_set("promptsrc_imagenet60").all
    assert len(t) == len(set(t)) == 60
    assert t[:3] == ("a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.")
    assert t[-1] == "itap of the {}."
    # the same list for every dataset, whatever the dataset's own template
    task = ClassTask("dtd_base", ("banded",), ("{} texture.",))
    assert method_templates(task, None, "promptsrc_imagenet60") == t


def test_tip_adapter_uses_seven_templates_on_imagenet_and_coop_s_elsewhere():
    imagenet = method_templates(ClassTask("imagenet", ("tench",), ("a photo of a {}.",)), None, "tip_adapter")
    assert len(imagenet) == 7 and imagenet[0] == "itap of a {}." and imagenet[-1] == "a photo of the small {}."
    from workbench.data.manifests import load_manifest

    for dataset in ("oxford_pets", "dtd", "eurosat", "food101", "ucf101"):
        assert load_template_set("tip_adapter").for_dataset(dataset) == load_manifest(dataset).templates


def test_kgcoop_teacher_uses_its_own_dtd_template(tiny_backbone):
    task = ClassTask("dtd_base", ("banded", "blotchy"), ("{} texture.",))
    method = built("kgcoop", tiny_backbone, task)
    tiny_backbone.clear_extensions()  # the oracle: plain CLIP
    expected = class_text_features(tiny_backbone, task.classnames, ["a photo of a {}, a type of texture."])
    assert torch.allclose(method.clip_text.cpu(), expected, atol=1e-6)


def test_prograd_context_and_teacher_come_from_its_pets_template(tiny_backbone):
    task = ClassTask("oxford_pets", ("abyssinian", "american_bulldog"), ("a photo of a {}, a type of pet.",))
    method = built("prograd", tiny_backbone, task)
    words = "a type of pet, a photo of a"  # 8 words by spaces, 9 tokens ("pet" + ",")
    # released: n_ctx - 8 zero slots, then the embeddings of the first 8 tokens; the 9th stays text
    assert method.context.prefix == " ".join(["X"] * 8 + [words])
    tokens = tiny_backbone.tokenize([words])
    embedded = tiny_backbone.text.embed(tokens)[0, 1:9].float()
    ctx = method.context.ctx.detach()
    assert torch.equal(ctx[:8], torch.zeros_like(ctx[:8]))
    assert torch.allclose(ctx[8:], embedded, atol=1e-6)
    tiny_backbone.clear_extensions()  # the oracle: plain CLIP
    teacher = class_text_features(tiny_backbone, task.classnames, ["a type of pet, a photo of a {}."])
    assert torch.allclose(method.zero_shot_text.cpu(), teacher, atol=1e-6)


def test_every_template_set_names_its_source():
    for name in list_template_sets():
        assert re.search(r"\w+/\S+ .*\.py", load_template_set(name).source), name


# ---- presets: values from the released configs --------------------------------------------------

RELEASED = [  # (method, preset, method values, train values), from the files the descriptions name
    ("coop", "few_shot", {"n_ctx": 16, "ctx_init": ""}, {"epochs": 200, "batch_size": 32, "lr": 0.002}),
    ("coop", "few_shot_1shot", {"n_ctx": 16}, {"epochs": 50}),
    ("coop", "few_shot_2shot", {"n_ctx": 16}, {"epochs": 100}),
    ("coop", "few_shot_4shot", {"n_ctx": 16}, {"epochs": 100}),
    ("coop", "few_shot_imagenet", {"n_ctx": 16}, {"epochs": 50}),
    ("coop", "base_to_novel", {"n_ctx": 4, "ctx_init": "a photo of a"}, {"epochs": 200, "batch_size": 32}),
    ("coop", "base_to_novel_imagenet", {"ctx_init": "a photo of a"}, {"epochs": 50}),
    ("kgcoop", "base_to_novel", {"n_ctx": 4, "weight": 8.0}, {"epochs": 100, "batch_size": 128, "lr": 0.002}),
    ("prograd", "few_shot", {"n_ctx": 16, "lambda_": 1.0, "temperature": 1.0}, {"epochs": 200}),
    ("prograd", "few_shot_1shot", {}, {"epochs": 50}),
    ("prograd", "few_shot_4shot", {}, {"epochs": 100}),
    ("prograd", "few_shot_dtd_16shot", {"lambda_": 0.8}, {"epochs": 200}),
    ("prograd", "few_shot_eurosat_8shot", {"lambda_": 0.8}, {"epochs": 200}),
    ("prograd", "base_to_novel", {"n_ctx": 16, "lambda_": 1.0}, {"epochs": 100}),
    ("promptsrc", "few_shot", {"gpa_mean": 30.0, "gpa_std": 30.0}, {"epochs": 50, "batch_size": 4, "lr": 0.0025}),
    ("promptsrc", "few_shot_stanford_cars", {"gpa_mean": 45.0, "gpa_std": 5.0}, {"epochs": 50}),
    ("promptsrc", "few_shot_eurosat", {"gpa_mean": 45.0, "gpa_std": 5.0}, {"epochs": 50}),
    ("promptsrc", "base_to_novel", {"gpa_mean": 15.0, "gpa_std": 1.0, "depth_text": 9}, {"epochs": 20}),
    ("clip_lora", "few_shot", {"r": 2}, {"max_iters": 8000, "lr": 2e-4}),
    ("clip_lora", "few_shot_1shot", {}, {"max_iters": 500}),
    ("clip_lora", "few_shot_4shot", {}, {"max_iters": 2000}),
]


@pytest.mark.parametrize("method,preset,method_values,train_values", RELEASED)
def test_preset_holds_the_released_values(method, preset, method_values, train_values):
    from workbench.methods import resolve_config

    cls = get_method_class(method)
    config = resolve_config(cls, preset)
    for key, value in method_values.items():
        assert getattr(config, key) == value, key
    for key, value in train_values.items():
        assert cls.presets[preset].train[key] == value, key


def test_prograd_and_promptsrc_keep_lambda_and_gpa_elsewhere():
    from workbench.methods import resolve_config

    assert resolve_config(get_method_class("prograd"), "few_shot").lambda_ == 1.0
    for d in ("imagenet", "caltech101", "oxford_pets", "food101", "ucf101", "sun397"):
        assert f"few_shot_{d}" not in get_method_class("promptsrc").presets


def test_dataset_presets_are_chosen_for_their_dataset():
    from workbench.protocols.builder import resolve_preset

    assert resolve_preset("promptsrc", "few_shot", "ViT-B-16-quickgelu", "dtd") == "few_shot_dtd"
    assert resolve_preset("promptsrc", "few_shot", "ViT-B-16-quickgelu", "oxford_pets") == "few_shot"
    assert resolve_preset("coop", "base_to_novel", "ViT-B-16-quickgelu", "imagenet") == "base_to_novel_imagenet"


BASELINES = ("zeroshot", "linear_probe", "coop", "kgcoop", "prograd", "ivlp", "maple", "promptsrc", "clip_adapter",
             "tip_adapter", "clip_lora")


@pytest.mark.parametrize("name", BASELINES)
def test_every_paper_preset_names_its_released_file(name):
    for key, preset in get_method_class(name).presets.items():
        if key != "toy":
            assert re.search(r"\.(yaml|py|sh|md)\b", preset.description), (name, key)
