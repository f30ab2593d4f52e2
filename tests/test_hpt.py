"""HPT: exact trainable count on ViT-B/16, the released rules replayed by hand over open_clip's own
blocks (prompt layout, high-level prompts, relationship matrices and bias, vision prompts, logits, loss,
structure averaging), zero scalars = no bias, clear errors for missing knowledge files, and learning
on the toy world."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from workbench.backbone import CLIPBackbone
from workbench.data.knowledge import KnowledgeFileError, Structure
from workbench.data.types import ClassTask
from workbench.methods import build_method
from workbench.methods._hpt_bank import relationship_matrices, structure_prompt

ATOL = 1e-5
CLASSES = ("dog", "red car", "tail")


def _structure(i: int, name: str) -> dict:
    return {"Entities": [name, "tail", "dog"], "Attributes": ["brown", "small"][: 1 + i % 2],
            "Entity-to-Entity Relationships": [{"entity1": name, "relationship": "has", "entity2": "tail"}],
            "Entity-to-Attribute Relationships": [{"entity": "tail", "relationship": "is", "attribute": "brown"},
                                                  {"entity": name, "relationship": "is", "attribute": "small"}]}


def sentence(classname: str, i: int) -> str:
    return f"a {classname} number {i} is brown."


def description_tokens(backbone, classes=CLASSES, per_class=5):
    return backbone.tokenize([sentence(c, i) for c in classes for i in range(per_class)])


def knowledge_task(tmp_path, classes=CLASSES, per_class=5, name="pets") -> ClassTask:
    desc = {c: [sentence(c, i) for i in range(per_class)] for c in classes}
    struct = {c: [_structure(i, c) for i in range(per_class)] for c in classes}
    (tmp_path / "descriptions.json").write_text(json.dumps(desc))
    (tmp_path / "structures.json").write_text(json.dumps(struct))
    files = {"descriptions": str(tmp_path / "descriptions.json"), "structures": str(tmp_path / "structures.json")}
    return ClassTask(name, tuple(classes), knowledge_files=files)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("wb-tiny-vit")


def _randomize(method, seed=3):
    """Non-zero relation scalars and projector, so every term shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        method.relation_e2e.copy_(torch.randn(method.relation_e2e.shape, generator=g))
        method.relation_e2a.copy_(torch.randn(method.relation_e2a.shape, generator=g))
        method.projector.weight.copy_(torch.randn(method.projector.weight.shape, generator=g) * 0.1)


# ---- parameter count ----------------------------------------------------------------------------

def test_trainable_count_on_vit_b16_is_the_papers_295960(tmp_path):
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained("ViT-B-16-quickgelu")
    method = build_method("hpt", bb, knowledge_task(tmp_path, classes=("dog", "cat")))
    count = sum(p.numel() for p in method.trainable_parameters())
    oracle = 11 * 2 * 512 + 7 * 512 + 262_656 + 11 * 2 * 768 + 2 * 768 + 24  # method-notes, DAM Table X
    assert count == oracle == 295_960
    # DAM's Table X, "Total": CLIP ViT-B/16 149,620,737 + HPT's 295,960
    assert sum(p.numel() for p in method.parameters()) == 149_620_737 + 295_960 == 149_916_697


# ---- relationship matrices (TopoPromptLearner's rule) -------------------------------------------

