"""The long-tailed base-to-novel protocol (DAM Table V): class counts by hand, its settings, a run end to end."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from data_fixtures import make_eurosat
from workbench.protocols import SpecError, build_spec
from workbench.protocols.long_tail import long_tail_base
from workbench.protocols.registry import get_protocol
from workbench.runs import Registry
from workbench.runs.execute import execute

TINY = "wb-tiny-vit"


@pytest.fixture
def data_root(tmp_path):
    make_eurosat(tmp_path)  # 5 classes, 6 train items each: base = the first 3
    return tmp_path


def _base_counts(data_root, shots=None, **settings):
    spec = build_spec("coop", "long_tailed", "eurosat", shots=shots, backbone=TINY, preset="toy", data_root=str(data_root),
                      settings={f"long_tailed.{k}": v for k, v in settings.items()})
    train, base, new = long_tail_base(SimpleNamespace(spec=spec, data_root=str(data_root)))
    assert train.classnames == base.classnames and len(new.classnames) == 2
    assert train.test == base.test and train.name == base.name
    counts = Counter(s.label for s in train.train)
    return [counts[c] for c in range(len(base.classnames))]


def test_long_tail_class_counts_by_hand(data_root):
    # n_max = min(100, 6) = 6; class c keeps floor(6 · IR^(−c/2)), at least one
    assert _base_counts(data_root, imbalance_ratio=5) == [6, 2, 1]  # 6/√5 = 2.68, 6/5 = 1.2
    assert _base_counts(data_root, imbalance_ratio=2) == [6, 4, 3]  # 6/√2 = 4.24, 6/2 = 3
    assert _base_counts(data_root, imbalance_ratio=5, max_per_class=4) == [4, 1, 1]  # 4/√5 = 1.79, 4/5 → 1
    assert _base_counts(data_root, shots=4, imbalance_ratio=2) == [4, 2, 2]  # from the 4-shot split: 2.83, 2


def test_long_tail_settings_are_checked(data_root):
    info = get_protocol("long_tailed")
    assert info.namespace == "long_tailed" and info.metrics == ("base", "new", "hm")
    with pytest.raises(SpecError, match="imbalance_ratio must be a number >= 1"):
        build_spec("coop", "long_tailed", "eurosat", backbone=TINY, data_root=str(data_root),
                   settings={"long_tailed.imbalance_ratio": 0.5})
    with pytest.raises(SpecError, match="max_per_class"):
        build_spec("coop", "long_tailed", "eurosat", backbone=TINY, data_root=str(data_root),
                   settings={"long_tailed.max_per_class": 0})


def test_long_tailed_run_trains_on_the_long_tail_and_scores_base_and_new(data_root, tmp_path):
    spec = build_spec("coop", "long_tailed", "eurosat", shots=None, backbone=TINY, preset="toy", data_root=str(data_root),
                      settings={"train.epochs": 1, "train.batch_size": 4, "long_tailed.imbalance_ratio": 5})
    run = execute(spec, Registry(tmp_path / "reg"), data_root=str(data_root), progress=False)
    metrics = run.metrics
    assert metrics["train_images"] == 6 + 2 + 1
    assert {"base", "new", "hm"} <= set(metrics)
