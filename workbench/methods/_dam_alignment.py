"""DAM's alignments (Lu et al., "Dual Alignment Mechanism", papers/dam.txt) as pure tensor functions.

Features are rows: images [B, c], class texts [N, c]. For one pair (source f, target g) the ridge problem
of Eqs. 1/7, min_W ‖W f − g‖² + λ‖W‖², has the solution W* = g fᵀ (f fᵀ + λI)⁻¹ (Eqs. 2/8/9). It is rank
one: by Sherman–Morrison, W* f = g · s/(λ + s) with s = ‖f‖², so no c×c matrix is needed:

    SMA (Eqs. 3–5)   f̂ = Ŵ f = ρ f + (1 − ρ) g s/(λ + s)            (f prompted, g frozen)
    L_SMA (Eq. 6)    2 − cos(f̂_D, f_D) − cos(f̂_A, f_A)
    CMA (Eq. 10)     ItoT_kn = ‖f̂_D,n − μ_IT W*_IT f̂_A,k‖² = ‖f̂_D,n‖² (1 − μ_IT s_A,k/(λ + s_A,k))²
                     TtoI_kn = ‖f̂_A,k − μ_TI W*_TI f̂_D,n‖² = ‖f̂_A,k‖² (1 − μ_TI s_D,n/(λ + s_D,n))²
                     d_CMA = log_softmax_n(ω [−α ItoT − (1 − α) TtoI])
    Eq. 11           d = β cos(f̂_A, f̂_D) + (1 − β) d_CMA            (logits = d / τ, Eq. 12)

The degeneracy this makes visible: d_CMA depends on the image only through ‖f̂_A,k‖ and on the class
only through ‖f̂_D,n‖ — never on their directions. With L2-normalized inputs (the released code) every
pair gets the same distance, log_softmax gives −log N for every class and CMA only rescales the logits
(`explicit_*` replay the per-pair c×c solves for tests and `workbench bench dam`).

Facts from the released code (Peiy-Lu/DAM, trainers/dam.py, read for facts only) [code]:
- λ = (B/c)·exp(a) + 1e-6 with a learnable a (init 0): B = the batch for image maps (SMA, ItoT), N =
  the classes for text maps (SMA, TtoI); μ = exp(b) (b init 0); α, ω, β′ init 0.5, 1, 0.5; the final mix
  is σ(β′)·cos-logits + (1 − σ(β′))·CMA-logits (`released_lambda`, `torch.sigmoid`);
- SMA W ← W − (W − I)·β (β init 0.5: the paper's ρ), then residual f ← normalize(m·(f W) + f) with a
  fixed weight m = 0.1 (TRAINER.I_M / T_M) (`sma_residual`);
- cross-dataset (--cd): logits averaged with those against the frozen text and from the frozen image
  features (`cross_dataset_average`);
- cross-dataset / DG training on ImageNet (--xd): one text map fitted over all N classes
  (`shared_text_map`), W = (FᵀF + λI)⁻¹ Fᵀ G (c×c, N rows).

`batch_ridge_distances` is NOT DAM: an extension that fits one ridge map across the batch's
image → class-text pairs and scores every class with it, so that the distance depends on directions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------- rank one


def ridge_gain(source: torch.Tensor, lam) -> torch.Tensor:
    """s/(λ + s), s = ‖source‖² per row: W* source = target · gain (the rank-one closed form)."""
    s = source.pow(2).sum(dim=-1)
    return s / (lam + s)


def ridge_apply(source: torch.Tensor, target: torch.Tensor, lam) -> torch.Tensor:
    """W* source for each pair of rows, W* = target sourceᵀ (source sourceᵀ + λI)⁻¹, without W*."""
    return target * ridge_gain(source, lam).unsqueeze(-1)


def sma(prompted: torch.Tensor, frozen: torch.Tensor, lam, rho) -> torch.Tensor:
    """Eqs. 3–5: f̂ = (ρ I + (1 − ρ) W*) f per pair of rows (f prompted, W* maps it to the frozen)."""
    return rho * prompted + (1 - rho) * ridge_apply(prompted, frozen, lam)


def sma_residual(prompted: torch.Tensor, frozen: torch.Tensor, lam, rho, weight: float) -> torch.Tensor:
    """The released code's SMA: normalize(m · Ŵ f + f), with Ŵ as in `sma` and a fixed weight m."""
    return F.normalize(weight * sma(prompted, frozen, lam, rho) + prompted, dim=-1)


