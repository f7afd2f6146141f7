"""The reconstruction pretext task and few labels (``data.labels``) in the core: what a
pretext job trains on, which training rows keep their labels, the shapes the API counts,
what validation refuses, and that a pretext model is not exported."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from app import spec as s
from app.config import Limits
from app.training import shapes
from app.training.data import load_arrays, prepare, split_indices
from app.training.export import NotExportable, check_exportable
from app.training.labels import labelled_subset
from app.training.metric_names import epoch_metric_names
from app.training.regularize import mask_features
from app.training.sink import MemorySink
from app.validation import SpecRejected, check_spec
from tests.training.helpers import CPU, make_spec, trainer

DIGITS: dict[str, Any] = {
    "data": {"source": {"builtin": "digits"}},
    "model": {"kind": "mlp", "hidden": [32]},
    "optimizer": {"kind": "adam", "lr": 0.01},
    "training": {"epochs": 2, "batch_size": 64, "seed": 0, "device": "cpu"},
}
PRETEXT = {**DIGITS, "task": "reconstruction", "loss": {"kind": "mse"}}
DIGITS_INFO = shapes.BUILTIN_INFO["digits"]


def _loc(spec: s.JobSpec, info: shapes.DataInfo = DIGITS_INFO) -> list[str]:
    with pytest.raises(SpecRejected) as refused:
        check_spec(spec, info, Limits())
    return [".".join(map(str, p.loc)) for p in refused.value.problems]


# ------------------------------------------------------------------ few labels


def test_the_labelled_rows_are_a_stratified_seeded_subset_of_the_training_split() -> None:
    spec = make_spec(DIGITS, data={"labels": {"fraction": 0.05, "seed": 3}})
    arrays = load_arrays(spec.data.source)
    train = split_indices(arrays.y, spec.data.split, arrays.info).train
    chosen = labelled_subset(train, arrays.y, spec.data.labels, True, 10)  # type: ignore[arg-type]
    assert len(chosen) == shapes.labelled_rows(spec.data.labels, len(train), 10)  # type: ignore[arg-type]
    assert len(chosen) == 63 and set(chosen) <= set(train)
    counts = np.bincount(arrays.y[chosen], minlength=10)
    assert counts.min() >= 6 and counts.max() <= 7  # 5 % of ~126 rows per class
    again = labelled_subset(train, arrays.y, s.Labels(fraction=0.05, seed=3), True, 10)
    other = labelled_subset(train, arrays.y, s.Labels(fraction=0.05, seed=4), True, 10)
    assert np.array_equal(chosen, again) and not np.array_equal(chosen, other)


def test_a_tiny_fraction_still_keeps_one_row_of_every_class() -> None:
    y = np.repeat(np.arange(5), [200, 50, 10, 5, 2])
    chosen = labelled_subset(np.arange(len(y)), y, s.Labels(fraction=0.001), True, 5)
    assert sorted(y[chosen].tolist()) == [0, 1, 2, 3, 4]


def test_prepare_trains_on_the_labelled_rows_and_keeps_val_and_test() -> None:
    full = prepare(make_spec(DIGITS).data, load_arrays(s.BuiltinSource(builtin="digits")), CPU)
    few_spec = make_spec(DIGITS, data={"labels": {"fraction": 0.05}})
    few = prepare(few_spec.data, load_arrays(few_spec.data.source), CPU)
    assert few.x_train.shape[0] == 63 and full.x_train.shape[0] == 1257
    assert torch.equal(few.x_test.mean(0) * 0, full.x_test.mean(0) * 0)
    assert few.y_test.tolist() == full.y_test.tolist() and few.y_val.tolist() == full.y_val.tolist()


def test_regression_labels_are_a_plain_subset() -> None:
    spec = make_spec({**DIGITS, "data": {"source": {"builtin": "diabetes"},
                                         "labels": {"fraction": 0.1}},
                      "loss": {"kind": "mse"}})
    check_spec(spec, shapes.BUILTIN_INFO["diabetes"], Limits())
    t = trainer(spec)
    assert t.data.x_train.shape[0] == 31  # ceil(0.1 x 308)
    assert t.run().status == "completed"


# ----------------------------------------------------------------- reconstruction


def test_a_pretext_job_trains_on_the_supervised_jobs_training_rows_to_predict_them() -> None:
    arrays = load_arrays(s.BuiltinSource(builtin="digits"))
    pretext = prepare(make_spec(PRETEXT).data, arrays, CPU, task="reconstruction")
    supervised = prepare(make_spec(DIGITS).data, arrays, CPU)
    # the split is the labelled job's, stratified by the labels it does not train on
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(pretext, f"x_{split}"), getattr(supervised, f"x_{split}"))
        assert torch.equal(getattr(pretext, f"y_{split}"), getattr(pretext, f"x_{split}"))
    assert pretext.info.task == "reconstruction" and pretext.info.n_classes == 0


def test_the_reconstruction_head_is_as_wide_as_the_input_and_counted_exactly() -> None:
    spec = make_spec(PRETEXT)
    t = trainer(spec)
    assert t.model.head.out_features == 64  # type: ignore[union-attr]
    assert shapes.parameter_count(spec, DIGITS_INFO) == sum(
        p.numel() for p in t.model.parameters())
    job = shapes.job_info(spec.task, DIGITS_INFO)
    assert shapes.state_shapes(spec.model, (64,), shapes.output_dim(job, spec.loss))[
        "head.weight"] == (64, 32)


def test_a_pretext_run_logs_mse_and_no_accuracy() -> None:
    sink = MemorySink()
    outcome = trainer(make_spec(PRETEXT, regularization={"input_mask": 0.3}), sink).run()
    assert outcome.summary is not None and outcome.summary.task == "reconstruction"
    logged = {f"{split}_{name}" for split, values in sink.reports[-1].metrics.items()
              for name in values}
    assert logged == epoch_metric_names("reconstruction", True)
    assert set(outcome.summary.test) == {"loss", "mse"}
    assert outcome.summary.test["mse"] == pytest.approx(outcome.summary.test["loss"])
    assert outcome.summary.test["mse"] < 1.0  # below predicting every feature's mean
    assert outcome.summary.macro_f1 is None and outcome.summary.confusion_matrix is None


def test_recorded_reconstructions_are_in_the_features_original_units() -> None:
    spec = make_spec(PRETEXT, training={"record_predictions": True, "epochs": 1})
    summary = trainer(spec).run().summary
    assert summary is not None and summary.predictions is not None
    test = np.asarray(summary.prediction("test"))
    assert test.shape == (270, 64)
    assert 0 < test.mean() < 16  # digits' pixels run 0..16; standardized ones centre on 0


def test_the_trivial_reference_of_a_pretext_job_is_the_per_feature_mean() -> None:
    t = trainer(make_spec(PRETEXT))
    x = t.data.x_train
    expected = float(((x - x.mean(0)) ** 2).mean())
    assert t.trivial.loss == pytest.approx(expected, rel=1e-5)
    assert 0.9 < t.trivial.loss <= 1.0  # standardized, but for digits' constant pixels


def test_input_mask_zeroes_about_the_asked_fraction() -> None:
    x = torch.ones(200, 50)
    masked = mask_features(x, 0.3, torch.Generator().manual_seed(0))
    assert 0.27 < float((masked == 0).float().mean()) < 0.33
    assert torch.equal(x, torch.ones(200, 50))  # the batch (the pretext targets) untouched


@pytest.mark.parametrize(("over", "loc"), [
    ({"loss": {"kind": "cross_entropy"}}, "loss.kind"),
    ({"loss": {"kind": "mae"}}, "loss.kind"),
    ({"data": {"labels": {"fraction": 0.1}}}, "data.labels"),
    ({"regularization": {"cutmix": {"alpha": 0.4}}}, "regularization.cutmix"),
    ({"training": {"until": {"train_accuracy": 0.9}}}, "training.until.train_accuracy"),
    ({"regularization": {"early_stopping": {"monitor": "val_accuracy"}}},
     "regularization.early_stopping.monitor"),
])
def test_what_a_pretext_job_cannot_use_is_refused_naming_the_field(over: dict[str, Any],
                                                                   loc: str) -> None:
    assert _loc(make_spec(PRETEXT, **over)) == [loc]


def test_a_pretext_job_may_monitor_its_mse() -> None:
    check_spec(make_spec(PRETEXT, regularization={"early_stopping": {"monitor": "val_mse"}}),
               DIGITS_INFO, Limits())


def test_unlabeled_data_is_for_reconstruction_only() -> None:
    unlabeled = shapes.DataInfo("unlabeled", 500, 64, 0)
    spec = make_spec({**DIGITS, "data": {"source": {"dataset": "ds_x"}}})
    assert _loc(spec, unlabeled) == ["task"]
    check_spec(make_spec({**PRETEXT, "data": {"source": {"dataset": "ds_x"}}}), unlabeled,
               Limits())


def test_a_pretext_model_is_not_exported_with_a_reason() -> None:
    check_exportable(make_spec(DIGITS))
    with pytest.raises(NotExportable, match=r"model\.init_from"):
        check_exportable(make_spec(PRETEXT))