def test_relationship_matrix_replays_released_rule(tiny):
    s = Structure(entities=("Dog", "tail"), attributes=("light brown",),
                  entity_pairs=(("dog", "tail"), ("dog", "cat")),  # "cat" is not an entity: skipped
                  attribute_pairs=(("tail", "light brown"), ("dog", "light brown"), ("dog", "light brown"),
                                   ("dog", "small")))  # "small" is not an attribute: skipped
    prompt = structure_prompt("dog", s, 2)
    assert prompt == "X X dog. dog, tail. light brown."
    tokens = tiny.tokenize([prompt])[0]
    # positions: 0 SOT, 1-2 X, 3 dog, 4 ".", 5 dog, 6 ",", 7 tail, 8 ".", 9 light, 10 brown, 11 ".", 12 EOT
    assert int(tokens.argmax()) == 12
    e2e, e2a = relationship_matrices(tokens, s, tiny.tokenize)
    expected_e2e = torch.zeros_like(e2e)
    expected_e2e[3, 7] = expected_e2e[7, 3] = 1  # "dog" is found first at the class-name position
    expected_e2a = torch.zeros_like(e2a)
    for j in (9, 10):
        expected_e2a[7, j] = expected_e2a[j, 7] = 1  # tail - light brown
        expected_e2a[3, j] = expected_e2a[j, 3] = 2  # dog - light brown, listed twice: counts add up
    assert torch.equal(e2e, expected_e2e) and torch.equal(e2a, expected_e2a)


# ---- the prompted text tower, by hand ------------------------------------------------------------

def hand_layer_features(clip, tokens):
    """Frozen blocks' outputs at end-of-text, normalized: [depth-1, N, width] (TextEncoderZS)."""
    x = clip.token_embedding(tokens) + clip.positional_embedding
    n = x.shape[1]
    causal = torch.triu(torch.full((n, n), float("-inf")), 1)
    rows, eot = torch.arange(tokens.shape[0]), tokens.argmax(-1)
    feats = []
    for blk in clip.transformer.resblocks:
        x = blk(x, attn_mask=causal)
        feats.append(F.normalize(x[rows, eot], dim=-1))
    return torch.stack(feats[:-1])


def hand_prompted_text(method, bank, classes, structures):
    """HPT's TextEncoder written out over open_clip's blocks with a float mask per sequence."""
    clip = method.backbone.clip
    c = method.config
    nt, k = c.n_text_prompts, c.n_text_prompts + c.n_descriptions
    tokens = bank.prompt_tokens[classes, structures]
    x = clip.token_embedding(tokens).clone()
    x[:, 1:1 + k] = method.text_input
    x = x + clip.positional_embedding
    n = x.shape[1]
    causal = torch.triu(torch.full((n, n), float("-inf")), 1)
    feats = hand_layer_features(clip, description_tokens(method.backbone, bank.classnames, c.n_descriptions))
    feats = feats.view(feats.shape[0], bank.num_classes, c.n_descriptions, -1)
    for layer, blk in enumerate(clip.transformer.resblocks):
        if layer > 0:
            e = feats[layer - 1, classes]
            high = e + e @ method.projector.weight.t() + method.projector.bias
            x = torch.cat([x[:, :1], method.text_global[layer - 1].expand(len(classes), -1, -1), high, x[:, 1 + k:]], 1)
        bias = (method.relation_e2e[layer] * bank.e2e[classes, structures].float()
                + method.relation_e2a[layer] * bank.e2a[classes, structures].float())
        heads = blk.attn.num_heads
        x = blk(x, attn_mask=(causal + bias).repeat_interleave(heads, dim=0))
    x = clip.ln_final(x)
    out = x[torch.arange(len(classes)), tokens.argmax(-1)] @ clip.text_projection
    return F.normalize(out, dim=-1)


def test_frozen_layer_features_are_block_outputs_at_end_of_text(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    bank = method.train_bank
    with torch.no_grad():
        expected = hand_layer_features(tiny.clip, description_tokens(tiny))
    assert (bank.layer_features.flatten(1, 2) - expected).abs().max() <= ATOL


def test_prompted_text_matches_the_released_encoder_by_hand(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    _randomize(method)
    bank = method.train_bank
    classes, structures = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 4])
    with torch.no_grad():
        ours = method.prompted_text(bank, structures)
        expected = hand_prompted_text(method, bank, classes, structures)
    assert (ours - expected).abs().max() <= ATOL
    assert bank.e2e[classes, structures].sum() > 0 and bank.e2a[classes, structures].sum() > 0


