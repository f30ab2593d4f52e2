"""Evaluation that keeps embeddings encodes each image once: `eval_outputs` must agree with
`eval_logits` and `eval_embeddings` computed separately, for every image-input method."""
from __future__ import annotations

import pytest
import torch

from workbench.methods import ClassTask, build_method, get_method_class, list_methods

CLASSES = ("red circle", "blue square", "green star")


@pytest.fixture(scope="module")
def task(tmp_path_factory):  # knowledge files for the methods that read them (HPT, DAM)
    try:
        from data_fixtures import write_knowledge_files
    except ImportError:  # pragma: no cover
        from tests.data_fixtures import write_knowledge_files
    files = write_knowledge_files(tmp_path_factory.mktemp("knowledge"), CLASSES)
    return ClassTask("fixture", CLASSES, ("a photo of a {}.",), knowledge_files=files)


IMAGE_METHODS = [m for m in list_methods() if get_method_class(m).inputs == "images" and not m.startswith("_")]  # not test doubles


@pytest.mark.parametrize("name", IMAGE_METHODS)
@pytest.mark.parametrize("domain", ["base", "new"])
def test_eval_outputs_equal_separate_calls(name, domain, tiny_backbone, task):
    tiny_backbone.clear_extensions()
    torch.manual_seed(1)
    preset = "toy" if "toy" in get_method_class(name).presets else None  # sized for the 4-layer towers
    method = build_method(name, tiny_backbone, task, preset=preset)
    try:
        with torch.no_grad():  # move off the initialization, so adapted embeddings differ from frozen ones
            for p in method.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        method.eval()
        images = torch.randn(4, 3, tiny_backbone.image_size, tiny_backbone.image_size)
        with torch.no_grad():
            method.prepare_eval(task, domain)
            logits, embeddings = method.eval_outputs(images)
            assert torch.allclose(logits, method.eval_logits(images), atol=1e-5)
            assert torch.allclose(embeddings, method.eval_embeddings(images), atol=1e-5)
        assert logits.shape == (4, len(task.classnames))
        assert embeddings.shape[0] == 4
    finally:
        tiny_backbone.clear_extensions()


def test_evaluate_keeps_the_first_embeddings_and_the_same_predictions(tiny_backbone, color_dataset):
    from workbench.engine.evaluate import evaluate

    tiny_backbone.clear_extensions()
    method = build_method("clip_lora", tiny_backbone, ClassTask.from_splits(color_dataset))
    try:
        with torch.no_grad():
            for p in method.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        plain = evaluate(method, color_dataset, progress=False, batch_size=4)
        kept = evaluate(method, color_dataset, progress=False, batch_size=4, max_embeddings=6)
        assert (plain.logits == kept.logits).all()
        assert kept.extra["image_embeddings"].shape == (6, tiny_backbone.embed_dim)
        assert "image_embeddings" not in plain.extra
    finally:
        tiny_backbone.clear_extensions()
