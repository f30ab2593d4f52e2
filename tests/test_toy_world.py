"""Toy world: rendering, captions, CoOp-layout datasets, and a few-step pretraining smoke test."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data.toy import datasets, world

SMALL = (2, 1, 2)  # images per class (train, val, test) for fast renders


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_data")
    datasets.build_all(root, seed=0, counts=SMALL)
    return root


def _image_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# ------------------------------------------------------------------ world

def test_render_is_deterministic_in_the_generator():
    attrs = world.sample_attrs(np.random.default_rng(5))
    a = np.asarray(world.render(attrs, 48, np.random.default_rng(1)))
    b = np.asarray(world.render(attrs, 48, np.random.default_rng(1)))
    c = np.asarray(world.render(attrs, 48, np.random.default_rng(2)))
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # jitter/noise come from the generator


def test_render_shows_the_requested_colour_and_size():
    rng = np.random.default_rng(0)
    for color, rgb in world.COLORS.items():
        attrs = {"shape": "square", "color": color, "pattern": "plain", "size": "large",
                 "background": "light", "style": "filled"}
        img = np.asarray(world.render(attrs, 48, rng)).astype(float)
        centre = img[20:28, 20:28].reshape(-1, 3).mean(0)
        # centre pixels are the object's colour (up to the +-10% brightness jitter and noise)
        assert np.abs(centre - np.array(rgb)).max() < 40, (color, centre)
    # a large object covers more non-background pixels than a small one
    def coverage(size_name):
        attrs = {"shape": "circle", "color": "blue", "pattern": "plain", "size": size_name,
                 "background": "light", "style": "filled"}
        img = np.asarray(world.render(attrs, 48, np.random.default_rng(3))).astype(float)
        return (img.mean(axis=2) < 160).mean()
    assert coverage("large") > 1.5 * coverage("small")


def test_shapes_render_differently():
    masks = {}
    for shape in world.SHAPES:
        attrs = {"shape": shape, "color": "red", "pattern": "plain", "size": "large",
                 "background": "light", "style": "filled"}
        img = np.asarray(world.render(attrs, 48, np.random.default_rng(0))).astype(float)
        masks[shape] = img[..., 1] < 120  # red object: low green channel
    for a in world.SHAPES:
        for b in world.SHAPES:
            if a < b:
                assert (masks[a] ^ masks[b]).sum() > 40, (a, b)


def test_captions_mention_the_rendered_attributes():
    rng = np.random.default_rng(0)
    kinds = {(c.attrs["shape"], c.attrs["color"]): c.name for c in world.toy_objects_classes()}
    seen_keys = set()
    for _ in range(300):
        attrs = world.sample_attrs(rng, domain="shifted" if rng.random() < 0.3 else "source")
        kind = kinds[(attrs["shape"], attrs["color"])]
        text, keys = world.caption(attrs, rng, kind=kind, name_p=0.5)
        seen_keys |= keys
        words = set(text.replace(",", " ").replace(".", " ").split())
        assert keys, text
        for key in keys & {"shape", "color", "size"}:
            assert attrs[key] in words, (key, text)
        if "pattern" in keys:
            assert world.PATTERN_WORDS[attrs["pattern"]] in words, text
        if "kind" in keys:
            assert kind in words, text
        if "style" in keys:
            assert attrs["style"] == "outline" and "outlined" in words, text
        if "background" in keys:
            assert world.BACKGROUND_WORDS[attrs["background"]] in text, text
        # never mentions another shape or colour
        assert not (words & set(world.SHAPES)) - {attrs["shape"]}, text
        assert not (words & set(world.COLORS)) - {attrs["color"]}, text
    assert {"shape", "color", "pattern", "size", "kind", "background", "style"} <= seen_keys


def test_classes_are_distinct_and_described():
    objs, vocab = world.toy_objects_classes(), world.toy_vocab_classes()
    assert len(objs) >= 40 and len(vocab) >= 10
    assert len({c.name for c in objs}) == len(objs)
    assert len({(c.attrs["shape"], c.attrs["color"]) for c in objs}) == len(objs)
    assert not {c.name for c in objs} & {c.name for c in vocab}  # a different vocabulary
    for c in objs + vocab:
        assert 3 <= len(c.descriptions) <= 5
        for sentence in c.descriptions:
            assert c.name in sentence
        # the descriptions name the attributes that define the class
        joined = " ".join(c.descriptions)
        for value in c.attrs.values():
            assert value in joined


def test_base_and_new_halves_share_the_attribute_vocabulary():
    objs = world.toy_objects_classes()
    half = math.ceil(len(objs) / 2)
    base, new = objs[:half], objs[half:]
    for key in ("shape", "color"):
        assert {c.attrs[key] for c in base} == {c.attrs[key] for c in new}


# ------------------------------------------------------------------ datasets on disk

def test_coop_layout_is_valid(small_root):
    for name, spec in datasets.SPECS.items():
        folder = small_root / name
        split = json.loads((folder / spec.split_file).read_text())
        assert set(split) == {"train", "val", "test"}
        classes = [c.name for c in spec.classes()]
        for part, n in zip(("train", "val", "test"), datasets._counts(spec, SMALL)):
            assert len(split[part]) == n * len(classes), (name, part)
            for rel, label, classname in split[part]:
                assert (folder / "images" / rel).is_file()
                assert classes[label] == classname
                assert rel.split("/")[0] == datasets.classdir(classname)
        assert len(split["test"]) > 0
        desc = json.loads((folder / "descriptions.json").read_text())
        assert set(desc) == set(classes)
        assert datasets.dataset_is_current(folder, 0, SMALL)
        assert not datasets.dataset_is_current(folder, 1, SMALL)


def test_shifted_variant_shares_classes_and_labels(small_root):
    def label_map(name):
        split = json.loads((small_root / name / datasets.SPECS[name].split_file).read_text())
        return {cls: lab for part in split.values() for _, lab, cls in part}

    assert label_map("toy_objects") == label_map("toy_objects_shifted")
    vocab = label_map("toy_vocab")
    assert len(vocab) >= 10 and not set(vocab) & set(label_map("toy_objects"))
    # the shifted images really differ in style: their backgrounds are not the source ones
    src = np.asarray(Image.open(small_root / "toy_objects" / "images" /
                                json.loads((small_root / "toy_objects" / "split_zhou_ToyObjects.json").read_text())["test"][0][0]))
    assert src.shape == (world.IMAGE_SIZE, world.IMAGE_SIZE, 3)


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path, small_root):
    a, b = tmp_path / "a", tmp_path / "b"
    spec = datasets.SPECS["toy_vocab"]
    datasets.render_dataset(spec, a, seed=0, counts=SMALL)
    datasets.render_dataset(spec, b, seed=0, counts=SMALL)
    assert (a / spec.split_file).read_bytes() == (b / spec.split_file).read_bytes()
    assert _image_files(a / "images") == _image_files(b / "images")
    # the module-scoped build used the same seed and counts through build_all
    assert _image_files(a / "images") == _image_files(small_root / "toy_vocab" / "images")
    c = tmp_path / "c"
    datasets.render_dataset(spec, c, seed=1, counts=SMALL)
    assert _image_files(a / "images").keys() == _image_files(c / "images").keys()
    assert _image_files(a / "images") != _image_files(c / "images")


def test_ensure_toy_data_renders_once(tmp_path, monkeypatch):
    from workbench.data import toy

    monkeypatch.setenv("WORKBENCH_TOY_DATA", str(tmp_path / "data"))
    calls = []
    real = datasets.render_dataset

    def small_render(spec, folder, seed=0, size=world.IMAGE_SIZE, counts=None):
        calls.append(spec.name)
        real(spec, folder, seed, size, counts=SMALL)

    monkeypatch.setattr(datasets, "render_dataset", small_render)
    # the small render is "current" only for SMALL counts: check through build_all directly
    datasets.build_all(tmp_path / "data", counts=SMALL)
    assert sorted(calls) == sorted(datasets.SPECS)
    datasets.build_all(tmp_path / "data", counts=SMALL)
    assert len(calls) == len(datasets.SPECS)  # nothing re-rendered
    assert not toy.toy_data_is_current(tmp_path / "data")  # default counts differ
    assert not list((tmp_path / "data").glob(".toy_*"))  # no temp folders left


# ------------------------------------------------------------------ pretraining smoke test

def test_pretrain_writes_a_loadable_local_dir(tmp_path, monkeypatch):
    import open_clip
    import torch

    from workbench.data import toy
    from workbench.data.toy import pretrain

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    out = toy.embedded_model_dir()
    assert out == tmp_path / "cache" / "models" / toy.EMBEDDED_MODEL_DIRNAME
    cfg = pretrain.PretrainConfig(batch_size=8)
    pretrain.pretrain(out, steps=2, seed=3, progress=False, measure=False, cfg=cfg)

    meta = json.loads((out / pretrain.META_FILE).read_text())
    assert meta["steps"] == 2 and meta["seed"] == 3 and meta["world_version"] == world.WORLD_VERSION
    assert meta["weights_sha256"] == pretrain.sha256_file(out / pretrain.WEIGHTS_FILE)
    config = json.loads((out / pretrain.CONFIG_FILE).read_text())
    assert config["model_cfg"] == pretrain.model_config()
    assert set(config["preprocess_cfg"]) >= {"mean", "std"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # temp folder renamed

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(out))
    tok = open_clip.get_tokenizer("local-dir:" + str(out))
    img = preprocess(world.render(world.sample_attrs(np.random.default_rng(0)), world.IMAGE_SIZE,
                                  np.random.default_rng(0))).unsqueeze(0)
    with torch.no_grad():
        fi, ft = model.encode_image(img), model.encode_text(tok(["a photo of a red star."]))
    assert fi.shape == ft.shape == (1, config["model_cfg"]["embed_dim"])
    # the saved weights are the trained ones, not a fresh init
    state = model.state_dict()
    from safetensors.torch import load_file
    saved = load_file(str(out / pretrain.WEIGHTS_FILE))
    assert all(torch.equal(state[k], saved[k]) for k in saved)

    # the model is usable as is; a corrupted weights file is detected and rebuilt
    status = toy.embedded_model_status()
    assert status[0], status[1]
    rebuilt = []
    monkeypatch.setattr(pretrain, "pretrain", lambda path, **kw: rebuilt.append(kw))
    assert toy.ensure_embedded_model(measure=False) == out and rebuilt == []
    (out / pretrain.WEIGHTS_FILE).write_bytes(b"corrupt")
    assert toy.embedded_model_status()[1] == "weights hash mismatch"
    toy.ensure_embedded_model(measure=False, progress=False)
    assert len(rebuilt) == 1


def test_kind_names_follow_a_long_tail_in_both_halves():
    from workbench.data.toy import pretrain

    cfg = pretrain.PretrainConfig()
    rates = pretrain.naming_rates(cfg)
    kinds = [c.name for c in world.toy_objects_classes()]
    assert set(rates) == set(kinds)
    values = np.array([rates[k] for k in kinds])
    assert (values == 0).sum() == round(cfg.unnamed_fraction * len(kinds))
    assert np.isclose(values, cfg.name_p * cfg.rare_scale).sum() == round(cfg.rare_fraction * len(kinds))
    assert (values == cfg.name_p).sum() == len(kinds) - (values < cfg.name_p).sum()
    half = math.ceil(len(kinds) / 2)
    for part in (values[:half], values[half:]):  # base and new both mix the three tiers
        assert {0.0, cfg.name_p} <= set(part.tolist()) and np.isclose(part, cfg.name_p * cfg.rare_scale).any()
