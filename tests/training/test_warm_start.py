"""Warm start in the core: the analytic state-dict shapes the API checks against a
checkpoint equal torch's, and a warm-started Trainer loads, reinitializes and freezes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from app import spec as s
from app.training import shapes
from app.training.checkpoint import unpack
from app.training.errors import DataError
from app.training.models import build_model
from app.training.warm_start import warm_start
from tests.training.helpers import make_spec, trainer, weights

NORMS = ("none", "batch", "layer", "group", "instance")
MODELS: list[s.ModelSpec] = [
    *(s.MLP(hidden=[4, 6], groups=2, norm=n) for n in NORMS),
    *(s.CNN(channels=[4, 6], groups=2, norm=n, residual=r, blocks_per_stage=2, kernel_size=k)
      for n, r, k in itertools.product(NORMS, (False, True), (2, 3))),
    *(s.RNN(cell=c, layers=2, bidirectional=b) for c, b in itertools.product(
        ("gru", "lstm"), (False, True))),
    *(s.Transformer(pooling=p, positional=q, layers=2) for p, q in itertools.product(
        ("cls", "mean"), ("learned", "sinusoidal"))),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.model_dump_json(exclude_defaults=True))
def test_state_shapes_are_the_real_state_dict_in_order(model: s.ModelSpec) -> None:
    for shape in ((2, 8), (1, 4, 4)) if isinstance(model, s.CNN) else ((2, 8),):
        real = build_model(model, shape, 3).state_dict()
        expected = shapes.state_shapes(model, shape, 3)
        assert list(expected.items()) == [(k, tuple(v.shape)) for k, v in real.items()]


PRETRAIN: dict[str, Any] = {
    "data": {"source": {"synthetic": "blobs", "n_samples": 200, "n_features": 2,
                        "centers": 3}},
    "model": {"kind": "mlp", "hidden": [16, 16]},
    "training": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu"},
}


def _source() -> dict[str, torch.Tensor]:
    t = trainer(make_spec(PRETRAIN))
    outcome = t.run()
    assert outcome.status == "completed"
    return weights(t.model)


def test_freeze_keeps_the_named_tensors_and_reinit_keeps_a_fresh_head() -> None:
    source = _source()
    init = s.InitFrom(job="job_x", freeze=["blocks.0."], head="reinit")
    spec = make_spec(PRETRAIN, data={"source": {"synthetic": "moons", "n_samples": 200}},
                     model={"init_from": init.model_dump()})
    t = trainer(spec)
    fresh_head = t.model.state_dict()["head.weight"].clone()
    warm_start(t.model, source, init)
    assert torch.equal(t.model.state_dict()["head.weight"], fresh_head)  # 2 classes, not 3
    assert torch.equal(t.model.state_dict()["blocks.1.linear.weight"],
                       source["blocks.1.linear.weight"])
    t.run()
    after = weights(t.model)
    for name in ("blocks.0.linear.weight", "blocks.0.linear.bias"):
        assert torch.equal(after[name], source[name]), name  # frozen
    assert not torch.equal(after["blocks.1.linear.weight"], source["blocks.1.linear.weight"])
    assert not any(p.requires_grad for n, p in t.model.named_parameters() if n.startswith(
        "blocks.0."))


def test_a_checkpoint_that_does_not_fit_is_a_data_error() -> None:
    source = _source()
    model = build_model(s.MLP(hidden=[8, 16]), (2,), 3)
    with pytest.raises(DataError, match=r"blocks\.0\.linear\.weight"):
        warm_start(model, source, s.InitFrom(job="job_x"))
    with pytest.raises(DataError, match=r"head\.weight"):  # keep: the head must fit too
        warm_start(build_model(s.MLP(hidden=[16, 16]), (2,), 2), source,
                   s.InitFrom(job="job_x", head="keep"))


def test_checkpoint_weights_are_what_warm_start_reads() -> None:
    """The core's checkpoint blob keeps the model under the names state_shapes gives."""
    spec = make_spec(PRETRAIN)
    t = trainer(spec)
    t.run()
    tensors, _ = unpack(t.snapshot().to_blob())
    own = {k[len("model."):]: tuple(v.shape) for k, v in tensors.items()
           if k.startswith("model.")}
    assert own == shapes.state_shapes(spec.model, (2,), 3)
