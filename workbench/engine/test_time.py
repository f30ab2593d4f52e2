"""Test-time adaptation (TPT-style): per test sample, N augmented views in one batch → a few gradient
steps on the method's test-time parameters → predict the sample → reset parameters and optimizer state.

Hooks a method implements (duck-typed; `Method` may carry defaults):
  method.test_time_parameters() -> list[nn.Parameter]   what is tuned per sample (CoOp/TPT: the context)
  method.test_time_logits(inputs) -> [N, C] logits over the current evaluation classes (after
      prepare_eval), differentiable w.r.t. those parameters. Inputs are images [N, 3, H, W], or image
      features [N, D] for methods whose image tower is frozen (`frozen_image_tower` or
      `inputs == "features"`): the views are then encoded once per sample, not once per step.
  method.test_time_loss(logits) -> scalar (optional; default: entropy of the averaged prediction)

Facts from TPT's release (azshue/TPT, tpt_classification.py, data/datautils.py): 64 views = the
test-transformed original + 63 augmented ones (random resized crops + flips; AugMix on top for the
fine-grained datasets); the 10% lowest-entropy views are selected on the first step and reused for
the others; loss = entropy of the views' mean probability; 1 step of AdamW at lr 5e-3 (torch's default
weight decay 0.01); prompt and optimizer state are reset before each sample (views here are seeded per sample path: any order gives the same
result); the prediction is the
tuned model on the original image; fp16 autocast with a GradScaler (init_scale 1000).

Resume: with a run handle, progress is checkpointed every `checkpoint_every` samples (phase
"test_time"); views are seeded per sample, so a resumed run gives identical predictions. A training
checkpoint found in the run is carried inside each test-time checkpoint (key "carry"), so training
code that reads checkpoints through `train.training_checkpoint` (fit, fit_staged) still finds it. One run may adapt on
several (dataset, split, domain)s one after the other: finished ones are kept in later checkpoints
and returned from there when asked again.
"""
from __future__ import annotations

import copy
import math
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from tqdm.auto import tqdm

from ..data.images import ImageDataset
from ..data.transforms import test_transform
from ..data.types import DatasetSplits
from .train import TEST_TIME_PHASE, config_from_dict
from .zeroshot import EvalResult

PHASE = TEST_TIME_PHASE


@dataclass
class TestTimeConfig:
    views: int = 64  # views per sample, the original included when include_original (TPT: 1 + 63)
    include_original: bool = True  # view 0 is the test-transformed image (TPT); it is also what is predicted
    view_kind: str = "crops"  # crops (random resized crop + flip) | augmix (TPT on fine-grained sets)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # TPT: RandomResizedCrop's default
    flip: bool = True
    augmix_severity: int = 1
    selection: float = 0.1  # fraction of lowest-entropy views kept (confidence selection)
    steps: int = 1
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 5e-3
    weight_decay: float = 0.01  # torch AdamW's default, which TPT leaves in place
    momentum: float = 0.9  # sgd only
    precision: str = "amp"  # amp | bf16 | fp32; CPU always runs fp32
    checkpoint_every: int = 50  # samples between checkpoints (with a run)

    __test__ = False  # not a pytest class

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TestTimeConfig":
        return config_from_dict(cls, values, "test-time")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- views ------------------------------------------------------------------------------------

def _augmix_ops(size: int):
    """AugMix's operations (as TPT's augmix_ops), each (image, level in (0, 10]) -> image."""
    def sign():
        return 1 if torch.rand(()) < 0.5 else -1

    def affine(img, coeffs):
        return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)

    return [
        lambda img, lv: ImageOps.autocontrast(img),
        lambda img, lv: ImageOps.equalize(img),
        lambda img, lv: ImageOps.posterize(img, 4 - int(lv * 4 / 10)),
        lambda img, lv: img.rotate(sign() * int(lv * 30 / 10), resample=Image.BILINEAR),
        lambda img, lv: ImageOps.solarize(img, 256 - int(lv * 256 / 10)),
        lambda img, lv: affine(img, (1, sign() * lv * 0.3 / 10, 0, 0, 1, 0)),
        lambda img, lv: affine(img, (1, 0, 0, sign() * lv * 0.3 / 10, 1, 0)),
        lambda img, lv: affine(img, (1, 0, sign() * int(lv * size / 3 / 10), 0, 1, 0)),
        lambda img, lv: affine(img, (1, 0, 0, 0, 1, sign() * int(lv * size / 3 / 10))),
    ]


