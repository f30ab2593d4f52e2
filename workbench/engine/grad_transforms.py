"""Gradient transforms that need a second forward/backward at perturbed weights: SAM and GradReg.

Both start from the method's own gradient g = ∇L(θ) (whatever `method.backward` leaves in `.grad`: a
method that rewrites its gradients, like ProGrad, is transformed after its rewrite, at both points),
then perturb the weights by ε = ρ·g/‖g‖ (one norm over every parameter that has a gradient) and take
g′ = ∇L(θ + ε) by calling `method.backward` again, and restore θ:

    sam      (Foret et al., ICLR 2021)   update with g′
    gradreg  (GLAD, Algorithm 1)         if ⟨g, g′⟩ < 0: g′ ← g′ − ⟨g, g′⟩/(‖g‖² + δ)·g  (Eq. 6)
                                         update with (1 − α)·g + α·g′                      (Eq. 7)

Engine order (`engine.train.fit`): backward → transform → gradient clipping → optimizer step. Under AMP
the gradients arrive multiplied by the loss scale S; the transform works on g/S (norms, dots and ε
are of the true gradients), writes S·g_f back, and leaves unscaling, inf checks and the skipped step
to the GradScaler. A g that is not finite is left as it is (no perturbation: the scaler skips the step).

What is and is not touched: only parameters with a gradient this step are perturbed and rewritten;
frozen parameters (no `.grad`) and parameter groups without gradients keep their values exactly; the
optimizer and its state are never read or written (the step itself is the optimizer's). θ is restored
by subtracting the same ε (no copy of the weights is kept: one gradient copy of extra memory, g), so it
comes back to within float rounding (|θ| · 2⁻²⁴), deterministically. The second pass draws its own
dropout masks, as a second call of the model does in the SAM reference implementations.

Every step reports ⟨g, g′⟩ < 0 and cos(g, g′) (before the projection); `fit` records their per-epoch
means as the history columns `grad_conflict` (share of steps) and `grad_cos`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

GRAD_TRANSFORMS = ("none", "sam", "gradreg")
STEP_COLUMNS = {"conflict": "grad_conflict", "cos": "grad_cos"}  # step statistic -> history column


@dataclass(frozen=True)
class GradTransform:
    kind: str  # sam | gradreg
    rho: float = 0.1  # ρ, the radius of the perturbation
    alpha: float = 0.5  # α, GradReg's weight of g′ (unused by SAM)
    delta: float = 1e-12  # δ, GradReg's stabilizer in the projection

    def __post_init__(self) -> None:
        if self.kind not in GRAD_TRANSFORMS[1:]:
            raise ValueError(f"gradient transform must be one of {', '.join(GRAD_TRANSFORMS[1:])}, got {self.kind!r}")

    def apply(self, params: Sequence[torch.Tensor], rerun: Callable[[], object], grad_scale: float = 1.0
              ) -> dict[str, float]:
        """Rewrite `.grad` of `params` (holding S·g, S = `grad_scale`) into S·g_f; `rerun()` computes
        the loss and fills `.grad` again at the current weights (the method's backward). Returns the
        step's statistics ({} when g is not finite or zero: nothing was done)."""
        live = [p for p in params if p.grad is not None]
        if not live:
            return {}
        inv = 1.0 / grad_scale
        g = [_wide(p.grad.detach()) * inv for p in live]  # the one extra gradient copy
        g_norm_sq = _sum_sq(g)
        if not torch.isfinite(g_norm_sq) or g_norm_sq == 0:
            return {}
        coef = self.rho / g_norm_sq.sqrt()
        with torch.no_grad():
            for p, gi in zip(live, g):
                p.add_((coef * gi).to(p.dtype))
                p.grad = None
        try:
            rerun()
        finally:
            with torch.no_grad():
                for p, gi in zip(live, g):
                    p.sub_((coef * gi).to(p.dtype))
        for p, gi in zip(live, g):
            if p.grad is None:  # the loss no longer reaches p at θ + ε
                p.grad = torch.zeros_like(p)
        dot = sum((gi * _wide(p.grad)).sum() for p, gi in zip(live, g)) * inv
        g2_norm = sum((_wide(p.grad) ** 2).sum() for p in live).sqrt() * inv
        if not (torch.isfinite(dot) and torch.isfinite(g2_norm)):
            return {}  # g′ overflowed under AMP: the scaler skips this step
        stats = {"conflict": float(dot < 0),
                 "cos": float(dot / (g_norm_sq.sqrt() * g2_norm)) if g2_norm > 0 else 0.0}
        if self.kind == "gradreg":  # in place: S·g_f = α·(S·g′) + S·((1 − α) − α·c)·g, c the projection
            c = dot / (g_norm_sq + self.delta) if dot < 0 else torch.zeros(())
            g_weight = float(((1 - self.alpha) - self.alpha * c) * grad_scale)
            with torch.no_grad():
                for p, gi in zip(live, g):
                    p.grad.mul_(self.alpha).add_(gi.to(p.grad.dtype), alpha=g_weight)
        # sam: `.grad` already holds S·g′
        return stats


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision gradients are summed in float32)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _sum_sq(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((t * t).sum() for t in tensors)


def grad_transform_from(kind: str, rho: float, alpha: float, delta: float) -> GradTransform | None:
    """The transform the training settings name (None for "none")."""
    return None if kind == "none" else GradTransform(kind, rho=rho, alpha=alpha, delta=delta)


class StepStatistics:
    """Per-epoch means of the transform's step statistics, as history columns."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.steps = 0

    def add(self, stats: dict[str, float]) -> None:
        if not stats:
            return
        self.steps += 1
        for k, v in stats.items():
            self.totals[k] = self.totals.get(k, 0.0) + v

    def record(self) -> dict[str, float]:
        if not self.steps:
            return {}
        return {STEP_COLUMNS[k]: v / self.steps for k, v in self.totals.items()}
