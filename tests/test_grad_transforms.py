"""SAM and GradReg (engine.grad_transforms) against their definitions written out by hand on small
quadratics with known gradients, and inside `fit`: frozen weights, other parameter groups, AMP scaling,
gradients rewritten by the method, history columns, exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.engine.grad_transforms import GradTransform
from workbench.engine.train import TrainConfig, fit
from workbench.methods import ClassTask, build_method

# L(θ) = ½ θᵀAθ − bᵀθ over θ = [x (2 values); y (1 value)], ∇L = Aθ − b
SADDLE = np.diag([-10.0, 1.0, 0.5])  # indefinite: at THETA the step along g turns g′ against g
BOWL = np.diag([1.0, 2.0, 3.0])  # positive definite: ⟨g, g′⟩ = ‖g‖² + ρ gᵀAg/‖g‖ > 0, never a conflict
B = np.array([0.0, 0.0, 0.0])
THETA = np.array([0.1, 0.1, -0.2])


def grad_np(a, theta):
    return a @ theta - B


def algorithm_1(a, theta, rho, alpha, delta):
    """GLAD's Algorithm 1, line by line, in float64."""
    g = grad_np(a, theta)
    eps = rho * g / np.linalg.norm(g)
    g2 = grad_np(a, theta + eps)
    if g @ g2 < 0:
        g2 = g2 - (g @ g2) / (g @ g + delta) * g
    return (1 - alpha) * g + alpha * g2, g, grad_np(a, theta + eps)


def sam_gradient(a, theta, rho):
    g = grad_np(a, theta)
    return grad_np(a, theta + rho * g / np.linalg.norm(g))


def quadratic(a, grad_factor=1.0, scale=1.0):
    """Parameters x, y and a `backward()` that fills their .grad with scale·grad_factor·∇L (grad_factor
    stands for a method that rewrites its gradient in its own backward)."""
    x = torch.nn.Parameter(torch.tensor(THETA[:2], dtype=torch.float64))
    y = torch.nn.Parameter(torch.tensor(THETA[2:], dtype=torch.float64))
    at = torch.tensor(a)

    def backward():
        theta = torch.cat([x, y])
        loss = 0.5 * theta @ at @ theta - torch.tensor(B) @ theta
        (scale * loss).backward()
        for p in (x, y):
            p.grad.mul_(grad_factor)
    return x, y, backward


def run_transform(kind, a, rho=1.0, alpha=0.5, delta=1e-8, grad_factor=1.0, scale=1.0):
    x, y, backward = quadratic(a, grad_factor, scale)
    backward()
    stats = GradTransform(kind, rho=rho, alpha=alpha, delta=delta).apply([x, y], backward, grad_scale=scale)
    grads = torch.cat([x.grad, y.grad]).detach().numpy()
    weights = torch.cat([x, y]).detach().numpy()
    return grads, weights, stats


@pytest.mark.parametrize("a, conflict", [(SADDLE, True), (BOWL, False)])
def test_gradreg_equals_hand_written_algorithm_1(a, conflict):
    want, g, g2 = algorithm_1(a, THETA, rho=1.0, alpha=0.5, delta=1e-8)
    assert (g @ g2 < 0) == conflict  # the case is the one named
    grads, weights, stats = run_transform("gradreg", a)
    np.testing.assert_allclose(grads, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights, THETA, rtol=0, atol=1e-15)  # θ restored after the perturbed pass
    assert stats["conflict"] == float(conflict)
    assert stats["cos"] == pytest.approx(g @ g2 / np.linalg.norm(g) / np.linalg.norm(g2), rel=1e-12)


def test_gradreg_projection_leaves_no_conflicting_component():
    grads, _, _ = run_transform("gradreg", SADDLE, alpha=1.0, delta=0.0)  # α = 1: the projected g′ alone
    g = grad_np(SADDLE, THETA)
    assert grads @ g == pytest.approx(0.0, abs=1e-12)


def test_sam_equals_gradient_at_the_perturbed_point():
    for a in (SADDLE, BOWL):
        grads, weights, stats = run_transform("sam", a, rho=0.3)
        np.testing.assert_allclose(grads, sam_gradient(a, THETA, 0.3), rtol=1e-12)
        np.testing.assert_allclose(weights, THETA, atol=1e-15)
        assert set(stats) == {"conflict", "cos"}


