"""Contrastive micro-pretraining of the tiny open_clip CLIP (`wb-tiny-vit`) on the toy world.

An endless stream of freshly rendered (image, caption) pairs, open_clip's ClipLoss, AdamW with
warm-up + cosine, budgeted in optimizer steps. The result is saved as an open_clip `local-dir:`
folder (open_clip_config.json + open_clip_model.safetensors) plus workbench_model.json (seed, steps,
world version, weights sha256, quality numbers). The folder is written under a temporary name and
renamed at the end, so an interrupted run never leaves a half model.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from safetensors.torch import save_file
from tqdm import tqdm

from workbench.backbone.configs import register_workbench_configs
from workbench.data.transforms import CLIP_MEAN, CLIP_STD, normalized_batch
from workbench.fileio import sha256_file  # noqa: F401  (re-exported for the toy package)
from workbench.paths import staged_dir

from . import world

MODEL_NAME = "wb-tiny-vit"
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
META_FILE = "workbench_model.json"
PRETRAIN_VERSION = 2  # bump when the caption stream or the recipe changes: cached models are rebuilt
DEFAULT_SEED = 0
DEFAULT_STEPS = 1000
MEAN, STD = CLIP_MEAN, CLIP_STD  # OpenAI CLIP normalisation


@dataclass
class PretrainConfig:
    steps: int = DEFAULT_STEPS
    seed: int = DEFAULT_SEED
    batch_size: int = 128
    lr: float = 1e-3
    warmup: float = 0.08  # fraction of steps
    weight_decay: float = 0.05
    name_p: float = 0.3  # probability a caption names the object's kind (frequently named kinds)
    rare_fraction: float = 0.25  # kinds named only rarely (name_p x rare_scale)...
    rare_scale: float = 0.03
    unnamed_fraction: float = 0.25  # ...and kinds never named: a long tail, as fine-grained names on the web
    shifted_p: float = 0.12  # fraction of images from the shifted domain
    model_cfg: dict = field(default_factory=dict)  # empty: the registered wb-tiny-vit config


def model_config(cfg: PretrainConfig | None = None) -> dict:
    register_workbench_configs()
    if cfg is not None and cfg.model_cfg:
        return json.loads(json.dumps(cfg.model_cfg))
    return json.loads(json.dumps(open_clip.get_model_config(MODEL_NAME)))


def build_model(model_cfg: dict) -> open_clip.CLIP:
    cfg = dict(model_cfg)
    quick_gelu = cfg.pop("quick_gelu", False)
    return open_clip.CLIP(**cfg, quick_gelu=quick_gelu)


def tokenizer_for(model_cfg: dict):
    return open_clip.tokenizer.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])


def kind_of(attrs: dict) -> str:
    """The toy_objects kind name of an object (every shape x colour pair is a kind)."""
    return _KIND_BY_PAIR[(attrs["shape"], attrs["color"])]


_KIND_BY_PAIR = {(c.attrs["shape"], c.attrs["color"]): c.name for c in world.toy_objects_classes()}
NAMING_SEED = 4242  # which kinds are frequent, rare or never named: fixed, independent of class order


def naming_rates(cfg: PretrainConfig) -> dict[str, float]:
    """Probability that a caption of each kind names it: a fixed random permutation of the kinds
    puts `unnamed_fraction` of them at 0, `rare_fraction` at name_p x rare_scale, the rest at name_p.
    Base and new halves get a similar mix, so zero-shot is imperfect on both while the image
    features (learned from attribute captions) still separate every kind."""
    kinds = [c.name for c in world.toy_objects_classes()]
    order = np.random.default_rng(NAMING_SEED).permutation(len(kinds))
    n_unnamed, n_rare = round(cfg.unnamed_fraction * len(kinds)), round(cfg.rare_fraction * len(kinds))
    rates = {}
    for rank, index in enumerate(order):
        scale = 0.0 if rank < n_unnamed else cfg.rare_scale if rank < n_unnamed + n_rare else 1.0
        rates[kinds[index]] = cfg.name_p * scale
    return rates


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), as open_clip's preprocess does."""
    return normalized_batch(images, MEAN, STD)


