"""DAM's alignments against hand-written references: explicit inverses for Eqs. 2, 4, 8, 9, loops for
Eqs. 10 and 11, and the degeneracy of per-pair CMA on L2-normalized features."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.methods import _dam_alignment as dam



@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _inv_map(f, g, lam):
    """Eq. 2 by hand: W* = g fᵀ (f fᵀ + λI)⁻¹ with an explicit inverse (column vectors)."""
    f, g = f.view(-1, 1), g.view(-1, 1)
    return g @ f.t() @ torch.linalg.inv(f @ f.t() + lam * torch.eye(f.shape[0]))


@pytest.fixture
def feats():
    gen = torch.Generator().manual_seed(0)
    return {"img": torch.randn(3, 6, generator=gen), "txt": torch.randn(4, 6, generator=gen),
            "img0": torch.randn(3, 6, generator=gen), "txt0": torch.randn(4, 6, generator=gen)}


def test_rank_one_closed_form_equals_explicit_inverse_eq2(feats):
    lam = 0.3
    for f, g in zip(feats["txt"], feats["txt0"]):
        want = _inv_map(f, g, lam) @ f
        got = dam.ridge_apply(f.unsqueeze(0), g.unsqueeze(0), lam)[0]
        assert torch.allclose(got, want, atol=1e-5)


def test_explicit_ridge_maps_equal_hand_inverse(feats):
    lam = 0.7
    maps = dam.explicit_ridge_maps(feats["img"], feats["img0"], lam)
    for k in range(3):
        assert torch.allclose(maps[k], _inv_map(feats["img"][k], feats["img0"][k], lam), atol=1e-5)


def test_sma_equals_smoothed_explicit_map_eq4_eq5(feats):
    lam, rho = 0.2, 0.35
    got = dam.sma(feats["img"], feats["img0"], lam, rho)
    for k in range(3):
        w_hat = rho * torch.eye(6) + (1 - rho) * _inv_map(feats["img"][k], feats["img0"][k], lam)
        assert torch.allclose(got[k], w_hat @ feats["img"][k], atol=1e-5)


def test_sma_loss_eq6_by_hand(feats):
    ta, tf, ia, iff = feats["txt"], feats["txt0"], feats["img"], feats["img0"]
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    want = 2 - sum(cos(a, b) for a, b in zip(ta, tf)) / 4 - sum(cos(a, b) for a, b in zip(ia, iff)) / 3
    assert float(dam.sma_loss(ta, tf, ia, iff)) == pytest.approx(want, abs=1e-6)


def test_cma_eq8_eq9_eq10_eq11_by_hand_loops(feats):
    img, txt = feats["img"], feats["txt"]
    lam_it, lam_ti, mu_it, mu_ti, alpha, omega, beta = 0.4, 0.9, 0.8, 1.3, 0.3, 2.0, 0.6
    itot, ttoi = dam.cma_distances(img, txt, lam_it, lam_ti, mu_it, mu_ti)
    d_cma = dam.cma(img, txt, lam_it, lam_ti, mu_it, mu_ti, alpha, omega)
    d = dam.final_similarity(img, txt, d_cma, beta)
    raw = torch.zeros(3, 4)
    for k in range(3):
        for n in range(4):
            w_it = _inv_map(img[k], txt[n], lam_it)  # Eq. 8
            w_ti = _inv_map(txt[n], img[k], lam_ti)  # Eq. 9
            it = (txt[n] - mu_it * w_it @ img[k]).pow(2).sum()
            ti = (img[k] - mu_ti * w_ti @ txt[n]).pow(2).sum()
            assert float(itot[k, n]) == pytest.approx(float(it), abs=1e-6)
            assert float(ttoi[k, n]) == pytest.approx(float(ti), abs=1e-6)
            raw[k, n] = omega * (-alpha * it - (1 - alpha) * ti)
    for k in range(3):
        log_soft = raw[k] - torch.log(torch.exp(raw[k]).sum())  # Eq. 10's δ by hand
        assert torch.allclose(d_cma[k], log_soft, atol=1e-5)
        for n in range(4):
            cos = img[k] @ txt[n] / (img[k].norm() * txt[n].norm())
            assert float(d[k, n]) == pytest.approx(float(beta * cos + (1 - beta) * log_soft[n]), abs=1e-5)


def test_explicit_cma_distances_match_closed_form(feats):
    args = (feats["img"], feats["txt"], 0.05, 0.2, 1.0, 0.7)
    for got, want in zip(dam.cma_distances(*args), dam.explicit_cma_distances(*args)):
        assert torch.allclose(got, want, atol=1e-5)


def test_cma_degenerate_on_normalized_features_only_rescales_logits(feats):
    img, txt = F.normalize(feats["img"], dim=-1), F.normalize(feats["txt"], dim=-1)
    itot, ttoi = dam.explicit_cma_distances(img, txt, 0.01, 0.02, 1.0, 1.0)  # per-pair solves, as released
    assert torch.allclose(itot, itot[0, 0].expand_as(itot), atol=1e-9)
    assert torch.allclose(ttoi, ttoi[0, 0].expand_as(ttoi), atol=1e-9)
    d_cma = dam.cma_scores(itot, ttoi, 0.5, 1.0)
    assert torch.allclose(d_cma, torch.full_like(d_cma, -math.log(4)), atol=1e-9)
    beta, cos = 0.65, img @ txt.t()
    d = dam.final_similarity(img, txt, d_cma, beta)
    assert torch.allclose(d, beta * cos + (1 - beta) * (-math.log(4)), atol=1e-9)  # an affine map of cos
    assert torch.equal(d.argmax(-1), cos.argmax(-1))


def test_cma_on_raw_features_depends_on_norms_not_directions(feats):
    img, txt = feats["img"], feats["txt"]
    rot = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3)))[0]
    args = (0.3, 0.3, 1.0, 1.0)
    before = dam.cma_distances(img, txt, *args)
    after = dam.cma_distances(img @ rot, txt @ rot.t().flip(0), *args)  # new directions, same norms
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-9)


def test_released_sma_residual_matches_released_rule(feats):
    f, g, lam, beta, m = feats["img"], feats["img0"], 0.2, 0.5, 0.1
    got = dam.sma_residual(f, g, lam, beta, m)
    for k in range(3):
        w = _inv_map(f[k], g[k], lam)
        w = w - (w - torch.eye(6)) * beta  # the released W ← W − (W − I)β (column form)
        x = m * (w @ f[k]) + f[k]
        assert torch.allclose(got[k], x / x.norm(), atol=1e-6)


def test_released_lambda_scaling():
    raw = torch.tensor(0.5)
    assert float(dam.released_lambda(raw, 8, 512)) == pytest.approx(8 / 512 * math.exp(0.5) + 1e-6)


def test_shared_text_map_equals_hand_inverse(feats):
    f, g, lam, rho = feats["txt"], feats["txt0"], 0.4, 0.3
    w = torch.linalg.inv(f.t() @ f + lam * torch.eye(6)) @ f.t() @ g
    want = rho * torch.eye(6) + (1 - rho) * w
    assert torch.allclose(dam.shared_text_map(f, g, lam, rho), want, atol=1e-6)


def test_batch_ridge_extension_minimizes_its_objective_and_is_not_degenerate(feats):
    img, txt = F.normalize(feats["img"], dim=-1), F.normalize(feats["txt"], dim=-1)
    labels, lam = torch.tensor([0, 2, 1]), 0.1
    w = dam.batch_ridge_map(img, txt[labels], lam)
    want = torch.linalg.inv(img.t() @ img + lam * torch.eye(6)) @ img.t() @ txt[labels]  # primal normal equations
    assert torch.allclose(w, want, atol=1e-6)
    itot, ttoi = dam.batch_ridge_distances(img, txt, labels, lam)
    assert float(itot.std(dim=1).min()) > 1e-3 and float(ttoi.std(dim=1).min()) > 1e-3  # classes differ
    assert torch.equal(itot.argmin(-1), labels)  # the fitted pairs are recovered on this small batch


def test_cma_scores_rejects_unknown_direction():
    with pytest.raises(ValueError, match="itot"):
        dam.cma_scores(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 1.0, directions="both_ways")
