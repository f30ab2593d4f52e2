"""`workbench bench rada`: what RAda costs.

1. One EFT step (mask forward, CE + L2 mask loss, backward, AdamW step) on cached features [B, D] at C
   classes, for C in `--classes` (default 100 and 1000), with the attention's query classes in chunks of
   `--chunk` against the same step unchunked (the reference). `attention_bytes` is what the attention
   weights of one query take at once (B·H·rows·C float32: rows = C unchunked, the chunk otherwise);
   `max_logit_difference` checks that chunking is exact on the same batch.
2. Test-time training per sample: RAda-TTT against TPT (the reference) on the same `--views` views of one
   image, `--steps` steps each, through `engine.test_time.adapt_one` (views encoded once: both read only
   the frozen image tower's features; TPT re-encodes its C class prompts at every step).

Timings are medians over `--repeats` after a warm-up; peak memory is CUDA's allocator peak, or on CPU the
process's peak resident set above the start (noisy: an order of magnitude).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from . import register_benchmark
from ._measure import time_repeats


def eft_step(classes: int, batch: int, dim: int, chunk: int | None, repeats: int, device: str, seed: int = 1) -> dict:
    from ..methods._rada_mask import RationalMask
    from ..methods.rada import mask_regularization

    torch.manual_seed(seed)
    head = RationalMask(dim, heads=8, class_chunk=chunk).to(device)
    torch.nn.init.normal_(head.layers[0].out_proj.weight, std=0.01)  # a mask that is not all ones
    optimizer = torch.optim.AdamW(head.parameters(), lr=9e-4, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, dim, generator=gen).to(device)
    txt = torch.randn(classes, dim, generator=gen).to(device)
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)

    def step():
        logits, mask = head(img, txt, 100.0, return_mask=True)
        loss = F.cross_entropy(logits, labels) + 1.5 * mask_regularization(mask, "l2")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times, peak = time_repeats(step, repeats, device)
    with torch.no_grad():
        logits = head(img, txt, 100.0)
    rows = classes if not chunk or chunk >= classes else chunk
    return {"seconds": statistics.median(times), "peak_bytes": peak, "logits": logits.cpu(),
            "attention_bytes": batch * 8 * rows * classes * 4}


def ttt_per_sample(backbone, classes: int, views: int, steps: int, repeats: int, device: str) -> dict:
    from ..engine.test_time import TestTimeConfig, _optimizer, adapt_one, average_entropy
    from ..methods import ClassTask, build_method

    task = ClassTask(f"bench_{classes}", tuple(f"class {i}" for i in range(classes)), ("a photo of a {}.",))
    cfg = TestTimeConfig(views=views, steps=steps, lr=8e-4, precision="fp32")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(views, 3, backbone.image_size, backbone.image_size, generator=gen).to(device)
    out = {}
    for name in ("tpt", "rada"):
        backbone.clear_extensions()
        torch.manual_seed(1)
        method = build_method(name, backbone, task).to(device).eval()
        method.prepare_eval(task, "base")
        params = method.test_time_parameters()
        for p in params:
            p.requires_grad_(True)
        optimizer = _optimizer(params, cfg)
        initial = [p.detach().clone() for p in params]

        def sample():
            feats = method.image_tower_features(images)
            adapt_one(method, feats, feats[:1], optimizer, cfg, average_entropy, torch.device(device))
            with torch.no_grad():
                for p, v in zip(params, initial):
                    p.copy_(v)

        times, _ = time_repeats(sample, repeats, device)
        out[name] = {"seconds": statistics.median(times), "parameters": sum(p.numel() for p in params)}
    backbone.clear_extensions()
    out["rada"]["ratio"] = out["rada"]["seconds"] / out["tpt"]["seconds"]
    return out


def efficiency(backbone, methods=("maple", "rada"), classes: int = 100, batch: int = 4, views: int = 64,
               steps: int = 3, repeats: int = 2, device: str = "cpu", preset: str | None = None) -> list[dict]:
    """Table 5's columns, measured: per method and setting, images (EFT: a training step on `batch` images,
    towers included) or test samples (TTT: `views` views, `steps` steps) per second, peak memory, and the
    FLOPs of one image / sample by torch.utils.flop_counter (`gflops`; `gmacs` = gflops / 2, the unit of
    fvcore's FlopCountAnalysis, which khufia/RAda imports). TTT uses each method's test-time variant
    (rada, maple_tpt). `preset`: the methods' preset of that name where they have one (e.g. "toy" for
    the 4-layer toy towers)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..engine.test_time import TestTimeConfig, _optimizer, adapt_one, average_entropy
    from ..engine.train import set_training_modes
    from ..methods import ClassTask, build_method, get_method_class

    def build(key):
        return build_method(key, backbone, task, preset=preset if preset in get_method_class(key).presets else None)

    task = ClassTask(f"bench_{classes}", tuple(f"class {i}" for i in range(classes)), ("a photo of a {}.",))
    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size
    images = torch.randn(max(batch, views), 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
    ttt_name = {"maple": "maple_tpt", "coop": "tpt"}
    rows = []

    def measure(fn, per: int):
        times, peak = time_repeats(fn, repeats, device)
        with FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops() / per
        return {"fps": per / statistics.median(times), "memory_gb": peak / 2**30, "gflops": flops / 1e9,
                "gmacs": flops / 2e9}

    for name in methods:
        backbone.clear_extensions()
        torch.manual_seed(1)
        model = build(name).to(device)
        set_training_modes(model)
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model.training_loss(images[:batch], labels).loss.backward()
            optimizer.step()

        rows.append({"method": name, "setting": "EFT", **measure(step, batch)})
        backbone.clear_extensions()
        torch.manual_seed(1)
        tuned = build(ttt_name.get(name, name)).to(device).eval()
        tuned.prepare_eval(task, "base")
        params = tuned.test_time_parameters()
        for p in params:
            p.requires_grad_(True)
        cfg = TestTimeConfig(views=views, steps=steps, lr=8e-4, precision="fp32")
        opt = _optimizer(params, cfg)

        def sample():
            x = images[:views]
            if tuned.evaluates_on_cached_features():
                x = tuned.image_tower_features(x)
            adapt_one(tuned, x, x[:1], opt, cfg, average_entropy, torch.device(device))

        rows.append({"method": name, "setting": "TTT", **measure(sample, 1)})
    backbone.clear_extensions()
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="C for the EFT step")
    parser.add_argument("--batch", type=int, default=1, help="images per EFT step (default 1, the paper's)")
    parser.add_argument("--dim", type=int, default=512, help="feature width D (default 512, ViT-B/16's)")
    parser.add_argument("--chunk", type=int, default=128, help="query classes per attention chunk")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (median)")
    parser.add_argument("--backbone", default="wb-tiny-vit", help="model for the TTT comparison")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--ttt-classes", type=int, default=100, help="C for the TTT comparison")
    parser.add_argument("--views", type=int, default=64, help="views per test sample (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="test-time steps (default 3, the paper's)")
    parser.add_argument("--device", default="cpu")


def run(args) -> dict:
    from ..models import load_backbone

    rows = []
    for n in args.classes:
        whole = eft_step(n, args.batch, args.dim, None, args.repeats, args.device)
        chunked = eft_step(n, args.batch, args.dim, args.chunk, args.repeats, args.device)
        rows.append({"classes": n, "unchunked": {k: v for k, v in whole.items() if k != "logits"},
                     "chunked": {k: v for k, v in chunked.items() if k != "logits"},
                     "time_ratio": chunked["seconds"] / whole["seconds"],
                     "max_logit_difference": float((chunked["logits"] - whole["logits"]).abs().max())})
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device)
    ttt = ttt_per_sample(backbone, args.ttt_classes, args.views, args.steps, args.repeats, args.device)
    return {"eft": rows, "ttt": ttt, "settings": {k: getattr(args, k) for k in
                                                  ("batch", "dim", "chunk", "repeats", "backbone", "ttt_classes",
                                                   "views", "steps", "device")}}


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def format(result: dict) -> str:
    s = result["settings"]
    lines = [f"RAda EFT step (batch {s['batch']}, D {s['dim']}, 8 heads, {s['device']}): chunk {s['chunk']} vs unchunked"]
    for r in result["eft"]:
        w, c = r["unchunked"], r["chunked"]
        lines.append(f"  C={r['classes']:>5}: unchunked {w['seconds'] * 1e3:.1f} ms, peak {_mb(w['peak_bytes'])}, "
                     f"attention {_mb(w['attention_bytes'])} | chunked {c['seconds'] * 1e3:.1f} ms "
                     f"({r['time_ratio']:.2f}x), peak {_mb(c['peak_bytes'])}, attention {_mb(c['attention_bytes'])}"
                     f" | max |Δlogit| {r['max_logit_difference']:.1e}")
    t = result["ttt"]
    lines.append(f"TTT per sample ({s['views']} views, {s['steps']} steps, C={s['ttt_classes']}, {s['backbone']}):")
    lines.append(f"  TPT (reference) {t['tpt']['seconds'] * 1e3:.1f} ms, {t['tpt']['parameters']:,} tuned parameters")
    lines.append(f"  RAda-TTT {t['rada']['seconds'] * 1e3:.1f} ms ({t['rada']['ratio']:.2f}x TPT), "
                 f"{t['rada']['parameters']:,} tuned parameters")
    return "\n".join(lines)


register_benchmark("rada", help="RAda: EFT step at C = 100 / 1000 (chunked vs unchunked), TTT per sample vs TPT",
                   add_arguments=add_arguments, run=run, format=format)
