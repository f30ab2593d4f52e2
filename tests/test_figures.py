"""Figure builders (workbench.analysis.figures) and 2-D projections (workbench.analysis.embeddings)
checked against values computed independently here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from workbench.analysis import embeddings as emb
from workbench.analysis import figures
from workbench.runs import Registry, RunSpec


# ------------------------------------------------------------------------------------------------
# training history
# ------------------------------------------------------------------------------------------------
def test_history_figure_plots_every_numeric_column_against_epoch():
    rng = np.random.default_rng(0)
    hist = pd.DataFrame({"epoch": [2, 0, 3, 1], "loss": rng.random(4), "train_acc": rng.random(4) * 100,
                         "lr": [1e-3, 2e-3, 5e-4, 1.5e-3], "alpha": rng.random(4), "note": list("abcd"),
                         "empty": [np.nan] * 4})
    cols = figures.numeric_history_columns(hist)
    assert cols == ["loss", "train_acc", "lr", "alpha"]  # not epoch, not text, not all-NaN
    order = np.argsort(hist["epoch"].to_numpy())
    for separate in (True, False):
        fig = figures.history_figure(hist, separate=separate)
        assert [t.name for t in fig.data] == cols
        for trace in fig.data:
            assert list(trace.x) == [0, 1, 2, 3]
            np.testing.assert_allclose(trace.y, hist[trace.name].to_numpy()[order])
    one = figures.history_figure(hist, ["alpha"])
    assert len(one.data) == 1 and one.data[0].name == "alpha"
    with pytest.raises(KeyError, match="lambda"):
        figures.history_figure(hist, ["lambda"])


# ------------------------------------------------------------------------------------------------
# similarities
# ------------------------------------------------------------------------------------------------
def _hand_cosines(image, classes, labels):
    true, other = [], []
    for i, x in enumerate(image):
        for j, c in enumerate(classes):
            cos = float(np.dot(x, c) / (np.sqrt(np.dot(x, x)) * np.sqrt(np.dot(c, c))))
            (true if j == labels[i] else other).append(cos)
    return np.array(true), np.array(other)


def test_similarity_histogram_true_and_other_class_cosines():
    rng = np.random.default_rng(1)
    image, classes = rng.normal(size=(12, 6)), rng.normal(size=(4, 6)) * 3.0  # norms must not matter
    labels = rng.integers(0, 4, size=12)
    true, other = _hand_cosines(image, classes, labels)
    got_true, got_other = figures.class_cosines(image, classes, labels)
    np.testing.assert_allclose(got_true, true, atol=1e-12)
    np.testing.assert_allclose(got_other, other, atol=1e-12)
    fig = figures.similarity_histogram(image=image, classes=classes, labels=labels)
    assert fig.data[0].name.startswith("true class (n=12)") and fig.data[1].name.startswith("other classes (n=36)")
    np.testing.assert_allclose(fig.data[0].x, true, atol=1e-12)
    np.testing.assert_allclose(fig.data[1].x, other, atol=1e-12)
    assert "cosine" in fig.layout.xaxis.title.text and fig.layout.meta["kind"] == "cosine"
    # more labels than stored images (embeddings are capped): the extra labels are ignored
    got_true, _ = figures.class_cosines(image[:5], classes, labels)
    np.testing.assert_allclose(got_true, true[:5], atol=1e-12)


def test_similarity_histogram_falls_back_to_scores_from_logits():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    labels = np.array([0, 2])
    fig = figures.similarity_histogram(logits=logits, labels=labels)
    assert list(fig.data[0].x) == [2.0, 0.2] and sorted(fig.data[1].x) == [-1.0, 0.1, 0.3, 0.5]
    assert "score" in fig.layout.xaxis.title.text and "cosine" not in fig.layout.xaxis.title.text
    assert fig.layout.meta["kind"] == "score" and "score" in fig.data[0].name
    with pytest.raises(ValueError, match="logits"):
        figures.similarity_histogram(labels=labels)


# ------------------------------------------------------------------------------------------------
# confusion
# ------------------------------------------------------------------------------------------------
def test_confusion_heatmap_z_is_the_confusion_matrix():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2, 2, 1, 0])
    expected = np.zeros((3, 3), dtype=int)
    for y, p in zip(labels, preds):
        expected[y, p] += 1
    names = ["cat", "dog", "bird"]
    fig = figures.confusion_heatmap(labels, preds, names)
    heat = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heat.z), expected)
    assert list(heat.x) == names and list(heat.y) == names
    norm = figures.confusion_heatmap(labels, preds, names, normalize=True).data[0]
    np.testing.assert_allclose(np.asarray(norm.z), 100 * expected / expected.sum(1, keepdims=True))
    np.testing.assert_array_equal(np.asarray(norm.text), expected)  # cells still show counts
    # a prediction beyond the named classes gets its own row/column instead of being dropped
    wide = figures.confusion_heatmap([0, 1], [0, 3], ["a", "b"]).data[0]
    assert list(wide.x) == ["a", "b", "class 2", "class 3"] and np.asarray(wide.z)[1, 3] == 1


# ------------------------------------------------------------------------------------------------
# projections and the scatter
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clusters():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(3, 16)) * 4
    labels = np.repeat(np.arange(3), 12)
    return centers[labels] + rng.normal(size=(36, 16)) * 0.3, labels


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_projection_one_point_per_input_and_deterministic(clusters, method):
    x, labels = clusters
    a = emb.project(x, method, random_state=0)
    b = emb.project(x, method, random_state=0)
    assert a.coords.shape == (36, 2) and np.isfinite(a.coords).all()
    np.testing.assert_array_equal(a.index, np.arange(36))
    np.testing.assert_array_equal(a.coords, b.coords)  # same seed, same picture
    # well separated clusters stay separated: each point's nearest neighbour has its label
    d = np.linalg.norm(a.coords[:, None] - a.coords[None], axis=-1) + np.eye(36) * 1e9
    assert (labels[d.argmin(1)] == labels).mean() > 0.9
    capped = emb.project(x, method, random_state=0, cap=20)
    assert capped.coords.shape == (20, 2) and len(np.unique(capped.index)) == 20
    np.testing.assert_array_equal(capped.index, emb.project(x, method, random_state=0, cap=20).index)


@pytest.mark.parametrize("method", ["tsne", "umap"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_projection_of_tiny_sets(method, n):
    x = np.random.default_rng(3).normal(size=(n, 8))
    assert emb.project(x, method).coords.shape == (n, 2)


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        emb.tsne_2d(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        emb.tsne_2d(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="unknown projection"):
        emb.project(np.zeros((3, 2)), "pca")


def test_embedding_scatter_groups_and_classes():
    coords = np.arange(12, dtype=float).reshape(6, 2)
    names = ["a", "a", "b", "c", "c", "c"]
    groups = ["base", "base", "base", "new", "new", "new"]
    fig = figures.embedding_scatter(coords, classnames=names, groups=groups)  # default: by group
    assert [t.name for t in fig.data] == ["base classes", "new classes"]
    np.testing.assert_array_equal(np.concatenate([t.x for t in fig.data]), coords[:, 0])
    by_class = figures.embedding_scatter(coords, classnames=names, groups=groups, color_by="class")
    assert [t.name for t in by_class.data] == ["a", "b", "c"] and [len(t.x) for t in by_class.data] == [2, 1, 3]


def test_stacked_embeddings_read_what_the_protocol_stored(tmp_path):
    from workbench.runs.files import RunFiles

    files = RunFiles(tmp_path)  # what RunHandle.save_embeddings writes for the protocols
    rng = np.random.default_rng(4)
    for key, names in (("base", ["x", "y"]), ("new", ["z"])):
        n = 3 if key == "base" else 2
        files.save_embeddings(key, rng.normal(size=(n, 5)), np.arange(n) % len(names), names,
                              rng.normal(size=(len(names), 5)))
    assert emb.stored_keys(tmp_path) == ["base", "new"]
    pts = emb.stacked_embeddings(tmp_path, ["base", "new"])
    assert pts.image.shape == (5, 5)
    assert list(pts.classname) == ["x", "y", "x", "z", "z"] and list(pts.group) == ["base"] * 3 + ["new"] * 2
    with pytest.raises(KeyError, match="test"):
        emb.stacked_embeddings(tmp_path, ["test"])
    assert emb.stored_keys(tmp_path / "nothing") == []


# ------------------------------------------------------------------------------------------------
# ours vs the paper (the aggregation and the join are workbench.analysis.compare's)
# ------------------------------------------------------------------------------------------------
def test_comparison_bar_shows_ours_beside_the_paper(tmp_path):
    from workbench.analysis import compare

    reg = Registry(tmp_path / "runs")
    for seed, (base, new) in {1: (90.0, 60.0), 2: (94.0, 50.0)}.items():
        run = reg.create_or_get(RunSpec(method="coop", protocol="base_to_novel", datasets=("eurosat",), shots=16,
                                        seed=seed, backbone="toy"))
        run.write_metrics({"base": base, "new": new, "hm": 2 * base * new / (base + new)})
        run.set_status("done")
    table = compare.ours_vs_paper(compare.aggregate_runs(reg.list()),
                                  compare.paper_rows("mmrl", "Table 1", protocol="base_to_novel"), average=False)
    fig = figures.comparison_bar(table, "base")
    ours = [t for t in fig.data if t.name == "ours"]
    paper = [t for t in fig.data if t.name == "paper"]
    ci95 = sp.t.ppf(0.975, 1) * np.std([90, 94], ddof=1) / np.sqrt(2)  # error bars: 95% CI over the 2 seeds
    assert len(ours) == 1 and list(ours[0].y) == [92.0] and list(ours[0].error_y.array) == [pytest.approx(ci95)]
    assert "92.00 ± 2.83, n=2" in ours[0].customdata[0][0]
    assert len(paper) == 1 and list(paper[0].y) == [92.19]  # MMRL Table 1: CoOp, EuroSAT, base


def _table(rows):
    cols = ["protocol", "method", "paper_method", "dataset", "shots", "metric", "ours", "ours_std", "ours_ci95", "n",
            "seeds", "ours_values", "paper", "diff", "note", "paper_table"]
    out = pd.DataFrame([{**dict.fromkeys(cols, ""), **r} for r in rows], columns=cols)
    out["shots"] = out["shots"].astype("Int64")
    return out


def test_comparison_figure_single_seed_and_missing_paper_values():
    table = _table([
        {"method": "coop", "paper_method": "CoOp", "dataset": "toy", "shots": 16, "metric": "base", "ours": 91.0,
         "ours_std": np.nan, "ours_ci95": np.nan, "n": 1, "paper": np.nan},
        {"method": "coop", "paper_method": "CoOp", "dataset": "eurosat", "shots": 16, "metric": "base", "ours": 92.0,
         "ours_std": np.nan, "ours_ci95": np.nan, "n": 1, "paper": 93.5},
        {"method": "kgcoop", "paper_method": "KgCoOp", "dataset": "eurosat", "shots": 16, "metric": "base",
         "ours": 90.5, "ours_std": np.nan, "ours_ci95": np.nan, "n": 1, "paper": 91.0}])
    fig = compare_figure(table)
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["ours", "paper"]  # each once, though the first panel has no paper value
    paper = [t for t in fig.data if t.name == "paper"]
    assert all(pd.notna(list(t.y)).all() for t in paper)  # no empty paper series
    assert all(t.error_y.array is None for t in fig.data if t.name == "ours")  # n = 1: no error bars
    lo, hi = fig.layout.yaxis.range
    assert 0 < lo < 90.5 and hi > 93.5 and hi - lo < 10  # zoomed: a 1-3 point difference is visible


def compare_figure(table):
    return figures.comparison_bar(table)


def test_many_colors_are_distinct_and_the_scatter_has_a_legend():
    colors = figures.many_colors(48)
    assert len(colors) == 48 and len(set(c.lower() for c in colors)) == 48
    assert len(set(figures.many_colors(100))) == 100
    coords = np.random.default_rng(0).normal(size=(96, 2))
    names = [f"class {i}" for i in range(48)] * 2
    fig = figures.embedding_scatter(coords, classnames=names, color_by="class")
    assert len(fig.data) == 48 and fig.layout.showlegend is not False
    assert len({t.marker.color for t in fig.data}) == 48
    assert all("class: " in h for t in fig.data for h in t.text)


def test_seeds_figure_bars_dots_and_ci():
    ours = pd.DataFrame({"method": ["coop", "zeroshot"], "dataset": "toy", "metric": "base",
                         "mean": [92.0, 74.4], "std": [np.std([90, 94], ddof=1), np.nan],
                         "ci95": [sp.t.ppf(0.975, 1) * np.std([90, 94], ddof=1) / np.sqrt(2), np.nan],
                         "n": [2, 1], "seeds": ["1,2", "1"], "values": [(90.0, 94.0), (74.4,)]})
    fig = figures.seeds_figure(ours)
    bars = [t for t in fig.data if t.type == "bar"]
    dots = [t for t in fig.data if t.type == "scatter"]
    assert [list(b.y) for b in bars] == [[92.0], [74.4]]
    assert list(bars[0].error_y.array) == [pytest.approx(ours["ci95"][0])] and bars[1].error_y.array is None
    assert [list(d.y) for d in dots] == [[90.0, 94.0], [74.4]]


def test_download_config_and_overlay():
    assert figures.download_config("x", "svg")["toImageButtonOptions"] == {"format": "svg", "filename": "x",
                                                                          "scale": figures.DOWNLOAD_SCALE}
    h1 = pd.DataFrame({"epoch": [2, 1], "loss": [1.0, 2.0]})
    fig = figures.overlay_history({"a": h1, "b": pd.DataFrame({"epoch": [1], "acc": [3.0]})}, "loss")
    assert [t.name for t in fig.data] == ["a"] and list(fig.data[0].y) == [2.0, 1.0]


def test_paper_difference_is_ours_minus_paper():
    table = _table([
        {"method": "coop", "dataset": "eurosat", "shots": 16, "metric": "base", "ours": 92.0, "ours_std": 2.83,
         "ours_ci95": 25.4, "n": 2, "paper": 92.19},
        {"method": "coop", "dataset": "toy", "shots": 16, "metric": "base", "ours": 90.0, "ours_std": np.nan,
         "ours_ci95": np.nan, "n": 1, "paper": np.nan}])
    table["diff"] = table["ours"] - table["paper"]
    fig = figures.paper_difference(table)
    (bar,) = [t for t in fig.data if t.type == "bar"]
    assert list(bar.x) == ["eurosat"] and list(bar.y) == [pytest.approx(92.0 - 92.19)]  # toy: no paper, left out
    assert list(bar.error_y.array) == [25.4]