def test_zero_relation_scalars_equal_no_relation_bias(tmp_path):
    """At init (a_l = b_l = 0) the low-level prompts change nothing: equal to the model without them."""
    task = knowledge_task(tmp_path)
    outs = []
    for relation_bias in (True, False):
        torch.manual_seed(0)
        bb = CLIPBackbone.from_pretrained("wb-tiny-vit")
        torch.manual_seed(1)
        method = build_method("hpt", bb, task, overrides={"relation_bias": relation_bias})
        with torch.no_grad():
            outs.append(method.prompted_text(method.train_bank, torch.tensor([0, 3, 2])))
    assert (outs[0] - outs[1]).abs().max() <= ATOL


def test_evaluation_averages_every_structure(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    _randomize(method)
    bank = method.train_bank
    with torch.no_grad():
        per_structure = torch.stack([hand_prompted_text(method, bank, torch.arange(3), torch.full((3,), j))
                                     for j in range(5)], dim=1)
        averaged = method.class_text(bank)
    assert (averaged - F.normalize(per_structure.mean(dim=1), dim=-1)).abs().max() <= ATOL


# ---- vision prompts, logits and loss ---------------------------------------------------------------

def test_vision_prompts_are_appended_and_reset_per_layer(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    images = torch.randn(2, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(0))
    prompts = method.vision_prompts.params  # [depth, n_v, width]: embedding stage, then blocks 1..L-1
    v = tiny.clip.visual
    with torch.no_grad():
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(2, 1, -1), x], 1) + v.positional_embedding
        x = v.ln_pre(torch.cat([x, prompts[0].expand(2, -1, -1)], 1))
        for layer, blk in enumerate(v.transformer.resblocks):
            if layer > 0:
                x = torch.cat([x[:, :-prompts.shape[1]], prompts[layer].expand(2, -1, -1)], 1)
            x = blk(x)
        expected = F.normalize(v.ln_post(x[:, 0]) @ v.proj, dim=-1)
        prompted, frozen = method.encode_images(images)
    assert (prompted - expected).abs().max() <= ATOL
    assert (frozen - F.normalize(tiny.clip.encode_image(images), dim=-1)).abs().max() <= ATOL


def test_asymmetric_logits_and_three_term_loss(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    _randomize(method)
    images = torch.randn(4, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 2])
    torch.manual_seed(7)
    loss = method.training_loss(images, labels).loss
    torch.manual_seed(7)
    drawn = torch.randint(5, (3,))  # the structure draw training makes, replayed
    with torch.no_grad():
        f_i = F.normalize(method.backbone.encode_image(images), dim=-1)
        f_a = F.normalize(tiny.clip.encode_image(images), dim=-1)
        t = hand_prompted_text(method, method.train_bank, torch.arange(3), drawn)
        d = method.train_bank.frozen_text
        s = tiny.clip.logit_scale.exp()
        z_i, z_t = s * f_i @ d.t(), s * f_a @ t.t()
        expected = sum(F.cross_entropy(z, labels) for z in ((z_i + z_t) / 2, z_i, z_t))
    assert abs(loss.item() - expected.item()) <= 1e-4


