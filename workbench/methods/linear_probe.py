"""Linear probe CLIP (Radford et al. 2021; few-shot protocol of CoOp's lpclip): multinomial logistic
regression on frozen image features, its L2 strength searched on the few-shot validation set.

Facts from KaiyangZhou/CoOp lpclip/ [code]:
- features of train, val and test are all extracted with the *test* transform (resize + center crop,
  no augmentation), one feature per image;
- sklearn LogisticRegression(lbfgs, max_iter=1000, L2, intercept) per C;
- C search: coarse grid 1e6, 1e4, …, 1e-6 on val accuracy, then 8 bisection steps in log10 space
  starting from [peak/10, peak·10]: fit both ends, keep the better one (ties: the left, smaller C)
  and halve the interval towards it.

Our choices [decision]:
- features are L2-normalized before fitting (lpclip fits raw features; `normalize=False` does that);
- the presets cache one deterministic view (crop scale (1, 1), no flip): for square images this is
  exactly the test transform's center crop; for non-square images it is the whole image resized
  (the engine does not offer test-transform training features yet). Only view 0 is used when more
  views are cached;
- the chosen C is the one lpclip's bisection ends on unless a C visited earlier scored strictly
  higher on val (then the first such C); the final classifier is refit on the training features
  with it. Without a val split `c_without_val` is used.
- it scores only the classes it was trained on (or a subset of them, e.g. ImageNet-A/R). New classes
  (base-to-novel "new", cross-dataset targets) are not applicable: `prepare_eval` raises.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, Preset, register_method

COARSE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
MISSING_CLASS_BIAS = -1e4  # a class absent from the training features is never predicted


@dataclass
class LinearProbeConfig:
    search_steps: int = 8  # bisection steps after the coarse grid (lpclip's --num_step)
    max_iter: int = 1000
    normalize: bool = True  # L2-normalize features before the classifier
    c_without_val: float = 1.0  # C used when the dataset has no validation split


def trained_class_positions(trained: Sequence[str], wanted: Sequence[str]) -> list[int] | None:
    """Index in `trained` of every class in `wanted`, or None if any of them was not trained."""
    index = {name: i for i, name in enumerate(trained)}
    positions = [index.get(name) for name in wanted]
    return None if any(p is None for p in positions) else positions


def fit_logistic(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs").fit(features, labels)


def search_c(train_x, train_y, val_x, val_y, steps: int = 8, max_iter: int = 1000) -> tuple[float, list[tuple[float, float]]]:
    """lpclip's coarse-to-fine search of C on val accuracy. Returns (chosen C, [(C, val acc)] in
    evaluation order)."""
    scores: dict[float, float] = {}

    def val_acc(c: float) -> float:
        if c not in scores:
            scores[c] = float((fit_logistic(train_x, train_y, c, max_iter).predict(val_x) == val_y).mean())
        return scores[c]

    coarse = [val_acc(c) for c in COARSE_GRID]
    peak = COARSE_GRID[int(np.argmax(coarse))]
    chosen = peak
    lo, hi = math.log10(peak) - 1, math.log10(peak) + 1
    for _ in range(steps):
        c_lo, c_hi = 10.0 ** lo, 10.0 ** hi
        if val_acc(c_lo) < val_acc(c_hi):
            chosen, lo = c_hi, (lo + hi) / 2
        else:
            chosen, hi = c_lo, (lo + hi) / 2
    best = max(scores.values())
    if scores[chosen] < best:
        chosen = next(c for c, acc in scores.items() if acc == best)
    return chosen, list(scores.items())


@register_method
class LinearProbe(Method):
    name = "linear_probe"
    paper_names = ("Linear probe CLIP", "LP")
    Config = LinearProbeConfig
    inputs = "features"
    closed_form = True
    presets = {
        "default": Preset({}, {"feature_views": 1, "crop_scale": (1.0, 1.0), "flip": False},
                          "CoOp's lpclip/linear_probe.py: logistic regression, C searched on val (coarse grid + 8 bisection steps), "
                          "one non-augmented view"),
        "toy": Preset({}, {"feature_views": 1, "crop_scale": (1.0, 1.0), "flip": False},
                      "embedded toy world (same as default: a closed-form fit is cheap)"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        n, dim = len(task.classnames), backbone.embed_dim
        # fitted in closed form by sklearn, never by SGD; Parameters so that they count and are saved
        self.weight = nn.Parameter(torch.zeros(n, dim))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("state_c", torch.tensor(float("nan"), dtype=torch.float64))
        self.search_log: list[tuple[float, float]] = []

    def _prepare(self, features: torch.Tensor) -> np.ndarray:
        features = features.float()
        if self.config.normalize:
            features = F.normalize(features, dim=-1)
        return features.cpu().double().numpy()

    def fit_closed_form(self, features, labels, val_features=None, val_labels=None):
        train_x, train_y = self._prepare(features[0] if features.dim() == 3 else features), labels.cpu().numpy()
        if val_features is not None and len(val_labels):
            c, self.search_log = search_c(train_x, train_y, self._prepare(val_features), val_labels.cpu().numpy(),
                                          self.config.search_steps, self.config.max_iter)
        else:
            c, self.search_log = self.config.c_without_val, []
        clf = fit_logistic(train_x, train_y, c, self.config.max_iter)
        self._load_classifier(clf)
        self.state_c.fill_(c)
        val_acc = dict(self.search_log).get(c, float("nan"))
        train_acc = float((clf.predict(train_x) == train_y).mean())
        return {"C": c, "log10_C": math.log10(c), "val_acc": 100.0 * val_acc, "train_acc": 100.0 * train_acc,
                "c_evaluated": len(self.search_log)}

    def _load_classifier(self, clf) -> None:
        coef, intercept = clf.coef_, clf.intercept_
        if len(clf.classes_) == 2:  # sklearn's binary form: one row scores the second class
            coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        with torch.no_grad():
            self.weight.zero_()
            self.bias.fill_(MISSING_CLASS_BIAS)
            device = self.weight.device  # sklearn's arrays are on the CPU; the probe may be on a GPU
            rows = torch.as_tensor(clf.classes_, dtype=torch.long, device=device)
            self.weight[rows] = torch.as_tensor(coef, dtype=self.weight.dtype, device=device)
            self.bias[rows] = torch.as_tensor(intercept, dtype=self.bias.dtype, device=device)

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        rows = trained_class_positions(self.task.classnames, task.classnames)
        if rows is None:
            unknown = [c for c in task.classnames if c not in set(self.task.classnames)]
            raise ValueError(
                f"linear_probe scores only the {len(self.task.classnames)} classes it was trained on; "
                f"{task.dataset} ({domain}) has {len(unknown)} other classes (e.g. {unknown[:3]}). New classes "
                "(base_to_novel 'new', cross-dataset targets) are not applicable to a linear probe.")
        self.eval_rows = torch.as_tensor(rows, dtype=torch.long, device=self.weight.device)

    def eval_class_embeddings(self):
        """The classifier's weight rows (they live in the image feature space)."""
        return self.weight[self.eval_rows].detach()

    def eval_logits(self, inputs):
        features = F.normalize(inputs.float(), dim=-1) if self.config.normalize else inputs.float()
        return features @ self.weight[self.eval_rows].t() + self.bias[self.eval_rows]