def test_transform_reads_loss_scaled_gradients_and_returns_them_scaled():
    # AMP: .grad holds S·g; ε and the projection must use g, and the result must be S·g_f
    plain, _, _ = run_transform("gradreg", SADDLE, delta=1e-3)
    scaled, _, stats = run_transform("gradreg", SADDLE, delta=1e-3, scale=1024.0)
    np.testing.assert_allclose(scaled, 1024.0 * plain, rtol=1e-12)
    assert stats["conflict"] == 1.0


def test_transform_composes_with_a_method_that_rewrites_its_gradients():
    # the transform sees the method's rewritten gradient at θ and at θ + ε (here 3·∇L at both)
    grads, _, _ = run_transform("gradreg", SADDLE, grad_factor=3.0)
    rewritten = lambda theta: 3.0 * grad_np(SADDLE, theta)  # noqa: E731
    g = rewritten(THETA)
    g2 = rewritten(THETA + 1.0 * g / np.linalg.norm(g))
    g2 = g2 - (g @ g2) / (g @ g + 1e-8) * g if g @ g2 < 0 else g2
    np.testing.assert_allclose(grads, 0.5 * g + 0.5 * g2, rtol=1e-12)


def test_frozen_weights_and_other_groups_are_left_alone():
    torch.manual_seed(0)
    used = torch.nn.Parameter(torch.randn(4))
    frozen = torch.randn(4).requires_grad_(False)
    idle = torch.nn.Parameter(torch.randn(3))  # its own group; the loss does not reach it this step
    opt = torch.optim.AdamW([{"params": [used]}, {"params": [idle], "lr": 0.5}], lr=0.1)

    def backward():
        ((used * frozen).sum() ** 2).backward()

    opt.zero_grad(set_to_none=True)
    backward()
    frozen_before, idle_before = frozen.clone(), idle.detach().clone()
    state_before = {k: v for k, v in opt.state_dict().items()}
    GradTransform("gradreg", rho=0.5).apply([used, idle], backward)
    assert torch.equal(frozen, frozen_before) and frozen.grad is None
    assert torch.equal(idle.detach(), idle_before) and idle.grad is None
    assert opt.state_dict() == state_before  # the transform never touches the optimizer
    opt.step()
    assert torch.equal(idle.detach(), idle_before) and idle not in opt.state


def test_unknown_transform_and_bad_settings_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="grad_transform must be one of none, sam, gradreg"):
        TrainConfig(grad_transform="lookahead")
    with pytest.raises(ValueError, match=r"grad_alpha must be in \[0, 1\]"):
        TrainConfig(grad_alpha=1.5)
    with pytest.raises(ValueError, match="grad_rho must be positive"):
        TrainConfig(grad_rho=0)


# -- inside fit ---------------------------------------------------------------------------------------

CFG = dict(optimizer="adamw", lr=5e-3, weight_decay=1e-2, epochs=2, batch_size=8, warmup_epochs=0,
           schedule_unit="iter", crop_scale=(1.0, 1.0), flip=False)


@pytest.fixture
def backbone(tiny_backbone):
    tiny_backbone.clear_extensions()
    yield tiny_backbone
    tiny_backbone.clear_extensions()


def _lora(backbone, ds):
    backbone.clear_extensions()
    torch.manual_seed(7)
    return build_method("clip_lora", backbone, ClassTask.from_splits(ds), overrides={"r": 2, "dropout": 0.0})


class _MemoryRun:
    """The registry-run calls `fit` makes, in memory; `stop_after` interrupts after that epoch's checkpoint."""

    def __init__(self, stop_after=None):
        self.checkpoint, self.stop_after = None, stop_after

    def load_checkpoint(self, map_location=None):
        return self.checkpoint

    def save_checkpoint(self, state, epoch):
        self.checkpoint = (epoch, {k: v for k, v in state.items()})

    def set_progress(self, fraction, message=""):
        if self.stop_after is not None and fraction >= (self.stop_after + 1) / CFG["epochs"]:
            raise KeyboardInterrupt

    def log(self, msg):
        pass

    def log_epoch(self, epoch, record):
        pass


