"""Models: every option builds the network it names (checked against torch.nn.functional)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from app import spec as s
from app.training import models
from app.training.metrics import predict

ACT_REF: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "leaky_relu": lambda h: F.leaky_relu(h, 0.01),
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda h: h,
}


def _randomize_norm(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial affine parameters and running statistics, so a wrong formula shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if "weight" in name else 0.0))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)


def _vector_norm_ref(kind: str, norm: nn.Module, h: torch.Tensor, groups: int,
                     training: bool) -> torch.Tensor:
    if kind == "none":
        return h
    if kind == "batch":
        return F.batch_norm(h, norm.running_mean.clone(), norm.running_var.clone(),
                            norm.weight, norm.bias, training=training, eps=1e-5)
    if kind == "layer":
        return F.layer_norm(h, (h.shape[1],), norm.weight, norm.bias, eps=1e-5)
    if kind == "group":
        return F.group_norm(h, groups, norm.weight, norm.bias, eps=1e-5)
    # instance on a vector: per-sample standardization over its features, no affine
    mean = h.mean(1, keepdim=True)
    var = h.var(1, unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5)


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group", "instance"])
@pytest.mark.parametrize("activation", sorted(ACT_REF))
def test_mlp_forward_matches_functional_reference(norm: str, activation: str) -> None:
    spec = s.MLP(hidden=[6, 6], activation=activation, norm=norm, groups=3, residual=True)
    model = models.build_model(spec, (5,), 3)
    gen = torch.Generator().manual_seed(0)
    for block in model.blocks:
        _randomize_norm(block.norm, gen)
    x = torch.randn(7, 5, generator=gen)
    for training in (False, True):
        model.train(training)
        h = x
        for i, block in enumerate(model.blocks):
            z = _vector_norm_ref(norm, block.norm, block.linear(h), 3, training)
            z = ACT_REF[activation](z)
            h = h + z if i == 1 else z  # the skip applies only where widths match
        expected = model.head(h)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # the block really holds the named torch module
    kinds = {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm,
             "group": nn.GroupNorm, "instance": models._VectorInstanceNorm}
    assert isinstance(model.blocks[0].norm, kinds[norm])
    assert isinstance(model.blocks[0].act, models.ACTIVATIONS[activation])


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group", "instance"])
def test_conv_norms_match_functional_reference(norm: str, dims: int) -> None:
    gen = torch.Generator().manual_seed(1)
    module = models.conv_norm(norm, 4, 2, dims)
    _randomize_norm(module, gen)
    h = torch.randn(3, 4, *([5] * dims), generator=gen) * 2 + 1
    module.eval()
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    expected = {
        "none": lambda: h,
        "batch": lambda: F.batch_norm(h, module.running_mean, module.running_var, w, b,
                                      training=False),
        # layer: statistics over (C, *spatial) of each sample, per-channel affine
        "layer": lambda: F.layer_norm(h, h.shape[1:]) * w.view(1, -1, *[1] * dims)
        + b.view(1, -1, *[1] * dims),
        "group": lambda: F.group_norm(h, 2, w, b),
        "instance": lambda: F.instance_norm(h, weight=w, bias=b),
    }[norm]()
    torch.testing.assert_close(module(h), expected, rtol=1e-5, atol=1e-5)


def test_dropout_is_active_only_in_training() -> None:
    spec = s.MLP(hidden=[64], dropout=0.5)
    model = models.build_model(spec, (10,), 4)
    x = torch.randn(32, 10)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)
    model.eval()
    c, d = model(x), model(x)
    assert torch.equal(c, d)
    # eval output is the dropout-free network: same weights without dropout
    plain = models.build_model(s.MLP(hidden=[64]), (10,), 4)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    torch.testing.assert_close(c, plain(x))
    # in training about half the hidden units are zeroed and survivors scaled by 1/(1-p)
    model.train()
    seen: list[torch.Tensor] = []
    handle = model.blocks[0].drop.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    model(torch.randn(256, 10))
    handle.remove()
    before, after = seen[0]
    kept = after != 0
    frac_dropped = 1 - kept.float().mean().item() / (before != 0).float().mean().item()
    assert 0.45 < frac_dropped < 0.55
    torch.testing.assert_close(after[kept], 2 * before[kept])


def test_cnn_dropout_and_predict_use_eval_mode() -> None:
    model = models.build_model(s.CNN(channels=[4], dropout=0.5, norm="none"), (1, 6, 6), 3)
    x = torch.randn(8, 36)
    model.train()
    assert not torch.equal(model(x), model(x))
    out1 = predict(model, x, contextlib.nullcontext)
    out2 = predict(model, x, contextlib.nullcontext)
    assert torch.equal(out1, out2)
    assert model.training  # predict restores the mode it found


def test_batch_norm_uses_running_statistics_in_eval() -> None:
    model = models.build_model(s.MLP(hidden=[8], norm="batch", activation="tanh"), (3,), 2)
    bn = model.blocks[0].norm
    assert isinstance(bn, nn.BatchNorm1d)
    x = torch.randn(16, 3)
    model.eval()
    alone = model(x[:1])
    together = model(x)[:1]
    torch.testing.assert_close(alone, together)  # a row's output ignores its batch
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
    shifted = model(x[:1])
    assert not torch.allclose(shifted, alone)
    h = (model.blocks[0].linear(x[:1]) - 3.0) / math.sqrt(4.0 + 1e-5) * bn.weight + bn.bias
    torch.testing.assert_close(shifted, model.head(torch.tanh(h)))
    # training mode normalizes with the batch's own statistics instead
    model.train()
    assert not torch.allclose(model(x)[:1], model(x[:8])[:1])


def test_empty_hidden_is_logistic_regression() -> None:
    model = models.build_model(s.MLP(hidden=[]), (7,), 3)
    layers = [m for m in model.modules() if not list(m.children())
              and not isinstance(m, nn.Sequential)]  # (an empty Sequential is a no-op)
    assert len(layers) == 1 and isinstance(layers[0], nn.Linear)
    x = torch.randn(5, 7)
    torch.testing.assert_close(model(x), x @ model.head.weight.T + model.head.bias)
    assert models.count_parameters(model) == 7 * 3 + 3


def test_mlp_residual_adds_the_identity() -> None:
    res = models.build_model(s.MLP(hidden=[8, 8], residual=True), (3,), 2)
    plain = models.build_model(s.MLP(hidden=[8, 8], residual=False), (3,), 2)
    plain.load_state_dict(res.state_dict())
    x = torch.randn(4, 3)
    h1 = res.blocks[0](x)
    torch.testing.assert_close(h1, plain.blocks[0](x))  # 3 -> 8: no skip possible
    torch.testing.assert_close(res.blocks[1](h1), h1 + plain.blocks[1](h1))


@pytest.mark.parametrize("dims", [1, 2])
def test_cnn_residual_has_basic_blocks(dims: int) -> None:
    spec = s.CNN(channels=[4, 8], residual=True, blocks_per_stage=2, norm="batch")
    shape = (2, 16) if dims == 1 else (1, 8, 8)
    model = models.build_model(spec, shape, 3)
    for stage in model.features:
        assert sum(isinstance(m, models.BasicBlock) for m in stage) == 2
    plain = models.build_model(s.CNN(channels=[4, 8], norm="batch"), shape, 3)
    assert not any(isinstance(m, models.BasicBlock) for m in plain.modules())
    block = model.features[1][3]
    assert isinstance(block, models.BasicBlock)
    block.eval()
    gen = torch.Generator().manual_seed(0)
    _randomize_norm(block.norm1, gen)
    _randomize_norm(block.norm2, gen)
    x = torch.randn(2, 8, *([6] * dims), generator=gen)
    conv = F.conv1d if dims == 1 else F.conv2d

    def bn(m: nn.BatchNorm1d | nn.BatchNorm2d, h: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias)

    h = F.relu(bn(block.norm1, conv(x, block.conv1.weight, padding="same")))
    expected = F.relu(x + bn(block.norm2, conv(h, block.conv2.weight, padding="same")))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the residual branch silenced: the block is act(identity)
        block.norm2.weight.zero_()
        block.norm2.bias.zero_()
    torch.testing.assert_close(block(x), F.relu(x))


@pytest.mark.parametrize("dims", [1, 2])
def test_cnn_forward_shape_and_global_pooling(dims: int) -> None:
    shape = (3, 12) if dims == 1 else (3, 6, 10)
    model = models.build_model(s.CNN(channels=[4, 5], norm="group", groups=1), shape, 7)
    assert model(torch.randn(2, math.prod(shape))).shape == (2, 7)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert all(isinstance(c, nn.Conv1d if dims == 1 else nn.Conv2d) for c in convs)
    assert convs[0].in_channels == 3 and convs[-1].out_channels == 5


def test_init_schemes_set_the_expected_weight_statistics() -> None:
    torch.manual_seed(0)
    n_in, width = 400, 300

    def first(init: str) -> nn.Linear:
        return models.build_model(s.MLP(hidden=[width], init=init), (n_in,), 10).blocks[0].linear

    kaiming, xavier, default = first("kaiming"), first("xavier"), first("default")
    # kaiming normal, fan-in, gain sqrt(2): std = sqrt(2 / fan_in)
    assert kaiming.weight.std().item() == pytest.approx(math.sqrt(2 / n_in), rel=0.03)
    # xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); std = a / sqrt(3)
    bound = math.sqrt(6 / (n_in + width))
    assert xavier.weight.abs().max().item() <= bound
    assert xavier.weight.abs().max().item() > 0.99 * bound
    assert xavier.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    # torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) -> std = 1/sqrt(3 fan_in)
    assert default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * n_in), rel=0.03)
    assert torch.count_nonzero(kaiming.bias) == 0 and torch.count_nonzero(xavier.bias) == 0
    assert torch.count_nonzero(default.bias) > 0
    # convolutions too: fan_in = in_channels * kernel area
    conv = models.build_model(s.CNN(channels=[64, 64], init="kaiming"), (1, 8, 8),
                              10).features[1][0]
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)


@pytest.mark.parametrize(("norm", "dropout"), [("none", 0.0), ("none", 0.3), ("layer", 0.0)])
def test_skipped_identity_modules_leave_the_state_dict_keys_alone(norm: str,
                                                                  dropout: float) -> None:
    """The forward skips Identity norm/dropout calls; checkpoints must keep their keys."""
    model = models.build_model(s.MLP(hidden=[5, 5], norm=norm, dropout=dropout), (3,), 2)
    block_keys = ["linear.weight", "linear.bias"]
    if norm == "layer":
        block_keys += ["norm.weight", "norm.bias"]
    expected = [f"blocks.{i}.{k}" for i in range(2) for k in block_keys]
    assert list(model.state_dict()) == [*expected, "head.weight", "head.bias"]
    block = next(m for m in model.modules() if isinstance(m, models.MLPBlock))
    assert isinstance(block.norm, nn.LayerNorm if norm == "layer" else nn.Identity)
    assert isinstance(block.drop, nn.Dropout if dropout else nn.Identity)
    assert (block.normed, block.dropped) == (norm != "none", dropout > 0)
