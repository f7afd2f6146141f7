"""Request and response shapes of a job's model: its export state, predictions.

A predict body is parsed by ``read_json`` (orjson into one float array when it is plainly
well formed, else by ``PredictRequest``, whose errors name the field) or ``read_npy``; the
answer is plain values serialized by orjson (``PredictResponse`` documents its schema)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.statuses import ModelStatus
from app.training.manifest import Label

# A strict number: JSON true/false and "1.5" are not numbers here (an integer is; a union
# with StrictInt parsed 1,000 x 64 rows 40 % slower)
Number = StrictFloat


class ModelState(BaseModel):
    """A succeeded job's ONNX export, as GET /v1/jobs/{id} shows it."""

    status: ModelStatus
    reason: str | None = Field(None, description="Why the export failed.")


class PredictRequest(BaseModel):
    """Raw feature rows (the flat layout the data was uploaded in), or records keyed by the
    dataset's feature names (any order); exactly one of the two."""

    # the schema says "exactly one" too, so a schema-valid body is never refused for it
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["rows"]}, {"required": ["records"]}],
        "examples": [
            {"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
            {"records": [{"sepal length (cm)": 5.1, "sepal width (cm)": 3.5,
                          "petal length (cm)": 1.4, "petal width (cm)": 0.2}]}]})

    rows: list[list[Number]] | SkipJsonSchema[None] = Field(
        None, description="One list of input_width numbers per row (model.json's feature "
        "order).")
    records: list[dict[str, Number]] | SkipJsonSchema[None] = Field(
        None, description="One object per row: every feature name to its value.")

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.rows is None) == (self.records is None):
            raise ValueError("send exactly one of 'rows' and 'records'")
        return self


@dataclass(frozen=True)
class PredictBody:
    """A predict body once parsed: exactly one of ``rows`` (a 2-D float32 array, or lists of
    numbers when it came through pydantic) and ``records``. Width, count and finiteness are
    checked against the model by the predict service."""

    rows: np.ndarray | list[list[float]] | None = None
    records: list[dict[str, float]] | None = None

    @property
    def field(self) -> str:
        return "rows" if self.rows is not None else "records"

    @property
    def count(self) -> int:
        return len(self.rows if self.rows is not None else self.records or [])


class BadBody(ValueError):
    """A binary body that is not a float32 .npy matrix (the message says why)."""


NUMBER_TYPES = (float, int)  # exact types: JSON true/false are bool, not numbers here
NPY = "application/x-npy"


def read_json(raw: bytes) -> PredictBody:
    """The body parsed by orjson when it is plainly well formed; anything else (a refusal to
    come, NaN literals, an odd shape) goes through ``PredictRequest``, whose errors name the
    field (it raises pydantic's ValidationError). 1,000 x 64 rows: ~4 ms, against ~8 ms for
    pydantic and ``np.asarray`` of its lists."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    fast = _plain(doc, raw) if isinstance(doc, dict) and len(doc) == 1 else None
    if fast is not None:
        return fast
    body = PredictRequest.model_validate_json(raw)
    return PredictBody(rows=body.rows, records=body.records)


def _plain(doc: dict[str, Any], raw: bytes) -> PredictBody | None:
    rows, records = doc.get("rows"), doc.get("records")
    if isinstance(rows, list) and rows:
        return _plain_rows(rows, raw)
    if isinstance(records, list) and records and all(
            type(r) is dict and all(type(v) in NUMBER_TYPES for v in r.values())
            for r in records):
        return PredictBody(records=records)
    return None


def _plain_rows(rows: list[Any], raw: bytes) -> PredictBody | None:
    try:
        x = np.array(rows)  # numbers only: float64 or int64 (a string or null: not "fiu")
    except (ValueError, OverflowError):  # ragged rows: pydantic's path names the row
        return None
    # the only strings in a {"rows": ...} object are its key, so true/false here are
    # booleans, which np.array would have taken for 1 and 0
    if x.ndim != 2 or x.dtype.kind not in "fiu" or b"true" in raw or b"false" in raw:
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, refused with the feature's name
        return PredictBody(rows=x.astype(np.float32))


def read_npy(raw: bytes) -> PredictBody:
    """A ``.npy`` file of float32 rows, shape [n, width]: the header read by numpy (never a
    pickle) and the data's length checked against it before the data is read (the body is
    capped by max_predict_bytes already). Raises BadBody saying what is wrong."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(stream) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(stream))
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
        # (a deeply nested header is a RecursionError in literal_eval)
        raise BadBody(f"not a .npy file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if dtype.kind != "f" or dtype.itemsize != 4:
        raise BadBody(f"dtype {dtype.str} is not float32; save rows.astype(np.float32)")
    # numpy checks only that each dimension is an int: negatives and booleans pass it. At
    # least one feature, so the length check below bounds the rows by the body's size.
    if len(shape) != 2 or not all(type(d) is int and d >= 0 for d in shape) or shape[1] < 1:
        raise BadBody(f"shape {shape} is not [rows, features] (counts, at least 1 feature)")
    expected = math.prod(shape) * 4
    if len(raw) - stream.tell() != expected:
        raise BadBody(f"shape {shape} needs {expected:,} bytes of data; the body has "
                      f"{len(raw) - stream.tell():,}")
    try:
        x = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=stream.tell())
        x = x.reshape(shape[::-1]).T if fortran else x.reshape(shape)
    except ValueError as exc:  # (the checks above should leave nothing for here)
        raise BadBody(f"shape {shape}: {str(exc)[:200]}") from None
    return PredictBody(rows=np.ascontiguousarray(x, dtype=np.float32))


