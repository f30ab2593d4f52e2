"""Shared fixtures. Every test session gets its own empty workbench cache (never the user's)."""
from __future__ import annotations

import os
import random

import pytest
import torch
from PIL import Image

from workbench.data.types import DatasetSplits, Sample


@pytest.fixture(scope="session", autouse=True)
def isolated_workbench_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("workbench_cache")
    old = {k: os.environ.get(k) for k in ("WORKBENCH_CACHE", "WORKBENCH_RUNS", "WORKBENCH_TOY_DATA")}
    os.environ["WORKBENCH_CACHE"] = str(root)
    os.environ.pop("WORKBENCH_RUNS", None)
    os.environ.pop("WORKBENCH_TOY_DATA", None)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_backbone():
    """The embedded architecture at a fixed random init (no pretraining)."""
    from workbench.backbone import CLIPBackbone

    torch.manual_seed(0)
    return CLIPBackbone.from_pretrained("wb-tiny-vit")


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30),
          "purple": (150, 40, 180)}


def make_color_dataset(root, per_class: int = 3, size: int = 48, seed: int = 0) -> DatasetSplits:
    """Solid-colour squares on grey, one class per colour, written as PNG files under `root`."""
    rng = random.Random(seed)
    classnames = list(COLORS)
    splits = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classnames):
        for split in splits:
            for i in range(per_class):
                rel = f"{name}/{split}_{i}.png"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                img = Image.new("RGB", (size, size), (128, 128, 128))
                x, y = rng.randint(0, size // 3), rng.randint(0, size // 3)
                img.paste(COLORS[name], (x, y, x + size // 2, y + size // 2))
                img.save(path)
                splits[split].append(Sample(rel, label, name))
    try:
        from data_fixtures import write_knowledge_files
    except ImportError:  # pragma: no cover - imported as tests.conftest
        from tests.data_fixtures import write_knowledge_files
    knowledge = write_knowledge_files(root, classnames)  # for methods that read class knowledge (HPT, DAM)
    return DatasetSplits("colors", root, classnames, ["a photo of a {} square.", "a {} thing."], **splits,
                         knowledge_files=knowledge)


@pytest.fixture
def color_dataset(tmp_path):
    return make_color_dataset(tmp_path / "colors")


# steps of the short pretraining used by tests that need a CLIP that knows the toy world
TEST_PRETRAIN_STEPS = int(os.environ.get("WORKBENCH_TEST_PRETRAIN_STEPS", "150"))


@pytest.fixture(scope="session")
def toy_data_root(isolated_workbench_cache):
    """The toy datasets rendered once per test session (into the session's cache)."""
    from workbench.data.toy.datasets import build_all
    from workbench.paths import toy_data_root as root

    build_all(root())
    return root()


@pytest.fixture(scope="session")
def toy_model_dir(isolated_workbench_cache, toy_data_root):
    """A tiny CLIP pretrained briefly on the toy world (session-cached local-dir folder)."""
    from workbench.data.toy.pretrain import pretrain

    return pretrain(isolated_workbench_cache / "models" / "toy-clip-test", steps=TEST_PRETRAIN_STEPS,
                    measure=False, progress=False)


@pytest.fixture
def toy_backbone(toy_model_dir):
    """A fresh backbone (no extensions attached) over the briefly pretrained toy CLIP."""
    from workbench.backbone import CLIPBackbone

    return CLIPBackbone.from_pretrained(f"local-dir:{toy_model_dir}")


@pytest.fixture(scope="module")
def backbone(toy_model_dir):
    """The briefly pretrained toy CLIP as an open_clip `local-dir:` backbone (the notebook tests')."""
    return f"local-dir:{toy_model_dir}"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-tensor tests (faster on a shared CPU), restored after it;
    a module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
