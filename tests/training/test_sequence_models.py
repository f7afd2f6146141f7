"""Sequence models (rnn, transformer): each option builds the network it names (checked
against hand-written recurrences and attention), the analytic counts match torch, runs are
bit-identical and resume exactly, and both learn an order task an MLP on the flat row does not."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from app import spec as s
from app.config import Limits
from app.training import shapes
from app.training.data import generate
from app.training.models import build_model
from app.training.sequence_models import SequenceRNN, SequenceTransformer, sinusoidal_positions
from app.training.sink import MemorySink
from app.validation import SpecRejected, check_spec
from tests.training.helpers import (
    assert_same_weights,
    make_spec,
    metrics_without_timing,
    prepared,
    trainer,
    weights,
)

SHAPE = (3, 7)  # 3 features per step, 7 steps


def _rows(n: int = 5, shape: tuple[int, int] = SHAPE) -> torch.Tensor:
    return torch.randn(n, math.prod(shape), generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------ the recurrence


def _gru_step(x: torch.Tensor, h: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    gi, gh = x @ w["ih"].T + w["bih"], h @ w["hh"].T + w["bhh"]
    r = torch.sigmoid(gi.chunk(3, 1)[0] + gh.chunk(3, 1)[0])
    z = torch.sigmoid(gi.chunk(3, 1)[1] + gh.chunk(3, 1)[1])
    n = torch.tanh(gi.chunk(3, 1)[2] + r * gh.chunk(3, 1)[2])
    return (1 - z) * n + z * h


def _lstm_step(x: torch.Tensor, hc: tuple[torch.Tensor, torch.Tensor],
               w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    h, c = hc
    i, f, g, o = (x @ w["ih"].T + w["bih"] + h @ w["hh"].T + w["bhh"]).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _weights(rnn: nn.Module, layer: int, suffix: str) -> dict[str, torch.Tensor]:
    return {k: getattr(rnn, f"weight_{k}_l{layer}{suffix}") if k in ("ih", "hh")
            else getattr(rnn, f"bias_{k[1:]}_l{layer}{suffix}") for k in ("ih", "hh", "bih", "bhh")}


def _direction(seq: torch.Tensor, w: dict[str, torch.Tensor], cell: str,
               hidden: int) -> torch.Tensor:
    """(N, L, in) -> (N, L, hidden), one step at a time."""
    h = torch.zeros(seq.shape[0], hidden)
    state: Any = (h, h.clone()) if cell == "lstm" else h
    outs = []
    for t in range(seq.shape[1]):
        if cell == "lstm":
            state = _lstm_step(seq[:, t], state, w)
            outs.append(state[0])
        else:
            state = _gru_step(seq[:, t], state, w)
            outs.append(state)
    return torch.stack(outs, 1)


def _rnn_reference(model: SequenceRNN, spec: s.RNN, x: torch.Tensor) -> torch.Tensor:
    seq = x.view(x.shape[0], *SHAPE).transpose(1, 2)  # feature-major rows -> steps
    for layer in range(spec.layers):
        fwd = _direction(seq, _weights(model.rnn, layer, ""), spec.cell, spec.hidden)
        if not spec.bidirectional:
            seq = fwd
            continue
        bwd = _direction(seq.flip(1), _weights(model.rnn, layer, "_reverse"), spec.cell,
                         spec.hidden).flip(1)
        seq = torch.cat([fwd, bwd], 2)
    if spec.pooling == "mean":
        pooled = seq.mean(1)
    elif spec.bidirectional:  # forward's last step, backward's last step (position 0)
        pooled = torch.cat([seq[:, -1, : spec.hidden], seq[:, 0, spec.hidden:]], 1)
    else:
        pooled = seq[:, -1]
    return model.head(pooled)


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "pooling"), list(
    itertools.product(("gru", "lstm"), (1, 2), (False, True), ("last", "mean"))))
def test_rnn_matches_a_hand_written_recurrence(cell: str, layers: int, bidirectional: bool,
                                               pooling: str) -> None:
    spec = s.RNN(cell=cell, hidden=5, layers=layers, bidirectional=bidirectional,
                 pooling=pooling, dropout=0.3)
    model = build_model(spec, SHAPE, 4)
    assert isinstance(model.rnn, nn.LSTM if cell == "lstm" else nn.GRU)
    assert model.rnn.batch_first and model.rnn.dropout == (0.3 if layers > 1 else 0.0)
    model.eval()  # dropout off: the reference has none
    x = _rows()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _rnn_reference(model, spec, x), rtol=1e-5,
                                   atol=1e-5)


# --------------------------------------------------------------------- attention


def _encoder_layer_reference(layer: nn.TransformerEncoderLayer, h: torch.Tensor,
                             heads: int, act: Any) -> torch.Tensor:
    """Pre-norm: h + attn(norm1(h)), then + ff(norm2(.))."""
    n, t, d = h.shape
    q, k, v = F.linear(layer.norm1(h), layer.self_attn.in_proj_weight,
                       layer.self_attn.in_proj_bias).chunk(3, -1)

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.view(n, t, heads, d // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    attended = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, t, d)
    h = h + layer.self_attn.out_proj(attended)
    return h + layer.linear2(act(layer.linear1(layer.norm2(h))))


@pytest.mark.parametrize(("pooling", "positional", "activation"), list(
    itertools.product(("cls", "mean"), ("learned", "sinusoidal"), ("relu", "gelu"))))
def test_transformer_matches_a_hand_written_pre_norm_encoder(pooling: str, positional: str,
                                                             activation: str) -> None:
    spec = s.Transformer(d_model=8, heads=2, layers=2, ff=12, pooling=pooling,
                         positional=positional, activation=activation)
    model = build_model(spec, SHAPE, 3)
    assert isinstance(model, SequenceTransformer)
    x = _rows()
    tokens = model.embed(x.view(5, *SHAPE).transpose(1, 2))
    if pooling == "cls":
        assert model.cls is not None
        tokens = torch.cat([model.cls.expand(5, -1, -1), tokens], 1)
    h = tokens + model.position
    act = F.relu if activation == "relu" else F.gelu
    for layer in model.encoder.layers:
        assert layer.norm_first
        h = _encoder_layer_reference(layer, h, 2, act)
    h = model.encoder.norm(h)
    expected = model.head(h[:, 0] if pooling == "cls" else h.mean(1))
    for training in (True, False):  # eval takes torch's fused encoder path
        model.train(training)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_sinusoidal_positions_are_the_papers_table_and_never_stored() -> None:
    table = sinusoidal_positions(6, 5)[0]
    for pos, i in itertools.product(range(6), range(5)):
        angle = pos / 10_000 ** (2 * (i // 2) / 5)
        expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
        assert table[pos, i].item() == pytest.approx(expected, abs=1e-6)
    model = build_model(s.Transformer(positional="sinusoidal", d_model=8, heads=2), SHAPE, 2)
    assert "position" not in model.state_dict()
    learned = build_model(s.Transformer(positional="learned", d_model=8, heads=2), SHAPE, 2)
    assert learned.state_dict()["position"].shape == (1, SHAPE[1] + 1, 8)  # + the cls token


def test_a_sequence_model_reads_the_row_as_features_by_steps() -> None:
    """Row value c*L + t is feature c at step t: moving one step's features moves the step."""
    model = build_model(s.RNN(hidden=4), SHAPE, 2)
    seen: list[torch.Tensor] = []
    model.rnn.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.arange(math.prod(SHAPE), dtype=torch.float32)[None]
    model(x)
    assert seen[0].shape == (1, SHAPE[1], SHAPE[0])
    assert seen[0][0, 2].tolist() == [2.0, 9.0, 16.0]  # step 2: features 0, 1, 2


