"""DsRA's dual-shared low-rank adapters (Eqs. 12–17 of papers/dsra.txt), attachable to any method.

On the LayerNorm output h feeding a block's attention (MAB, site "pre_attn") or MLP (FNB, "pre_mlp"):

    A(h) = h + h · M_{tower,site} · diag(r^i_site) · M_{tower,site}ᵀ                      (Eq. 13)

- M_{tower,site} ∈ R^{d_tower × d_r}: the intra-modal shared matrix, one per tower and site, shared by
  every layer of that tower; the MAB and FNB matrices are independent (after Eq. 15);
- r^i_site ∈ R^{d_r}: the inter-modal shared coefficient of layer i, ONE tensor read by both towers
  (gradients of the text and the image tower accumulate into it); `coefficients="modality_specific"`
  gives each tower its own (Fig. 4b's ablation);
- the residual bypass carries the block input, not A's output: the backbone's adapter sites sit on
  the LayerNorm outputs (backbone/towers.py `block_forward`), which is Eqs. 14–17.

Choices where the paper is silent [decision]:
- r = 0 at init, so A is the identity and a method starts exactly as without adapters. Then ∂L/∂M = 0
  at step 0 (every path through M is multiplied by r), so M must not start at zero: M starts with
  orthonormal columns (`m_init="orthogonal"`, MᵀM = I: h·M·diag(r)·Mᵀ is then r-weighted projections
  onto d_r directions), or N(0, 1/d) entries (`m_init="normal"`).
- whether MAB and FNB share r^i: the paper says only that their matrices are independent; by default
  each site has its own coefficients (`site_coefficients="independent"`, the count that matches the
  paper's 0.17M / 0.11M: see `dual_shared_parameter_count`), "shared" reads one r^i at both sites.
- every block of both towers is adapted; sharing r^i across towers needs towers of equal depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbone import ADAPTER_SITES

TOWERS = ("visual", "text")
SITE_NAMES = {"pre_attn": "MAB", "pre_mlp": "FNB"}
COEFFICIENT_MODES = ("shared", "modality_specific")
SITE_COEFFICIENT_MODES = ("independent", "shared")
M_INITS = ("orthogonal", "normal")


@dataclass
class DualSharedSwitch:
    """Config fields that attach the dual-shared adapters to any method (`Method.__init__` reads them)."""

    dual_shared: bool = field(default=False, metadata={
        "help": "attach DsRA's dual-shared low-rank adapters to both towers (the paper's plug-in, Table 5)"})
    dual_shared_rank: int = field(default=50, metadata={"help": "d_r, the adapters' hidden size (paper: 50)"})
    dual_shared_sites: tuple[str, ...] = field(default=ADAPTER_SITES, metadata={
        "help": "adapter placements: pre_attn = before MAB, pre_mlp = before FNB (Table 4)"})
    dual_shared_coefficients: str = field(default="shared", metadata={
        "help": "shared: one coefficient r^i per layer read by both towers (paper); modality_specific: "
                "one per tower (Fig. 4b ablation)"})
    dual_shared_site_coefficients: str = field(default="independent", metadata={
        "help": "independent: MAB and FNB have their own r^i; shared: one r^i for both sites "
                "(the paper is silent; independent matches its parameter count)"})
    dual_shared_m_init: str = field(default="orthogonal", metadata={
        "help": "init of the shared matrices M (paper silent): orthogonal columns or normal (std 1/sqrt(d)); "
                "never zero, as r starts at 0"})

    def check_dual_shared(self) -> None:
        if self.dual_shared_rank < 1:
            raise ValueError(f"dual_shared_rank must be >= 1, got {self.dual_shared_rank}")
        sites = tuple(self.dual_shared_sites)
        if not sites or any(s not in ADAPTER_SITES for s in sites) or len(set(sites)) != len(sites):
            raise ValueError(f"dual_shared_sites must be distinct names from {ADAPTER_SITES}, got {sites}")
        if self.dual_shared_coefficients not in COEFFICIENT_MODES:
            raise ValueError(f"dual_shared_coefficients must be one of {COEFFICIENT_MODES}, "
                             f"got {self.dual_shared_coefficients!r}")
        if self.dual_shared_site_coefficients not in SITE_COEFFICIENT_MODES:
            raise ValueError(f"dual_shared_site_coefficients must be one of {SITE_COEFFICIENT_MODES}, "
                             f"got {self.dual_shared_site_coefficients!r}")
        if self.dual_shared_m_init not in M_INITS:
            raise ValueError(f"dual_shared_m_init must be one of {M_INITS}, got {self.dual_shared_m_init!r}")

    def __post_init__(self):
        self.dual_shared_sites = tuple(self.dual_shared_sites)
        self.check_dual_shared()


# what a method with the adapters attached records (learned_scalars), for the app's run detail; methods that
# take the switch declare these (a declaration whose columns a run lacks draws nothing)
DUAL_SHARED_PLOTS = (
    {"kind": "grid", "columns": ["R.*"], "title": "coefficients r^i (layer × d_r)"},
    {"kind": "scalars", "columns": ["R_norm.*"], "title": "‖r^i‖ per layer over epochs"},
)


def dual_shared_parameter_count(text_width: int, vision_width: int, layers: int, rank: int = 50,
                                sites: int = 2, coefficients: str = "shared",
                                site_coefficients: str = "independent") -> int:
    """Trainable parameters of the adapters: per site one M per tower, plus the coefficients."""
    matrices = sites * (text_width + vision_width) * rank
    coefficient_sets = (sites if site_coefficients == "independent" else 1) * (2 if coefficients == "modality_specific" else 1)
    return matrices + coefficient_sets * layers * rank


class ComposedAdapter(nn.Module):
    """A(h) = h + h·M·diag(r)·Mᵀ for one tower, site and layer; M and r live in the owner (not here)."""

    def __init__(self, owner: "DualSharedAdapters", tower: str, site: str, layer: int):
        super().__init__()
        self.owner_ref = [owner]  # not a submodule: the parameters are registered once, in the owner
        self.tower, self.site, self.layer = tower, site, layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        owner = self.owner_ref[0]
        if not owner.enabled:
            return h
        m = owner.matrix(self.tower, self.site).to(h.dtype)
        r = owner.coefficients(self.tower, self.site)[self.layer].to(h.dtype)
        return h + ((h @ m) * r) @ m.t()

    def extra_repr(self) -> str:
        return f"tower={self.tower}, site={self.site}, layer={self.layer}"


class DualSharedAdapters(nn.Module):
    """Owns the shared matrices and coefficients and attaches one ComposedAdapter per tower, site and block."""

    def __init__(self, backbone, rank: int = 50, sites=ADAPTER_SITES, coefficients: str = "shared",
                 site_coefficients: str = "independent", m_init: str = "orthogonal"):
        super().__init__()
        DualSharedSwitch(True, rank, tuple(sites), coefficients, site_coefficients, m_init)  # validates
        towers = {"visual": backbone.visual, "text": backbone.text}
        depths = {t: towers[t].num_layers for t in TOWERS}
        if coefficients == "shared" and len(set(depths.values())) != 1:
            raise ValueError(f"shared coefficients need towers of equal depth, got {depths}; "
                             "use dual_shared_coefficients='modality_specific'")
        self.rank, self.sites = rank, tuple(sites)
        self.coefficient_mode, self.site_coefficient_mode = coefficients, site_coefficients
        self.num_layers = depths["visual"]
        self.enabled = True
        device = backbone.device
        self.matrices = nn.ParameterDict({
            f"{t}_{s}": nn.Parameter(self._init_matrix(towers[t].width, rank, m_init).to(device))
            for t in TOWERS for s in self.sites})
        self.coeffs = nn.ParameterDict({
            key: nn.Parameter(torch.zeros(depths[tower or "visual"], rank, device=device))
            for key, tower in self._coefficient_keys()})
        for t in TOWERS:
            for s in self.sites:
                for layer in range(depths[t]):
                    towers[t].add_adapter(layer, s, ComposedAdapter(self, t, s, layer))

    @staticmethod
    def _init_matrix(width: int, rank: int, how: str) -> torch.Tensor:
        if how == "orthogonal":
            return nn.init.orthogonal_(torch.empty(width, rank))
        return torch.randn(width, rank) / width ** 0.5

    def _coefficient_keys(self) -> list[tuple[str, str | None]]:
        site_keys = self.sites if self.site_coefficient_mode == "independent" else ("all",)
        if self.coefficient_mode == "shared":
            return [(s, None) for s in site_keys]
        return [(f"{t}_{s}", t) for t in TOWERS for s in site_keys]

    def matrix(self, tower: str, site: str) -> nn.Parameter:
        return self.matrices[f"{tower}_{site}"]

    def coefficients(self, tower: str, site: str) -> nn.Parameter:
        """[layers, d_r]: row i is the diagonal of R^i at `site` as `tower` reads it."""
        site_key = site if self.site_coefficient_mode == "independent" else "all"
        key = site_key if self.coefficient_mode == "shared" else f"{tower}_{site_key}"
        return self.coeffs[key]

    def coefficient_table(self) -> dict[str, torch.Tensor]:
        """Every coefficient tensor by its key (site, or tower_site when modality-specific)."""
        return {k: v.detach() for k, v in self.coeffs.items()}

    def learned_scalars(self) -> dict[str, float]:
        """`R.<key>.<layer>.<j>` for the app's layer × d_r grid and its per-layer trajectories
        (`R_norm.<key>.<layer>`)."""
        out: dict[str, float] = {}
        for key, table in self.coefficient_table().items():
            for layer, row in enumerate(table.cpu().tolist()):
                out[f"R_norm.{key}.{layer}"] = float(sum(v * v for v in row) ** 0.5)
                for j, value in enumerate(row):
                    out[f"R.{key}.{layer}.{j}"] = float(value)
        return out


def attach_dual_shared(backbone, config) -> DualSharedAdapters:
    """The adapters a config with `DualSharedSwitch` fields asks for, attached to `backbone`."""
    return DualSharedAdapters(backbone, config.dual_shared_rank, config.dual_shared_sites,
                              config.dual_shared_coefficients, config.dual_shared_site_coefficients,
                              config.dual_shared_m_init)
