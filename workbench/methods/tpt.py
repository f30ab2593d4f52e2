"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning. CoOp's text context, initialised from
"a photo of a", is tuned on each test sample's views by the entropy of their averaged prediction
(engine.test_time: 64 views, the 10% most confident, reset per sample), then the sample is predicted.

    TPT         = CoOp context from the words, never trained: `tpt`
    CoOp+TPT    = CoOp trained on the source few-shot split, then tuned the same way: `coop_tpt`
    CoCoOp+TPT  = CoCoOp trained, then its context tuned with the meta-net shift of the original view: `cocoop_tpt`
    MaPLe+TPT   = MaPLe trained, then its (coupled) prompts tuned; the 64 views go through both prompted
                  towers in one batch at every step: `maple_tpt`

Each composes the trained method's class with test-time hooks of `methods.base.Method` (no copies); the
class prompts are re-encoded with gradients at every step.

For CoCoOp, TPT's release tunes the generated context ctx + π(f) of the test image, the same for all views
(tpt_classification.py, `args.cocoop`); here the shift π(f_0) of the original view is held fixed and the shared
context tuned, which moves the same sum (AdamW's weight decay then acts on ctx alone).

Facts from TPT's release (azshue/TPT, tpt_classification.py, clip/custom_clip.py) [code]: the prompt is
"a photo of a" (4 context tokens, --ctx_init a_photo_of_a), shared by the classes, class token at the
end; CoOp+TPT loads CoOp's ImageNet 16-shot context (4 tokens). RAda's Table 3 tunes 3 steps at
lr 0.0008 for every method (the test_time protocol's settings); TPT's own default is 1 step at 5e-3.
"""
from __future__ import annotations

import torch

from .base import Preset, register_method
from .cocoop import CoCoOp
from .common import clip_logits
from .coop import CoOp, IMAGENET_WORDS, TOY_CACHED_VIEWS, TOY_TRAIN, WORDS
from .maple import MaPLe


class PromptTestTime:
    """Test-time hooks for CoOp-style methods: tune the text context on a sample's views."""

    def test_time_parameters(self):
        return [self.context.ctx]

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        self.eval_tokens = self.context.tokenized(task.classnames)

    def test_time_logits(self, inputs):
        text = self.class_features(self.eval_tokens)
        return clip_logits(self.backbone, self.image_tower_features(inputs), text)


@register_method
class TPT(PromptTestTime, CoOp):
    name = "tpt"
    paper_names = ("TPT",)
    version = 1
    trainable = False
    presets = {"default": Preset(WORDS, {}, "TPT's release: context 'a photo of a' (4 tokens), not trained; "
                                            "tuned per test sample by the test_time protocol")}


@register_method
class CoOpTPT(PromptTestTime, CoOp):
    name = "coop_tpt"
    paper_names = ("CoOp+TPT",)
    version = 1
    presets = {
        "default": IMAGENET_WORDS,
        "toy": Preset(WORDS, {**TOY_TRAIN, **TOY_CACHED_VIEWS, "epochs": 20},
                      "embedded toy world: CoOp's toy preset (20 epochs over 5 cached views)"),
    }


@register_method
class CoCoOpTPT(CoCoOp):
    name = "cocoop_tpt"
    paper_names = ("CoCoOp+TPT",)
    version = 1
    default_preset = "cross_dataset"
    presets = {k: v for k, v in CoCoOp.presets.items() if k in ("cross_dataset", "toy")}

    def test_time_parameters(self):
        return [self.context.ctx]

    def test_time_logits(self, inputs):
        """Every view scored with class prompts from ctx + π(f_0), f_0 the first (original) view's feature."""
        feats = self.image_tower_features(inputs)
        with torch.no_grad():
            shift = self.meta_net(torch.nn.functional.normalize(feats[:1], dim=-1).to(self.context.ctx.dtype))
        ctx = (self.context.ctx + shift).unsqueeze(0)  # [1, K, width]
        classes = self.eval_tokens.shape[0]
        text = self.context.encode(self.eval_tokens, per_prompt_ctx=ctx.expand(classes, -1, -1))
        return clip_logits(self.backbone, feats, text)


@register_method
class MaPLeTPT(MaPLe):
    name = "maple_tpt"
    paper_names = ("MaPLe+TPT",)
    version = 1
    default_preset = "cross_dataset"
    presets = {k: v for k, v in MaPLe.presets.items() if k in ("cross_dataset", "toy")}

    def test_time_parameters(self):
        params = {id(p): p for p in self.trainable_parameters()}  # text prompts and the coupling, once each
        return list(params.values())

    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        self.eval_tokens = self.text_prompts.tokenized(task.classnames)

    def test_time_logits(self, inputs):
        return self.prompted_logits(inputs, self.eval_tokens)[2]


__all__ = ["PromptTestTime", "TPT", "CoOpTPT", "CoCoOpTPT", "MaPLeTPT"]
