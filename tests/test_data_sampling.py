"""Few-shot (exact CoOp/Dassl rule), base/new and long-tail sampling."""
from __future__ import annotations

import json
import math
import random
import shutil
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest

from workbench.data import (FewShotCacheError, base_new_labels, base_new_split, few_shot_splits, load_dataset,
                            load_few_shot, long_tail_counts, long_tail_split)
from workbench.data.sampling import FEW_SHOT_SPLIT_VERSION
from workbench.data.types import DatasetSplits, Sample

try:
    from data_fixtures import make_eurosat, make_imagenet_family
except ImportError:
    from tests.data_fixtures import make_eurosat, make_imagenet_family


def coop_reference(train, val, k, seed):
    """Replay of CoOp on Dassl's released generate_fewshot_dataset (repeat=False by default since
    Dassl e3a15da): global random seeded once, train then val, per label in order of first appearance,
    random.sample when a class has at least n items, otherwise all its items once (no draw)."""
    random.seed(seed)

    def per_class(items, n):
        groups = OrderedDict()
        for it in items:
            groups.setdefault(it.label, []).append(it)
        out = []
        for members in groups.values():
            out += random.sample(members, n) if len(members) >= n else members
        return out

    return per_class(train, k), per_class(val, min(k, 4))


@pytest.fixture
def euro(tmp_path):
    make_eurosat(tmp_path)
    return tmp_path, load_dataset("eurosat", root=tmp_path)


@pytest.mark.parametrize("k", [1, 2, 4, 8])  # 6 train, 3 val items per class: 8 (and val 4) keep all once
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_equals_coop_rule(euro, k, seed):
    _, ds = euro
    fs = few_shot_splits(ds, k, seed)
    ref_train, ref_val = coop_reference(ds.train, ds.val, k, seed)
    assert fs.train == ref_train
    assert fs.val == ref_val
    assert fs.test == ds.test
    counts = {}
    for s in fs.train:
        counts[s.label] = counts.get(s.label, 0) + 1
    assert set(counts.values()) == {min(k, 6)}
    assert len(fs.val) == ds.num_classes * min(k, 4, 3)
    assert len(set(fs.train)) == len(fs.train) and len(set(fs.val)) == len(fs.val)  # never repeated


def _hand_built(counts_in_order, interleave_seed=0):
    """Classes with the given item counts; the list is shuffled so first appearance != label order."""
    items = [Sample(f"c{c}/{i}.jpg", c, f"class {c}") for c, n in enumerate(counts_in_order) for i in range(n)]
    random.Random(interleave_seed).shuffle(items)
    return items


@pytest.mark.parametrize("seed", [1, 2, 3, 11])
def test_fewshot_short_class_kept_once_and_draws_nothing(seed):
    train = _hand_built([7, 2, 5, 1, 9, 4])  # classes 1, 3 (and 5 for k=5) have fewer than k
    val = _hand_built([3, 3, 1, 5, 2, 4], interleave_seed=1)
    ds = DatasetSplits("hand", Path("/x"), [f"class {c}" for c in range(6)], ["{}"], train=train, val=val,
                       test=[Sample("t.jpg", 0, "class 0")])
    k = 5
    fs = few_shot_splits(ds, k, seed)
    ref_train, ref_val = coop_reference(train, val, k, seed)
    assert fs.train == ref_train and fs.val == ref_val
    by_label = {c: [s for s in fs.train if s.label == c] for c in range(6)}
    for c, n in enumerate([7, 2, 5, 1, 9, 4]):
        picked = by_label[c]
        assert len(picked) == min(n, k) and len(set(picked)) == len(picked)
        if n < k:  # all of the class's items, each once, in the split's own order
            assert picked == [s for s in train if s.label == c]
    # a short class consumes no random draws: dropping it leaves every other class's draws unchanged
    short = {1, 3, 5}
    without = [s for s in train if s.label not in short]
    fs_without = few_shot_splits(replace(ds, train=without, val=[]), k, seed, sample_val=False)
    assert [s for s in fs.train if s.label not in short] == fs_without.train


def test_fewshot_groups_by_first_appearance(euro):
    _, ds = euro
    # the fixture shuffles the train list, so the first-appearance order is not the label order
    first = list(OrderedDict.fromkeys(s.label for s in ds.train))
    assert first != sorted(first)
    fs = few_shot_splits(ds, 2, 1)
    assert [s.label for s in fs.train[::2]] == first


def test_fewshot_determinism(euro):
    _, ds = euro
    a, b = few_shot_splits(ds, 4, 1), few_shot_splits(ds, 4, 1)
    c = few_shot_splits(ds, 4, 2)
    assert a.train == b.train and a.val == b.val
    assert a.train != c.train
    state = random.getstate()
    few_shot_splits(ds, 4, 7)
    assert random.getstate() == state  # global random untouched