def sma_loss(text_aligned, text_frozen, image_aligned, image_frozen) -> torch.Tensor:
    """Eq. 6: 2 − mean cos(f̂_D, f_D) − mean cos(f̂_A, f_A)."""
    return (2 - F.cosine_similarity(text_aligned, text_frozen, dim=-1).mean()
            - F.cosine_similarity(image_aligned, image_frozen, dim=-1).mean())


def cma_distances(images: torch.Tensor, texts: torch.Tensor, lam_it, lam_ti, mu_it, mu_ti):
    """(ItoT, TtoI) squared distances of Eq. 10 for every image k and class n: two [B, N] tensors."""
    img_sq, txt_sq = images.pow(2).sum(-1), texts.pow(2).sum(-1)
    itot = txt_sq.unsqueeze(0) * (1 - mu_it * ridge_gain(images, lam_it)).pow(2).unsqueeze(1)
    ttoi = img_sq.unsqueeze(1) * (1 - mu_ti * ridge_gain(texts, lam_ti)).pow(2).unsqueeze(0)
    return itot, ttoi


def cma_scores(itot: torch.Tensor, ttoi: torch.Tensor, alpha, omega, directions: str = "both") -> torch.Tensor:
    """d_CMA = log_softmax(ω[−α ItoT − (1 − α) TtoI]) over classes; `directions` "itot" / "ttoi" keeps
    one distance (Table VIII: the other's weight is 0)."""
    if directions == "both":
        dist = alpha * itot + (1 - alpha) * ttoi
    elif directions == "itot":
        dist = itot
    elif directions == "ttoi":
        dist = ttoi
    else:
        raise ValueError(f"directions must be 'both', 'itot' or 'ttoi', got {directions!r}")
    return F.log_softmax(-omega * dist, dim=-1)


def cma(images, texts, lam_it, lam_ti, mu_it, mu_ti, alpha, omega, directions: str = "both") -> torch.Tensor:
    """d_CMA [B, N] (Eq. 10) from aligned image rows [B, c] and class rows [N, c]."""
    return cma_scores(*cma_distances(images, texts, lam_it, lam_ti, mu_it, mu_ti), alpha, omega, directions)


def final_similarity(images, texts, d_cma: torch.Tensor | None, beta) -> torch.Tensor:
    """Eq. 11: d = β cos(f̂_A, f̂_D) + (1 − β) d_CMA ([B, N]); cosine only when d_CMA is None."""
    cos = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).t()
    return cos if d_cma is None else beta * cos + (1 - beta) * d_cma


def released_lambda(raw, rows: int, dim: int):
    """The released code's λ = (rows/c)·exp(raw) + 1e-6 (rows: B for image maps, N for text maps)."""
    return (rows / dim) * torch.exp(raw) + 1e-6


def cross_dataset_average(logits, image_aligned, text_aligned, image_frozen, text_frozen, scale):
    """The released --cd averaging: (logits + s·cos(f̂_A, t_frozen) + s·cos(f_A frozen, f̂_D)) / 3."""
    cos = lambda a, b: F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()  # noqa: E731
    return (logits + scale * cos(image_aligned, text_frozen) + scale * cos(image_frozen, text_aligned)) / 3


# --------------------------------------------------------------------------- one map over many rows


