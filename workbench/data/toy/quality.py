"""Quality check of the embedded toy CLIP, self-contained (open_clip encoders + scikit-learn).

On `toy_objects` test: zero-shot top-1 on the base half and on the new half (each scored among its
own classes, as in base-to-novel), and a 16-shot linear probe on the base half (16 train images per
class, L2-normalised image features, logistic regression with C chosen on the val split).
Also reported, for information: zero-shot on `toy_objects_shifted` and `toy_vocab` (all classes).

Quality bar: new-half zero-shot >= 3x chance, and probe(base) >= zero-shot(base) + 10 points.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from ..transforms import normalized_batch
from . import world
from .datasets import SPECS, TOY_OBJECTS, TOY_OBJECTS_SHIFTED, TOY_VOCAB, load_images

TEMPLATE = "a photo of a {}."
SHOTS = 16
PROBE_C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
NEW_CHANCE_FACTOR = 3.0
PROBE_MARGIN = 0.10


@torch.no_grad()
def image_features(model, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    out = [model.encode_image(normalized_batch(images[i:i + batch])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def text_features(model, tokenizer, classnames: list[str], template: str = TEMPLATE) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer([template.format(c) for c in classnames])), dim=-1)


def zero_shot_acc(img_f: torch.Tensor, labels: np.ndarray, txt_f: torch.Tensor, classes: list[int]) -> float:
    """Top-1 among `classes` only, on the samples whose label is in `classes`."""
    keep = np.isin(labels, classes)
    logits = img_f[torch.from_numpy(keep)] @ txt_f[classes].T
    pred = np.asarray(classes)[logits.argmax(dim=1).numpy()]
    return float((pred == labels[keep]).mean())


def few_shot_indices(labels: np.ndarray, classes: list[int], shots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in classes])


def linear_probe_acc(train_f, train_y, val_f, val_y, test_f, test_y) -> tuple[float, float]:
    """Fit on train with each C in the grid, keep the best on val; returns (test acc, C)."""
    best = None
    for c in PROBE_C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(train_f, train_y)
        score = clf.score(val_f, val_y)
        if best is None or score > best[0]:
            best = (score, c, clf)
    return float(best[2].score(test_f, test_y)), best[1]


def measure(model, tokenizer, root: Path, seed: int = 0, extras: bool = True) -> dict:
    """All quality numbers for `model` on the toy datasets under `root` (a dict of floats)."""
    model.eval()
    classnames = [c.name for c in SPECS[TOY_OBJECTS].classes()]
    n = len(classnames)
    base, new = list(range(math.ceil(n / 2))), list(range(math.ceil(n / 2), n))
    txt = text_features(model, tokenizer, classnames)

    test_x, test_y = load_images(root, TOY_OBJECTS, "test")
    test_f = image_features(model, test_x)
    res = {
        "zeroshot_base": zero_shot_acc(test_f, test_y, txt, base),
        "zeroshot_new": zero_shot_acc(test_f, test_y, txt, new),
        "chance_base": 1 / len(base),
        "chance_new": 1 / len(new),
    }
    train_x, train_y = load_images(root, TOY_OBJECTS, "train")
    val_x, val_y = load_images(root, TOY_OBJECTS, "val")
    idx = few_shot_indices(train_y, base, SHOTS, seed)
    tr_f, va_f = image_features(model, train_x[idx]).numpy(), image_features(model, val_x).numpy()
    vb, tb = np.isin(val_y, base), np.isin(test_y, base)
    res["probe_base"], res["probe_C"] = linear_probe_acc(
        tr_f, train_y[idx], va_f[vb], val_y[vb], test_f.numpy()[tb], test_y[tb]
    )
    if extras:
        sx, sy = load_images(root, TOY_OBJECTS_SHIFTED, "test")
        res["zeroshot_shifted_all"] = zero_shot_acc(image_features(model, sx), sy, txt, list(range(n)))
        res["zeroshot_all"] = zero_shot_acc(test_f, test_y, txt, list(range(n)))
        vnames = [c.name for c in SPECS[TOY_VOCAB].classes()]
        vx, vy = load_images(root, TOY_VOCAB, "test")
        res["zeroshot_vocab"] = zero_shot_acc(
            image_features(model, vx), vy, text_features(model, tokenizer, vnames), list(range(len(vnames)))
        )
        res["chance_vocab"] = 1 / len(vnames)
        # descriptions instead of names (mean of the class's description embeddings)
        dtxt = torch.stack([
            F.normalize(F.normalize(model.encode_text(tokenizer(list(c.descriptions))), dim=-1).mean(0), dim=0)
            for c in SPECS[TOY_OBJECTS].classes()
        ]).detach()
        res["zeroshot_desc_base"] = zero_shot_acc(test_f, test_y, dtxt, base)
        res["zeroshot_desc_new"] = zero_shot_acc(test_f, test_y, dtxt, new)
    res = {k: round(float(v), 4) for k, v in res.items()}
    res["passes_bar"] = bool(passes_bar(res))
    return res


def passes_bar(res: dict) -> bool:
    return (
        res["zeroshot_new"] >= NEW_CHANCE_FACTOR * res["chance_new"]
        and res["probe_base"] >= res["zeroshot_base"] + PROBE_MARGIN
    )


def format_quality(res: dict) -> str:
    lines = [
        f"zero-shot base  {100 * res['zeroshot_base']:.1f}%  (chance {100 * res['chance_base']:.1f}%)",
        f"zero-shot new   {100 * res['zeroshot_new']:.1f}%  (chance {100 * res['chance_new']:.1f}%, "
        f"bar {NEW_CHANCE_FACTOR:g}x = {100 * NEW_CHANCE_FACTOR * res['chance_new']:.1f}%)",
        f"16-shot probe base  {100 * res['probe_base']:.1f}%  (bar: zero-shot base + {100 * PROBE_MARGIN:g} = "
        f"{100 * (res['zeroshot_base'] + PROBE_MARGIN):.1f}%)",
    ]
    for key, label in (("zeroshot_desc_base", "zero-shot base, descriptions"), ("zeroshot_desc_new", "zero-shot new, descriptions"),
                       ("zeroshot_shifted_all", "zero-shot shifted (all classes)"), ("zeroshot_all", "zero-shot all classes"),
                       ("zeroshot_vocab", "zero-shot toy_vocab")):
        if key in res:
            lines.append(f"{label}  {100 * res[key]:.1f}%")
    lines.append("quality bar: " + ("PASS" if res.get("passes_bar") else "FAIL"))
    return "\n".join(lines)