def test_frozen_text_is_the_description_ensemble(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    sentences = [sentence("red car", i) for i in range(5)]
    with torch.no_grad():
        feats = F.normalize(tiny.clip.encode_text(tiny.tokenize(sentences)), dim=-1)
    assert (method.train_bank.frozen_text[1] - F.normalize(feats.mean(0), dim=0)).abs().max() <= ATOL


def test_new_classes_get_their_own_bank_at_evaluation(tmp_path, tiny):
    method = build_method("hpt", tiny, knowledge_task(tmp_path, classes=("dog", "tail")))
    other = tmp_path / "new"
    other.mkdir()
    new = knowledge_task(other, classes=("red car", "cat", "dog"), name="pets_new")
    method.prepare_eval(new, "new")
    images = torch.randn(2, 3, tiny.image_size, tiny.image_size)
    assert method.eval_logits(images).shape == (2, 3)
    assert method.eval_class_embeddings().shape[0] == 3


# ---- bad input ---------------------------------------------------------------------------------

def test_missing_structure_file_names_the_path(tmp_path, tiny):
    task = knowledge_task(tmp_path)
    (tmp_path / "structures.json").unlink()
    with pytest.raises(KnowledgeFileError) as err:
        build_method("hpt", tiny, task)
    assert str(tmp_path / "structures.json") in str(err.value)


def test_too_few_descriptions_name_the_class_and_the_setting(tmp_path, tiny):
    with pytest.raises(KnowledgeFileError) as err:
        build_method("hpt", tiny, knowledge_task(tmp_path, per_class=3))
    assert "class 'dog' has 3 descriptions" in str(err.value) and "needs 5" in str(err.value)
    method = build_method("hpt", tiny, knowledge_task(tmp_path, per_class=3), overrides={"n_descriptions": 3})
    assert method.train_bank.prompt_tokens.shape[:2] == (3, 3)


def test_config_rejects_bad_values():
    from workbench.methods.hpt import HPTConfig

    with pytest.raises(ValueError, match="method.logits must be one of asymmetric, prompted"):
        HPTConfig(logits="mean")
    with pytest.raises(ValueError, match="n_descriptions must be at least 1"):
        HPTConfig(n_descriptions=0)


# ---- a short toy base-to-novel run ---------------------------------------------------------------

def test_toy_base_to_novel_learns_base_above_zero_shot(toy_backbone, toy_data_root):
    from workbench.data import base_new_split, load_few_shot
    from workbench.engine.evaluate import evaluate
    from workbench.engine.train import TrainConfig, fit
    from workbench.methods.hpt import HPT

    base, new = base_new_split(load_few_shot("toy_objects", 16, 1))
    zero = build_method("zeroshot", toy_backbone, ClassTask.from_splits(base))
    zs_base = evaluate(zero, base, domain="base", progress=False).top1
    method = build_method("hpt", toy_backbone, ClassTask.from_splits(base), preset="toy")
    short = {**HPT.presets["toy"].train, "epochs": 1}  # one epoch of the toy schedule keeps the test short
    history = fit(method, base, TrainConfig.from_dict(short), seed=1, progress=False).history
    hpt_base = evaluate(method, base, domain="base", progress=False).top1
    hpt_new = evaluate(method, new, domain="new", progress=False).top1
    print(f"toy b2n: zero-shot base {zs_base:.1f} | HPT base {hpt_base:.1f} new {hpt_new:.1f}")
    assert hpt_base > zs_base + 2.0
    assert any(abs(v) > 0 for k, v in history[-1].items() if k.startswith("relation_e2a."))  # the bias trains
    assert 0 < hpt_new <= 100


def test_last_block_relation_scalars_get_no_gradient(tmp_path, tiny):
    """The structure matrices never touch the end-of-text row or column, and after the last block only the
    end-of-text token is read: a_L and b_L (released: e2e_scal[-1], e2a_scal[-1]) cannot learn."""
    method = build_method("hpt", tiny, knowledge_task(tmp_path))
    _randomize(method)
    images = torch.randn(3, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(2))
    method.training_loss(images, torch.tensor([0, 1, 2])).loss.backward()
    assert method.relation_e2e.grad[-1] == 0 and method.relation_e2a.grad[-1] == 0
    assert method.relation_e2a.grad[:-1].abs().sum() > 0


def test_template_fallback_runs_without_files_and_its_frozen_text_is_zero_shot(tiny):
    task = ClassTask("nofiles", ("dog", "red_car"), ("a photo of a {}.",))
    with pytest.raises(KnowledgeFileError, match="has no descriptions file"):
        build_method("hpt", tiny, task)
    method = build_method("hpt", tiny, task, overrides={"knowledge": "templates"})
    with torch.no_grad():
        zero_shot = F.normalize(tiny.clip.encode_text(tiny.tokenize(["a photo of a dog.", "a photo of a red car."])), dim=-1)
    assert (method.train_bank.frozen_text - zero_shot).abs().max() <= ATOL
    assert method.train_bank.e2e.sum() == 0 and method.train_bank.e2a.sum() == 0  # no relationships: no bias