def shared_text_map(prompted: torch.Tensor, frozen: torch.Tensor, lam, rho) -> torch.Tensor:
    """One c×c text map over all N classes (the paper's 1000-class setting, the released --xd SMA):
    W = (FᵀF + λI)⁻¹ Fᵀ G in row form (F prompted [N, c], G frozen), smoothed Ŵ = ρI + (1 − ρ)W."""
    c = prompted.shape[-1]
    eye = torch.eye(c, dtype=prompted.dtype, device=prompted.device)
    w = torch.linalg.solve(prompted.t() @ prompted + lam * eye, prompted.t() @ frozen)
    return rho * eye + (1 - rho) * w


def batch_ridge_map(sources: torch.Tensor, targets: torch.Tensor, lam) -> torch.Tensor:
    """Row-form W [c, c] minimizing Σ_k ‖s_k W − t_k‖² + λ‖W‖², via the B×B (Woodbury) form
    W = Sᵀ (S Sᵀ + λI_B)⁻¹ T: cost O(B²c + Bc²) instead of a c×c inverse."""
    b = sources.shape[0]
    eye = torch.eye(b, dtype=sources.dtype, device=sources.device)
    return sources.t() @ torch.linalg.solve(sources @ sources.t() + lam * eye, targets)


def batch_ridge_distances(images, texts, labels, lam, mu=1.0):
    """EXTENSION, NOT DAM: (ItoT, TtoI) [B, N] from ONE ridge map per direction fitted across the batch's
    pairs (image k → text of its class y_k, and back), then applied to every image / class:
    ItoT_kn = ‖t_n − μ f_k W_IT‖², TtoI_kn = ‖f_k − μ t_n W_TI‖². Directions matter, unlike Eq. 10."""
    paired = texts[labels]
    w_it, w_ti = batch_ridge_map(images, paired, lam), batch_ridge_map(paired, images, lam)
    itot = torch.cdist(mu * images @ w_it, texts).pow(2)
    ttoi = torch.cdist(images, mu * texts @ w_ti).pow(2)
    return itot, ttoi


# ------------------------------------------------------------------------- explicit (tests, bench)


def explicit_ridge_maps(sources: torch.Tensor, targets: torch.Tensor, lam) -> torch.Tensor:
    """W*_p = t_p s_pᵀ (s_p s_pᵀ + λI)⁻¹ for each pair p (column form, Eq. 2): [P, c, c], by solves."""
    c = sources.shape[-1]
    eye = torch.eye(c, dtype=sources.dtype, device=sources.device)
    gram = sources.unsqueeze(-1) * sources.unsqueeze(-2) + lam * eye  # [P, c, c], symmetric
    rhs = sources.unsqueeze(-1) * targets.unsqueeze(-2)  # s tᵀ = (t sᵀ)ᵀ
    return torch.linalg.solve(gram, rhs).transpose(-1, -2)


def explicit_pair_distances(images, texts, lam_it, lam_ti, mu_it, mu_ti):
    """Eq. 10's two distances for row pairs (images[p], texts[p]) with every W*_IT, W*_TI solved as c×c."""
    w_it = explicit_ridge_maps(images, texts, lam_it)
    w_ti = explicit_ridge_maps(texts, images, lam_ti)
    itot = (texts - mu_it * torch.einsum("pij,pj->pi", w_it, images)).pow(2).sum(-1)
    ttoi = (images - mu_ti * torch.einsum("pij,pj->pi", w_ti, texts)).pow(2).sum(-1)
    return itot, ttoi


def explicit_cma_distances(images, texts, lam_it, lam_ti, mu_it, mu_ti):
    """Eq. 10's distances [B, N] with every per-pair map solved explicitly (B·N pairs of c×c)."""
    b, n = images.shape[0], texts.shape[0]
    img = images.unsqueeze(1).expand(b, n, -1).reshape(b * n, -1)
    txt = texts.unsqueeze(0).expand(b, n, -1).reshape(b * n, -1)
    itot, ttoi = explicit_pair_distances(img, txt, lam_it, lam_ti, mu_it, mu_ti)
    return itot.view(b, n), ttoi.view(b, n)


def uniform_log_prob(num_classes: int) -> float:
    """−log N: what d_CMA is for every class when all distances are equal."""
    return -math.log(num_classes)
