"""`workbench bench dam`: DAM's per-pair CMA (Eq. 10, both directions) by the rank-one closed form against
the explicit per-pair ridge solve (a c×c system per image–class pair, as the released code materializes),
time and peak memory at B images × N classes × c dims.

The explicit solve at B=32, N=1000, c=512 needs 32,000 c×c systems per direction (≈ 34 GB per batch of
matrices in float32): by default it is timed on a measured subset of pairs (`--max-pairs`, in chunks) and
extrapolated linearly to all pairs; the output says so. `--max-pairs 0` solves every pair.
"""
from __future__ import annotations

import time

import torch

from . import register_benchmark
from ._measure import PeakMemory, _sync


def _features(batch: int, classes: int, dim: int, device: str):
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(batch, dim, generator=gen)
    txt = torch.randn(classes, dim, generator=gen)
    return img.to(device), txt.to(device)


def time_closed_form(batch, classes, dim, device, repeats: int = 20) -> dict:
    from ..methods._dam_alignment import cma_distances

    img, txt = _features(batch, classes, dim, device)
    cma_distances(img, txt, 0.1, 0.1, 1.0, 1.0)  # warm-up
    _sync(device)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        for _ in range(repeats):
            cma_distances(img, txt, 0.1, 0.1, 1.0, 1.0)
        _sync(device)
        seconds = (time.perf_counter() - start) / repeats
    return {"seconds": seconds, "peak_bytes": mem.bytes}


def time_explicit(batch, classes, dim, device, max_pairs: int, chunk: int) -> dict:
    """The explicit per-pair solves over `max_pairs` pairs (0: all), in chunks of `chunk` pairs."""
    from ..methods._dam_alignment import explicit_pair_distances

    img, txt = _features(batch, classes, dim, device)
    total = batch * classes
    pairs = total if max_pairs <= 0 else min(max_pairs, total)
    flat_img = img.repeat_interleave(classes, 0)[:pairs]
    flat_txt = txt.repeat(batch, 1)[:pairs]
    explicit_pair_distances(flat_img[:1], flat_txt[:1], 0.1, 0.1, 1.0, 1.0)  # warm-up
    _sync(device)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        for i in range(0, pairs, chunk):
            explicit_pair_distances(flat_img[i:i + chunk], flat_txt[i:i + chunk], 0.1, 0.1, 1.0, 1.0)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"seconds_measured": seconds, "pairs_measured": pairs, "pairs_total": total,
            "seconds": seconds * total / pairs, "extrapolated": pairs < total, "peak_bytes": mem.bytes,
            "chunk": chunk}


def check_agreement(dim: int, device: str) -> float:
    """Largest |closed form − explicit| over a small problem (B=4, N=5)."""
    from ..methods._dam_alignment import cma_distances, explicit_cma_distances

    img, txt = _features(4, 5, dim, device)
    err = 0.0
    for a, b in zip(cma_distances(img, txt, 0.1, 0.1, 1.0, 1.0), explicit_cma_distances(img, txt, 0.1, 0.1, 1.0, 1.0)):
        err = max(err, float((a - b).abs().max()))
    return err


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="images B (default 32)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension c (default 512)")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="class counts N (default 100 1000)")
    parser.add_argument("--max-pairs", type=int, default=256,
                        help="image–class pairs solved explicitly per N, then extrapolated (0: all pairs)")
    parser.add_argument("--chunk", type=int, default=64, help="pairs per batched explicit solve (memory)")
    parser.add_argument("--device", default="cpu")


@torch.no_grad()
def run(args) -> dict:
    rows = []
    for n in args.classes:
        closed = time_closed_form(args.batch, n, args.dim, args.device)
        explicit = time_explicit(args.batch, n, args.dim, args.device, args.max_pairs, args.chunk)
        rows.append({"classes": n, "closed": closed, "explicit": explicit,
                     "speedup": explicit["seconds"] / closed["seconds"],
                     "matrix_bytes_all_pairs": 2 * args.batch * n * args.dim ** 2 * 4})
    return {"batch": args.batch, "dim": args.dim, "device": args.device, "reference": "explicit per-pair solve",
            "max_abs_difference": check_agreement(args.dim, args.device), "rows": rows}


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def format_result(r: dict) -> str:
    lines = [f"DAM CMA (Eq. 10, both directions), B={r['batch']}, c={r['dim']}, {r['device']}; "
             f"ratio = explicit per-pair solve / rank-one closed form",
             f"max |closed form − explicit| on B=4, N=5: {r['max_abs_difference']:.2e}",
             f"{'N':>6} {'closed form':>12} {'peak':>10} {'explicit':>12} {'peak':>10} {'speed-up':>10}  note"]
    for row in r["rows"]:
        c, e = row["closed"], row["explicit"]
        note = (f"explicit timed on {e['pairs_measured']:,} of {e['pairs_total']:,} pairs and extrapolated; "
                f"its c×c matrices for all pairs: {_mb(row['matrix_bytes_all_pairs'])}") if e["extrapolated"] else \
            f"all {e['pairs_total']:,} pairs solved"
        lines.append(f"{row['classes']:>6} {c['seconds'] * 1e3:>10.3f}ms {_mb(c['peak_bytes']):>10} "
                     f"{e['seconds']:>11.2f}s {_mb(e['peak_bytes']):>10} {row['speedup']:>9,.0f}×  {note}")
    lines.append("peak = memory above the start (CPU: peak resident set; CUDA: allocator peak); the explicit "
                 f"peak is for chunks of {r['rows'][0]['explicit']['chunk']} pairs")
    return "\n".join(lines)


register_benchmark("dam", help="DAM's CMA: rank-one closed form vs explicit per-pair ridge solves (time, peak memory)",
                   add_arguments=add_arguments, run=run, format=format_result)