# ------------------------------------------------------------------ the counts

SEQ_MODELS: list[dict[str, Any]] = [
    {"kind": "rnn"}, {"kind": "rnn", "cell": "lstm", "layers": 3, "hidden": 7},
    {"kind": "rnn", "bidirectional": True, "layers": 2, "pooling": "mean", "dropout": 0.2},
    {"kind": "rnn", "cell": "lstm", "bidirectional": True, "hidden": 5},
    {"kind": "transformer"}, {"kind": "transformer", "positional": "learned", "heads": 1},
    {"kind": "transformer", "pooling": "mean", "positional": "learned", "d_model": 12,
     "heads": 3, "ff": 20, "layers": 3, "dropout": 0.1},
]
MOTIFS = {"source": {"synthetic": "motif_order", "n_samples": 60, "n_features": 3,
                     "length": 9}}


@pytest.mark.parametrize("model", SEQ_MODELS, ids=lambda m: "-".join(map(str, m.values())))
@pytest.mark.parametrize(("data", "loss"), [(MOTIFS, "cross_entropy"), (MOTIFS, "bce"),
                                            ({"source": {"builtin": "digits"},
                                              "input_shape": [8, 8]}, "nll"),
                                            ({"source": {"builtin": "diabetes"},
                                              "input_shape": [2, 5]}, "mse")])
