"""HPT (Wang et al., AAAI 2024): Hierarchical Prompt Tuning with LLM-written class knowledge.

Three kinds of prompts, on a text prompt "X×(n_t+S) {class}. {entities}. {attributes}." (S = descriptions
per class; structure j of the class gives the entities and attributes) and on the image:

- global (task-unified) deep prompts: n_t text tokens at positions 1..n_t of blocks 1..L-1 (p_uni) and
  n_v vision tokens appended after the patches, at the embedding stage and re-set before blocks
  1..L-1; the embedding stage of the text tower gets n_t+S learnable tokens (p_input) over the "X"s;
- high-level prompts: at positions n_t+1..n_t+S of block l ≥ 1, for a prompt of class c,

      h_l,c,s = e_{l-1,c,s} + F(e_{l-1,c,s}),   s = 1..S

  where e_{l-1,c,s} is the normalized end-of-text embedding of description s of class c after frozen
  block l-1 and F is one trainable Linear(width, width) shared by all layers;
- low-level prompts: an attention bias in every text block l, for a prompt from structure j,

      B_l = a_l · R_e2e(j) + b_l · R_e2a(j),     a_l = b_l = 0 at init,

  R counting the entity–entity and entity–attribute token pairs (both directions) of the structure,
  added to the attention logits under the causal mask (backbone extension point `AttentionBias`).

Features and logits (s = the backbone's logit scale; all features L2-normalized):

      f_I = prompted image,  f_A = frozen image,  t_c = prompted text,  d_c = frozen mean of the
      class's description features;   z_i = s·f_I·d,   z_t = s·f_A·t,   z = (z_i + z_t)/2
      L = CE(z) + CE(z_i) + CE(z_t)

Training draws one structure per class per step; evaluation encodes every structure of every class
and averages the S normalized text features (then normalizes).

Facts from the released code (ThomasWangY/2024-AAAI-HPT trainers/hpt.py; the same HPT core in
Peiy-Lu/DAM trainers/dam.py): N_TPRO = N_VPRO = 2, N_SET = 5 (configs/trainers/HPT/*.yaml); the
prompts, projector (`feat + p_ins_projector(feat)`), scalars (`e2e_scal`, `e2a_scal`: zeros, one per
layer, block 0 included), the bias per batch element shared by the heads, the asymmetric logits and the
three-term loss are as above; the structure is drawn with `random.randint` per class per step (here
torch's generator, so the run's seed decides it); prompts are tokenized with truncation; prompt tokens
are N(0, 0.02). Trainable on ViT-B/16: 11·2·512 + 7·512 + 262,656 + 11·2·768 + 2·768 + 24 = 295,960
(DAM's Table X). The HPT paper itself is not in this workbench's paper set, so the released code is the
default; `logits="prompted"` (prompted image against prompted text, one CE) is offered as the usual
prompt-learning alternative.

For methods built on HPT (DAM):
- `encode_images(images, frozen_images=None)` -> (f_I, f_A), normalized: (a) the prompted image
  features and the frozen (zero-shot) image features; `frozen_images` lets the frozen branch see
  another augmentation of the batch.
- `prompted_text(bank, structure=None)` -> (b) the prompted class text features, normalized: [C, D]
  with `structure` [C] (one structure per class; None draws them, as training does) or, through
  `class_text(bank)`, every structure averaged ([C, D], evaluation). `self.train_bank` holds the training
  classes, `self.eval_bank` the classes of `prepare_eval`.
- `bank.frozen_text` -> (c) the frozen text features [C, D] of the LLM descriptions (the frozen branch
  sees descriptions, never the class prompt); f_A above is the frozen image side.
- `hpt_forward(images, frozen_images=None)` -> HPTForward with all four and the three logits; a
  subclass adds its parameters in `__init__` after `super().__init__` (they are trainable by default:
  `trainable_parameters` collects every parameter that requires grad), overrides `training_loss`
  (call `hpt_forward`, add its loss to or instead of `hpt_loss`) and `score` (the evaluation logits from
  an HPTForward), and extends `learned_scalars`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import EMBED, END, CallableBias, CallableTokens, StaticTokens
from ..data.knowledge import DESCRIPTIONS, STRUCTURES, Structure, require_knowledge
from ..engine.features import class_prompt
from ._hpt_bank import ClassBank
from .base import LossOutput, Method, Preset, register_method
from .common import TOY_CROP_SCALE

TEXT_INJECTION, VISION_INJECTION, BIAS = "hpt_text", "hpt_vision", "hpt_relations"
LOGITS = ("asymmetric", "prompted")
KNOWLEDGE = ("files", "templates")


@dataclass
class HPTConfig:
    n_text_prompts: int = field(default=2, metadata={"help": "N_TPRO: global text prompt tokens per layer"})
    n_vision_prompts: int = field(default=2, metadata={"help": "N_VPRO: global vision prompt tokens per layer"})
    n_descriptions: int = field(default=5, metadata={
        "help": "N_SET: descriptions (and structures) per class used; the files must hold at least this many"})
    init_std: float = field(default=0.02, metadata={"help": "std of the prompt tokens' normal init (released)"})
    logits: str = field(default="asymmetric", metadata={
        "help": "asymmetric: (prompted image·frozen text + frozen image·prompted text)/2, loss CE(z)+CE(z_i)+CE(z_t) "
                "(released code); prompted: prompted image·prompted text, one CE"})
    relation_bias: bool = field(default=True, metadata={
        "help": "low-level prompts: the structure attention bias with its 2 scalars per layer (False: ablation)"})
    text_batch_size: int = field(default=256, metadata={"help": "prompts per text-tower call at evaluation"})
    knowledge: str = field(default="files", metadata={
        "help": "files: the dataset's description and structure files (required; errors say what to put where); "
                "templates: a fallback for datasets without them (not HPT): descriptions = the task's templates "
                "filled with the class name, cycled to n_descriptions; structures = the class name alone, no "
                "relationships (no low-level bias)"})

    def __post_init__(self) -> None:
        for name in ("n_text_prompts", "n_vision_prompts", "n_descriptions", "text_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"method.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.knowledge not in KNOWLEDGE:
            raise ValueError(f"method.knowledge must be one of {', '.join(KNOWLEDGE)}, got {self.knowledge!r}")
        if self.logits not in LOGITS:
            raise ValueError(f"method.logits must be one of {', '.join(LOGITS)}, got {self.logits!r}")
        if not self.init_std > 0:
            raise ValueError(f"method.init_std must be positive, got {self.init_std!r}")


@dataclass
class HPTForward:
    """One forward pass: normalized features and the logits over the bank's classes."""

    image: torch.Tensor  # f_I [B, D], prompted image tower
    image_frozen: torch.Tensor  # f_A [B, D], frozen image tower
    text: torch.Tensor  # t [C, D], prompted text tower
    text_frozen: torch.Tensor  # d [C, D], frozen text tower on the descriptions
    logits: torch.Tensor  # z = (z_i + z_t)/2 (asymmetric) or s·f_I·t (prompted)
    logits_image: torch.Tensor  # z_i = s·f_I·d
    logits_text: torch.Tensor  # z_t = s·f_A·t