class AugmentedViews:
    """The default view builder: `views(image, n, seed)` -> [n, 3, H, W]; view 0 is the test-transformed
    original when `include_original`, the others random resized crops + flips, AugMix-mixed for
    kind "augmix" (3 chains of 1-3 ops, Dirichlet(1,1,1) weights, Beta(1,1) blend with the crop).
    Deterministic in `seed`; the global RNG is left as it was."""

    def __init__(self, image_size: int, mean, std, kind: str = "crops", scale=(0.08, 1.0), flip: bool = True,
                 include_original: bool = True, severity: int = 1):
        if kind not in ("crops", "augmix"):
            raise ValueError(f"unknown view kind {kind!r}; use crops or augmix")
        self.kind, self.severity, self.include_original = kind, severity, include_original
        self.size = int(image_size)
        self.original = test_transform(image_size, mean, std)
        steps = [T.RandomResizedCrop(self.size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC)]
        if flip:
            steps.append(T.RandomHorizontalFlip())
        self.preaugment = T.Compose(steps)
        self.preprocess = T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
        self.ops = _augmix_ops(self.size)

    @classmethod
    def for_method(cls, method, cfg: TestTimeConfig) -> "AugmentedViews":
        b = method.backbone
        return cls(b.image_size, b.mean, b.std, cfg.view_kind, cfg.crop_scale, cfg.flip, cfg.include_original,
                   cfg.augmix_severity)

    def _augmix(self, crop: Image.Image) -> torch.Tensor:
        x = self.preprocess(crop)
        w = torch.distributions.Dirichlet(torch.ones(3)).sample()
        m = torch.distributions.Beta(1.0, 1.0).sample()
        mix = torch.zeros_like(x)
        for i in range(3):
            img = crop.copy()
            for _ in range(int(torch.randint(1, 4, ()))):
                op = self.ops[int(torch.randint(len(self.ops), ()))]
                img = op(img, float(torch.empty(()).uniform_(0.1, self.severity)))
            mix += w[i] * self.preprocess(img)
        return m * x + (1 - m) * mix

    def __call__(self, image: Image.Image, n: int, seed: int) -> torch.Tensor:
        out = [self.original(image)] if self.include_original else []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            while len(out) < n:
                crop = self.preaugment(image)
                out.append(self._augmix(crop) if self.kind == "augmix" else self.preprocess(crop))
        return torch.stack(out[:n])


# ---- selection and loss -----------------------------------------------------------------------

def view_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each view's softmax: [N]."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def select_confident(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the int(N * fraction) lowest-entropy views (at least one), most confident first."""
    keep = max(1, int(logits.shape[0] * fraction))
    return torch.argsort(view_entropy(logits), descending=False)[:keep]