def test_parameter_count_and_layer_outputs_match_torch(model: dict[str, Any],
                                                       data: dict[str, Any], loss: str) -> None:
    spec = make_spec(data=data, model=model, loss={"kind": loss})
    t = trainer(spec)
    info, shape = t.data.info, t.data.input_shape
    assert shapes.parameter_count(spec, info) == sum(p.numel() for p in t.model.parameters())
    assert shapes.model_ops(spec.model, shape, shapes.output_dim(info, spec.loss))[-1].writes \
        == t.model(t.data.x_train[:2]).shape[1]


def test_limits_count_sequence_layers_and_widths() -> None:
    rnn = make_spec(data=MOTIFS, model={"kind": "rnn", "hidden": 40, "layers": 3,
                                        "bidirectional": True})
    tr = make_spec(data=MOTIFS, model={"kind": "transformer", "layers": 4, "ff": 300})
    assert (shapes.layer_count(rnn), shapes.max_width(rnn)) == (4, 80)
    assert (shapes.layer_count(tr), shapes.max_width(tr)) == (10, 300)
    info = shapes.synthetic_info(rnn.data.source)  # type: ignore[arg-type]
    with pytest.raises(SpecRejected) as refused:
        check_spec(tr, info, Limits(max_layers=9, max_width=299))
    assert [p.loc for p in refused.value.problems] == [("model",), ("model",)]


# --------------------------------------------------------------- what is refused


def _refusal(raw: dict[str, Any]) -> list[str]:
    spec = s.JobSpec.model_validate(raw)
    src = spec.data.source
    info = (shapes.BUILTIN_INFO[src.builtin] if isinstance(src, s.BuiltinSource)
            else shapes.synthetic_info(src))  # type: ignore[arg-type]
    with pytest.raises(SpecRejected) as refused:
        check_spec(spec, info, Limits())
    return [".".join(map(str, p.loc)) for p in refused.value.problems]


@pytest.mark.parametrize(("raw", "loc"), [
    ({"data": {"source": {"builtin": "digits"}}, "model": {"kind": "rnn"}}, "data.input_shape"),
    ({"data": {"source": {"builtin": "iris"}}, "model": {"kind": "transformer"}},
     "data.input_shape"),
    ({"data": {"source": {"builtin": "digits"}, "input_shape": [1, 8, 8]},
      "model": {"kind": "transformer"}}, "data.input_shape"),
    ({"data": MOTIFS, "model": {"kind": "rnn", "cell": "lstm"},
      "training": {"precision": "bf16"}}, "training.precision"),
    ({"data": MOTIFS, "model": {"kind": "rnn"}, "training": {"sharpness": {}}},
     "training.sharpness"),
])
def test_what_a_sequence_model_cannot_run_is_refused_naming_the_field(raw: dict[str, Any],
                                                                      loc: str) -> None:
    assert _refusal(raw) == [loc]


