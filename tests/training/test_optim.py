"""The algorithm: batches, optimizer updates, weight-decay groups, schedules, clipping."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from app import spec as s
from app.training import models
from app.training.optim import LrSchedule, build_optimizer, decayed_parameters, parameter_groups
from tests.training.helpers import make_spec, trainer


def _record_steps(opt: torch.optim.Optimizer) -> list[float]:
    """The lr each optimizer step used (a pre-hook sees it before the update)."""
    lrs: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
    return lrs


# ----------------------------------------------------------------- batching


def test_full_batch_is_one_step_over_every_row() -> None:
    spec = make_spec(model={"hidden": [8]}, optimizer={"kind": "sgd", "lr": 0.5},
                     training={"epochs": 1, "batch_size": "full"})
    t = trainer(spec)
    x, y = t.data.x_train, t.data.y_train
    reference = copy.deepcopy(t.model)
    F.cross_entropy(reference(x), y).backward()  # the full-data gradient at w0
    expected = {n: p.detach() - 0.5 * p.grad for n, p in reference.named_parameters()}
    seen: list[torch.Tensor] = []
    t.model.register_forward_pre_hook(lambda m, a: seen.append(a[0]) if m.training else None)
    steps = _record_steps(t.optimizer)
    t.run()
    assert len(steps) == 1 and len(seen) == 1
    # the one step saw every training row (in some order)
    assert seen[0].shape == x.shape
    torch.testing.assert_close(seen[0][torch.argsort(seen[0][:, 0])], x[torch.argsort(x[:, 0])])
    for name, p in t.model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch", "per_epoch"), [(1, 28), (10, 3), (28, 1), ("full", 1)])
def test_steps_per_epoch(batch: int | str, per_epoch: int) -> None:
    spec = make_spec(data={"source": {"n_samples": 40}}, training={"epochs": 2,
                                                                    "batch_size": batch})
    t = trainer(spec)
    assert t.data.x_train.shape[0] == 28
    steps = _record_steps(t.optimizer)
    sizes: list[int] = []
    t.model.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0])
                                      if m.training else None)
    t.run()
    assert len(steps) == 2 * per_epoch
    assert sum(sizes) == 2 * 28  # every row once per epoch


def test_batch_norm_skips_a_lone_leftover_row() -> None:
    spec = make_spec(data={"source": {"n_samples": 40}}, model={"norm": "batch"},
                     training={"epochs": 1, "batch_size": 9})  # 28 = 3 * 9 + 1
    t = trainer(spec)
    steps = _record_steps(t.optimizer)
    t.run()
    assert len(steps) == 3


# ------------------------------------------------------------------ updates


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return models.build_model(s.MLP(hidden=[3], norm="layer"), (2,), 2)


def _apply(opt: torch.optim.Optimizer, model: nn.Module, grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def _grads(model: nn.Module, n: int, seed: int = 1) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(n)]


@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_momentum_and_nesterov_follow_their_update_rules(dampening: float) -> None:
    lr, mu = 0.1, 0.9
    variants = [(False, dampening)] + ([(True, 0.0)] if dampening == 0 else [])
    finals = []
    for nesterov, damp in variants:
        model = _tiny()
        w0 = [p.detach().clone() for p in model.parameters()]
        grads = _grads(model, 3)
        opt = build_optimizer(s.SGD(lr=lr, momentum=mu, dampening=damp, nesterov=nesterov),
                              model)
        _apply(opt, model, grads)
        for i, w in enumerate(w0):
            buf = None
            for step in grads:
                g = step[i]
                buf = g.clone() if buf is None else mu * buf + (1 - damp) * g
                w = w - lr * (g + mu * buf if nesterov else buf)
            torch.testing.assert_close(list(model.parameters())[i].detach(), w)
        finals.append([p.detach().clone() for p in model.parameters()])
    if len(finals) == 2:  # NAG and heavy-ball momentum take different steps
        assert any(not torch.allclose(a, b) for a, b in zip(*finals, strict=True))


@pytest.mark.parametrize(("lr_decay", "init_acc"), [(0.0, 0.0), (0.1, 0.5)])
def test_adagrad_step_shrinks_as_its_accumulator_grows(lr_decay: float, init_acc: float) -> None:
    lr, eps = 0.5, 1e-10
    model = _tiny()
    opt = build_optimizer(s.Adagrad(lr=lr, lr_decay=lr_decay, initial_accumulator_value=init_acc,
                                    eps=eps), model)
    weight = next(model.parameters())
    g = torch.full_like(weight, 2.0)
    deltas, acc = [], init_acc
    for k in range(1, 6):
        before = weight.detach().clone()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        weight.grad = g.clone()
        opt.step()
        step = (before - weight.detach()).mean().item()
        acc += 4.0
        expected = lr / (1 + (k - 1) * lr_decay) * 2.0 / (math.sqrt(acc) + eps)
        assert step == pytest.approx(expected, rel=1e-5)
        deltas.append(step)
    assert all(a > b for a, b in itertools.pairwise(deltas))


OPTIMIZERS: list[tuple[Any, type[torch.optim.Optimizer], dict[str, Any]]] = [
    (s.SGD(lr=0.2, momentum=0.7, dampening=0.3, weight_decay=0.01), torch.optim.SGD,
     {"lr": 0.2, "momentum": 0.7, "dampening": 0.3, "nesterov": False}),
    (s.SGD(lr=0.2, momentum=0.5, nesterov=True), torch.optim.SGD,
     {"momentum": 0.5, "nesterov": True, "dampening": 0.0}),
    (s.Adagrad(lr=0.3, lr_decay=0.01, weight_decay=0.02, initial_accumulator_value=0.4,
               eps=1e-7), torch.optim.Adagrad,
     {"lr": 0.3, "lr_decay": 0.01, "initial_accumulator_value": 0.4, "eps": 1e-7}),
    (s.Adadelta(lr=0.8, rho=0.8, eps=1e-5, weight_decay=0.03), torch.optim.Adadelta,
     {"lr": 0.8, "rho": 0.8, "eps": 1e-5}),
    (s.RMSprop(lr=0.02, alpha=0.9, eps=1e-6, weight_decay=0.04, momentum=0.3, centered=True),
     torch.optim.RMSprop,
     {"lr": 0.02, "alpha": 0.9, "eps": 1e-6, "momentum": 0.3, "centered": True}),
    (s.Adam(lr=0.004, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05, amsgrad=True),
     torch.optim.Adam,
     {"lr": 0.004, "betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": True,
      "decoupled_weight_decay": False}),
    (s.AdamW(lr=0.004, betas=(0.85, 0.9), eps=1e-7, weight_decay=0.2), torch.optim.AdamW,
     {"lr": 0.004, "betas": (0.85, 0.9), "eps": 1e-7, "amsgrad": False,
      "decoupled_weight_decay": True}),
]


@pytest.mark.parametrize(("spec", "cls", "expected"), OPTIMIZERS,
                         ids=[o[0].kind + str(i) for i, o in enumerate(OPTIMIZERS)])
def test_every_hyper_parameter_reaches_the_torch_optimizer(
        spec: Any, cls: type[torch.optim.Optimizer], expected: dict[str, Any]) -> None:
    opt = build_optimizer(spec, _tiny())
    assert type(opt) is cls
    for group in opt.param_groups:
        for key, value in expected.items():
            got = group[key]
            assert (tuple(got) if isinstance(got, list | tuple) else got) == value, key
    decay, *keep = opt.param_groups  # no decay: one group (one fused kernel call)
    assert decay["weight_decay"] == spec.weight_decay
    assert [g["weight_decay"] for g in keep] == ([0.0] if spec.weight_decay else [])


def test_weight_decay_groups_exempt_biases_and_norm_parameters() -> None:
    model = models.build_model(s.MLP(hidden=[4, 4], norm="batch"), (3,), 2)
    decay, keep = parameter_groups(model, 0.1, decay_all=False)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        n for n, p in model.named_parameters() if n.endswith("linear.weight")
        or n == "head.weight")
    assert all(names[id(p)].endswith(("bias", "norm.weight")) for p in keep["params"])
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))
    assert (decay["weight_decay"], keep["weight_decay"]) == (0.1, 0.0)
    assert [id(p) for p in decayed_parameters(model, False)] == [id(p) for p in decay["params"]]
    (every,) = parameter_groups(model, 0.1, decay_all=True)
    assert len(every["params"]) == len(list(model.parameters()))
    assert every["weight_decay"] == 0.1


@pytest.mark.parametrize("decay_all", [False, True])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_weight_decay_shrinks_only_the_decayed_tensors(kind: str, decay_all: bool) -> None:
    """With zero gradients a step is pure decay: w <- (1 - lr * wd) w on decayed tensors."""
    model = models.build_model(s.MLP(hidden=[4], norm="layer"), (3,), 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # norm weights/biases are 1/0 at init: make every tensor non-trivial
    lr, wd = 0.1, 0.3
    opt_spec = (s.SGD(lr=lr, weight_decay=wd, decay_all_parameters=decay_all) if kind == "sgd"
                else s.AdamW(lr=lr, weight_decay=wd, decay_all_parameters=decay_all))
    opt = build_optimizer(opt_spec, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        decayed = decay_all or p.dim() >= 2
        expected = before[name] * (1 - lr * wd) if decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)


# ---------------------------------------------------------------- schedules

EPOCHS = 12


def _torch_lrs(make: Any, base: float = 0.1, epochs: int = EPOCHS) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = make(opt)
    lrs = []
    for _ in range(epochs + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(("spec", "make"), [
    (s.Step(step_size=3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    (s.MultiStep(milestones=[2, 5, 9], gamma=0.3),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5, 9], 0.3)),
    (s.Exponential(gamma=0.8), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8)),
    (s.Cosine(min_lr=0.01),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=EPOCHS, eta_min=0.01)),
    (s.Constant(), lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
], ids=["step", "multistep", "exponential", "cosine", "constant"])
def test_epoch_schedules_match_torch(spec: Any, make: Any) -> None:
    sched = LrSchedule(spec, 0.1, EPOCHS)
    ours = [sched.lr(float(e)) for e in range(EPOCHS + 1)]
    assert ours == pytest.approx(_torch_lrs(make), rel=1e-9, abs=1e-12)


def _lrs_in_training(schedule: dict[str, Any], epochs: int = 4,
                     lr: float = 0.1) -> tuple[list[float], int]:
    spec = make_spec(schedule=schedule, optimizer={"kind": "sgd", "lr": lr},
                     data={"source": {"n_samples": 60}},
                     training={"epochs": epochs, "batch_size": 10})
    t = trainer(spec)
    lrs = _record_steps(t.optimizer)
    t.run()
    return lrs, t.steps


def test_trainer_applies_epoch_schedules_like_torch() -> None:
    lrs, steps = _lrs_in_training({"kind": "step", "step_size": 2, "gamma": 0.5}, epochs=5)
    torch_per_epoch = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5), epochs=5)
    assert lrs == pytest.approx([torch_per_epoch[i // steps] for i in range(5 * steps)])


def test_trainer_applies_cosine_per_step() -> None:
    lrs, steps = _lrs_in_training({"kind": "cosine", "min_lr": 0.001})
    total = 4 * steps
    expected = [0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * (i + 1) / total))
                for i in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(0.001)


def test_one_cycle_formula_and_torch_landmarks() -> None:
    epochs, lr = 5, 0.1
    lrs, steps = _lrs_in_training({"kind": "one_cycle", "max_lr": 0.4, "pct_start": 0.4,
                                   "div_factor": 10, "final_div_factor": 100}, epochs, lr)
    total = epochs * steps
    start, peak, end = 0.04, 0.4, 0.0004

    def cos(a: float, b: float, u: float) -> float:
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * u))

    expected = []
    for i in range(total):
        frac = (i + 1) / total
        expected.append(cos(start, peak, frac / 0.4) if frac < 0.4
                        else cos(peak, end, (frac - 0.4) / 0.6))
    assert lrs == pytest.approx(expected, rel=1e-9)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, pct_start=0.4,
                                              div_factor=10, final_div_factor=100)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert total * 0.4 == int(total * 0.4)  # the peak falls on a step
    peak_step = int(total * 0.4) - 1
    assert lrs[peak_step] == pytest.approx(torch_lrs[peak_step]) == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(torch_lrs[-1]) == pytest.approx(end)
    assert max(lrs) == pytest.approx(peak)
    # max_lr defaults to the optimizer's lr
    default = LrSchedule(s.OneCycle(pct_start=0.5), 0.2, 10)
    assert default.lr(5.0) == pytest.approx(0.2)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_reduce_on_plateau_matches_torch(mode: str) -> None:
    spec = s.ReduceOnPlateau(monitor="val_metric", mode=mode, factor=0.5, patience=2,
                             threshold=0.01, min_lr=0.02)
    sched = LrSchedule(spec, 0.1, 100)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=2,
                                                     threshold=0.01, threshold_mode="abs",
                                                     min_lr=0.02)
    sign = 1 if mode == "min" else -1
    values = [1.0, 0.9, 0.895, 0.9, 0.91, 0.85, 0.86, 0.87, 0.88, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8,
              0.8, 0.8]
    ours, theirs = [], []
    for v in values:
        sched.observe({"val_metric": sign * v})
        ref.step(sign * v)
        ours.append(sched.lr(0.0))
        theirs.append(opt.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs)
    assert min(ours) == pytest.approx(0.02) and ours[0] == 0.1  # it did reduce, down to min_lr


def test_reduce_on_plateau_in_training_reads_the_monitored_metric() -> None:
    from app.training.sink import MemorySink

    spec = make_spec(schedule={"kind": "reduce_on_plateau", "monitor": "val_loss",
                               "patience": 0, "factor": 0.5},
                     optimizer={"kind": "sgd", "lr": 0.5}, training={"epochs": 8})
    sink = MemorySink()
    trainer(spec, sink).run()
    val, lrs = sink.series("val", "loss"), sink.series("train", "lr")
    ref = LrSchedule(spec.schedule, 0.5, 8)
    expected = [0.5]
    for v in val[:-1]:
        ref.observe({"val_loss": v})
        expected.append(ref.lr(0.0))
    assert lrs == expected
    assert len(set(lrs)) > 1  # the schedule reduced at least once


def test_warmup_ramps_linearly_per_step() -> None:
    lrs, steps = _lrs_in_training({"kind": "constant", "warmup_epochs": 2}, epochs=3)
    expected = [0.1 * min(1.0, (i + 1) / steps / 2) for i in range(3 * steps)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(0.1 / (2 * steps)) and lrs[-1] == 0.1


def test_warmup_multiplies_a_decay_schedule() -> None:
    sched = LrSchedule(s.Exponential(gamma=0.5, warmup_epochs=2), 0.1, 10)
    assert sched.per_step
    assert sched.lr(0.5) == pytest.approx(0.1 * 0.25)
    assert sched.lr(1.5) == pytest.approx(0.1 * 0.75 * 0.5)
    assert sched.lr(3.0) == pytest.approx(0.1 * 0.125)


# ------------------------------------------------------------------ clipping


def test_gradient_clipping_bounds_the_global_norm() -> None:
    norms: dict[str, list[float]] = {}
    for label, clip in (("free", None), ("clipped", 0.05)):
        spec = make_spec(optimizer={"kind": "sgd", "lr": 0.5},
                         training={"epochs": 2, "grad_clip_norm": clip})
        t = trainer(spec)
        seen: list[float] = []

        def hook(o: Any, a: Any, k: Any, model: nn.Module = t.model,
                 seen: list[float] = seen) -> None:
            seen.append(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in model.parameters()])).item())

        t.optimizer.register_step_pre_hook(hook)
        t.run()
        norms[label] = seen
    assert norms["free"][0] > 0.05  # the first step (same state, same batch) needed clipping
    assert norms["clipped"][0] == pytest.approx(0.05, rel=1e-4)
    assert max(norms["clipped"]) <= 0.05 * (1 + 1e-5)


def test_warmup_does_not_move_epochwise_decay_early() -> None:
    from app import spec as s
    from app.training.optim import LrSchedule

    sched = LrSchedule(s.Step(step_size=2, gamma=0.5, warmup_epochs=1), 1.0, 10)
    assert sched.per_step
    assert sched.lr(0, 0.5) == pytest.approx(0.5)  # half-way through the warm-up
    assert sched.lr(1, 1.0) == pytest.approx(1.0)  # last step of epoch 1: not decayed yet
    assert sched.lr(2, 1 / 12) == pytest.approx(0.5)  # first step of epoch 2


def test_no_weight_decay_is_one_group_that_trains_like_two() -> None:
    """One fused kernel call per step when nothing is decayed: the same weights as the two
    groups it replaces, and a two-group state (older checkpoints) still loads."""
    from app.training.optim import load_optimizer_state

    def run(groups: list[dict[str, Any]], model: nn.Module,
            steps: int) -> torch.optim.Optimizer:
        opt = torch.optim.Adam(groups, lr=0.01, fused=True)
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
        y = torch.arange(16) % 2
        for _ in range(steps):
            opt.zero_grad()
            torch.autograd.backward(F.cross_entropy(model(x), y))
            opt.step()
        return opt

    torch.manual_seed(0)
    one = models.build_model(s.MLP(hidden=[4, 4]), (3,), 2)
    two = copy.deepcopy(one)
    (group,) = parameter_groups(one, 0.0, decay_all=False)
    assert group["weight_decay"] == 0.0
    decay = [p for p in two.parameters() if p.dim() >= 2]
    keep = [p for p in two.parameters() if p.dim() < 2]
    old = run([{"params": decay, "weight_decay": 0.0}, {"params": keep, "weight_decay": 0.0}],
              two, 5)
    opt = run([group], one, 5)
    for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    load_optimizer_state(opt, old.state_dict())
    assert len(opt.param_groups) == 1
    for p in one.parameters():  # each tensor got its own moments back, not a neighbour's
        q = dict(zip(map(id, one.parameters()), two.parameters(), strict=True))[id(p)]
        assert torch.equal(opt.state[p]["exp_avg"], old.state[q]["exp_avg"])
