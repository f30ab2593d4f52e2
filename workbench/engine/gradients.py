"""Gradient rewrites shared by methods that override `Method.backward` (ProGrad's projection):
compute per-loss gradients, compare and project them, write `.grad`. Transforms that need a second
pass at perturbed weights (SAM, GLAD's GradReg) are the engine's: `engine.grad_transforms`."""
from __future__ import annotations

from typing import Sequence

import torch


def loss_gradients(loss: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool = False
                   ) -> list[torch.Tensor | None]:
    """d loss / d p for each parameter (None where the loss does not depend on it); `.grad` untouched."""
    return list(torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True))


def flat_dot(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Σ ⟨a_i, b_i⟩ over parameter tensors (missing gradients count as zero)."""
    total = None
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        d = (x.float() * y.float()).sum()
        total = d if total is None else total + d
    return total if total is not None else torch.zeros(())


def project_conflicting(grad: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """ProGrad's rule: if ⟨g, r⟩ < 0, g ← g − strength·⟨g, r⟩/‖r‖²·r (strength 1 removes the
    component of g that opposes r); otherwise g is returned unchanged."""
    dot = (grad.float() * reference.float()).sum()
    norm_sq = (reference.float() ** 2).sum()
    if dot >= 0 or norm_sq == 0:
        return grad
    return (grad.float() - strength * dot / norm_sq * reference.float()).to(grad.dtype)


def project_conflicting_all(grads: Sequence[torch.Tensor | None], references: Sequence[torch.Tensor | None],
                            strength: float = 1.0, per_parameter: bool = True) -> list[torch.Tensor | None]:
    """`project_conflicting` over a list of parameter gradients: per tensor (ProGrad's released code)
    or once over the concatenation of all of them (`per_parameter=False`)."""
    if per_parameter:
        return [g if g is None or r is None else project_conflicting(g, r, strength)
                for g, r in zip(grads, references)]
    dot = flat_dot(grads, references)
    norm_sq = flat_dot(references, references)
    if dot >= 0 or norm_sq == 0:
        return list(grads)
    coef = strength * dot / norm_sq
    return [g if g is None or r is None else (g.float() - coef * r.float()).to(g.dtype)
            for g, r in zip(grads, references)]


def write_gradients(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    """Add `grads` into each parameter's `.grad` (created when missing)."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.add_(g.detach())
