"""`workbench bench`: what the frozen-feature cache buys, as ratios (a benchmark, never a unit test).

1. CLIP-Adapter trained for E epochs on cached features (V augmented views encoded once, then
   cheap epochs) against the same method re-encoding augmented images every epoch, with the same
   number of optimizer steps. Cached is timed cold (the V encoding passes included) and warm (the
   features already on disk).
2. Encoding a split's features: cache miss (encode and write) against cache hit (read).

Every measurement uses a fresh temporary cache, so a miss is a real miss whatever the user's cache holds.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .data.transforms import test_transform
from .engine.features import FeatureCache, encode_images
from .engine.train import TrainConfig, fit
from .methods import ClassTask, build_method

BENCH_METHOD = "clip_adapter"


def load_bench_data(name: str, shots: int | None, seed: int, root=None):
    """The dataset's few-shot split (all training images when `shots` is None); the toy world is
    rendered first when needed."""
    from .data import load_dataset, load_few_shot, load_manifest

    if root is None and load_manifest(name).is_toy:
        from .data.toy import ensure_toy_data

        ensure_toy_data()
    return load_dataset(name, root=root) if shots is None else load_few_shot(name, shots, seed, root=root)


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_bench(backbone: str = "toy", dataset: str = "toy_objects", *, pretrained: str | None = None,
              shots: int | None = 16, epochs: int = 10, views: int = 2, batch_size: int = 32, seed: int = 1,
              root=None, device: str = "cpu", split: str = "test") -> dict:
    """Run both measurements and return their timings (seconds) and ratios."""
    from .models import load_backbone

    model = load_backbone(backbone, pretrained, device=device)
    ds = load_bench_data(dataset, shots, seed, root)
    task = ClassTask.from_splits(ds)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, feature_views=views, warmup_epochs=0,
                      precision="fp32")

    def train(inputs: str, cache: FeatureCache):
        """Seconds spent in `fit` (building the method, i.e. its text features, is not timed)."""
        torch.manual_seed(seed)  # the same adapter init in every variant
        method = build_method(BENCH_METHOD, model, task)
        method.inputs = inputs  # "images": encode augmented images at every step instead
        return _timed(lambda: fit(method, ds, cfg, seed=seed, device=device, cache=cache, progress=False))

    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as tmp:
        cache = FeatureCache(Path(tmp) / "train")
        images_s, images_fit = train("images", FeatureCache(enabled=False))
        cold_s, cold_fit = train("features", cache)
        warm_s, warm_fit = train("features", cache)
        if not images_fit.steps == cold_fit.steps == warm_fit.steps:
            raise RuntimeError(f"step counts differ: {images_fit.steps}, {cold_fit.steps}, {warm_fit.steps}")

        split_cache = FeatureCache(Path(tmp) / "split")
        samples = ds.split(split)
        transform = test_transform(model.image_size, model.mean, model.std)

        def encode():
            return encode_images(model, samples, ds.image_root, transform, cache=split_cache, desc=f"{ds.name}/{split}")

        miss_s, _ = _timed(encode)
        hit_s, _ = _timed(encode)
        if (split_cache.misses, split_cache.hits) != (1, 1):
            raise RuntimeError(f"expected one miss then one hit, got {split_cache.misses} / {split_cache.hits}")

    return {
        "backbone": backbone, "dataset": ds.name, "method": BENCH_METHOD, "device": device,
        "threads": torch.get_num_threads(),
        "train_images": len(ds.train), "split": split, "split_images": len(samples),
        "epochs": epochs, "views": views, "batch_size": batch_size, "steps": cold_fit.steps,
        "reencode_s": images_s, "features_cold_s": cold_s, "features_warm_s": warm_s,
        "speedup_cold": images_s / cold_s, "speedup_warm": images_s / warm_s,
        "cache_miss_s": miss_s, "cache_hit_s": hit_s, "cache_speedup": miss_s / hit_s,
    }


def format_bench(r: dict) -> str:
    rows = [
        (f"{r['method']}: re-encode images every epoch", r["reencode_s"], 1.0),
        (f"{r['method']}: cached features, cold ({r['views']} encoding passes)", r["features_cold_s"],
         r["speedup_cold"]),
        (f"{r['method']}: cached features, warm", r["features_warm_s"], r["speedup_warm"]),
        (f"encode {r['split']} split: cache miss", r["cache_miss_s"], 1.0),
        (f"encode {r['split']} split: cache hit", r["cache_hit_s"], r["cache_speedup"]),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{r['backbone']} on {r['dataset']} ({r['device']}, {r['threads']} threads): "
             f"{r['train_images']} training images, "
             f"{r['epochs']} epochs x {r['steps'] // max(r['epochs'], 1)} steps (batch {r['batch_size']}); "
             f"{r['split_images']} {r['split']} images",
             f"{'':{width}}  {'seconds':>9}  {'speed-up':>9}"]
    lines += [f"{name:{width}}  {sec:9.3f}  {ratio:8.1f}x" for name, sec, ratio in rows]
    return "\n".join(lines)
