"""2-D projections (t-SNE, UMAP) of the image embeddings a run stored, for the app and notebooks.

    from workbench.analysis.embeddings import project, stacked_embeddings
    pts = stacked_embeddings(run.dir, ["base", "new"])       # image, class name and split per point
    xy = project(pts.image, "tsne", random_state=0)            # Projection(coords [m, 2], index [m])
    figures.embedding_scatter(xy.coords, classnames=pts.classname[xy.index], groups=pts.group[xy.index])

Embeddings are L2-normalised first (CLIP compares by cosine), at most `cap` points are kept (a fixed
random subset, so the same call gives the same picture), and both methods use a fixed
`random_state`: the same inputs give the same coordinates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_CAP = 2000  # points projected at most (t-SNE is O(n log n) per iteration; 2 CPUs)
METHODS = ("tsne", "umap")
LABELS = {"tsne": "t-SNE", "umap": "UMAP"}


@dataclass(frozen=True)
class Projection:
    """coords[i] is the 2-D position of input row index[i] (index is sorted)."""

    coords: np.ndarray  # [m, 2] float
    index: np.ndarray  # [m] int, rows of the input that were projected
    method: str


@dataclass(frozen=True)
class StackedEmbeddings:
    """Image embeddings of one or more evaluated splits of a run, one row per image."""

    image: np.ndarray  # [n, D] float32
    labels: np.ndarray  # [n] int, class index within its split
    classname: np.ndarray  # [n] str
    group: np.ndarray  # [n] str, the split key each row came from ("base", "new", "test", a dataset...)


def subsample_index(n: int, cap: int | None, random_state: int = 0) -> np.ndarray:
    """Sorted indices of at most `cap` of `n` rows: all of them when n <= cap, else a fixed random subset."""
    if cap is None or n <= cap:
        return np.arange(n)
    if cap < 1:
        raise ValueError(f"cap must be positive, got {cap}")
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=cap, replace=False))


def _threads():
    """Run the projection on one thread: on a small shared CPU, OpenMP workers spinning against other
    processes make t-SNE 10-50x slower than a single thread (and one thread is reproducible)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=int(os.environ.get("WORKBENCH_PROJECTION_THREADS", "1")))


def _prepare(x, cap: int | None, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings [n, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    index = subsample_index(len(x), cap, random_state)
    x = x[index]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0), index


def tsne_2d(x, random_state: int = 0, cap: int | None = DEFAULT_CAP, perplexity: float | None = None) -> Projection:
    """t-SNE (scikit-learn, PCA init) of the L2-normalised rows of `x`.

    perplexity defaults to min(30, (m - 1) / 3) (at least 1) so that small sets work too.
    """
    from sklearn.manifold import TSNE

    x, index = _prepare(x, cap, random_state)
    m = len(x)
    if m < 2:  # nothing to arrange
        return Projection(np.zeros((m, 2)), index, "tsne")
    if perplexity is None:
        perplexity = min(30.0, max(1.0, (m - 1) / 3.0))
    perplexity = min(float(perplexity), m - 1.0)
    init = "pca" if x.shape[1] >= 2 else "random"
    with _threads():
        coords = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=random_state,
                      learning_rate="auto").fit_transform(x)
    return Projection(np.asarray(coords, dtype=np.float64), index, "tsne")


def umap_2d(x, random_state: int = 0, cap: int | None = DEFAULT_CAP, n_neighbors: int = 15,
            min_dist: float = 0.1) -> Projection:
    """UMAP (umap-learn) of the L2-normalised rows of `x`; n_neighbors is capped at m - 1.

    Setting random_state makes umap-learn run single-threaded and reproducible. The first call in a
    process compiles umap's numba code (tens of seconds on a small CPU).
    """
    x, index = _prepare(x, cap, random_state)
    m = len(x)
    if m < 3:  # UMAP needs a neighbour graph; place 0-2 points on a line
        return Projection(np.column_stack([np.arange(m, dtype=np.float64), np.zeros(m)]), index, "umap")
    import warnings

    with warnings.catch_warnings(), _threads():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # random_state forces one thread
        warnings.filterwarnings("ignore", message=".*k >= N.*")
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(int(n_neighbors), m - 1)), min_dist=min_dist,
                            random_state=random_state, init="spectral" if m >= 10 else "random")
        coords = reducer.fit_transform(x)
    return Projection(np.asarray(coords, dtype=np.float64), index, "umap")


def project(x, method: str = "tsne", random_state: int = 0, cap: int | None = DEFAULT_CAP, **kwargs) -> Projection:
    """`tsne_2d` or `umap_2d` by name ("tsne" / "t-sne" / "umap")."""
    key = method.lower().replace("-", "").replace("_", "")
    if key == "tsne":
        return tsne_2d(x, random_state=random_state, cap=cap, **kwargs)
    if key == "umap":
        return umap_2d(x, random_state=random_state, cap=cap, **kwargs)
    raise ValueError(f"unknown projection {method!r}; expected one of {METHODS}")


# ------------------------------------------------------------------------------------------------
# reading what a run stored
# ------------------------------------------------------------------------------------------------
def stored_keys(run_dir: str | os.PathLike) -> list[str]:
    """Split keys with stored image embeddings in a run folder ("base", "new", "test", dataset names)."""
    path = Path(run_dir) / "embeddings.npz"
    if not path.exists():
        return []
    with np.load(path, allow_pickle=False) as z:
        keys = [name.split("/", 1)[0] for name in z.files if name.endswith("/image")]
    return sorted(dict.fromkeys(keys), key=_key_order)


def _key_order(key: str) -> tuple[int, str]:
    order = {"base": 0, "new": 1, "test": 2}
    return order.get(key, 3), key


def stacked_embeddings(run_dir: str | os.PathLike, keys: Sequence[str]) -> StackedEmbeddings:
    """The stored image embeddings of `keys` (e.g. ["base", "new"]) stacked, with class name and split per row."""
    from workbench.runs import load_embeddings

    parts_x, parts_y, parts_c, parts_g = [], [], [], []
    for key in keys:
        stored = load_embeddings(run_dir, key)
        if "image" not in stored:
            raise KeyError(f"no stored image embeddings for {key!r} in {run_dir}; stored: {stored_keys(run_dir)}")
        image = np.asarray(stored["image"], dtype=np.float32)
        labels = np.asarray(stored["labels"], dtype=np.int64)[: len(image)]
        names = [str(c) for c in stored.get("classnames", [])]
        parts_x.append(image)
        parts_y.append(labels)
        parts_c.append(np.array([names[i] if 0 <= i < len(names) else f"class {i}" for i in labels], dtype=object))
        parts_g.append(np.full(len(image), key, dtype=object))
    if not parts_x:
        raise ValueError("no split keys given")
    return StackedEmbeddings(np.concatenate(parts_x), np.concatenate(parts_y), np.concatenate(parts_c),
                             np.concatenate(parts_g))
