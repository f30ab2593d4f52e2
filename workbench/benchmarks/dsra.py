"""`workbench bench dsra`: DsRA's Table 1 efficiency columns, measured by us: trainable parameters and
inference throughput (images/s) of CoOp, CoOp with visual prompts (CoOp*), MaPLe, MaPLe with one
coupling function shared by all layers (MaPLe*) and DsRA, as ratios to CoOp.

The variants as built here [decision: the paper gives only their names and counts]:
- CoOp: 16 context tokens (few-shot preset);
- CoOp*: CoOp's text context (4 tokens) plus 4 vision prompts at depth 9 (IVLP with text depth 1):
  29,696 parameters on ViT-B/16, the paper's 0.03M;
- MaPLe: its base-to-novel preset (2 tokens, depth 9, one Linear per layer);
- MaPLe*: the same with the couplings of layers 1..J-1 tied to one Linear (layer 0 keeps its own, as the
  released MaPLe initialises them: one Linear for the embedding stage, copies of one for the deeper
  layers): 797,184 parameters on ViT-B/16, the paper's 0.80M (tying all J would give 403,200);
- DsRA: its base-to-novel preset (PromptSRC's prompts + adapters at both sites).
Throughput is `eval_logits` on random images after `prepare_eval` (class features precomputed, as at test
time), warm-up batches excluded; random-init weights (speed does not depend on them).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from . import register_benchmark

REFERENCE = "coop"
VARIANTS = ("coop", "coop_vpt", "maple", "maple_shared", "dsra")
LABELS = {"coop": "CoOp", "coop_vpt": "CoOp* (visual prompts)", "maple": "MaPLe",
          "maple_shared": "MaPLe* (one shared coupling)", "dsra": "DsRA"}
FAST_TEMPLATES = {"templates": ("a photo of a {}.",), "template_set": ""}  # teacher features: not timed


def build_variant(name: str, backbone, task):
    """One Table 1 variant; prompt depth 9 (the towers' depth when shallower, e.g. the tiny test model)."""
    from ..methods import build_method

    depth = min(9, backbone.visual.num_layers, backbone.text.num_layers)

    if name == "coop":
        return build_method("coop", backbone, task, preset="few_shot")
    if name == "coop_vpt":
        return build_method("ivlp", backbone, task, overrides={
            "n_ctx_text": 4, "depth_text": 1, "n_ctx_vision": 4, "depth_vision": depth})
    if name in ("maple", "maple_shared"):
        method = build_method("maple", backbone, task, preset="base_to_novel", overrides={"depth": depth})
        if name == "maple_shared":
            couplings = method.vision_prompts.couplings
            method.vision_prompts.couplings = nn.ModuleList([couplings[0]] + [couplings[1]] * (len(couplings) - 1))
        return method
    if name == "dsra":
        return build_method("dsra", backbone, task, preset="base_to_novel",
                            overrides={**FAST_TEMPLATES, "depth_text": depth, "depth_vision": depth})
    raise KeyError(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}")


def measure_throughput(method, images: torch.Tensor, batches: int, warmup: int, device) -> float:
    """Images per second of `method.eval_logits` over `batches` timed batches."""
    method.eval()
    with torch.no_grad():
        for _ in range(warmup):
            method.eval_logits(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            method.eval_logits(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return batches * images.shape[0] / (time.perf_counter() - start)


def run_dsra_bench(backbone: str | None = None, device: str | None = None, batch_size: int = 0, batches: int = 3,
                   warmup: int = 1, classes: int = 100, variants=VARIANTS) -> dict:
    from ..backbone import CLIPBackbone, trainable_parameter_report
    from ..methods import ClassTask

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    arch = backbone or "ViT-B-16-quickgelu"
    batch_size = batch_size or (64 if dev.type == "cuda" else 8)
    torch.manual_seed(0)
    bb = CLIPBackbone.from_pretrained(arch, device=dev)
    task = ClassTask("bench", tuple(f"class {i}" for i in range(classes)), ("a photo of a {}.",))
    images = torch.randn(batch_size, 3, bb.image_size, bb.image_size, device=dev)
    rows = {}
    for name in variants:
        bb.clear_extensions()
        torch.manual_seed(0)
        method = build_variant(name, bb, task).to(dev)
        method.prepare_eval(task, "base")
        params = trainable_parameter_report(method)["trainable"]
        rows[name] = {"label": LABELS[name], "params": params,
                      "images_per_s": measure_throughput(method, images, batches, warmup, dev)}
        bb.clear_extensions()
    ref = rows.get(REFERENCE)
    for row in rows.values():
        row["params_ratio"] = row["params"] / ref["params"] if ref else None
        row["speed_ratio"] = row["images_per_s"] / ref["images_per_s"] if ref else None
    return {"backbone": arch, "device": str(dev), "batch_size": batch_size, "batches": batches,
            "classes": classes, "reference": REFERENCE, "variants": rows}


def format_dsra_bench(result: dict) -> str:
    lines = [f"DsRA Table 1 efficiency on {result['backbone']} ({result['device']}, batch {result['batch_size']}, "
             f"{result['batches']} timed batches, {result['classes']} classes); ratios vs {LABELS[result['reference']]}",
             f"{'method':32s} {'trainable':>12s} {'x ref':>8s} {'images/s':>10s} {'x ref':>7s}"]
    for row in result["variants"].values():
        pr = f"{row['params_ratio']:.2f}" if row["params_ratio"] is not None else "-"
        sr = f"{row['speed_ratio']:.2f}" if row["speed_ratio"] is not None else "-"
        lines.append(f"{row['label']:32s} {row['params']:>12,} {pr:>8s} {row['images_per_s']:>10.1f} {sr:>7s}")
    lines.append("paper (Table 1, ViT-B/16, RTX 3090): CoOp* 0.03M 505 fps, MaPLe* 0.80M 348.1, MaPLe 3.55M 348.3, "
                 "DsRA 0.17M 466.2")
    return "\n".join(lines)


def _add_arguments(parser) -> None:
    parser.add_argument("--backbone", default=None, help="open_clip model, random init (default ViT-B-16-quickgelu)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--batch-size", type=int, default=0, help="images per batch (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)


def _run(args) -> dict:
    return run_dsra_bench(args.backbone, args.device, args.batch_size, args.batches, args.warmup, args.classes,
                          tuple(args.variants))


register_benchmark("dsra", help="DsRA Table 1: trainable parameters and inference images/s of CoOp, CoOp*, MaPLe, "
                                "MaPLe* and DsRA (ratios vs CoOp)",
                   add_arguments=_add_arguments, run=_run, format=format_dsra_bench)
