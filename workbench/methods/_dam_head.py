"""DAM's dual-alignment head: the 11 learned scalars, SMA on both branches, CMA, Eq. 11's mix, the loss.

It takes four feature sets (rows, L2-normalized by the encoders): prompted / frozen image [B, c] and
prompted / frozen class text [N, c], and returns logits [B, N] plus L_SMA (Eq. 6). The encoders (HPT's)
are the method's; see `dam.py`. Equations: `_dam_alignment`.

Scalars (11, as the released code has): λ and ρ of each SMA (image, text), λ_IT, μ_IT, λ_TI, μ_TI, α, ω, β.

`ranges="paper"` (default) keeps each in its range [paper: "α ∈ [0, 1]", "β ∈ [0, 1]"; λ, μ, ω positive,
ρ a ratio]: α, β, ρ = sigmoid(raw); λ, μ, ω = exp(raw); inits α = β = ρ = 0.5, μ = ω = 1, λ = `lambda_init`
[decision: the paper gives no inits; 0.5 / 1 are the released ones]. `ranges="released"` is the released
parametrization: λ = (rows/c)·exp(a) + 1e-6 (rows = B for image maps, N for text maps), μ = exp(b),
ρ (its SMA β), α, ω raw (unconstrained), β = sigmoid(β′); inits a = b = 0, ρ = α = β′ = 0.5, ω = 1.

`sma="paper"` applies f̂ = Ŵ f (Eq. 5, no re-normalization); `sma="released"` is normalize(m·Ŵ f + f).
Ablations (Tables VII–IX): `sma_image`, `sma_text`, `cma` on/off, `directions` ("both", "itot", "ttoi"),
`learnable_w` ("none", "sma", "cma", "both": a learnable c×c matrix, identity at init, in place of the
closed form; Table IX's variant, the paper is silent on its init). `text_map="shared"`: one c×c text SMA
map over all N classes (the paper's 1000-class cross-dataset / DG setting, the released --xd).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _dam_alignment as dam

SCALARS = ("lambda_image_sma", "rho_image_sma", "lambda_text_sma", "rho_text_sma", "lambda_itot", "mu_itot",
           "lambda_ttoi", "mu_ttoi", "alpha", "omega", "beta")
RANGES = ("paper", "released")
SMA_MODES = ("paper", "released")
DIRECTIONS = ("both", "itot", "ttoi")
LEARNABLE_W = ("none", "sma", "cma", "both")
TEXT_MAPS = ("per_class", "shared")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class DAMHead(nn.Module):
    def __init__(self, dim: int, *, ranges: str = "paper", lambda_init: float = 0.1, sma: str = "paper",
                 residual_weight: float = 0.1, sma_image: bool = True, sma_text: bool = True, cma: bool = True,
                 directions: str = "both", learnable_w: str = "none", text_map: str = "per_class"):
        super().__init__()
        for value, options, name in ((ranges, RANGES, "ranges"), (sma, SMA_MODES, "sma"),
                                     (directions, DIRECTIONS, "directions"), (learnable_w, LEARNABLE_W, "learnable_w"),
                                     (text_map, TEXT_MAPS, "text_map")):
            if value not in options:
                raise ValueError(f"{name} must be one of {options}, got {value!r}")
        if lambda_init <= 0:
            raise ValueError(f"lambda_init must be > 0, got {lambda_init}")
        self.dim, self.ranges, self.sma_mode, self.residual_weight = dim, ranges, sma, residual_weight
        self.sma_image, self.sma_text, self.use_cma = sma_image, sma_text, cma
        self.directions, self.learnable_w, self.text_map = directions, learnable_w, text_map
        if ranges == "paper":
            init = {"lambda": math.log(lambda_init), "rho": 0.0, "mu": 0.0, "alpha": 0.0, "omega": 0.0, "beta": 0.0}
        else:
            init = {"lambda": 0.0, "rho": 0.5, "mu": 0.0, "alpha": 0.5, "omega": 1.0, "beta": 0.5}
        self.raw = nn.ParameterDict({name: nn.Parameter(torch.tensor(float(init[name.split("_")[0]])))
                                     for name in SCALARS})
        if learnable_w in ("sma", "both"):
            self.w_image_sma = nn.Parameter(torch.eye(dim))
            self.w_text_sma = nn.Parameter(torch.eye(dim))
        if learnable_w in ("cma", "both"):
            self.w_itot = nn.Parameter(torch.eye(dim))
            self.w_ttoi = nn.Parameter(torch.eye(dim))

    # -- scalars --------------------------------------------------------------------------------
    def scalar(self, name: str, rows: int | None = None) -> torch.Tensor:
        """The value of scalar `name` in its range (λ under `ranges="released"` needs the map's rows)."""
        raw = self.raw[name]
        kind = name.split("_")[0]
        if self.ranges == "paper":
            return torch.sigmoid(raw) if kind in ("rho", "alpha", "beta") else torch.exp(raw)
        if kind == "lambda":
            return dam.released_lambda(raw, rows if rows is not None else self.dim, self.dim)
        if kind == "mu":
            return torch.exp(raw)
        return torch.sigmoid(raw) if kind == "beta" else raw

    def learned_scalars(self, rows: dict[str, int] | None = None) -> dict[str, float]:
        """Every scalar's current value (released λ at `rows` per map: {"image": B, "text": N})."""
        rows = rows or {}
        out = {}
        for name in SCALARS:
            branch = "image" if name.endswith(("image_sma", "itot")) else "text"
            out[name] = float(self.scalar(name, rows.get(branch)).detach())
        return out

    # -- forward --------------------------------------------------------------------------------
    def _sma(self, prompted, frozen, branch: str):
        lam = self.scalar(f"lambda_{branch}_sma", prompted.shape[0])
        rho = self.scalar(f"rho_{branch}_sma")
        if self.learnable_w in ("sma", "both"):
            return prompted @ getattr(self, f"w_{branch}_sma").t()
        if branch == "text" and self.text_map == "shared":
            aligned = prompted @ dam.shared_text_map(prompted, frozen, lam, rho)
            return F.normalize(self.residual_weight * aligned + prompted, dim=-1) if self.sma_mode == "released" \
                else aligned
        if self.sma_mode == "released":
            return dam.sma_residual(prompted, frozen, lam, rho, self.residual_weight)
        return dam.sma(prompted, frozen, lam, rho)

    def _cma(self, images, texts):
        lam_it = self.scalar("lambda_itot", images.shape[0])
        lam_ti = self.scalar("lambda_ttoi", texts.shape[0])
        mu_it, mu_ti = self.scalar("mu_itot"), self.scalar("mu_ttoi")
        if self.learnable_w in ("cma", "both"):
            itot = torch.cdist(mu_it * images @ self.w_itot.t(), texts).pow(2)
            ttoi = torch.cdist(images, mu_ti * texts @ self.w_ttoi.t()).pow(2)
        else:
            itot, ttoi = dam.cma_distances(images, texts, lam_it, lam_ti, mu_it, mu_ti)
        return dam.cma_scores(itot, ttoi, self.scalar("alpha"), self.scalar("omega"), self.directions)

    def forward(self, image_prompted, image_frozen, text_prompted, text_frozen, logit_scale):
        """(logits [B, N], L_SMA, aligned image [B, c], aligned text [N, c], d_CMA or None)."""
        img = self._sma(image_prompted, image_frozen, "image") if self.sma_image else image_prompted
        txt = self._sma(text_prompted, text_frozen, "text") if self.sma_text else text_prompted
        terms = []
        if self.sma_text:
            terms.append(1 - F.cosine_similarity(txt, text_frozen, dim=-1).mean())
        if self.sma_image:
            terms.append(1 - F.cosine_similarity(img, image_frozen, dim=-1).mean())
        sma_loss = sum(terms) if terms else image_prompted.new_zeros(())
        d_cma = self._cma(img, txt) if self.use_cma else None
        d = dam.final_similarity(img, txt, d_cma, self.scalar("beta"))
        return logit_scale * d, sma_loss, img, txt, d_cma
