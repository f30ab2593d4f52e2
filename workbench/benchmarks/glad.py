"""`workbench bench glad`: what GLAD's parts cost, as ratios against plain LoRA (CLIP-LoRA's step).

1. One training step (backward, gradient transform, optimizer step; the order of `engine.train.fit`) of
   LoRA with `sam` and with `gradreg` against the same step without a transform. Both transforms run a
   second forward/backward, so the target is at most 2.1x; their extra memory should be at most one
   gradient copy (the size of the trainable parameters in float32, printed beside it).
2. A GLAD step (AlignNet on, no transform) at C classes against the LoRA step at the same C, for C in
   `--classes` (default 100 and 1000): AlignNet's per-image class features, computed in class blocks.
   `bcd_bytes` is what materializing B×C×D at once would take; agreement of the blocked logits with a
   single block is checked on the same batch.

Timings are medians over `--repeats` steps after a warm-up step; peak memory is CUDA's allocator peak, or
on CPU the process's peak resident set above the start (noisy: read it as an order of magnitude).
"""
from __future__ import annotations

import statistics

from . import register_benchmark  # torch is imported by the functions: `workbench --help` stays light


def _task(classes: int):
    from ..methods import ClassTask

    return ClassTask(f"bench_{classes}", tuple(f"class {i}" for i in range(classes)), ("a photo of a {}.",))


def _build(backbone, method: str, classes: int, overrides: dict, seed: int):
    import torch

    from ..methods import build_method

    backbone.clear_extensions()
    torch.manual_seed(seed)
    return build_method(method, backbone, _task(classes), overrides=overrides)


def time_steps(backbone, method: str, classes: int, transform: str, batch: int, repeats: int, device: str,
               overrides: dict | None = None, seed: int = 1) -> dict:
    """Median seconds and peak memory of one training step."""
    import torch

    from ._measure import time_repeats
    from ..engine.grad_transforms import grad_transform_from
    from ..engine.train import set_training_modes

    model = _build(backbone, method, classes, overrides or {}, seed).to(device)
    set_training_modes(model)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    rule = grad_transform_from(transform, 0.1, 0.5, 1e-12)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.backward(x, y)
        if rule is not None:
            rule.apply(params, lambda: model.backward(x, y))
        optimizer.step()

    times, peak = time_repeats(step, repeats, device)
    grad_bytes = sum(p.numel() for p in params) * 4
    backbone.clear_extensions()
    return {"seconds": statistics.median(times), "peak_bytes": peak, "gradient_copy_bytes": grad_bytes}


def blocked_agreement(backbone, classes: int, batch: int, device: str, chunk: int) -> float:
    """max |logits in blocks of `chunk` − logits in one block| for a GLAD whose AlignNet is not zero."""
    import torch

    model = _build(backbone, "glad", classes, {"class_chunk": chunk}, 1).to(device).eval()
    torch.nn.init.normal_(model.align.out.weight, std=0.1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=gen).to(device)
    with torch.no_grad():
        img = backbone.encode_image(x)
        txt = backbone.encode_text(model.train_tokens)
        blocked = model.scores(img, txt)
        model.config.class_chunk = classes
        whole = model.scores(img, txt)
    backbone.clear_extensions()
    return float((blocked - whole).abs().max())


def add_arguments(parser) -> None:
    parser.add_argument("--backbone", default="wb-tiny-vit",
                        help="model (default wb-tiny-vit; ViT-B-16 for the paper's size, random init)")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32, GLAD's choice)")
    parser.add_argument("--step-classes", type=int, default=10, help="classes C for the transform comparison")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="C for the GLAD step")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--chunk", type=int, default=256, help="AlignNet's class block (method.class_chunk)")
    parser.add_argument("--device", default="cpu")


def run(args) -> dict:
    from ..models import load_backbone

    backbone = load_backbone(args.backbone, args.pretrained, device=args.device)
    lora = {"alignnet": False}
    common = dict(batch=args.batch, repeats=args.repeats, device=args.device)
    plain = time_steps(backbone, "glad", args.step_classes, "none", overrides=lora, **common)
    transforms = {}
    for kind in ("sam", "gradreg"):
        t = time_steps(backbone, "glad", args.step_classes, kind, overrides=lora, **common)
        t["ratio"] = t["seconds"] / plain["seconds"]
        t["extra_bytes"] = t["peak_bytes"] - plain["peak_bytes"]
        transforms[kind] = t
    rows = []
    for n in args.classes:
        base = time_steps(backbone, "glad", n, "none", overrides=lora, **common)
        glad = time_steps(backbone, "glad", n, "none", overrides={"class_chunk": args.chunk}, **common)
        rows.append({"classes": n, "lora": base, "glad": glad, "ratio": glad["seconds"] / base["seconds"],
                     "bcd_bytes": args.batch * n * backbone.embed_dim * 4,
                     "max_abs_difference": blocked_agreement(backbone, n, min(args.batch, 4), args.device,
                                                             max(1, min(args.chunk, n // 3)))})
    return {"backbone": args.backbone, "device": args.device, "batch": args.batch,
            "step_classes": args.step_classes, "reference": "plain LoRA step (CLIP-LoRA, no transform)",
            "plain": plain, "transforms": transforms, "rows": rows}


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def format_result(r: dict) -> str:
    p = r["plain"]
    lines = [f"GLAD costs on {r['backbone']} ({r['device']}), batch {r['batch']}; ratio = step time / plain LoRA step",
             f"plain LoRA step (C={r['step_classes']}): {p['seconds'] * 1e3:,.1f} ms, peak {_mb(p['peak_bytes'])}; "
             f"one gradient copy = {_mb(p['gradient_copy_bytes'])}",
             f"{'transform':>10} {'step':>10} {'ratio':>7} {'extra peak':>12}  (target ≤ 2.1x, ≤ one gradient copy)"]
    for kind, t in r["transforms"].items():
        lines.append(f"{kind:>10} {t['seconds'] * 1e3:>8.1f}ms {t['ratio']:>6.2f}x {_mb(t['extra_bytes']):>12}")
    lines.append(f"{'C':>6} {'LoRA step':>11} {'GLAD step':>11} {'ratio':>7} {'GLAD peak':>11} {'B×C×D':>10} "
                 f"{'|blocked − whole|':>18}")
    for row in r["rows"]:
        lines.append(f"{row['classes']:>6} {row['lora']['seconds'] * 1e3:>9.1f}ms {row['glad']['seconds'] * 1e3:>9.1f}ms "
                     f"{row['ratio']:>6.2f}x {_mb(row['glad']['peak_bytes']):>11} {_mb(row['bcd_bytes']):>10} "
                     f"{row['max_abs_difference']:>18.2e}")
    return "\n".join(lines)


register_benchmark("glad", help="GLAD: SAM / GradReg step-time ratio and memory vs plain LoRA; AlignNet step at C "
                                "classes", add_arguments=add_arguments, run=run, format=format_result)