def make_batch(cfg: PretrainConfig, step: int, size: int) -> tuple[np.ndarray, list[str]]:
    """Batch `step` of the stream: a pure function of (seed, step)."""
    rng = np.random.default_rng([cfg.seed, 7919, step])
    rates = naming_rates(cfg)
    images, captions = [], []
    for _ in range(cfg.batch_size):
        domain = "shifted" if rng.random() < cfg.shifted_p else "source"
        attrs = world.sample_attrs(rng, domain=domain)
        images.append(world.render_array(attrs, size, rng))
        kind = kind_of(attrs)
        captions.append(world.caption(attrs, rng, kind=kind, name_p=rates[kind])[0])
    return np.stack(images), captions


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` on tokens cut after the longest caption's EOT.

    Identical output (the causal mask hides everything after EOT from the pooled EOT token) but
    cheaper, since most captions are far shorter than the context length.
    """
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def _lr_at(cfg: PretrainConfig, step: int) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(cfg: PretrainConfig, progress: bool = True) -> tuple[open_clip.CLIP, dict, dict]:
    """Pretrain and return (model, model_cfg, stats)."""
    model_cfg = model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    model.train()
    tok = tokenizer_for(model_cfg)
    size = model_cfg["vision_cfg"]["image_size"]
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    t0, c0 = time.time(), time.process_time()
    losses = []
    bar = tqdm(range(cfg.steps), desc="toy-clip pretraining", disable=not progress, mininterval=2.0)
    for step in bar:
        images, captions = make_batch(cfg, step, size)
        x, t = to_tensor(images), tok(captions)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(encode_text_trimmed(model, t), dim=-1)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    # CPU seconds too: on a shared machine wall time overstates the cost
    stats = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
             "final_loss": round(float(np.mean(losses[-20:])), 4)}
    return model, model_cfg, stats


def save_local_dir(model: open_clip.CLIP, model_cfg: dict, out_dir: Path, meta: dict) -> str:
    """Write an open_clip local-dir folder into `out_dir`; returns the weights' sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    digest = sha256_file(out_dir / WEIGHTS_FILE)
    (out_dir / META_FILE).write_text(json.dumps({**meta, "weights_sha256": digest}, indent=2), encoding="utf-8")
    return digest


def pretrain(
    out_dir: Path,
    steps: int | None = None,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    measure: bool = True,
    data_root: Path | None = None,
    cfg: PretrainConfig | None = None,
) -> Path:
    """Pretrain and save an open_clip local-dir model at `out_dir` (replaced atomically).

    `measure` runs `quality.measure` on the toy datasets under `data_root` (rendered if needed)
    and records the numbers in workbench_model.json.
    """
    cfg = cfg or PretrainConfig()
    cfg.seed = seed
    if steps is not None:
        cfg.steps = int(steps)
    model, model_cfg, stats = train(cfg, progress=progress)
    quality = None
    if measure:
        from workbench.paths import toy_data_root

        from .datasets import build_all
        from .quality import measure as measure_quality

        root = Path(data_root) if data_root is not None else toy_data_root()
        build_all(root)
        quality = measure_quality(model, tokenizer_for(model_cfg), root)
    meta = {
        "model": MODEL_NAME,
        "world_version": world.WORLD_VERSION,
        "pretrain_version": PRETRAIN_VERSION,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "pretrain_config": {k: v for k, v in asdict(cfg).items() if k != "model_cfg"},
        "torch_threads": torch.get_num_threads(),
        "train_wall_s": stats["wall_s"],
        "train_cpu_s": stats["cpu_s"],
        "final_loss": stats["final_loss"],
        "quality": quality,
    }
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        save_local_dir(model, model_cfg, tmp, meta)
    return out_dir


def read_meta(model_dir: Path) -> dict | None:
    try:
        return json.loads((Path(model_dir) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