def average_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of the views' probabilities (TPT's avg_entropy), computed in log space."""
    logp = logits.float().log_softmax(-1)
    avg = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg.exp() * avg).sum(-1)


def _sample_seed(seed: int, sample_path: str) -> int:
    """Views are seeded by the run's seed and the sample itself (not its position), so the order in
    which samples arrive changes nothing (offline TTT)."""
    return seed * 1_000_003 + zlib.crc32(sample_path.encode())


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _optimizer(params, cfg: TestTimeConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adamw or sgd")


class TestTimeState:
    """Snapshot of the test-time parameters and the optimizer state; `restore()` puts both back exactly."""

    __test__ = False

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer = params, optimizer
        self.values = [p.detach().clone() for p in params]
        self.opt_state = copy.deepcopy(optimizer.state_dict())

    def restore(self) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, self.values):
                p.copy_(v)
                p.grad = None
        self.optimizer.load_state_dict(copy.deepcopy(self.opt_state))


def adapt_one(method, views: torch.Tensor, predict: torch.Tensor, optimizer, cfg: TestTimeConfig, loss_fn,
              device) -> torch.Tensor:
    """`cfg.steps` steps on one sample's `views` (one batch per step), then the logits [C] of `predict`
    [1, ...] under the tuned parameters. Does not reset."""
    use_scaler = device.type == "cuda" and cfg.precision == "amp"
    scaler = torch.amp.GradScaler("cuda", init_scale=1000) if use_scaler else None
    selected = None
    for _ in range(cfg.steps):
        with _autocast(device, cfg.precision):
            logits = method.test_time_logits(views)
            if selected is None:
                selected = select_confident(logits.detach(), cfg.selection)
            loss = loss_fn(logits[selected])
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    with torch.no_grad(), _autocast(device, cfg.precision):
        return method.test_time_logits(predict)[0].float()


def adapt_and_predict(method, ds: DatasetSplits, cfg: TestTimeConfig | None = None, split: str = "test",
                      domain: str = "base", *, seed: int = 1, device="cpu", run=None,
                      view_builder: Callable[[Image.Image, int, int], torch.Tensor] | None = None,
                      loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      limit: int | None = None, progress: bool = True) -> EvalResult:
    """Test-time-adapt `method` on every sample of `ds[split]` (the first `limit` with `limit`) and
    return labels, predictions and logits as `engine.evaluate` does. The method's parameters and the
    optimizer are reset to their state before the first sample after every sample (and at the end)."""
    from ..data.types import ClassTask

    cfg = cfg or TestTimeConfig()
    if cfg.steps < 0 or cfg.views < 1 or not 0 < cfg.selection <= 1:
        raise ValueError("need steps >= 0, views >= 1 and selection in (0, 1]")
    device = torch.device(device)
    method.to(device).eval()
    method.prepare_eval(ClassTask.from_splits(ds), domain)
    if not hasattr(method, "test_time_parameters") or not hasattr(method, "test_time_logits"):
        raise TypeError(f"method {getattr(method, 'name', method)!r} has no test_time_parameters()/"
                        "test_time_logits(): it cannot adapt at test time")
    params = list(method.test_time_parameters())
    if cfg.steps and not params:
        raise ValueError(f"method {getattr(method, 'name', method)!r} has no test-time parameters "
                         "(test_time_parameters() is empty): it cannot adapt at test time")
    loss_fn = loss_fn or getattr(method, "test_time_loss", None) or average_entropy
    views = view_builder or AugmentedViews.for_method(method, cfg)
    features_in = method.evaluates_on_cached_features()
    samples = ds.split(split)[:limit] if limit is not None else ds.split(split)
    if not samples:
        raise ValueError(f"{ds.name} has no {split} samples")
    images = ImageDataset(samples, ds.image_root, transform=None)
    if not cfg.include_original:
        predict_tf = test_transform(method.backbone.image_size, method.backbone.mean, method.backbone.std)

    key = f"{ds.name}/{split}/{domain}"
    start, logits, labels, skipped = 0, [], [], 0
    carry, base_epoch, finished = None, 0, {}  # finished: results of earlier (dataset/split/domain)s
    if run is not None:
        loaded = run.load_checkpoint(map_location="cpu")
        ck = loaded[1] if loaded is not None else None
        if ck is not None and ck.get("phase") == PHASE:
            carry, finished = ck["carry"], dict(ck["finished"])
            if ck["key"] != key and ck["next"] == ck["total"]:  # an earlier evaluation, complete
                finished[ck["key"]] = {k: ck[k] for k in ("logits", "labels", "skipped")}
            if key in finished:
                done = finished[key]
                return _result(method, ds, split, domain, cfg, list(done["logits"]), done["labels"].tolist(),
                               done["skipped"])
            if ck["key"] == key:
                if ck["config"] != cfg.to_dict() or ck["seed"] != seed or ck["total"] != len(samples):
                    raise ValueError("the run's test-time checkpoint was made with other settings; reset the run")
                start, skipped, base_epoch = ck["next"], ck["skipped"], ck["base_epoch"]
                logits, labels = list(ck["logits"]), ck["labels"].tolist()
                run.log(f"test-time adaptation of {key} resumed at sample {start}/{len(samples)}")
            elif ck["next"] != ck["total"]:
                raise ValueError(f"the run's test-time adaptation of {ck['key']} is unfinished; finish it first")
            else:
                base_epoch = loaded[0] + 1
        elif loaded is not None:
            carry, base_epoch = loaded, loaded[0] + 1

    def save(next_index: int) -> None:
        run.save_checkpoint({"phase": PHASE, "key": key, "next": next_index, "skipped": skipped, "seed": seed,
                             "total": len(samples), "config": cfg.to_dict(), "carry": carry, "finished": finished,
                             "base_epoch": base_epoch, "logits": torch.stack(logits) if logits else torch.empty(0),
                             "labels": torch.tensor(labels, dtype=torch.long)}, base_epoch + next_index)
        run.set_progress(next_index / len(samples), f"test-time {key} {next_index}/{len(samples)}")

    # only the test-time parameters take gradients while adapting; flags are restored at the end
    flags = [(p, p.requires_grad) for p in method.parameters()]
    tuned = {id(p) for p in params}
    for p, _ in flags:
        p.requires_grad_(id(p) in tuned)
    optimizer = _optimizer(params, cfg) if params else None
    state = TestTimeState(params, optimizer) if optimizer else None

    try:
        bar = tqdm(range(start, len(samples)), desc=f"test-time {ds.name}/{split}", leave=False,
                   disable=not progress)
        for i in bar:
            item = images[i]
            if item is None:
                skipped += 1
            else:
                img, label, _ = item
                x = views(img, cfg.views, _sample_seed(seed, samples[i].path))
                if not cfg.include_original:
                    x = torch.cat([predict_tf(img).unsqueeze(0), x])  # predicted, not tuned on
                x = x.to(device)
                if features_in:
                    x = method.image_tower_features(x)
                if cfg.steps:
                    tune = x if cfg.include_original else x[1:]
                    out = adapt_one(method, tune, x[:1], optimizer, cfg, loss_fn, device)
                else:
                    with torch.no_grad(), _autocast(device, cfg.precision):
                        out = method.test_time_logits(x[:1])[0].float()
                if state is not None:
                    state.restore()
                logits.append(out.cpu())
                labels.append(int(label))
            if run is not None and ((i + 1) % cfg.checkpoint_every == 0 or i + 1 == len(samples)):
                save(i + 1)
    finally:
        if state is not None:
            state.restore()
        for p, flag in flags:
            p.requires_grad_(flag)

    return _result(method, ds, split, domain, cfg, logits, labels, skipped)


def _result(method, ds, split, domain, cfg, logits, labels, skipped) -> EvalResult:
    classnames = list(method.eval_task.classnames)
    logits_t = torch.stack(logits) if logits else torch.empty(0, len(classnames))
    return EvalResult(ds.name, split, classnames, np.asarray(labels, dtype=np.int64), logits_t.argmax(-1).numpy(),
                      logits_t.numpy(), skipped=skipped, extra={"domain": domain, "test_time": cfg.to_dict()})


__all__ = ["TestTimeConfig", "AugmentedViews", "TestTimeState", "adapt_and_predict", "adapt_one",
           "average_entropy", "select_confident", "view_entropy"]