def test_fewshot_json_cache_relative_and_movable(euro, tmp_path_factory):
    root, ds = euro
    fs = load_few_shot("eurosat", 4, 1, root=root)
    path = root / "eurosat" / "split_fewshot" / "shot_4-seed_1.json"
    raw = json.loads(path.read_text())
    assert FEW_SHOT_SPLIT_VERSION == 2
    assert raw["version"] == 2 and raw["dataset"] == "eurosat" and raw["shots"] == 4 and raw["seed"] == 1
    assert [tuple(r) for r in raw["train"]] == [(s.path, s.label, s.classname) for s in fs.train]
    assert all(not r[0].startswith("/") and str(root) not in r[0] for r in raw["train"] + raw["val"])

    # the stored file is reused (prove it by planting a different, valid selection)
    raw["train"] = raw["train"][::-1]
    path.write_text(json.dumps(raw))
    again = load_few_shot("eurosat", 4, 1, root=root)
    assert again.train == fs.train[::-1]

    # move the whole data root: the few-shot file still loads
    new_root = tmp_path_factory.mktemp("moved") / "data"
    shutil.move(str(root), str(new_root))
    moved = load_few_shot("eurosat", 4, 1, root=new_root)
    assert moved.train == again.train
    assert moved.image_root == new_root / "eurosat" / "2750"
    assert all((moved.image_root / s.path).is_file() for s in moved.train)


def test_fewshot_stale_cache_rejected(euro):
    root, ds = euro
    cache = root / "eurosat" / "split_fewshot"
    few_shot_splits(ds, 1, 1, cache_dir=cache)
    path = cache / "shot_1-seed_1.json"
    raw = json.loads(path.read_text())
    raw["train"][0][0] = "Nope/nope.jpg"
    path.write_text(json.dumps(raw))
    with pytest.raises(FewShotCacheError, match="delete it"):
        few_shot_splits(ds, 1, 1, cache_dir=cache)


def test_fewshot_file_of_old_rule_is_rewritten(euro):
    root, ds = euro
    cache = root / "eurosat" / "split_fewshot"
    path = cache / "shot_8-seed_1.json"
    cache.mkdir(parents=True)
    # a version-1 file: classes filled up to 8 with repeats (the old rule)
    old_train = [[s.path, s.label, s.classname] for s in ds.train for _ in range(2)][: 8 * ds.num_classes]
    path.write_text(json.dumps({"version": 1, "dataset": "eurosat", "shots": 8, "seed": 1,
                                "train": old_train, "val": None}))
    fs = few_shot_splits(ds, 8, 1, cache_dir=cache)
    ref_train, ref_val = coop_reference(ds.train, ds.val, 8, 1)
    assert fs.train == ref_train and fs.val == ref_val
    raw = json.loads(path.read_text())
    assert raw["version"] == FEW_SHOT_SPLIT_VERSION
    assert [tuple(r) for r in raw["train"]] == [(s.path, s.label, s.classname) for s in ref_train]


def test_fewshot_file_of_newer_rule_is_an_error(euro):
    root, ds = euro
    cache = root / "eurosat" / "split_fewshot"
    few_shot_splits(ds, 2, 1, cache_dir=cache)
    path = cache / "shot_2-seed_1.json"
    raw = json.loads(path.read_text())
    raw["version"] = FEW_SHOT_SPLIT_VERSION + 1
    path.write_text(json.dumps(raw))
    with pytest.raises(FewShotCacheError, match="delete it"):
        few_shot_splits(ds, 2, 1, cache_dir=cache)


def test_imagenet_fewshot_keeps_val(tmp_path):
    make_imagenet_family(tmp_path)
    fs = load_few_shot("imagenet", 2, 1, root=tmp_path)
    ds = load_dataset("imagenet", root=tmp_path)
    assert len(fs.train) == 6 and fs.val == ds.test and fs.test == ds.test
    raw = json.loads((tmp_path / "imagenet" / "split_fewshot" / "shot_2-seed_1.json").read_text())
    assert raw["val"] is None


def test_base_new_odd(euro):
    _, ds = euro  # 5 classes
    assert base_new_labels(ds) == ([0, 1, 2], [3, 4])
    base, new = base_new_split(ds)
    assert base.classnames == ds.classnames[:3] and new.classnames == ds.classnames[3:]
    assert {s.label for s in new.train} == {0, 1} and {s.label for s in base.test} == {0, 1, 2}
    assert all(s.classname == new.classnames[s.label] for s in new.train + new.val + new.test)
    assert len(base.train) + len(new.train) == len(ds.train)


def _synthetic(counts):
    train = [Sample(f"c{c}/{i}.jpg", c, f"class {c}") for c in range(len(counts)) for i in range(counts[c])]
    return DatasetSplits("syn", Path("/x"), [f"class {c}" for c in range(len(counts))], ["{}"], train=train)


@pytest.mark.parametrize("ratio", [10, 20, 50])
def test_long_tail_counts_formula(ratio):
    C, n_max = 7, 100
    counts = long_tail_counts(C, ratio, n_max)
    assert counts == [max(1, math.floor(n_max * ratio ** (-c / (C - 1)) + 1e-9)) for c in range(C)]
    assert counts[0] == 100 and counts[-1] == 100 // ratio
    assert counts == sorted(counts, reverse=True)


def test_long_tail_split():
    ds = _synthetic([150] * 6 + [20])  # last class has fewer items than its target
    lt = long_tail_split(ds, 10, seed=1)
    got = [sum(1 for s in lt.train if s.label == c) for c in range(7)]
    want = long_tail_counts(7, 10, 100)
    assert got[:6] == want[:6] and got[6] == min(want[6], 20)
    assert lt.val == ds.val and lt.test == ds.test
    assert long_tail_split(ds, 10, seed=1).train == lt.train
    assert long_tail_split(ds, 10, seed=2).train != lt.train
    # n_max follows the data when no class has 100 items
    small = long_tail_split(_synthetic([30, 30, 30]), 10, seed=0)
    assert [sum(1 for s in small.train if s.label == c) for c in range(3)] == [30, 9, 3]
