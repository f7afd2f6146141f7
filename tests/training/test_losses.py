"""Losses against hand-written formulas (float64 references)."""

from __future__ import annotations

import pytest
import torch

from app import spec as s
from app.training.losses import build_loss

CPU = torch.device("cpu")


def _logits(n: int = 12, k: int = 4, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(n, k, generator=gen) * scale, torch.randint(0, k, (n,), generator=gen)


def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    m = z.max(dim=1, keepdim=True).values
    return z - m - torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cross_entropy_label_smoothing_formula(eps: float) -> None:
    out, y = _logits()
    loss = build_loss(s.CrossEntropy(label_smoothing=eps), 4, CPU)(out, y)
    logp = _log_softmax(out)
    nll = -logp[torch.arange(len(y)), y].mean()
    uniform = (-logp).mean(dim=1).mean()  # mean over classes of -log p
    expected = (1 - eps) * nll + eps * uniform
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    if eps > 0:  # smoothing really changed the value
        assert abs(loss.item() - nll.item()) > 1e-3


def test_cross_entropy_class_weights() -> None:
    out, y = _logits()
    w = [0.5, 2.0, 1.0, 3.0]
    loss = build_loss(s.CrossEntropy(class_weights=w), 4, CPU)(out, y)
    logp = _log_softmax(out)
    wy = torch.tensor(w, dtype=torch.float64)[y]
    expected = (wy * -logp[torch.arange(len(y)), y]).sum() / wy.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = build_loss(s.CrossEntropy(), 4, CPU)(out, y)
    assert abs(plain.item() - loss.item()) > 1e-3


@pytest.mark.parametrize("weights", [None, [1.0, 4.0, 0.5, 2.0]])
def test_nll_equals_cross_entropy_without_smoothing(weights: list[float] | None) -> None:
    out, y = _logits()
    nll = build_loss(s.NLL(class_weights=weights), 4, CPU)(out, y)
    ce = build_loss(s.CrossEntropy(class_weights=weights), 4, CPU)(out, y)
    torch.testing.assert_close(nll, ce)


def test_class_weights_must_match_the_classes() -> None:
    with pytest.raises(ValueError, match="3 entries for 4 classes"):
        build_loss(s.CrossEntropy(class_weights=[1.0, 1.0, 1.0]), 4, CPU)


@pytest.mark.parametrize("pos_weight", [1.0, 3.0])
def test_bce_on_one_logit_matches_sigmoid_formula(pos_weight: float) -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(20, 1, generator=gen) * 2
    y = torch.randint(0, 2, (20,), generator=gen)
    loss = build_loss(s.BCE(pos_weight=pos_weight), 2, CPU)(z, y)
    p = torch.sigmoid(z.squeeze(1).double())
    yd = y.double()
    expected = -(pos_weight * yd * torch.log(p) + (1 - yd) * torch.log(1 - p)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_is_finite_for_huge_logits() -> None:
    z = torch.tensor([[1000.0], [-1000.0], [1000.0], [-1000.0]], requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    loss = build_loss(s.BCE(), 2, CPU)(z, y)
    # two rows are confidently wrong by 1000 (loss 1000 each), two are right (loss 0)
    assert loss.item() == pytest.approx(500.0, rel=1e-6)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad.squeeze(1), torch.tensor([0.25, -0.25, 0.0, 0.0]))


@pytest.mark.parametrize("loss_spec", [s.CrossEntropy(), s.CrossEntropy(label_smoothing=0.1),
                                       s.NLL()])
def test_softmax_losses_are_finite_for_huge_logits(
        loss_spec: s.CrossEntropy | s.NLL) -> None:
    out = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], requires_grad=True)
    y = torch.tensor([2, 1])
    loss = build_loss(loss_spec, 3, CPU)(out, y)
    assert torch.isfinite(loss)
    logp = _log_softmax(out.detach())
    eps = getattr(loss_spec, "label_smoothing", 0.0)
    expected = ((1 - eps) * -logp[torch.arange(2), y] + eps * (-logp).mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # 1e4 for the first row
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


def _regression() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(30, 1, generator=gen) * 2, torch.randn(30, generator=gen)


def test_mse_and_mae_formulas() -> None:
    out, y = _regression()
    r = out.squeeze(1).double() - y.double()
    assert build_loss(s.MSE(), 0, CPU)(out, y).item() == pytest.approx(
        (r**2).mean().item(), rel=1e-5)
    assert build_loss(s.MAE(), 0, CPU)(out, y).item() == pytest.approx(
        r.abs().mean().item(), rel=1e-5)


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_formula(delta: float) -> None:
    out, y = _regression()
    r = (out.squeeze(1).double() - y.double()).abs()
    per_row = torch.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))
    assert (r > delta).any() and (r <= delta).any()  # both regimes exercised
    loss = build_loss(s.Huber(delta=delta), 0, CPU)(out, y)
    assert loss.item() == pytest.approx(per_row.mean().item(), rel=1e-5)


def test_class_weights_stay_representable_in_float32() -> None:
    """A positive weight that float32 rounds to 0 made a batch of that class 0/0 = NaN."""
    from pydantic import ValidationError

    assert torch.tensor(2.3e-222, dtype=torch.float32).item() == 0.0  # why there is a floor
    for loss in (s.CrossEntropy, s.NLL):
        with pytest.raises(ValidationError, match=r"class_weights\.1"):
            loss(class_weights=[1.0, 2.3e-222])
    with pytest.raises(ValidationError):
        s.BCE(pos_weight=1e-300)
    assert loss(class_weights=[1e-6, 1e6]).class_weights == [1e-6, 1e6]
