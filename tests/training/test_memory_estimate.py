"""shapes.memory_estimate against what torch really allocates, and against the caps.

Peak bytes are measured with tests/training/memory.py (every tensor an operator returns,
forward and backward, until it is freed). The estimate must never be below the
measurement (accepted must mean it fits) and not far above it (or the caps would refuse
runnable jobs): TRAIN_SLACK and EVAL_SLACK state how far.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app import spec as s
from app.config import Limits
from app.training import shapes
from app.training.loop import Trainer
from app.training.metrics import evaluate, predict
from app.training.sharpness import hessian_vector_product
from app.validation import SpecRejected, check_spec
from tests.training.helpers import make_spec, trainer
from tests.training.memory import peak_bytes

TRAIN_SLACK = 4.0  # estimate / measured for a forward + backward (measured 1.6 to 2.7)
EVAL_SLACK = 2.5  # estimate / measured for an eval chunk (measured 1.0 to 1.7)
ROOT = Path(__file__).resolve().parents[2]

DIGITS = {"source": {"builtin": "digits"}}
MOTIFS = {"source": {"synthetic": "motif_order", "n_samples": 600, "length": 24}}
CE = {"kind": "cross_entropy"}
SPECS: dict[str, dict[str, Any]] = {
    "mlp": {"model": {"kind": "mlp", "hidden": [64, 64]}},
    "mlp-batch-dropout-residual": {"model": {"kind": "mlp", "hidden": [64, 64], "norm": "batch",
                                             "dropout": 0.2, "residual": True}},
    "mlp-layer-gelu": {"model": {"kind": "mlp", "hidden": [64, 64], "norm": "layer",
                                 "activation": "gelu"}},
    "mlp-instance-identity": {"model": {"kind": "mlp", "hidden": [32, 64], "norm": "instance",
                                        "activation": "identity"}},
    "mlp-group-mixup-noise": {"model": {"kind": "mlp", "hidden": [64, 64], "norm": "group",
                                        "activation": "tanh"},
                              "regularization": {"mixup": {"alpha": 1.0}, "input_noise": 0.1}},
    "cnn": {"data": DIGITS, "loss": CE, "model": {"kind": "cnn", "channels": [8, 16]}},
    "resnet-group": {"data": DIGITS, "loss": CE,
                     "model": {"kind": "cnn", "channels": [8, 16], "residual": True,
                               "blocks_per_stage": 2, "norm": "group", "groups": 4}},
    "cnn-even-kernel-instance-augment": {
        "data": DIGITS, "loss": CE,
        "model": {"kind": "cnn", "channels": [8, 16], "kernel_size": 4, "norm": "instance",
                  "pool": "avg", "dropout": 0.3},
        "regularization": {"augment": {"shift": 2, "flip": True}}},
    "resnet-1d-layer-cutmix": {
        "data": DIGITS | {"input_shape": [4, 16]}, "loss": CE,
        "model": {"kind": "cnn", "channels": [8, 16], "residual": True, "norm": "layer"},
        "regularization": {"cutmix": {"alpha": 1.0}}},
    "resnet-bf16": {"data": DIGITS, "loss": CE, "training": {"precision": "bf16"},
                    "model": {"kind": "cnn", "channels": [8, 16], "residual": True,
                              "pool": "none"}},
    "mlp-bf16": {"data": DIGITS, "loss": CE, "training": {"precision": "bf16"},
                 "model": {"kind": "mlp", "hidden": [64, 64], "norm": "layer"}},
    "regression": {"data": {"source": {"builtin": "diabetes"}}, "loss": {"kind": "mse"},
                   "model": {"kind": "mlp", "hidden": [32], "dropout": 0.1}},
    "rnn-gru-stacked": {"data": MOTIFS, "loss": CE,
                        "model": {"kind": "rnn", "hidden": 32, "layers": 2, "dropout": 0.2}},
    "rnn-gru-bidirectional-mean-bf16": {
        "data": MOTIFS, "loss": CE, "training": {"precision": "bf16"},
        "model": {"kind": "rnn", "hidden": 32, "bidirectional": True, "pooling": "mean"}},
    # found by the property test: oneDNN's workspace floor dominates a one-unit LSTM
    "rnn-lstm-one-unit-one-row": {"data": DIGITS | {"input_shape": [8, 8]}, "loss": CE,
                                  "training": {"batch_size": 1},
                                  "model": {"kind": "rnn", "cell": "lstm", "hidden": 1,
                                            "bidirectional": True, "layers": 2}},
    "rnn-lstm-on-digit-columns": {"data": DIGITS | {"input_shape": [8, 8]}, "loss": CE,
                                  "model": {"kind": "rnn", "cell": "lstm", "hidden": 64}},
    "transformer": {"data": MOTIFS, "loss": CE, "model": {"kind": "transformer"}},
    "transformer-dropout-mean-learned": {
        "data": MOTIFS, "loss": CE,
        "model": {"kind": "transformer", "dropout": 0.2, "pooling": "mean",
                  "positional": "learned", "d_model": 48, "heads": 2, "ff": 96}},
}
# oneDNN's fused LSTM keeps about 1.5 floats per hidden unit and step in evaluation; the
# estimate covers the composite kernels (8 per unit, measured with oneDNN off), which other
# devices and dtypes run. Likewise the Transformer's: it bounds torch's unfused encoder
# (odd head counts, autocast), which keeps about twice what the fused eval kernel does.
EVAL_SLACK_OF = {"rnn-lstm-on-digit-columns": 6.0,  # measured 5.1
                 "rnn-lstm-one-unit-one-row": 6.0,  # measured 4.8
                 "transformer": 4.5, "transformer-dropout-mean-learned": 4.5}  # 3.3 to 4.0

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def _setup(name: str) -> tuple[s.JobSpec, Trainer, int]:
    spec = make_spec(**SPECS[name])
    t = trainer(spec)
    return spec, t, shapes.output_dim(t.data.info, spec.loss)


def _parameters(t: Trainer) -> int:
    return sum(p.numel() for p in t.model.parameters())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_training_step_estimate_bounds_the_real_forward_and_backward(name: str) -> None:
    spec, t, n_out = _setup(name)
    x, y, rows = t.data.x_train, t.data.y_train, t.batch_size
    idx = torch.randperm(x.shape[0])[:rows]

    def forward_backward() -> None:
        with t.autocast():
            out = t.model(x[idx])
        t.loss_fn(out.float(), y[idx]).backward()  # type: ignore[no-untyped-call]

    _, measured = peak_bytes(forward_backward)
    estimate = shapes.train_batch_bytes(spec, t.data.input_shape, n_out, rows)
    grads = shapes.FLOAT * _parameters(t)  # the weight gradients are allocated here too
    assert measured <= estimate + grads
    assert estimate + grads <= TRAIN_SLACK * measured


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_whole_trainer_step_fits_the_step_and_parameter_estimates(name: str) -> None:
    """The real step (augmentation, mixing, noise, optimizer state) within the estimate."""
    spec, t, _ = _setup(name)
    est = shapes.memory_estimate(spec, t.data.info)
    idx = torch.randperm(t.data.x_train.shape[0])[: t.batch_size]
    _, measured = peak_bytes(lambda: t.train_step(t.data.x_train[idx], t.data.y_train[idx]))
    assert est.batch_rows == t.batch_size
    assert measured <= est.train_batch + est.parameters


@pytest.mark.parametrize("name", sorted(SPECS))
def test_eval_chunk_estimate_bounds_the_real_forward(name: str) -> None:
    spec, t, n_out = _setup(name)
    x = t.data.x_train[: t.eval_rows]
    _, measured = peak_bytes(lambda: predict(t.model, x, t.autocast, t.eval_rows))
    estimate = x.shape[0] * shapes.eval_row_bytes(spec, t.data.input_shape, n_out)
    assert measured <= estimate <= EVAL_SLACK_OF.get(name, EVAL_SLACK) * measured


def test_eval_is_chunked_so_it_never_needs_more_than_a_training_step() -> None:
    """A wide conv net with batch_size 2: evaluating 1257 rows goes in chunks, and the
    whole evaluation stays within one training step's budget plus the split's outputs."""
    spec = make_spec(data=DIGITS, loss=CE, training={"batch_size": 2},
                     model={"kind": "cnn", "channels": [192], "pool": "none"})
    t = trainer(spec)
    n_out, rows = 10, t.data.x_train.shape[0]
    row = shapes.eval_row_bytes(spec, t.data.input_shape, n_out)
    budget = max(shapes.train_batch_bytes(spec, t.data.input_shape, n_out, 2),
                 shapes.EVAL_MIN_BUDGET)
    assert 1 < t.eval_rows < rows  # several chunks
    assert t.eval_rows * row <= budget < (t.eval_rows + 1) * row
    _, measured = peak_bytes(lambda: evaluate(t.model, t.data.x_train, t.data.y_train, t.data,
                                              t.loss_fn, t.autocast, t.binary_logit,
                                              t.eval_rows))
    outputs = shapes.memory_estimate(spec, t.data.info).eval_outputs
    assert measured <= budget + outputs
    _, unchunked = peak_bytes(lambda: predict(t.model, t.data.x_train, contextlib.nullcontext,
                                              rows))
    assert unchunked > budget  # without chunks the same evaluation would not fit


def test_sharpness_estimate_bounds_a_hessian_vector_product() -> None:
    spec = make_spec(data=DIGITS, loss=CE, model={"kind": "mlp", "hidden": [64, 64]},
                     training={"sharpness": {"max_rows": 300}})
    t = trainer(spec)
    est = shapes.memory_estimate(spec, t.data.info)
    x, y = t.data.x_train[:300], t.data.y_train[:300]
    params: list[torch.Tensor] = list(t.model.parameters())
    vector = [torch.randn_like(p) for p in params]
    t.model.eval()
    _, measured = peak_bytes(lambda: hessian_vector_product(
        lambda: t.loss_fn(t.model(x), y), params, vector))
    assert est.sharpness_rows == 300
    assert measured <= est.sharpness + est.parameters


# ------------------------------------------------------------------- the caps


def _info(spec: s.JobSpec) -> shapes.DataInfo:
    src = spec.data.source
    if isinstance(src, s.BuiltinSource):
        return shapes.BUILTIN_INFO[src.builtin]
    assert isinstance(src, s.GeneratorBase)
    return shapes.synthetic_info(src)


def _example_specs() -> list[tuple[str, dict[str, Any]]]:
    out = [(p.name, json.loads(p.read_text())) for p in sorted((ROOT / "examples").glob("*.json"))]
    for p in sorted((ROOT / "examples" / "experiments").glob("*.json")):
        exp = json.loads(p.read_text())
        base = exp["base"]
        out.append((p.name, base))
        for size in exp.get("batch_sizes", []):  # the largest child: full batch + sharpness
            child = json.loads(json.dumps(base))
            child.setdefault("training", {}).update(
                batch_size=size, sharpness=exp.get("sharpness"), record_predictions=True)
            out.append((f"{p.name}:{size}", child))
    return out


@pytest.mark.parametrize(("name", "raw"), _example_specs(), ids=lambda v: v if isinstance(
    v, str) else "")
def test_every_example_fits_the_default_memory_caps(name: str, raw: dict[str, Any]) -> None:
    spec = s.JobSpec.model_validate(raw)
    check_spec(spec, _info(spec), Limits())


AUDIT = {  # issue 8: specs that passed every cap but needed tens of GB in a worker
    "cnn-1024-channels-on-100x100": (
        {"data": {"source": {"synthetic": "blobs", "n_features": 10_000, "n_samples": 1000},
                  "input_shape": [1, 100, 100]},
         "model": {"kind": "cnn", "channels": [1024]}},
        "training.batch_size", "of activations per training batch of 64 rows",
        "max_activation_bytes is 2.0 GiB"),
    "full-batch-on-1M-rows": (
        {"data": {"source": {"synthetic": "moons", "n_samples": 1_000_000}},
         "training": {"batch_size": "full", "epochs": 1}},
        "training.batch_size", "of activations per training batch of 700,000 rows",
        "max_activation_bytes is 2.0 GiB"),
    "predictions-1M-rows-x-1000-classes": (
        {"data": {"source": {"synthetic": "blobs", "n_samples": 1_000_000, "centers": 1000}},
         "model": {"hidden": [16]}, "training": {"record_predictions": True, "epochs": 1}},
        "training.record_predictions", "of memory in a worker",
        "max_memory_bytes is 8.0 GiB"),
}


@pytest.mark.parametrize("name", sorted(AUDIT))
def test_the_audit_cases_are_refused_naming_the_estimate_and_the_cap(name: str) -> None:
    raw, loc, what, cap = AUDIT[name]
    spec = s.JobSpec.model_validate(raw)
    limits = Limits()
    check_spec(spec, _info(spec), limits.model_copy(update={  # only the memory caps refuse
        "max_activation_bytes": 10**15, "max_memory_bytes": 10**15}))
    with pytest.raises(SpecRejected) as err:
        check_spec(spec, _info(spec), limits)
    first = err.value.problems[0]
    assert ".".join(map(str, first.loc)) == loc
    assert first.msg.startswith("needs about ") and " GiB " in first.msg
    assert what in first.msg and cap in first.msg


def test_the_memory_caps_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec the defaults accept is refused once an operator lowers the cap."""
    spec = make_spec(data=DIGITS, loss=CE, model={"kind": "cnn", "channels": [16, 32]})
    info = _info(spec)
    check_spec(spec, info, Limits())
    step = shapes.memory_estimate(spec, info).train_batch
    monkeypatch.setenv("TRAINYARD_LIMIT_MAX_ACTIVATION_BYTES", str(step - 1))
    with pytest.raises(SpecRejected, match="max_activation_bytes"):
        check_spec(spec, info, Limits())
    monkeypatch.setenv("TRAINYARD_LIMIT_MAX_ACTIVATION_BYTES", str(step))
    check_spec(spec, info, Limits())


@pytest.mark.parametrize("rows", [1, 33])
@pytest.mark.parametrize("length", [2, 24])
@pytest.mark.parametrize("hidden", [1, 16, 64])
def test_lstm_steps_fit_the_estimate_from_one_unit_to_many(rows: int, length: int,
                                                            hidden: int) -> None:
    """oneDNN's LSTM workspace has a floor and grows by rows, steps and units: every
    corner of that grid stays within the estimate (a one-unit LSTM broke it once)."""
    spec = make_spec(data={"source": {"synthetic": "motif_order", "n_samples": 200,
                                      "length": length}},
                     loss=CE, training={"batch_size": rows},
                     model={"kind": "rnn", "cell": "lstm", "hidden": hidden,
                            "bidirectional": True})
    t = trainer(spec)
    est = shapes.memory_estimate(spec, t.data.info)
    idx = torch.arange(rows)
    _, measured = peak_bytes(lambda: t.train_step(t.data.x_train[idx], t.data.y_train[idx]))
    assert measured <= est.train_batch + est.parameters
