"""Classification metrics used by every protocol (numbers in percent, as the papers print them)."""
from __future__ import annotations

import numpy as np


def accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(100.0 * (labels == predictions).mean())


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·B·N / (B + N), the base-to-novel summary."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * np.diag(matrix) / totals, np.nan)
