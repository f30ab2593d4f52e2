"""DsRA (papers/dsra.txt, "Dual-shared mechanism based on LoRA"): PromptSRC + dual-shared low-rank adapters.

On the LayerNorm output h feeding attention (MAB) and the MLP (FNB) of every block of both towers
(Eqs. 13–17; methods/_dual_shared.py):

    A(h) = h + h · M_{tower,site} · diag(r^i) · M_{tower,site}ᵀ,   block: x + MAB(A_MAB(LN(x))), then
                                                                           x̂ + FNB(A_FNB(LN(x̂)))

M (d × d_r, d_r = 50) is shared by the layers of one tower (one per site), r^i (d_r) by the two towers.
No code is released. Facts and choices:
- DsRA = PromptSRC + the adapters [derivation, ../shared/method-notes.md]: the paper's 0.17M trainable
  parameters = PromptSRC's 4+4 prompts of depth 9 (46,080) + the adapters (129,200) = 175,280 on
  ViT-B/16; MAB or FNB only: 46,080 + 64,600 = 110,680 (Table 4: 0.11M). The losses (CE, L1 to frozen
  text / image features, KL to zero-shot logits) and Gaussian prompt aggregation are PromptSRC's
  (methods/promptsrc.py); GPA averages the adapters too (every trainable parameter, as PromptSRC's
  released code averages its whole state) [decision: the paper is silent].
- SGD lr 2.7e-3, batch 4, d_r = 50, 3 seeds [paper, Implementation Details]; epochs, GPA and prompt
  depth are PromptSRC's released schedule per protocol (the paper does not give them) [decision].
- r^i = 0 at init: DsRA at step 0 is PromptSRC at step 0 [decision]; M: orthonormal columns [decision].
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ._dual_shared import DUAL_SHARED_PLOTS, DualSharedSwitch, dual_shared_parameter_count
from .base import Preset, register_method
from .coop import TOY_TRAIN
from .promptsrc import PromptSRC, PromptSRCConfig

PAPER_SGD = {"optimizer": "sgd", "lr": 0.0027, "batch_size": 4}


@dataclass
class DsRAConfig(PromptSRCConfig, DualSharedSwitch):
    dual_shared: bool = field(default=True, metadata={
        "help": "the dual-shared adapters (False: PromptSRC alone, DsRA's baseline)"})


def _few_shot(epochs: int = 50, gpa=(30.0, 30.0), note: str = "") -> Preset:
    return Preset({"gpa_mean": gpa[0], "gpa_std": gpa[1]}, {**PAPER_SGD, "epochs": epochs},
                  "paper: SGD 2.7e-3, batch 4, d_r 50; PromptSRC's vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml "
                  f"for the rest: 50 epochs, GPA mean {gpa[0]:g} std {gpa[1]:g}{note}")


CROSS = Preset({"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0}, {**PAPER_SGD, "epochs": 20},
               "paper: SGD 2.7e-3, batch 4, d_r 50; PromptSRC's vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml "
               "for the rest (ImageNet source, 16 shots): prompt depth 3, GPA mean 6 std 10, 20 epochs")
# the embedded toy world: PromptSRC's toy settings (4-layer towers, the toy's own template), d_r scaled
# with the towers' width (50 of 512 → 8 of 64..96), 5 epochs (11 s of CPU a seed, measured). L1 weights
# 5 / 2 instead of 25 / 10: with 25 / 10 the toy prompts stay at zero-shot (seed 1, 6 epochs: base 76.7 vs
# zero-shot 74.4; with 5 / 2: 80.3), the embedded model's features being weak (docs/dsra.md)
TOY = Preset({"depth_text": 3, "depth_vision": 3, "gpa_mean": 3.75, "gpa_std": 1.0, "template_set": "",
              "dual_shared_rank": 8, "text_weight": 5.0, "image_weight": 2.0},
             {**TOY_TRAIN, "epochs": 5},
             "embedded toy world: PromptSRC's toy preset (depth 3, own template) with L1 weights 5 / 2, d_r 8, "
             "5 epochs (GPA peak at 3.75)")


@register_method
class DsRA(PromptSRC):
    name = "dsra"
    paper_names = ("DsRA",)
    Config = DsRAConfig
    version = 1
    default_preset = "base_to_novel"
    plots = DUAL_SHARED_PLOTS
    presets = {
        "base_to_novel": Preset({}, {**PAPER_SGD, "epochs": 20},
                                "paper: SGD 2.7e-3, batch 4, d_r 50; PromptSRC's vit_b16_c2_ep20_batch4_4+4ctx.yaml "
                                "for the rest: 4+4 tokens, depth 9, GPA mean 15 std 1, 20 epochs"),
        "few_shot": _few_shot(),
        **{f"few_shot_{d}": _few_shot(gpa=(45.0, 5.0), note=f" (its setting for {d})")
           for d in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")},
        "cross_dataset": CROSS,
        "domain_generalization": CROSS,
        **{f"few_shot_{name}_only": Preset({**_few_shot().method, "dual_shared_sites": (site,)}, _few_shot().train,
                                           f"Table 4 ablation: adapters before {name.upper()} only, few-shot schedule")
           for name, site in (("mab", "pre_attn"), ("fnb", "pre_mlp"))},
        "toy": TOY,
    }

    def adapter_parameter_count(self) -> int:
        """What the attached adapters add, from the design (tested against the modules)."""
        c, bb = self.config, self.backbone
        if not c.dual_shared:
            return 0
        return dual_shared_parameter_count(bb.text.width, bb.visual.width, bb.visual.num_layers, c.dual_shared_rank,
                                           len(c.dual_shared_sites), c.dual_shared_coefficients,
                                           c.dual_shared_site_coefficients)
