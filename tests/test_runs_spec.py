"""RunSpec hashing: stable across processes, name excluded, key order irrelevant, every field counts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.runs.spec import RunSpec, canonical_json

REPO = Path(__file__).resolve().parents[1]


def make_spec(**changes) -> RunSpec:
    base = dict(
        method="coop",
        method_config={"lr": 0.002, "n_ctx": 16, "init": "a photo of a", "sched": {"name": "cosine", "warmup": 1}},
        protocol="base2new",
        datasets=("toy_shapes", "toy_colors"),
        shots=16,
        seed=1,
        backbone="ViT-B-16-quickgelu",
        pretrained="openai",
        train_config={"epochs": 10, "batch_size": 32},
        preset="toy",
        versions={"engine": 2, "method": 1},
    )
    base.update(changes)
    return RunSpec(**base)


HASH_SCRIPT = """
import json, sys
from workbench.runs.spec import RunSpec
print(RunSpec.from_dict(json.loads(sys.argv[1])).hash)
"""


def test_hash_is_sha256_hex_and_short_hash_prefix():
    spec = make_spec()
    assert len(spec.hash) == 64 and int(spec.hash, 16) >= 0
    assert spec.short_hash == spec.hash[:12]


def test_same_spec_same_hash_across_processes():
    spec = make_spec()
    hashes = set()
    for hashseed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT, json.dumps(spec.to_dict())],
            env=env, capture_output=True, text=True, check=True, cwd=REPO,
        )
        hashes.add(out.stdout.strip())
    assert hashes == {spec.hash}


def test_name_not_hashed_and_not_compared():
    a, b = make_spec(name="first try"), make_spec(name="renamed")
    assert a.hash == b.hash == make_spec().hash
    # what the user typed is recorded for display; the resolved settings are the identity
    assert make_spec(settings={"train.epochs": 10}).hash == make_spec().hash
    assert a == b and hash(a) == hash(b)


def test_dict_key_order_and_container_types_irrelevant():
    a = make_spec(method_config={"lr": 0.002, "n_ctx": 16, "sched": {"warmup": 1, "name": "cosine"}})
    b = make_spec(method_config={"sched": {"name": "cosine", "warmup": 1}, "n_ctx": 16, "lr": 0.002})
    assert a.hash == b.hash
    assert make_spec(datasets=["toy_shapes", "toy_colors"]).hash == make_spec().hash
    assert make_spec(train_config={"dims": (1, 2)}).hash == make_spec(train_config={"dims": [1, 2]}).hash


def test_numbers_canonical():
    # numpy scalars, integral floats and ints agree; floats use their shortest repr
    a = make_spec(method_config={"lr": np.float64(0.002), "n_ctx": np.int64(16)}, seed=np.int64(1))
    b = make_spec(method_config={"lr": 0.002, "n_ctx": 16.0}, seed=1)
    assert a.hash == b.hash
    assert make_spec(train_config={"x": 2e-3}).hash == make_spec(train_config={"x": 0.002}).hash
    assert make_spec(train_config={"x": -0.0}).hash == make_spec(train_config={"x": 0}).hash
    assert make_spec(train_config={"x": 0.1}).hash != make_spec(train_config={"x": 0.1000001}).hash
    assert canonical_json({"b": 1.0, "a": [float("nan"), True]}) == '{"a":["nan",true],"b":1}'
    assert make_spec(train_config={"flag": True}).hash != make_spec(train_config={"flag": 1}).hash


@pytest.mark.parametrize(
    "change",
    [
        {"method": "cocoop"},
        {"method_config": {"lr": 0.002}},
        {"method_config": {"lr": 0.003, "n_ctx": 16, "init": "a photo of a", "sched": {"name": "cosine", "warmup": 1}}},
        {"method_config": {"lr": 0.002, "n_ctx": 16, "init": "a photo of a", "sched": {"name": "cosine", "warmup": 2}}},
        {"protocol": "cross_dataset"},
        {"datasets": ("toy_colors", "toy_shapes")},  # order matters: source first
        {"datasets": ("toy_shapes",)},
        {"shots": 8},
        {"shots": None},
        {"seed": 2},
        {"backbone": "toy"},
        {"pretrained": None},
        {"pretrained": "laion2b"},
        {"train_config": {}},
        {"train_config": {"epochs": 11, "batch_size": 32}},
        {"preset": "default"},
        {"protocol_settings": {"views": 8}},
        {"versions": {"engine": 3, "method": 1}},
        {"versions": {"engine": 2, "method": 2}},
    ],
)
def test_any_field_change_changes_hash(change):
    assert make_spec(**change).hash != make_spec().hash


def test_round_trip_dict_and_json():
    spec = make_spec(name="hello", train_config={"t": (1, 2), "nested": {"a": [1.5, None]}})
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec and again.hash == spec.hash and again.name == "hello"
    via_json = RunSpec.from_json(spec.to_json())
    assert via_json.hash == spec.hash and via_json.datasets == spec.datasets
    stored = {**spec.to_dict(), "hash": spec.hash}  # spec.json carries the hash too
    assert RunSpec.from_dict(stored).hash == spec.hash
    with pytest.raises(ValueError):
        RunSpec.from_dict({**spec.to_dict(), "bogus": 1})


def test_spec_is_frozen_and_copies_its_dicts():
    cfg = {"lr": 0.1}
    spec = make_spec(method_config=cfg)
    before = spec.hash
    cfg["lr"] = 0.2
    assert spec.hash == before
    with pytest.raises(Exception):
        spec.seed = 3  # type: ignore[misc]
    assert {spec: 1}[make_spec(method_config={"lr": 0.1})] == 1


def test_validation():
    with pytest.raises(ValueError):
        make_spec(datasets=())
    with pytest.raises(ValueError):
        make_spec(shots=1.5)
    with pytest.raises(ValueError):
        make_spec(seed=True)
    with pytest.raises(TypeError):
        make_spec(train_config={"f": object()})
    with pytest.raises(ValueError, match="build_spec"):
        make_spec(overrides={"epochs": 1})
    assert make_spec(datasets="toy_shapes").datasets == ("toy_shapes",)
    assert make_spec().source == "toy_shapes" and make_spec().targets == ("toy_colors",)