def test_heads_must_divide_d_model() -> None:
    with pytest.raises(ValueError, match="heads=3 does not divide d_model=32"):
        s.Transformer(heads=3)


# ------------------------------------------------------- reproducible, resumable

NOISY: dict[str, Any] = {
    "data": {"source": {"synthetic": "motif_order", "n_samples": 120, "length": 6}},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "regularization": {"mixup": {"alpha": 0.3}, "input_noise": 0.05},
    "training": {"epochs": 4, "batch_size": 16, "seed": 0, "device": "cpu",
                 "checkpoint_every_seconds": 0},
}
DROPPING = [{"kind": "rnn", "cell": "lstm", "hidden": 8, "layers": 2, "dropout": 0.3},
            {"kind": "rnn", "hidden": 8, "bidirectional": True, "dropout": 0.3},
            {"kind": "transformer", "d_model": 8, "heads": 2, "ff": 16, "dropout": 0.2,
             "positional": "learned"}]


@pytest.mark.parametrize("model", DROPPING, ids=lambda m: f"{m['kind']}-{m.get('cell', '')}")
def test_same_seed_is_bit_identical_and_a_resume_ends_where_the_unbroken_run_ends(
        model: dict[str, Any]) -> None:
    spec = make_spec(NOISY, model=model)
    runs = []
    for _ in range(2):
        sink = MemorySink()
        t = trainer(spec, sink)
        t.run()
        runs.append((metrics_without_timing(sink.reports), weights(t.model)))
    assert runs[0][0] == runs[1][0]
    assert_same_weights(runs[0][1], runs[1][1])
    # stopped in the middle of epoch 2, then resumed by a new Trainer on the same data
    data, sink = prepared(spec), MemorySink()
    first = trainer(spec, sink, data)
    calls = {"n": 0}

    def stop_mid_epoch() -> bool:
        calls["n"] += 1
        return calls["n"] == first.steps + 3

    sink.should_stop = stop_mid_epoch  # type: ignore[method-assign]
    stopped = first.run()
    assert stopped.status == "stopped" and stopped.checkpoint is not None
    second = trainer(spec, MemorySink(), data)
    second.run(resume=stopped.checkpoint)
    assert_same_weights(weights(second.model), runs[0][1])


# ------------------------------------------------------------------- learning


def test_motif_order_is_a_pure_function_of_its_seed_and_balanced() -> None:
    src = s.MotifOrderSource(synthetic="motif_order", n_samples=400, seed=4)
    (x1, y1), (x2, y2) = generate(src), generate(src)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (400, 4 * 16) and 0.4 < y1.mean() < 0.6
    assert shapes.synthetic_info(src).input_shape == (4, 16)


ORDER: dict[str, Any] = {
    "data": {"source": {"synthetic": "motif_order", "n_samples": 800, "n_features": 4,
                        "length": 24, "noise": 0.5}},
    "optimizer": {"kind": "adam", "lr": 0.005},
    "training": {"epochs": 20, "batch_size": 32, "seed": 0, "device": "cpu"},
}


def _test_accuracy(model: dict[str, Any]) -> float:
    outcome = trainer(make_spec(ORDER, model=model)).run()
    assert outcome.summary is not None
    return float(outcome.summary.test["accuracy"])


def test_both_sequence_models_learn_an_order_an_mlp_on_the_flat_row_does_not() -> None:
    """Which motif comes first, at random steps: the MLP memorizes the training rows (its
    training accuracy reaches 1) but stays far below the sequence models on the test rows."""
    mlp = _test_accuracy({"kind": "mlp", "hidden": [128, 128]})
    assert mlp < 0.72
    for model in ({"kind": "rnn", "cell": "gru", "hidden": 32},
                  {"kind": "rnn", "cell": "lstm", "hidden": 32},
                  {"kind": "transformer", "layers": 1}):
        accuracy = _test_accuracy(model)
        assert accuracy >= 0.8 and accuracy >= mlp + 0.15, (model, accuracy, mlp)
