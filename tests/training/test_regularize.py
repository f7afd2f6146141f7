"""Regularization: each helper against the formula it names, and its wiring in the loop."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from app import spec as s
from app.training import checkpoint as ckpt
from app.training import models
from app.training.optim import decayed_parameters
from app.training.regularize import (
    BestTracker,
    Patience,
    WeightNoise,
    add_input_noise,
    cutmix,
    mixup,
    penalty,
    shift_and_flip,
)
from app.training.sink import MemorySink
from tests.training.helpers import assert_same_weights, make_spec, trainer, weights

# ------------------------------------------------------------------ penalties


def _model() -> torch.nn.Module:
    return models.build_model(s.MLP(hidden=[5, 4], norm="layer"), (3,), 2)


def test_l2_and_l1_penalties_sum_over_weight_matrices() -> None:
    model = _model()
    params = decayed_parameters(model, decay_all=False)
    mats = [model.blocks[0].linear.weight, model.blocks[1].linear.weight, model.head.weight]
    assert [id(p) for p in params] == [id(p) for p in mats]
    sq = sum(float((w.detach().double() ** 2).sum()) for w in mats)
    ab = sum(float(w.detach().double().abs().sum()) for w in mats)
    assert penalty(params, 0.0, 0.3).item() == pytest.approx(0.3 * sq, rel=1e-6)
    assert penalty(params, 0.2, 0.0).item() == pytest.approx(0.2 * ab, rel=1e-6)
    assert penalty(params, 0.2, 0.3).item() == pytest.approx(0.2 * ab + 0.3 * sq, rel=1e-6)
    assert penalty(params, 0.0, 0.0) is None
    every = decayed_parameters(model, decay_all=True)
    sq_all = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
    assert penalty(every, 0.0, 0.3).item() == pytest.approx(0.3 * sq_all, rel=1e-6)


def test_l2_gradient_in_a_training_step() -> None:
    """One full-batch SGD step: weights get the extra 2*l2*W, biases and norms do not."""
    lr, l2 = 0.1, 0.05
    spec = make_spec(model={"hidden": [6], "norm": "layer"},
                     optimizer={"kind": "sgd", "lr": lr}, regularization={"l2": l2},
                     training={"epochs": 1, "batch_size": "full"})
    t = trainer(spec)
    ref = copy.deepcopy(t.model)
    F.cross_entropy(ref(t.data.x_train), t.data.y_train).backward()
    t.run()
    for (name, p), r in zip(t.model.named_parameters(), ref.parameters(), strict=True):
        extra = 2 * l2 * r.detach() if p.dim() >= 2 else 0.0
        torch.testing.assert_close(p.detach(), r.detach() - lr * (r.grad + extra),
                                   rtol=1e-5, atol=1e-6, msg=name)


# -------------------------------------------------------------- early stopping

ES_SPEC = {
    "data": {"source": {"synthetic": "moons", "n_samples": 240, "noise": 0.3}},
    "model": {"hidden": [32, 32]},
    "optimizer": {"kind": "adam", "lr": 0.05},
    "regularization": {"early_stopping": {"patience": 3}},
    "training": {"epochs": 40, "batch_size": 32, "seed": 0, "device": "cpu"},
}


def test_early_stopping_stops_after_patience_and_restores_best_weights() -> None:
    spec = make_spec(ES_SPEC, training={"checkpoint_every_seconds": 0})  # every epoch's kept
    sink = MemorySink()
    t = trainer(spec, sink)
    summary = t.run().summary
    val = sink.series("val", "loss")
    best = int(np.argmin(val)) + 1  # first epoch with the lowest val_loss
    assert summary.early_stopped and summary.stopped_epoch < 40
    assert summary.best_epoch == best
    assert summary.stopped_epoch == best + 3 == summary.epochs_completed == len(val)
    assert summary.best_value == val[best - 1]
    assert summary.restored_best_weights
    assert [r.is_best for r in sink.reports].count(True) >= 2
    # the final weights are the best epoch's, as recorded in that epoch's checkpoint ...
    best_report = sink.reports[best - 1]
    assert best_report.is_best and best_report.checkpoint is not None
    best_model = ckpt.strip_prefix("model", ckpt.unpack(best_report.checkpoint)[0])
    assert_same_weights(weights(t.model), best_model)
    last_model = ckpt.strip_prefix("model", ckpt.unpack(sink.reports[-1].checkpoint)[0])
    assert not torch.equal(last_model["head.weight"], best_model["head.weight"])
    # ... and those of a run that simply ends at the best epoch
    short = trainer(make_spec(ES_SPEC, training={"epochs": best},
                              regularization={"early_stopping": None}))
    short.run()
    assert_same_weights(weights(t.model), weights(short.model))
    assert summary.val["loss"] == pytest.approx(val[best - 1], rel=1e-6)


def test_without_restore_best_the_last_weights_remain() -> None:
    spec = make_spec(ES_SPEC, regularization={"early_stopping": {"restore_best": False}})
    sink = MemorySink()
    t = trainer(spec, sink)
    summary = t.run().summary
    assert summary.early_stopped and not summary.restored_best_weights
    last_model = ckpt.strip_prefix("model", ckpt.unpack(sink.reports[-1].checkpoint)[0])
    assert_same_weights(weights(t.model), last_model)


def early_stopping(es: s.EarlyStopping, values: list[float]) -> tuple[BestTracker, list[bool]]:
    best, patience = BestTracker.for_spec(es, has_val=True), Patience(es.patience)
    return best, [patience.update(best.update(e, v)) for e, v in enumerate(values, start=1)]


def test_early_stopping_rule() -> None:
    es, stops = early_stopping(s.EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1),
                               [1.0, 0.95, 0.85, 0.8, 0.79])
    # 0.95 is not 0.1 better than 1.0; 0.85 is; 0.8 and 0.79 are not -> stop at epoch 5
    assert stops == [False, False, False, False, True]
    assert (es.best, es.best_epoch) == (0.85, 3)
    acc, stops = early_stopping(s.EarlyStopping(monitor="val_accuracy", patience=1),
                                [0.5, 0.7, 0.6])
    assert acc.maximize and stops == [False, False, True]
    assert acc.best_epoch == 2
    assert early_stopping(s.EarlyStopping(patience=0), [1.0, 2.0])[1] == [False, True]


def test_the_best_epoch_is_tracked_without_early_stopping() -> None:
    """No early stopping: the best epoch is still judged, by val_loss (train_loss without
    a validation split), with no patience rule to end the run."""
    best = BestTracker.for_spec(None, has_val=True)
    assert (best.monitor, best.maximize, best.min_delta) == ("val_loss", False, 0.0)
    assert [best.update(e, v) for e, v in enumerate([1.0, 0.9, 0.95, 0.5], 1)] == [
        True, True, False, True]
    assert best.best_epoch == 4
    assert BestTracker.for_spec(None, has_val=False).monitor == "train_loss"


# ------------------------------------------------------------------- mixing


def test_mixup_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=gen)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    out = mixup(x, 0.3, perm)
    for i in range(6):
        torch.testing.assert_close(out[i], 0.3 * x[i] + 0.7 * x[perm[i]])


def test_trainer_mixes_inputs_and_targets_by_the_drawn_ratio() -> None:
    spec = make_spec(regularization={"mixup": {"alpha": 0.4}})
    t = trainer(spec)
    np_copy = np.random.default_rng()
    np_copy.bit_generator.state = t.np_rng.bit_generator.state
    gen_copy = torch.Generator().manual_seed(0)
    gen_copy.set_state(t.gen.get_state())
    xb, yb = t.data.x_train[:16], t.data.y_train[:16]
    mixed, lam, partner = t.batch.mix(xb, 0.4)
    assert lam == float(np_copy.beta(0.4, 0.4))
    assert torch.equal(partner, torch.randperm(16, generator=gen_copy))
    torch.testing.assert_close(mixed, lam * xb + (1 - lam) * xb[partner])
    # the targets are mixed by the same ratio: soft-target cross-entropy is the reference
    out = torch.randn(16, 2)
    soft = lam * F.one_hot(yb, 2).float() + (1 - lam) * F.one_hot(yb[partner], 2).float()
    expected = -(soft * F.log_softmax(out, dim=1)).sum(1).mean()
    torch.testing.assert_close(t.batch.loss(out, yb, lam, partner), expected)


def test_regression_mixup_mixes_the_targets() -> None:
    spec = make_spec(data={"source": {"synthetic": "function", "n_samples": 40}},
                     loss={"kind": "mse"}, regularization={"mixup": {"alpha": 1.0}})
    t = trainer(spec)
    y = torch.arange(4.0)
    perm = torch.tensor([1, 2, 3, 0])
    out = torch.zeros(4, 1)
    target = 0.25 * y + 0.75 * y[perm]
    torch.testing.assert_close(t.batch.loss(out, y, 0.25, perm), (target**2).mean())


@pytest.mark.parametrize(("shape", "lam"), [((2, 8, 8), 0.5), ((1, 8, 8), 0.8),
                                            ((3, 10), 0.4), ((1, 6, 9), 0.1)])
def test_cutmix_pastes_one_box_and_reports_the_kept_fraction(shape: tuple[int, ...],
                                                             lam: float) -> None:
    n = 8
    x = torch.arange(1, n + 1, dtype=torch.float32).repeat_interleave(math.prod(shape))
    x = x.view(n, -1) + 0.0  # sample i is filled with the value i + 1
    perm = torch.roll(torch.arange(n), 1)  # nobody is their own partner
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(20):
        mixed, kept = cutmix(x, shape, lam, perm, rng)
        view, orig = mixed.view(n, *shape), x.view(n, *shape)
        pasted = view != orig
        # the box is the same for every sample and every channel
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))
        assert torch.equal(pasted[:, :1].expand_as(pasted), pasted)
        box = pasted[0, 0]
        assert torch.equal(view[pasted], x.view(n, *shape)[perm][pasted])
        if box.any():  # a contiguous rectangle
            coords = box.nonzero()
            lo, hi = coords.min(0).values, coords.max(0).values
            region = box[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))]
            assert region.all()
        assert kept == pytest.approx(1 - box.float().mean().item())
        ratios.append(kept)
    # the box covers ~(1 - lam) of the area away from the borders, never more
    assert min(ratios) >= lam - 0.15 and max(ratios) > min(ratios)


def _find_shift(src: torch.Tensor, out: torch.Tensor, k: int) -> tuple[int, ...] | None:
    """The (dy, dx) or (d,) with out = src shifted by it (zero-filled), if any."""
    spatial = src.shape[1:]
    padded = F.pad(src, [k, k] * len(spatial))
    for offsets in np.ndindex(*([2 * k + 1] * len(spatial))):
        index = (slice(None), *(slice(o, o + n) for o, n in zip(offsets, spatial, strict=True)))
        if torch.equal(padded[index], out):
            return tuple(int(o) - k for o in offsets)
    return None


@pytest.mark.parametrize("shape", [(2, 6, 7), (3, 9)])
def test_shift_moves_each_sample_by_at_most_shift(shape: tuple[int, ...]) -> None:
    n, k = 24, 2
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, math.prod(shape), generator=gen) + 1.0  # zeros only from padding
    out = shift_and_flip(x, shape, s.Augment(shift=k), gen)
    shifts = []
    for i in range(n):
        found = _find_shift(x[i].view(shape), out[i].view(shape), k)
        assert found is not None, f"sample {i} is not a shift of at most {k}"
        shifts.append(found)
    assert len(set(shifts)) > 3 and any(any(v != 0 for v in d) for d in shifts)
    assert {abs(v) for d in shifts for v in d} <= set(range(k + 1))


def test_flip_mirrors_the_last_axis_for_about_half() -> None:
    n, shape = 200, (1, 4, 5)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 20, generator=gen)
    out = shift_and_flip(x, shape, s.Augment(flip=True), gen).view(n, *shape)
    view = x.view(n, *shape)
    same = (out == view).flatten(1).all(1)
    flipped = (out == view.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 70 < int(flipped.sum()) < 130


def test_input_noise_has_the_requested_std() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.full((200, 500), 3.0)
    noisy = add_input_noise(x, 0.25, gen)
    noise = (noisy - x).double()
    assert noise.std().item() == pytest.approx(0.25, rel=0.01)
    assert abs(noise.mean().item()) < 0.002


def test_weight_noise_add_and_remove_restore_exactly() -> None:
    model = _model()
    params = decayed_parameters(model, decay_all=False)
    clean = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    noise = WeightNoise(params, 0.2, gen)
    replay = torch.Generator().manual_seed(0)
    expected = [c + 0.2 * torch.randn(c.shape, generator=replay) for c in clean]
    for _ in range(3):
        noise.add()
        for p, c in zip(params, clean, strict=True):
            assert not torch.equal(p, c)
        deltas = torch.cat([(p - c).flatten() for p, c in zip(params, clean, strict=True)])
        assert deltas.std().item() == pytest.approx(0.2, rel=0.2)
        noise.remove()
        for p, c in zip(params, clean, strict=True):
            assert torch.equal(p, c)  # bit-exact, not merely close
    # the noise is N(0, std^2) drawn from the generator it was given
    noise2 = WeightNoise(params, 0.2, torch.Generator().manual_seed(0))
    noise2.add()
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)
    noise2.remove()


def test_weight_noise_gradient_is_taken_at_the_perturbed_weights() -> None:
    lr, std = 0.1, 0.3
    spec = make_spec(model={"hidden": [6]}, optimizer={"kind": "sgd", "lr": lr},
                     regularization={"weight_noise": std},
                     training={"epochs": 1, "batch_size": "full"})
    t = trainer(spec)
    replay = torch.Generator().manual_seed(0)
    replay.set_state(t.gen.get_state())
    n = t.data.x_train.shape[0]
    torch.randperm(n, generator=replay)  # the epoch's permutation comes first
    noisy = copy.deepcopy(t.model)
    clean = {k: v.clone() for k, v in weights(t.model).items()}
    with torch.no_grad():
        for p in noisy.parameters():
            if p.dim() >= 2:
                p.add_(std * torch.randn(p.shape, generator=replay))
    F.cross_entropy(noisy(t.data.x_train), t.data.y_train).backward()
    t.run()
    for (name, p), q in zip(t.model.named_parameters(), noisy.parameters(), strict=True):
        # the step starts from the clean weights and follows the gradient at the noisy ones
        torch.testing.assert_close(p.detach(), clean[name] - lr * q.grad, rtol=1e-5, atol=1e-6,
                                   msg=name)
