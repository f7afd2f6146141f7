"""``model.json``: what a model bundle says about itself. Torch-free (the API reads it to serve
predictions), so it is pydantic only; ``export.py`` builds it in the worker."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FORMAT_VERSION = 1
INPUT = "rows"  # the graph's one input: raw feature rows, float32 (batch, width)
PROBABILITIES = "probabilities"  # classification: (batch, classes) float32
LABEL = "label"  # classification: (batch,) int64, an index into ``classes``
VALUE = "value"  # regression: (batch,) float32, in the target's original units
# ONNX against torch on the job's test rows: the largest |difference| allowed, in
# probabilities for a classifier and in standardized target units for a regressor.
TOLERANCE = 1e-4

Label = str | int | float  # a class as the data named it (CSV strings stay strings)


class Scaling(BaseModel):
    """``(x - mean) / std``, fitted on the training rows only (identity when not asked)."""

    mean: list[float]
    std: list[float]


class Standardization(BaseModel):
    features: Scaling
    target: Scaling | None = Field(None, description="Regression: the net's outputs are "
                                   "``value * std + mean`` in original units (done in the graph).")


class ExportCheck(BaseModel):
    """How the stored graph was checked against the torch model before it was kept."""

    rows: int = Field(description="The job's test rows, run through both.")
    max_abs_difference: float = Field(description="In probabilities, or standardized target "
                                      "units for regression.")
    tolerance: float = TOLERANCE
    exporter: Literal["torchscript", "dynamo"]


class ModelManifest(BaseModel):
    """``model.json`` in the bundle; the API serves predictions from it and the graph."""

    format_version: int = FORMAT_VERSION
    job_id: str
    task: Literal["classification", "regression"]
    spec: dict[str, Any]
    feature_names: list[str] = Field(description="One per input column, in row order.")
    input_width: int
    input_shape: list[int] = Field(description="How the net views a row (inside the graph).")
    classes: list[Label] | None = Field(None, description="Labels in their original form; "
                                        "``label`` indexes this list.")
    target: str | None = Field(None, description="The target column's name (uploads).")
    target_units: str | None = Field(None, description="Regression: the unit of ``value``.")
    input_name: str = INPUT
    outputs: list[str]
    standardization: Standardization
    weights_epoch: int = Field(description="The epoch whose weights these are: the best one "
                               "when restored, else the last; the summary's test metrics "
                               "came from them.")
    test_metrics: dict[str, float]
    versions: dict[str, str]
    check: ExportCheck
    files: dict[str, str] = Field(default_factory=dict,
                                  description="sha256 of model.onnx and model.safetensors.")

    def label_of(self, index: int) -> Label:
        assert self.classes is not None  # only called for classifiers
        return self.classes[index]