class ClassRow(TypedDict):
    label: Label
    probabilities: list[float]


class ValueRow(TypedDict):
    value: float


@dataclass(frozen=True)
class Predictions:
    """A job's answer as plain values; its schema is ``PredictResponse``."""

    job_id: str
    task: str
    classes: list[Label] | None
    predictions: list[ClassRow] | list[ValueRow]
    model_sha256: str

    def to_json(self) -> bytes:
        """orjson: 1,000 rows of 10 probabilities in ~1 ms (pydantic: ~9 ms)."""
        body: dict[str, Any] = {"job_id": self.job_id, "task": self.task,
                                "predictions": self.predictions,
                                "model_sha256": self.model_sha256}
        if self.classes is not None:
            body["classes"] = self.classes
        return orjson.dumps(body)


class ClassPrediction(BaseModel):
    label: Label = Field(description="The predicted class, as the data names it.")
    probabilities: list[float] = Field(description="One per class, in ``classes`` order.")


class ValuePrediction(BaseModel):
    value: float = Field(description="In the target's original units.")


class PredictResponse(BaseModel):
    job_id: str
    task: str = Field(examples=["classification", "regression"])
    classes: list[Label] | None = Field(None, description="Classification: the labels, in "
                                        "the order of each row's probabilities.")
    predictions: list[ClassPrediction] | list[ValuePrediction]
    model_sha256: str = Field(description="sha256 of the model.onnx that answered.")


class EnsembleMember(BaseModel):
    job_id: str = Field(description="The child whose ONNX model was run.")
    weight: float = Field(description="Its weight in the combination: 1/n in bagging's mean, "
                          "SAMME's learner weight alpha, gradient boosting's rate (1 for "
                          "round 0, then the learning rate), 1 for a sweep's retrained best.")
    model_sha256: str = Field(description="sha256 of the member's model.onnx.")


class EnsemblePredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "experiment_id": "exp_0123456789abcdef", "kind": "bagging", "combine": "soft_vote",
        "task": "classification", "classes": ["setosa", "versicolor", "virginica"],
        "predictions": [{"label": "setosa", "probabilities": [0.97, 0.02, 0.01]}],
        "members": [{"job_id": "job_0123456789abcdef", "weight": 0.5, "model_sha256": "9f86…"},
                    {"job_id": "job_fedcba9876543210", "weight": 0.5,
                     "model_sha256": "60303…"}]}]})

    experiment_id: str
    kind: str = Field(examples=["bagging", "boosting", "sweep"])
    combine: str = Field(description="soft_vote (bagging: mean of probabilities or values), "
                         "samme (boosting, classification: weighted vote; probabilities are "
                         "each class's share of the learner weight), gradient_boosting (sum of "
                         "the rounds' values times their rates), retrained_best (sweep).",
                         examples=["soft_vote", "samme", "gradient_boosting", "retrained_best"])
    task: str = Field(examples=["classification", "regression"])
    classes: list[Label] | None = Field(None, description="Classification: the labels, in "
                                        "the order of each row's probabilities.")
    predictions: list[ClassPrediction] | list[ValuePrediction]
    members: list[EnsembleMember] = Field(description="The models combined, in the order "
                                          "the experiment's result lists them.")


class MemberRow(TypedDict):
    job_id: str
    weight: float
    model_sha256: str


@dataclass(frozen=True)
class EnsemblePredictions:
    """An experiment's answer as plain values; its schema is ``EnsemblePredictResponse``."""

    experiment_id: str
    kind: str
    combine: str
    task: str
    classes: list[Label] | None
    predictions: list[ClassRow] | list[ValueRow]
    members: list[MemberRow]

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"experiment_id": self.experiment_id, "kind": self.kind,
                                "combine": self.combine, "task": self.task,
                                "predictions": self.predictions, "members": self.members}
        if self.classes is not None:
            body["classes"] = self.classes
        return orjson.dumps(body)
