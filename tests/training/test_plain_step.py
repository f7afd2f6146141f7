"""The plain training step (a spec that uses none of ``train_step``'s options) is the general
step without its no-op calls: the same weights bit for bit, and every option that changes a
step turns it off."""

from __future__ import annotations

from typing import Any

import pytest

from tests.training.helpers import assert_same_weights, make_spec, trainer, weights

DIGITS = {
    "data": {"source": {"builtin": "digits"}, "input_shape": [1, 8, 8]},
    "model": {"kind": "cnn", "channels": [4]},
}

# every option train_step acts on, each alone (the CNN ones on 8x8 digits images)
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("input_noise", {"regularization": {"input_noise": 0.1}}),
    ("input_mask", {"regularization": {"input_mask": 0.2}}),
    ("mixup", {"regularization": {"mixup": {"alpha": 0.2}}}),
    ("weight_noise", {"regularization": {"weight_noise": 0.01}}),
    ("l1", {"regularization": {"l1": 1e-4}}),
    ("l2", {"regularization": {"l2": 1e-4}}),
    ("grad_clip_norm", {"training": {"grad_clip_norm": 1.0}}),
    ("record_grad_norms", {"training": {"record_grad_norms": True}}),
    ("bf16", {"training": {"precision": "bf16"}}),
    ("augment", {**DIGITS, "regularization": {"augment": {"shift": 1, "flip": True}}}),
    ("cutmix", {**DIGITS, "regularization": {"cutmix": {"alpha": 0.5}}}),
]


@pytest.mark.parametrize(("name", "over"), OPTIONS, ids=[name for name, _ in OPTIONS])
def test_every_step_option_turns_the_plain_step_off(name: str, over: dict[str, Any]) -> None:
    assert trainer(make_spec(**over)).plain is False, name


@pytest.mark.parametrize("over", [{}, {"loss": {"kind": "bce"}},
                                  {"model": {"kind": "mlp", "hidden": [8, 8], "dropout": 0.2,
                                             "norm": "batch", "residual": True}}])
def test_the_plain_step_trains_exactly_as_the_general_one(over: dict[str, Any]) -> None:
    spec = make_spec(**over)
    trained = []
    for plain in (True, False):  # one after the other: a Trainer seeds the global RNG
        t = trainer(spec)
        assert t.plain is True
        t.plain = plain
        assert t.train_epoch() is None
        t.end_epoch()
        trained.append(weights(t.model))
    assert_same_weights(*trained)
