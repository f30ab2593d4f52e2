"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning. CoOp's text context, initialised from
"a photo of a", is tuned on each test sample's views by the entropy of their averaged prediction
(engine.test_time: 64 views, the 10% most confident, reset per sample), then the sample is predicted.

    TPT       = CoOp context from the words, never trained: `tpt`
    CoOp+TPT  = CoOp trained on the source few-shot split, then tuned the same way: `coop_tpt`

Both compose CoOp (methods.coop) with `PromptTestTime`, which gives CoOp's context to the test-time
hooks of `methods.base.Method`; the class prompts are re-encoded with gradients at every step.

Facts from TPT's release (azshue/TPT, tpt_classification.py, clip/custom_clip.py) [code]: the prompt is
"a photo of a" (4 context tokens, --ctx_init a_photo_of_a), shared by the classes, class token at the
end; CoOp+TPT loads CoOp's ImageNet 16-shot context (4 tokens). RAda's Table 3 tunes 3 steps at
lr 0.0008 for every method (the test_time protocol's settings); TPT's own default is 1 step at 5e-3.
"""
from __future__ import annotations

from .base import Preset, register_method
from .common import clip_logits
from .coop import CoOp, IMAGENET_WORDS, TOY_CACHED_VIEWS, TOY_TRAIN, WORDS


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


__all__ = ["PromptTestTime", "TPT", "CoOpTPT"]