def _sgd(lr: float, epochs: int, batch: int) -> dict:
    return {"optimizer": "sgd", "lr": lr, "batch_size": batch, "epochs": epochs, "warmup_epochs": 1,
            "warmup_lr": 1e-5, "schedule": "cosine", "precision": "amp"}


B2N = Preset({}, _sgd(0.0025, 10, 8), "configs/trainers/HPT/b2n.yaml: N_TPRO=N_VPRO=2, N_SET=5, SGD 0.0025, "
                                      "batch 8, 10 epochs, 1 constant warm-up epoch at 1e-5 (fp16 there, amp here)")
XD = Preset({}, _sgd(0.001, 3, 16), "configs/trainers/HPT/xd.yaml: ImageNet source, SGD 0.001, batch 16, 3 epochs")


@register_method
class HPT(Method):
    name = "hpt"
    paper_names = ("HPT",)
    Config = HPTConfig
    default_preset = "base_to_novel"
    plots = ({"kind": "heatmap", "columns": ["relation_e2e.*"], "title": "Entity–entity bias scalar per text layer"},
             {"kind": "heatmap", "columns": ["relation_e2a.*"], "title": "Entity–attribute bias scalar per text layer"})
    presets = {
        "base_to_novel": B2N,
        "few_shot": B2N,
        "cross_dataset": XD,
        "domain_generalization": XD,
        "toy": Preset({}, {**_sgd(0.05, 2, 32), "warmup_epochs": 0, "eval_batch_size": 256, "crop_scale": TOY_CROP_SCALE},
                      "embedded toy world on CPU: released sizes, SGD 0.05, batch 32 x 2 epochs, no warm-up "
                      "(seed 1 under load: 0.02 x batch 16 x 3 epochs gave HM 87.4, this 88.1)"),
    }

    def __init__(self, backbone, task, config):
        super().__init__(backbone, task, config)
        c = config
        knowledge = self.read_knowledge(task)  # before anything is attached: a bad file leaves the backbone clean
        text, visual = backbone.text, backbone.visual
        self.n_slots = c.n_text_prompts + c.n_descriptions
        depth = text.num_layers
        deep_text = list(range(1, depth))
        # p_input over the "X" placeholders at the embedding stage; p_uni before blocks 1..L-1
        self.text_input = nn.Parameter(torch.randn(self.n_slots, text.width) * c.init_std)
        self.text_global = nn.Parameter(torch.randn(len(deep_text), c.n_text_prompts, text.width) * c.init_std)
        self.projector = nn.Linear(text.width, text.width)
        self.relation_e2e = nn.Parameter(torch.zeros(depth), requires_grad=c.relation_bias)
        self.relation_e2a = nn.Parameter(torch.zeros(depth), requires_grad=c.relation_bias)
        self.vision_prompts = StaticTokens(c.n_vision_prompts, visual.width, [EMBED] + list(range(1, visual.num_layers)),
                                           position=END, init_std=c.init_std)
        visual.add_injection(VISION_INJECTION, self.vision_prompts)
        text.add_injection(TEXT_INJECTION, CallableTokens(self._text_tokens, self.n_slots, [EMBED] + deep_text,
                                                          placeholder=True))
        if c.relation_bias:
            text.add_attention_bias(BIAS, CallableBias(self._relation_bias, layers=range(depth)))
        self._active: tuple[ClassBank, torch.Tensor, torch.Tensor] | None = None
        self._high_level: torch.Tensor | None = None
        self.to(backbone.device)
        self.train_bank = self.build_bank(task, knowledge)
        self.eval_bank = self.train_bank

    # -- class knowledge ------------------------------------------------------------------------
    def read_knowledge(self, task) -> dict:
        """`task`'s descriptions and structures, n_descriptions per class (errors name the file, the class
        and what to add); with `knowledge="templates"`, the template fallback instead."""
        n = self.config.n_descriptions
        if self.config.knowledge == "templates":
            templates = list(task.templates) or ["a photo of a {}."]
            return {DESCRIPTIONS: {c: [class_prompt(templates[i % len(templates)], c) for i in range(n)]
                                   for c in task.classnames},
                    STRUCTURES: {c: [Structure((c.replace("_", " "),), (), (), ())] * n for c in task.classnames}}
        return require_knowledge(task, n, kinds=(DESCRIPTIONS, STRUCTURES))

    def build_bank(self, task, knowledge: dict | None = None) -> ClassBank:
        """The prompts, relationship matrices and frozen description features of `task`'s classes."""
        knowledge = self.read_knowledge(task) if knowledge is None else knowledge
        return ClassBank(self.backbone, task.classnames, knowledge[DESCRIPTIONS], knowledge[STRUCTURES],
                         self.config.n_text_prompts, self.config.n_descriptions, self.config.text_batch_size)

    # -- extension-point callbacks ---------------------------------------------------------------
    def _text_tokens(self, stage: int, batch_size: int) -> torch.Tensor:
        if stage == EMBED:
            return self.text_input.unsqueeze(0)
        if self._active is None:
            raise RuntimeError("HPT's text prompts need their classes: encode text through prompted_text()")
        _, classes, _ = self._active
        glob = self.text_global[stage - 1].unsqueeze(0).expand(classes.shape[0], -1, -1)
        return torch.cat([glob, self._high_level[stage - 1]], dim=1)

    def _relation_bias(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        bank, classes, structures = self._active
        e2e = bank.e2e[classes, structures].to(x.dtype)
        e2a = bank.e2a[classes, structures].to(x.dtype)
        return self.relation_e2e[layer].to(x.dtype) * e2e + self.relation_e2a[layer].to(x.dtype) * e2a

    # -- features -------------------------------------------------------------------------------
    def high_level_prompts(self, bank: ClassBank, classes: torch.Tensor) -> torch.Tensor:
        """h = e + F(e) for the given classes: [L-1, len(classes), S, width]."""
        e = bank.layer_features[:, classes]
        return e + self.projector(e)

    def _encode_prompts(self, bank: ClassBank, classes: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
        self._active = (bank, classes, structures)
        self._high_level = self.high_level_prompts(bank, classes)
        try:
            return F.normalize(self.backbone.encode_text(bank.prompt_tokens[classes, structures]), dim=-1)
        finally:
            self._active = self._high_level = None

    def prompted_text(self, bank: ClassBank, structure: torch.Tensor | None = None) -> torch.Tensor:
        """t [C, D]: each class's prompt with structure `structure[c]` (None: drawn uniformly)."""
        n = bank.num_classes
        if structure is None:
            structure = torch.randint(bank.n_descriptions, (n,))
        classes = torch.arange(n, device=bank.prompt_tokens.device)
        return self._encode_prompts(bank, classes, structure.to(classes.device))

    def class_text(self, bank: ClassBank) -> torch.Tensor:
        """Every structure of every class encoded, the S features averaged per class: [C, D]."""
        s = bank.n_descriptions
        flat = torch.arange(bank.num_classes * s, device=bank.prompt_tokens.device)
        chunks = [self._encode_prompts(bank, part // s, part % s) for part in flat.split(self.config.text_batch_size)]
        return F.normalize(torch.cat(chunks).view(bank.num_classes, s, -1).mean(dim=1), dim=-1)

    def encode_images(self, images: torch.Tensor, frozen_images: torch.Tensor | None = None):
        """(f_I prompted, f_A frozen), both normalized [B, D]."""
        prompted = F.normalize(self.backbone.encode_image(images), dim=-1)
        with torch.no_grad(), self.backbone.extensions_disabled():
            frozen = F.normalize(self.backbone.encode_image(images if frozen_images is None else frozen_images), dim=-1)
        return prompted, frozen

    def logits_from(self, image, image_frozen, text, text_frozen) -> HPTForward:
        scale = self.backbone.logit_scale.to(image.dtype)
        text_frozen = text_frozen.to(image.dtype)
        z_i = scale * image @ text_frozen.t()
        z_t = scale * image_frozen @ text.to(image.dtype).t()
        z = (z_i + z_t) / 2 if self.config.logits == "asymmetric" else scale * image @ text.to(image.dtype).t()
        return HPTForward(image, image_frozen, text, text_frozen, z, z_i, z_t)

    def hpt_forward(self, images, frozen_images=None, bank: ClassBank | None = None, text=None) -> HPTForward:
        """Training forward over `bank` (default: the training classes), one structure per class;
        pass `text` to score against precomputed text features (evaluation)."""
        bank = self.train_bank if bank is None else bank
        image, image_frozen = self.encode_images(images, frozen_images)
        text = self.prompted_text(bank) if text is None else text
        return self.logits_from(image, image_frozen, text, bank.frozen_text)

    # -- training -------------------------------------------------------------------------------
    def hpt_loss(self, out: HPTForward, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        ce = F.cross_entropy(out.logits, labels)
        if self.config.logits == "prompted":
            return ce, {"ce": ce.item()}
        ce_i, ce_t = F.cross_entropy(out.logits_image, labels), F.cross_entropy(out.logits_text, labels)
        return ce + ce_i + ce_t, {"ce": ce.item(), "ce_image": ce_i.item(), "ce_text": ce_t.item()}

    def training_loss(self, images, labels):
        out = self.hpt_forward(images)
        loss, scalars = self.hpt_loss(out, labels)
        return LossOutput(loss, scalars, out.logits.detach())

    def learned_scalars(self) -> dict[str, float]:
        """The relationship-bias scalars a_l (e2e) and b_l (e2a) per text block (1-based)."""
        if not self.config.relation_bias:
            return {}
        out = {}
        for i, (a, b) in enumerate(zip(self.relation_e2e.tolist(), self.relation_e2a.tolist())):
            out[f"relation_e2e.{i + 1}"], out[f"relation_e2a.{i + 1}"] = a, b
        return out

    # -- evaluation -----------------------------------------------------------------------------
    def prepare_eval(self, task, domain):
        super().prepare_eval(task, domain)
        same = tuple(task.classnames) == tuple(self.train_bank.classnames)
        self.eval_bank = self.train_bank if same else self.build_bank(task)
        with torch.no_grad():
            self.eval_text = self.class_text(self.eval_bank)

    def score(self, out: HPTForward) -> torch.Tensor:
        """Evaluation logits from a forward pass (subclasses change the scoring here)."""
        return out.logits

    def eval_outputs(self, images):
        with torch.no_grad():
            out = self.hpt_forward(images, bank=self.eval_bank, text=self.eval_text)
        return self.score(out), out.image

    def eval_logits(self, images):
        return self.eval_outputs(images)[0]

    def eval_embeddings(self, images):
        with torch.no_grad():
            return F.normalize(self.backbone.encode_image(images), dim=-1)
