"""Property tests of the job spec through POST /v1/jobs.

* every spec within the caps validates (201), whatever the data source, model, loss,
  optimizer, schedule and regularization, and specs exactly at the caps too;
* every spec beyond exactly one cap (parameters, layers, width, epochs, work, batch_size,
  generated rows, generated values) is refused with one 422 naming that cap, at the
  field to change, before anything is stored;
* every out-of-range hyper-parameter or unknown field is refused with a 422 whose first
  field is its JSON path.

The caps are read from ``Limits()`` the way the app reads them. Accepted jobs are
cancelled at once (no worker runs here; queued jobs count against max_concurrent_jobs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import spec as s
from app.config import Limits
from app.training import shapes
from tests.api.conftest import make_key
from tests.conftest import tiny_spec

LIMITS = Limits()
Spec = dict[str, Any]

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                         HealthCheck.too_slow])


def floats(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Any:
    return st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open, allow_nan=False)


def stored_jobs(client: TestClient) -> int:
    return len(client.get("/v1/jobs", params={"limit": 200}).json()["items"])


def accept(client: TestClient, spec: Spec) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 201, (spec, r.text)
    job = r.json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    return job


def refuse(client: TestClient, spec: Spec) -> dict[str, Any]:
    before = stored_jobs(client)
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, (spec, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["fields"], error
    assert stored_jobs(client) == before, "a refused spec was stored"
    return error


# ------------------------------------------------------------------ valid specs

BUILTIN = {name: info for name, info in shapes.BUILTIN_INFO.items()}


@st.composite
def data_blocks(draw: Any) -> tuple[Spec, shapes.DataInfo]:
    """A source (builtin or synthetic, up to 3000 rows) and its shape."""
    kind = draw(st.sampled_from(["builtin", "moons", "circles", "blobs", "spirals",
                                 "make_classification", "make_regression", "function"]))
    if kind == "builtin":
        name = draw(st.sampled_from(sorted(BUILTIN)))
        source: Spec = {"builtin": name}
    else:
        source = {"synthetic": kind, "n_samples": draw(st.integers(20, 3000)),
                  "seed": draw(st.integers(0, 2**31))}
        if kind in ("moons", "circles", "spirals", "make_regression", "function"):
            source["noise"] = draw(floats(0, 5))
        if kind == "circles":
            source["factor"] = draw(floats(0, 1, lo_open=True, hi_open=True))
        if kind == "blobs":
            source |= {"n_features": draw(st.integers(1, 40)), "centers": draw(st.integers(2, 12)),
                       "cluster_std": draw(floats(0, 100, lo_open=True))}
        if kind == "spirals":
            source |= {"n_classes": draw(st.integers(2, 20)), "turns": draw(floats(0.1, 10))}
        if kind == "make_classification":
            n_informative = draw(st.integers(1, 8))
            n_redundant = draw(st.integers(0, 4))
            source |= {"n_features": draw(st.integers(max(2, n_informative + n_redundant), 40)),
                       "n_informative": n_informative, "n_redundant": n_redundant,
                       "n_classes": draw(st.integers(2, min(2**n_informative, 10))),
                       "flip_y": draw(floats(0, 1))}
        if kind == "make_regression":
            source |= {"n_features": draw(st.integers(1, 40)),
                       "n_informative": draw(st.integers(1, 40))}
        if kind == "function":
            lo = draw(floats(-100, 100))
            source |= {"fn": draw(st.sampled_from(["sin", "cos", "abs", "square", "step",
                                                   "sawtooth"])),
                       "x_min": lo, "x_max": draw(floats(lo + 0.01, 200))}
    data: Spec = {"source": source,
                  "split": {"val": draw(floats(0.05, 0.45)), "test": draw(floats(0.05, 0.45)),
                            "seed": draw(st.integers(0, 100))},
                  "standardize": draw(st.booleans())}
    parsed = s.Data.model_validate(data).source
    info = (BUILTIN[source["builtin"]] if "builtin" in source
            else shapes.synthetic_info(parsed))  # type: ignore[arg-type]
    if info.task == "classification" and min(split_sizes(data, info)) < info.n_classes:
        data["split"]["stratify"] = False  # a stratified split needs every class in each split
    return data, info


def split_sizes(data: Spec, info: shapes.DataInfo) -> list[int]:
    split = s.Split.model_validate(data["split"])
    n_test, n_train = math.ceil(info.n_rows * split.test), shapes.train_rows(info, split)
    return [n_test, n_train, info.n_rows - n_test - n_train]


@st.composite
def losses(draw: Any, info: shapes.DataInfo) -> Spec:
    if info.task == "regression":
        kind = draw(st.sampled_from(["mse", "mae", "huber"]))
        return {"kind": kind} | ({"delta": draw(floats(0, 100, lo_open=True))}
                                 if kind == "huber" else {})
    kinds = ["cross_entropy", "nll"] + (["bce"] if info.n_classes == 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "bce":
        return {"kind": kind, "pos_weight": draw(floats(1e-6, 100))}
    loss: Spec = {"kind": kind}
    if kind == "cross_entropy":
        loss["label_smoothing"] = draw(floats(0, 1, hi_open=True))
    if draw(st.booleans()):
        loss["class_weights"] = draw(st.lists(floats(1e-6, 10),
                                              min_size=info.n_classes, max_size=info.n_classes))
    return loss


NORMS = ["none", "batch", "layer", "group", "instance"]
ACTIVATIONS = ["relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "identity"]


@st.composite
def models(draw: Any, cnn: bool) -> Spec:
    norm = draw(st.sampled_from(NORMS))
    groups = draw(st.integers(1, 4)) if norm == "group" else None
    unit = groups or 1
    common: Spec = {"activation": draw(st.sampled_from(ACTIVATIONS)), "norm": norm,
                    "dropout": draw(floats(0, 1, hi_open=True)),
                    "residual": draw(st.booleans()),
                    "init": draw(st.sampled_from(["default", "kaiming", "xavier"]))}
    if groups is not None:
        common["groups"] = groups
    # Widths of at least 2 per group: a norm over one value is refused (torch cannot
    # normalize it); instance norm keeps its spatial values (no pooling) for the same reason.
    if cnn:
        channels = draw(st.lists(st.integers(2, 16).map(lambda c: c * unit), min_size=1,
                                 max_size=3))
        pools = ["none"] if norm == "instance" else ["max", "avg", "none"]
        return {"kind": "cnn", "channels": channels, "kernel_size": draw(st.integers(1, 5)),
                "pool": draw(st.sampled_from(pools)),
                "blocks_per_stage": draw(st.integers(1, 2))} | common
    hidden = draw(st.lists(st.integers(2, 64).map(lambda w: w * unit), max_size=4))
    return {"kind": "mlp", "hidden": hidden} | common


@st.composite
def sequence_models(draw: Any) -> Spec:
    """An rnn or transformer with every option drawn, sized to fit the default memory caps
    at full batch on the sequences below."""
    dropout = draw(floats(0, 1, hi_open=True))
    if draw(st.booleans()):
        return {"kind": "rnn", "cell": draw(st.sampled_from(["gru", "lstm"])),
                "hidden": draw(st.integers(1, 32)), "layers": draw(st.integers(1, 3)),
                "bidirectional": draw(st.booleans()), "dropout": dropout,
                "pooling": draw(st.sampled_from(["last", "mean"]))}
    heads = draw(st.integers(1, 4))
    return {"kind": "transformer", "heads": heads, "d_model": heads * draw(st.integers(1, 8)),
            "layers": draw(st.integers(1, 3)), "ff": draw(st.integers(1, 64)),
            "dropout": dropout, "activation": draw(st.sampled_from(["relu", "gelu"])),
            "positional": draw(st.sampled_from(["learned", "sinusoidal"])),
            "pooling": draw(st.sampled_from(["cls", "mean"]))}


@st.composite
def sequence_data(draw: Any) -> tuple[Spec, shapes.DataInfo]:
    """Sequences: generated motif orders ([C, L] natively) or digits read as [8, 8]."""
    if draw(st.booleans()):
        return {"source": {"builtin": "digits"}, "input_shape": [8, 8]}, BUILTIN["digits"]
    source = {"synthetic": "motif_order", "n_samples": draw(st.integers(40, 1000)),
              "n_features": draw(st.integers(1, 8)), "length": draw(st.integers(2, 24)),
              "noise": draw(floats(0, 10)), "seed": draw(st.integers(0, 2**31))}
    info = shapes.synthetic_info(s.MotifOrderSource.model_validate(source))
    return {"source": source}, info


@st.composite
def optimizers(draw: Any) -> Spec:
    kind = draw(st.sampled_from(["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"]))
    opt: Spec = {"kind": kind, "lr": draw(floats(1e-6, 10)),
                 "weight_decay": draw(floats(0, 10)),
                 "decay_all_parameters": draw(st.booleans())}
    eps = floats(1e-12, 1)
    if kind == "sgd":
        nesterov = draw(st.booleans())
        opt |= {"momentum": draw(floats(0.01 if nesterov else 0, 1, hi_open=True)),
                "dampening": 0.0 if nesterov else draw(floats(0, 1)), "nesterov": nesterov}
    elif kind == "adagrad":
        opt |= {"lr_decay": draw(floats(0, 1)), "eps": draw(eps),
                "initial_accumulator_value": draw(floats(0, 10))}
    elif kind == "adadelta":
        opt |= {"rho": draw(floats(0, 1)), "eps": draw(eps)}
    elif kind == "rmsprop":
        opt |= {"alpha": draw(floats(0, 1, hi_open=True)), "eps": draw(eps),
                "momentum": draw(floats(0, 1, hi_open=True)), "centered": draw(st.booleans())}
    else:
        beta = floats(0, 1, hi_open=True)
        opt |= {"betas": [draw(beta), draw(beta)], "eps": draw(eps),
                "amsgrad": draw(st.booleans())}
    return opt


schedules = st.one_of(
    st.just({"kind": "constant"}),
    st.builds(lambda n, g: {"kind": "step", "step_size": n, "gamma": g},
              st.integers(1, 100), floats(0, 1, lo_open=True)),
    st.builds(lambda m, g: {"kind": "multistep", "milestones": sorted(m), "gamma": g},
              st.lists(st.integers(1, 500), max_size=4), floats(0, 1, lo_open=True)),
    st.builds(lambda g: {"kind": "exponential", "gamma": g}, floats(0, 1, lo_open=True)),
    st.builds(lambda m, w: {"kind": "cosine", "min_lr": m, "warmup_epochs": w},
              floats(0, 1), floats(0, 10)),
    st.builds(lambda lr, p: {"kind": "one_cycle", "max_lr": lr, "pct_start": p},
              floats(1e-4, 10), floats(0, 1, lo_open=True, hi_open=True)),
    st.builds(lambda mon, f, p: {"kind": "reduce_on_plateau", "monitor": mon, "factor": f,
                                 "patience": p},
              st.sampled_from(["val_loss", "train_loss"]),
              floats(0, 1, lo_open=True, hi_open=True), st.integers(0, 20)),
)


@st.composite
def regularizations(draw: Any) -> Spec:
    reg: Spec = {"l1": draw(floats(0, 10)), "l2": draw(floats(0, 10)),
                 "input_noise": draw(floats(0, 10)), "weight_noise": draw(floats(0, 1)),
                 "input_mask": draw(floats(0, 1, hi_open=True))}
    if draw(st.booleans()):
        reg["early_stopping"] = {"monitor": draw(st.sampled_from(["val_loss", "train_loss"])),
                                 "patience": draw(st.integers(0, 50))}
    if draw(st.booleans()):
        reg["mixup"] = {"alpha": draw(floats(0, 100, lo_open=True))}
    return reg


@st.composite
def valid_specs(draw: Any) -> Spec:
    # a quarter: conv nets on digits (1x8x8 images); a sixth: sequence models on sequences
    arch = draw(st.sampled_from(["cnn"] * 3 + ["sequence"] * 2 + ["mlp"] * 7))
    if arch == "cnn":
        data, info = {"source": {"builtin": "digits"}}, BUILTIN["digits"]
    elif arch == "sequence":
        data, info = draw(sequence_data())
    else:
        data, info = draw(data_blocks())
    image = data["source"].get("builtin") == "digits"
    model = draw(sequence_models() if arch == "sequence" else models(arch == "cnn"))
    batch = draw(st.one_of(st.just("full"), st.integers(1, LIMITS.max_batch_size)))
    if model.get("norm") == "batch" and batch == 1:
        batch = 2  # batch norm normalizes over the batch
    printable = st.characters(blacklist_categories=("Cc", "Cs"))  # names refuse controls
    spec = {"name": draw(st.text(printable, min_size=1, max_size=40)), "data": data,
            "model": model,
            "loss": draw(losses(info)), "optimizer": draw(optimizers()),
            "schedule": draw(schedules), "regularization": draw(regularizations()),
            "training": {"epochs": draw(st.integers(1, LIMITS.max_epochs)), "batch_size": batch,
                         "seed": draw(st.integers(0, 2**31 - 1)),
                         "grad_clip_norm": draw(st.none() | floats(0.01, 100))}}
    if image and draw(st.booleans()):
        spec["regularization"]["augment"] = {"shift": draw(st.integers(0, 4)),
                                             "flip": draw(st.booleans())}
    if draw(st.integers(0, 5)) == 0:  # a sixth: the reconstruction pretext task (no labels)
        spec["task"], spec["loss"] = "reconstruction", {"kind": "mse"}
    elif draw(st.integers(0, 3)) == 0:  # few labels
        spec["data"]["labels"] = {"fraction": draw(floats(0, 1, lo_open=True)),
                                  "seed": draw(st.integers(0, 2**31))}
    return spec


def exactly_max_parameters() -> Spec:
    """A linear model on blobs: F features x C classes + C biases = C (F + 1) parameters."""
    cap = LIMITS.max_parameters
    centers = next(c for c in range(1000, 1, -1) if cap % c == 0 and cap // c - 1 <= 10_000)
    source = {"synthetic": "blobs", "n_samples": 100, "centers": centers,
              "n_features": cap // centers - 1}
    # 100 rows cannot hold each of the classes in every split: stratify false
    return tiny_spec(data={"source": source, "split": {"stratify": False}}, model={"hidden": []},
                     training={"epochs": 1})


def at_the_caps() -> list[Spec]:
    """Specs exactly at each cap (the caps are inclusive)."""
    iris = {"source": {"builtin": "iris"}}
    values_features = 50
    return [
        tiny_spec(data=iris, model={"hidden": [LIMITS.max_width]}),
        tiny_spec(data=iris, model={"hidden": [2] * (LIMITS.max_layers - 1)}),
        tiny_spec(data=iris, training={"epochs": LIMITS.max_epochs}),
        tiny_spec(data=iris, training={"batch_size": LIMITS.max_batch_size}),
        exactly_max_parameters(),
        tiny_spec(data={"source": {"synthetic": "moons",
                                   "n_samples": LIMITS.max_rows_synthetic}},
                  training={"epochs": 1}),
        tiny_spec(data={"source": {"synthetic": "blobs", "n_features": values_features,
                                   "n_samples": LIMITS.max_synthetic_values // values_features}},
                  model={"hidden": []}, training={"epochs": 1}),
    ]


def test_the_caps_are_exactly_reached() -> None:
    """The specs above sit on their caps (so accepting them shows the caps are inclusive)."""
    specs = [s.JobSpec.model_validate(spec) for spec in at_the_caps()]
    infos = [BUILTIN["iris"]] * 4 + [shapes.synthetic_info(spec.data.source)  # type: ignore[arg-type]
                                     for spec in specs[4:]]
    assert shapes.max_width(specs[0]) == LIMITS.max_width
    assert shapes.layer_count(specs[1]) == LIMITS.max_layers
    assert specs[2].training.epochs == LIMITS.max_epochs
    assert specs[3].training.batch_size == LIMITS.max_batch_size
    assert shapes.parameter_count(specs[4], infos[4]) == LIMITS.max_parameters
    assert infos[5].n_rows == LIMITS.max_rows_synthetic
    assert infos[6].n_rows * infos[6].n_features == LIMITS.max_synthetic_values


@pytest.mark.parametrize("spec", at_the_caps(), ids=["width", "layers", "epochs", "batch_size",
                                                     "parameters", "rows", "values"])
def test_specs_at_the_caps_validate(client: TestClient, spec: Spec) -> None:
    accept(client, spec)


@settings(PROPERTY, max_examples=60)
@given(spec=valid_specs())
def test_every_spec_within_the_caps_validates(client: TestClient, spec: Spec) -> None:
    job = accept(client, spec)
    assert job["status"] == "queued" and job["progress"]["total"] == spec["training"]["epochs"]
    assert job["spec"]["model"]["kind"] == spec["model"]["kind"]
    assert job["spec"]["optimizer"] == s.JobSpec.model_validate(spec).model_dump(
        mode="json")["optimizer"]


# ------------------------------------------------------------- beyond one cap

Refusal = tuple[Spec, str, str, int]  # spec, what the message names, loc, cap


def _cap(what: str, loc: str, cap: int) -> Any:
    return lambda spec: (spec, what, loc, cap)


def train_rows(n_samples: int) -> int:
    return shapes.train_rows(shapes.DataInfo("classification", n_samples, 2, 2), s.Split())


@st.composite
def too_many_parameters(draw: Any) -> Spec:
    name = draw(st.sampled_from(sorted(BUILTIN)))
    info = BUILTIN[name]
    loss = {"kind": "mse"} if info.task == "regression" else {"kind": "cross_entropy"}
    if name == "digits" and draw(st.booleans()):  # conv stages: c1 x c2 x k x k weights
        k = draw(st.integers(3, 5))
        c1 = draw(st.integers(LIMITS.max_parameters // (k * k * 1024) + 1, 1024))
        c2 = draw(st.integers(LIMITS.max_parameters // (k * k * c1) + 1, 1024))
        return tiny_spec(data={"source": {"builtin": name}}, loss=loss,
                         model={"kind": "cnn", "channels": [c1, c2], "kernel_size": k})
    low = math.isqrt(LIMITS.max_parameters) + 1  # two such layers are over the cap
    hidden = draw(st.lists(st.integers(low, LIMITS.max_width), min_size=2, max_size=4))
    return tiny_spec(data={"source": {"builtin": name}}, loss=loss, model={"hidden": hidden})


@st.composite
def too_many_layers(draw: Any) -> Spec:
    if draw(st.booleans()):
        hidden = draw(st.lists(st.integers(1, 8), min_size=LIMITS.max_layers,
                               max_size=LIMITS.max_layers + 40))
        return tiny_spec(model={"hidden": hidden})
    blocks = draw(st.integers(2, 8))  # residual stages: 1 + 2 x blocks layers each
    stages = draw(st.integers(LIMITS.max_layers // (1 + 2 * blocks) + 1, 12))
    return tiny_spec(data={"source": {"builtin": "digits"}},
                     model={"kind": "cnn", "channels": [4] * stages, "residual": True,
                            "blocks_per_stage": blocks, "pool": "none"})


iris = {"source": {"builtin": "iris"}}  # 4 features, 3 classes, 105 training rows

beyond_one_cap = st.one_of(
    too_many_parameters().map(_cap("parameters", "model", LIMITS.max_parameters)),
    too_many_layers().map(_cap("layers", "model", LIMITS.max_layers)),
    st.integers(LIMITS.max_width + 1, 100_000).map(
        lambda w: tiny_spec(data=iris, model={"hidden": [w]})).map(
        _cap("width", "model", LIMITS.max_width)),
    st.integers(LIMITS.max_epochs + 1, 100_000).map(
        lambda e: tiny_spec(data=iris, training={"epochs": e})).map(
        _cap("epochs", "training.epochs", LIMITS.max_epochs)),
    st.integers(400_000, LIMITS.max_rows_synthetic).flatmap(
        lambda n: st.integers(LIMITS.max_work // train_rows(n) + 1, LIMITS.max_epochs).map(
            lambda e: tiny_spec(data={"source": {"synthetic": "moons", "n_samples": n}},
                                training={"epochs": e}))).map(
        _cap("work (epochs x training rows)", "training.epochs", LIMITS.max_work)),
    st.integers(LIMITS.max_batch_size + 1, 10**9).map(
        lambda b: tiny_spec(data=iris, training={"epochs": 1, "batch_size": b})).map(
        _cap("batch_size", "training.batch_size", LIMITS.max_batch_size)),
    st.integers(100, 10_000).flatmap(
        lambda f: st.integers(LIMITS.max_synthetic_values // f + 1,
                              LIMITS.max_rows_synthetic).map(
            lambda n: tiny_spec(data={"source": {"synthetic": "blobs", "n_features": f,
                                                 "n_samples": n}},
                                model={"hidden": []}, training={"epochs": 1}))).map(
        _cap("generated values (rows x features)", "data.source.n_samples",
             LIMITS.max_synthetic_values)),
)


def assert_names_the_cap(error: dict[str, Any], what: str, loc: str, cap: int) -> None:
    assert len(error["fields"]) == 1, error  # exactly one cap exceeded
    field = error["fields"][0]
    assert field["loc"] == loc, error
    assert field["message"].startswith(f"{what} ") and field["message"].endswith(
        f"exceeds the limit {cap:,}"), error
    assert "exceeds the limit" in error["message"]


@settings(PROPERTY, max_examples=60)
@given(refusal=beyond_one_cap)
def test_every_spec_beyond_one_cap_is_refused_before_it_is_stored(
        client: TestClient, refusal: Refusal) -> None:
    spec, what, loc, cap = refusal
    assert_names_the_cap(refuse(client, spec), what, loc, cap)


ROWS_CAP = 100_000  # the spec's own bound on n_samples is the default cap (1,000,000)


@pytest.fixture()
def rows_capped_client(app_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An app whose generated-rows cap is below the spec's bound, so the cap itself acts."""
    from app import config
    from app.main import create_app

    monkeypatch.setenv("TRAINYARD_LIMIT_MAX_ROWS_SYNTHETIC", str(ROWS_CAP))
    config.get_settings.cache_clear()
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {make_key('alice')}"
        yield c
    config.get_settings.cache_clear()


