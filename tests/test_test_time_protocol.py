"""The test_time protocol and its engine: confident-view selection against a hand-built entropy
ranking, only the selected views reach the loss, per-sample reset (two orders of the same samples give
identical results), the protocol's metrics, and toy RAda-TTT on the shifted toy set."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from workbench.engine.test_time import TestTimeConfig, adapt_and_predict, adapt_one, select_confident
from workbench.methods import ClassTask, build_method
from workbench.protocols import build_spec
from workbench.protocols.test_time import TestTimeSettings, spread_subset
from workbench.runs import Registry
from workbench.runs.execute import execute


def test_confident_views_are_the_lowest_entropy_ones_ranked_by_hand():
    # view v puts logit peaks[v] on one class and 0 elsewhere: a larger peak is a lower entropy
    peaks = torch.tensor([0.5, 6.0, 1.0, 9.0, 3.0, 0.0, 7.5, 2.0, 4.0, 5.0])
    logits = torch.zeros(10, 4)
    logits[torch.arange(10), torch.arange(10) % 4] = peaks
    chosen = select_confident(logits, 0.3)  # int(10 * 0.3) = 3 views
    assert chosen.tolist() == [3, 6, 1]  # peaks 9, 7.5, 6: most confident first
    assert select_confident(logits, 0.01).tolist() == [3]  # at least one view


class _Recorder(torch.nn.Module):
    """A test-time method double: logits = views @ W, tuned W; records what the loss is given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(3))
        self.seen = []

    def test_time_logits(self, x):
        return x @ self.weight

    def loss(self, logits):
        self.seen.append(logits.detach().clone())
        return logits.logsumexp(-1).mean()


def test_only_the_views_selected_on_the_first_step_reach_the_loss():
    method = _Recorder()
    views = torch.tensor([[0.1, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 8.0], [0.3, 0.3, 0.3]])
    cfg = TestTimeConfig(views=5, selection=0.4, steps=2, lr=0.01, optimizer="sgd", momentum=0.0)
    optimizer = torch.optim.SGD([method.weight], lr=0.01)
    adapt_one(method, views, views[:1], optimizer, cfg, method.loss, torch.device("cpu"))
    assert len(method.seen) == 2
    # step 1: the two peaked views (rows 3 then 1) with the initial W = I
    torch.testing.assert_close(method.seen[0], views[[3, 1]])
    assert method.seen[1].shape == (2, 3)  # the same two views again at step 2


@pytest.fixture
def rada_on_colors(tiny_backbone, color_dataset):
    tiny_backbone.clear_extensions()
    torch.manual_seed(0)
    method = build_method("rada", tiny_backbone, ClassTask.from_splits(color_dataset), preset="toy")
    yield method, color_dataset
    tiny_backbone.clear_extensions()


def test_two_orders_of_the_same_samples_give_identical_results(rada_on_colors):
    method, ds = rada_on_colors
    cfg = TestTimeConfig(views=8, steps=2, lr=0.05, precision="fp32")
    forward = adapt_and_predict(method, ds, cfg, progress=False)
    backward = adapt_and_predict(method, replace(ds, test=ds.test[::-1]), cfg, progress=False)
    plain = adapt_and_predict(method, ds, replace(cfg, steps=0), progress=False)
    n = len(ds.test)
    torch.testing.assert_close(torch.as_tensor(forward.logits), torch.as_tensor(backward.logits[::-1].copy()))
    assert not torch.allclose(torch.as_tensor(forward.logits), torch.as_tensor(plain.logits))  # it did adapt
    assert forward.labels.tolist() == [s.label for s in ds.test] and n == len(backward.labels)


def test_settings_refuse_online_ttt_and_bad_fractions():
    with pytest.raises(ValueError, match="reset must be true"):
        TestTimeSettings(reset=False)
    with pytest.raises(ValueError, match="keep must be in"):
        TestTimeSettings(keep=0)


def test_spread_subset_takes_every_class_in_order(color_dataset):
    sub = spread_subset(color_dataset, 5)  # 5 classes × 3 test images, listed class by class
    assert [s.label for s in sub.test] == [0, 1, 2, 3, 4]


def test_protocol_records_adapted_unadapted_and_time_metrics(tmp_path):
    from data_fixtures import make_imagenet_family

    make_imagenet_family(tmp_path)
    settings = {"test_time.views": 4, "test_time.limit": 3}
    run = execute(build_spec("rada", "test_time", ("imagenet", "imagenetv2"), backbone="wb-tiny-vit",
                             data_root=str(tmp_path), settings=settings),
                  Registry(tmp_path / "reg"), data_root=str(tmp_path), progress=False)
    m = run.metrics
    for key in ("imagenet", "imagenetv2", "imagenetv2_unadapted", "imagenetv2_changed_percent", "average",
                "seconds_per_sample"):
        assert key in m, key
    assert m["average"] == m["imagenetv2"] and m["seconds_per_sample"] > 0
    zs = execute(build_spec("zeroshot", "test_time", ("imagenet", "imagenetv2"), backbone="wb-tiny-vit",
                            data_root=str(tmp_path), settings=settings),
                 Registry(tmp_path / "reg"), data_root=str(tmp_path), progress=False).metrics
    assert zs["imagenetv2"] == zs["imagenetv2_unadapted"] and zs["imagenetv2_changed_percent"] == 0


@pytest.mark.slow  # ~45 s: 48 samples × 64 views on the pretrained toy CLIP
def test_toy_rada_ttt_changes_predictions_without_losing_accuracy(tmp_path, toy_model_dir, toy_data_root):
    spec = build_spec("rada", "test_time", ("toy_objects_shifted",), backbone=f"local-dir:{toy_model_dir}",
                      settings={"test_time.limit": 48})
    m = execute(spec, Registry(tmp_path / "reg"), progress=False).metrics
    assert m["toy_objects_shifted_changed_percent"] > 0
    assert m["toy_objects_shifted"] >= m["toy_objects_shifted_unadapted"] - 1.0
