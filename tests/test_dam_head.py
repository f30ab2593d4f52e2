"""DAM's head: its 11 scalars and their ranges, the composition of Eqs. 5, 6, 10, 11 against hand-written
inverses, the ablation switches, and why the released CMA scalars cannot learn (zero gradient)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.methods._dam_head import SCALARS, DAMHead


@pytest.fixture
def feats():
    gen = torch.Generator().manual_seed(1)
    norm = lambda *s: F.normalize(torch.randn(*s, generator=gen, dtype=torch.float64), dim=-1)  # noqa: E731
    return norm(4, 8), norm(4, 8), norm(3, 8), norm(3, 8)  # image prompted / frozen, text prompted / frozen


def _inv_map(f, g, lam):
    f, g = f.view(-1, 1), g.view(-1, 1)
    return g @ f.t() @ torch.linalg.inv(f @ f.t() + lam * torch.eye(f.shape[0], dtype=f.dtype))


def test_head_adds_exactly_eleven_parameters():
    for ranges in ("paper", "released"):
        head = DAMHead(512, ranges=ranges)
        assert sum(p.numel() for p in head.parameters()) == 11 == len(SCALARS)


def test_head_without_alignments_gives_the_encoders_cosine_logits(feats):
    ip, i0, tp, t0 = feats
    head = DAMHead(8, sma_image=False, sma_text=False, cma=False).double()
    logits, sma_loss, *_ = head(ip, i0, tp, t0, 10.0)
    assert torch.allclose(logits, 10.0 * ip @ tp.t(), atol=1e-12) and float(sma_loss) == 0.0


def test_head_composes_eqs_5_6_10_11_by_hand(feats):
    ip, i0, tp, t0 = feats
    head = DAMHead(8, lambda_init=0.3).double()
    with torch.no_grad():
        head.raw["rho_image_sma"].fill_(0.4)
        head.raw["alpha"].fill_(-0.2)
        head.raw["mu_itot"].fill_(0.1)
    val = head.learned_scalars()
    logits, sma_loss, img, txt, _ = head(ip, i0, tp, t0, 5.0)
    eye = torch.eye(8, dtype=torch.float64)
    want_img = torch.stack([(val["rho_image_sma"] * eye + (1 - val["rho_image_sma"])
                             * _inv_map(ip[k], i0[k], val["lambda_image_sma"])) @ ip[k] for k in range(4)])
    want_txt = torch.stack([(val["rho_text_sma"] * eye + (1 - val["rho_text_sma"])
                             * _inv_map(tp[n], t0[n], val["lambda_text_sma"])) @ tp[n] for n in range(3)])
    assert torch.allclose(img, want_img, atol=1e-6) and torch.allclose(txt, want_txt, atol=1e-6)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    want_loss = 2 - sum(cos(want_txt[n], t0[n]) for n in range(3)) / 3 - sum(cos(want_img[k], i0[k]) for k in range(4)) / 4
    assert float(sma_loss) == pytest.approx(want_loss, abs=1e-9)
    for k in range(4):
        raw = []
        for n in range(3):
            it = (want_txt[n] - val["mu_itot"] * _inv_map(want_img[k], want_txt[n], val["lambda_itot"]) @ want_img[k]).pow(2).sum()
            ti = (want_img[k] - val["mu_ttoi"] * _inv_map(want_txt[n], want_img[k], val["lambda_ttoi"]) @ want_txt[n]).pow(2).sum()
            raw.append(val["omega"] * (-val["alpha"] * it - (1 - val["alpha"]) * ti))
        d_cma = torch.log_softmax(torch.stack(raw), 0)
        for n in range(3):
            d = val["beta"] * cos(want_img[k], want_txt[n]) + (1 - val["beta"]) * float(d_cma[n])
            assert float(logits[k, n]) == pytest.approx(5.0 * d, abs=1e-6)


def test_paper_ranges_hold_for_any_raw_value():
    head = DAMHead(16)
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(-40.0)
    low = head.learned_scalars()
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(40.0)
    high = head.learned_scalars()
    for name in ("alpha", "beta", "rho_image_sma", "rho_text_sma"):
        assert 0.0 <= low[name] <= high[name] <= 1.0
    for name in ("lambda_itot", "mu_ttoi", "omega", "lambda_text_sma"):
        assert low[name] >= 0.0 and high[name] > 1.0


def test_paper_inits_and_released_inits():
    assert DAMHead(8).learned_scalars() == pytest.approx(
        {**{n: 0.5 for n in ("rho_image_sma", "rho_text_sma", "alpha", "beta")}, "mu_itot": 1.0, "mu_ttoi": 1.0,
         "omega": 1.0, **{n: 0.1 for n in ("lambda_image_sma", "lambda_text_sma", "lambda_itot", "lambda_ttoi")}})
    released = DAMHead(512, ranges="released").learned_scalars({"image": 8, "text": 50})
    assert released["lambda_ttoi"] == pytest.approx(50 / 512 + 1e-6)  # Table VI's Caltech λ 0.0979 ≈ 50/512
    assert released["lambda_itot"] == pytest.approx(8 / 512 + 1e-6)
    assert released["beta"] == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert released["alpha"] == 0.5 and released["omega"] == 1.0 and released["mu_itot"] == 1.0


def test_released_cma_scalars_get_zero_gradient_on_normalized_features(feats):
    ip, i0, tp, t0 = feats
    head = DAMHead(8, ranges="released", sma="released").double()
    logits, sma_loss, *_ = head(ip, i0, tp, t0, 100.0)
    (F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])) + sma_loss).backward()
    grads = {n: float(p.grad) for n, p in head.raw.items()}
    for name in ("lambda_itot", "lambda_ttoi", "mu_itot", "mu_ttoi", "alpha", "omega"):
        assert abs(grads[name]) < 1e-9, name  # d_CMA = −log N whatever they are
    assert abs(grads["beta"]) > 1e-6 and abs(grads["rho_image_sma"]) > 1e-9


def test_ablation_switches(feats):
    ip, i0, tp, t0 = feats
    full = DAMHead(8).double()
    itot = DAMHead(8, directions="itot").double()
    with torch.no_grad():
        itot.raw["alpha"].fill_(5.0)
    _, _, img, txt, d_itot = itot(ip, i0, tp, t0, 1.0)
    _, _, _, _, d_both = full(ip, i0, tp, t0, 1.0)
    assert d_itot is not None and d_both is not None
    only_img = DAMHead(8, sma_text=False, cma=False).double()
    logits, loss, img, txt, d = only_img(ip, i0, tp, t0, 2.0)
    assert d is None and torch.equal(txt, tp)
    assert float(loss) == pytest.approx(1 - float(F.cosine_similarity(img, i0).mean()))
    learnable = DAMHead(8, learnable_w="both").double()
    assert sum(p.numel() for p in learnable.parameters()) == 11 + 4 * 64
    _, _, img, txt, d = learnable(ip, i0, tp, t0, 1.0)
    assert torch.equal(img, ip) and torch.equal(txt, tp)  # identity W at init
    assert float(d.std(dim=1).min()) > 1e-4  # a learnable W scores directions: not constant over classes
    shared = DAMHead(8, text_map="shared").double()
    _, _, _, txt, _ = shared(ip, i0, tp, t0, 1.0)
    assert txt.shape == tp.shape
    with pytest.raises(ValueError, match="directions must be one of"):
        DAMHead(8, directions="sideways")