@settings(PROPERTY, max_examples=10)
@given(n=st.integers(ROWS_CAP + 1, 1_000_000),
       source=st.sampled_from(["moons", "circles", "spirals", "function"]))
def test_generated_rows_over_the_cap_are_refused(rows_capped_client: TestClient, n: int,
                                                 source: str) -> None:
    spec = tiny_spec(data={"source": {"synthetic": source, "n_samples": n}},
                     training={"epochs": 1})
    if source == "function":
        spec["loss"] = {"kind": "mse"}
    error = refuse(rows_capped_client, spec)
    assert_names_the_cap(error, "generated rows", "data.source.n_samples", ROWS_CAP)


# ------------------------------------------- out-of-range values, unknown fields

ADAM = {"kind": "adam", "lr": 0.01}
negative = floats(-1e6, 0, hi_open=True)
at_least_one = floats(1, 1e6)

out_of_range = st.one_of(
    # (spec, loc of the first field)
    floats(-1e6, 0).map(lambda v: (tiny_spec(optimizer=ADAM | {"lr": v}), "optimizer.lr")),
    floats(1e4, 1e9, lo_open=True).map(
        lambda v: (tiny_spec(optimizer={"kind": "sgd", "lr": v}), "optimizer.lr")),
    st.tuples(st.integers(0, 1), at_least_one | negative).map(
        lambda iv: (tiny_spec(optimizer=ADAM | {"betas": [iv[1] if i == iv[0] else 0.9
                                                          for i in range(2)]}),
                    f"optimizer.betas.{iv[0]}")),
    (at_least_one | negative).map(
        lambda v: (tiny_spec(model={"kind": "mlp", "hidden": [8], "dropout": v}),
                   "model.dropout")),
    at_least_one.map(lambda v: (tiny_spec(data={"source": {"builtin": "digits"}},
                                          model={"kind": "cnn", "dropout": v}), "model.dropout")),
    at_least_one.map(lambda v: (tiny_spec(optimizer={"kind": "sgd", "momentum": v}),
                                "optimizer.momentum")),
    (negative | floats(10, 1e6, lo_open=True)).map(
        lambda v: (tiny_spec(optimizer=ADAM | {"weight_decay": v}), "optimizer.weight_decay")),
    at_least_one.map(lambda v: (tiny_spec(loss={"kind": "cross_entropy", "label_smoothing": v}),
                                "loss.label_smoothing")),
    floats(0.5, 1e3, lo_open=True).map(lambda v: (tiny_spec(data__split={"val": v}),
                                                  "data.split.val")),
    st.integers(-1000, 0).map(lambda v: (tiny_spec(training={"epochs": v}), "training.epochs")),
    st.integers(-1000, 0).map(lambda v: (tiny_spec(model={"hidden": [8, v]}), "model.hidden.1")),
    (st.integers(-1000, 19) | st.integers(1_000_001, 10**12)).map(
        lambda v: (tiny_spec(data={"source": {"synthetic": "moons", "n_samples": v}}),
                   "data.source.n_samples")),
    (negative | floats(10, 1e6, lo_open=True)).map(
        lambda v: (tiny_spec(regularization={"l2": v}), "regularization.l2")),
)