def test_gradreg_in_fit_records_conflicts_keeps_clip_frozen_and_resumes_exactly(backbone, color_dataset):
    cfg = TrainConfig(**CFG, grad_transform="gradreg", grad_rho=0.5)
    method = _lora(backbone, color_dataset)
    frozen = {k: v.detach().clone() for k, v in backbone.named_parameters() if not v.requires_grad}
    full = fit(method, color_dataset, cfg, progress=False)
    assert all(torch.equal(v, dict(backbone.named_parameters())[k]) for k, v in frozen.items())
    for record in full.history:
        assert 0.0 <= record["grad_conflict"] <= 1.0 and -1.0 <= record["grad_cos"] <= 1.0
    trained = method.trainable_state_dict()

    run = _MemoryRun(stop_after=0)
    with pytest.raises(KeyboardInterrupt):
        fit(_lora(backbone, color_dataset), color_dataset, cfg, run=run, progress=False)
    run.stop_after = None
    resumed_method = _lora(backbone, color_dataset)
    resumed = fit(resumed_method, color_dataset, cfg, run=run, progress=False)
    assert resumed.resumed_from_epoch == 0 and resumed.history == full.history
    assert all(torch.equal(v, resumed_method.trainable_state_dict()[k]) for k, v in trained.items())


def test_sam_in_fit_changes_the_update_and_plain_training_records_no_transform_columns(backbone, color_dataset):
    plain_method = _lora(backbone, color_dataset)
    plain = fit(plain_method, color_dataset, TrainConfig(**CFG), progress=False)
    plain_state = plain_method.trainable_state_dict()
    sam_method = _lora(backbone, color_dataset)
    sam = fit(sam_method, color_dataset, TrainConfig(**CFG, grad_transform="sam"), progress=False)
    assert "grad_cos" not in plain.history[0] and "grad_cos" in sam.history[0]
    assert any(not torch.equal(v, sam_method.trainable_state_dict()[k]) for k, v in plain_state.items())


def test_gradreg_under_a_grad_scaler_then_clipping_matches_algorithm_1():
    # fit's order with AMP: scaled backward → transform (unscaled arithmetic) → unscale_ → clip → step
    x, y, _ = quadratic(SADDLE)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    opt = torch.optim.SGD([x, y], lr=0.1)
    at = torch.tensor(SADDLE)

    def backward():
        theta = torch.cat([x, y])
        scaler.scale(0.5 * theta @ at @ theta).backward()

    backward()
    GradTransform("gradreg", rho=1.0, alpha=0.5, delta=1e-8).apply([x, y], backward, scaler.get_scale())
    scaler.unscale_(opt)
    want, _, _ = algorithm_1(SADDLE, THETA, rho=1.0, alpha=0.5, delta=1e-8)
    np.testing.assert_allclose(torch.cat([x.grad, y.grad]).detach().numpy(), want, rtol=1e-10)
    norm = torch.nn.utils.clip_grad_norm_([x, y], 0.1)
    assert float(norm) == pytest.approx(np.linalg.norm(want), rel=1e-10)  # clipping sees the transformed gradient
    scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(torch.cat([x, y]).detach().numpy(), THETA - 0.1 * want * 0.1 / np.linalg.norm(want),
                               rtol=1e-6)


def test_prograd_trains_with_gradreg_through_its_own_backward(backbone, color_dataset):
    backbone.clear_extensions()
    torch.manual_seed(2)
    method = build_method("prograd", backbone, ClassTask.from_splits(color_dataset), overrides={"n_ctx": 4})
    calls = []
    original = method.backward

    def counting_backward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    method.backward = counting_backward
    cfg = TrainConfig(**{**CFG, "epochs": 1, "optimizer": "sgd", "cached_features": False}, grad_transform="gradreg")
    history = fit(method, color_dataset, cfg, progress=False).history
    steps = 2  # 15 images, batch 8
    assert len(calls) == 2 * steps  # the method's own backward (its projection) at θ and at θ + ε
    assert 0.0 <= history[0]["grad_conflict"] <= 1.0 and "ce" in history[0]