def _unknown(component: str, model: type[Any]) -> Any:
    names = st.from_regex(r"[a-z][a-z_]{2,15}", fullmatch=True).filter(
        lambda k: k not in model.model_fields)

    def build(key: str) -> tuple[Spec, str]:
        spec = tiny_spec()
        node = spec
        for part in component.split(".") if component else []:
            node = node[part]
        node[key] = 1
        return spec, f"{component}.{key}" if component else key

    return names.map(build)


unknown_fields = st.one_of(
    _unknown("", s.JobSpec), _unknown("model", s.MLP), _unknown("optimizer", s.Adam),
    _unknown("training", s.Training), _unknown("data", s.Data),
    _unknown("data.source", s.MoonsSource),
)


@settings(PROPERTY, max_examples=50)
@given(case=out_of_range | unknown_fields)
def test_out_of_range_values_and_unknown_fields_are_refused_at_their_path(
        client: TestClient, case: tuple[Spec, str]) -> None:
    spec, loc = case
    error = refuse(client, spec)
    assert error["fields"][0]["loc"] == loc, error


@pytest.mark.parametrize(("spec", "loc"), [
    ({"optimizer": {"kind": "adam", "betas": [0.9, 1.0]}}, "optimizer.betas.1"),
    ({"model": {"kind": "mlp", "dropout": 1.0}}, "model.dropout"),
    ({"optimizer": {"kind": "sgd", "lr": -0.1}}, "optimizer.lr"),
    ({"model": {"kind": "mlp", "hiden": [3]}}, "model.hiden"),
])
def test_the_issues_examples(client: TestClient, spec: Spec, loc: str) -> None:
    assert refuse(client, spec)["fields"][0]["loc"] == loc
