"""A trained job as one ONNX graph: raw feature rows in, probabilities and labels (or values in
original units) out, with the training-row standardization and the ``input_shape`` view inside.

The worker (which has torch) builds it after a job succeeds and checks it against the torch
model on the job's test rows with onnxruntime before it is kept; the API serves it with
onnxruntime alone. Pure: torch, numpy, scikit-learn, safetensors and the spec only.
"""

from __future__ import annotations

import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save as st_save
from sklearn import datasets as skd
from torch import nn

from app import spec as s
from app.training.blobs import sha256
from app.training.checkpoint import TrainState
from app.training.data import Arrays, Prepared, Standardizer, split_indices
from app.training.manifest import (
    INPUT,
    LABEL,
    PROBABILITIES,
    TOLERANCE,
    VALUE,
    ExportCheck,
    Label,
    ModelManifest,
    Scaling,
    Standardization,
)
from app.training.models import build_model
from app.training.shapes import DataInfo, output_dim

OPSET = 17
Head = Literal["softmax", "sigmoid", "value"]
Exporter = Literal["torchscript", "dynamo"]


class ExportMismatch(RuntimeError):
    """The ONNX graph does not compute what the torch model computes; it must not be kept."""


class NotExportable(ValueError):
    """A job whose model is not served: the reason says what to export instead."""


def check_exportable(spec: s.JobSpec) -> None:
    """A reconstruction (pretext) model outputs its own inputs: nothing a prediction asks
    for, so it is not exported; the job it starts (model.init_from) is."""
    if spec.task == "reconstruction":
        raise NotExportable("a reconstruction (pretext) model is not exported: it predicts "
                            "its own input features; fine-tune it in a supervised job "
                            "(model.init_from) and export that job")


class Servable(nn.Module):
    """The net between its preprocessing and postprocessing, as one module to export.

    Shape: (N, width) raw rows -> probabilities (N, C) and label (N,), or value (N,)."""

    x_mean: torch.Tensor  # buffers, so they travel into the graph as constants
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, net: nn.Module, features: Standardizer, target: Standardizer,
                 head: Head) -> None:
        super().__init__()
        self.net, self.head = net, head
        self.register_buffer("x_mean", _f32(features.mean))
        self.register_buffer("x_std", _f32(features.std))
        self.register_buffer("y_mean", _f32(target.mean))
        self.register_buffer("y_std", _f32(target.std))

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the same float32 ops, in the same order, as Standardizer.apply on the training side
        out = self.net((rows - self.x_mean) / self.x_std).float()
        if self.head == "value":
            return (out[:, 0] * self.y_std + self.y_mean,)
        if self.head == "sigmoid":  # one logit: p(class 1); label as the metrics decide it
            p = torch.sigmoid(out)
            return torch.cat([1 - p, p], dim=1), (out[:, 0] > 0).long()
        return torch.softmax(out, dim=1), out.argmax(dim=1)

    @property
    def outputs(self) -> list[str]:
        return [VALUE] if self.head == "value" else [PROBABILITIES, LABEL]


def _f32(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(-1)


def head_for(spec: s.JobSpec, info: DataInfo) -> Head:
    if info.task == "regression":
        return "value"
    return "sigmoid" if spec.loss.kind == "bce" else "softmax"


def servable(spec: s.JobSpec, data: Prepared, weights: dict[str, torch.Tensor]) -> Servable:
    """The job's model with ``weights`` loaded, wrapped with its data's scaling, in eval mode."""
    net = build_model(spec.model, data.input_shape, output_dim(data.info, spec.loss))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in weights.items()})
    return Servable(net, data.features, data.target, head_for(spec, data.info)).eval()


def to_onnx(module: Servable, width: int) -> tuple[bytes, Exporter]:
    """The TorchScript exporter first: 0.14-0.7 s for this repo's mlp and cnn models against
    2-7 s for the dynamo exporter (measured on 2 cores with torch 2.13; 3.7 s against 17 s
    for the first export of a process), with graphs a half to a fifth the size. A module it
    cannot trace (a kind added later) goes through the dynamo exporter; either way the result
    is checked against torch."""
    example = torch.zeros(2, width)
    try:
        return _torchscript(module, example), "torchscript"
    except Exception:  # an op or construct the tracer does not cover
        return _dynamo(module, example), "dynamo"


def _torchscript(module: Servable, example: torch.Tensor) -> bytes:
    axes = {name: {0: "batch"} for name in [INPUT, *module.outputs]}
    # traced with grad enabled: under no_grad, eval-mode transformer layers take torch's fused
    # fast path (aten::_transformer_encoder_layer_fwd), which has no ONNX form
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        path = Path(folder) / "model.onnx"
        torch.onnx.export(module, (example,), path, input_names=[INPUT],
                          output_names=module.outputs, dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
        return path.read_bytes()


def _dynamo(module: Servable, example: torch.Tensor) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), input_names=[INPUT],
                                    output_names=module.outputs, dynamic_shapes=({0: batch},),
                                    dynamo=True, verbose=False)
    assert program is not None  # dynamo=True always returns the program
    return bytes(program.model_proto.SerializeToString())


def max_difference(graph: bytes, module: Servable, rows: np.ndarray) -> float:
    """Largest |onnxruntime - torch| over ``rows``: probabilities, or standardized values."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(rows, dtype=np.float32)
    onnx_out = session.run([module.outputs[0]], {INPUT: x})[0]
    with torch.no_grad():
        torch_out = module(torch.from_numpy(x))[0].numpy()
    diff = np.abs(np.asarray(onnx_out, dtype=np.float64) - torch_out.astype(np.float64))
    if module.head == "value":  # original units -> the net's standardized scale
        diff = diff / float(module.y_std[0])
    return float(diff.max()) if diff.size else 0.0


def held_out_rows(data: s.Data, arrays: Arrays) -> np.ndarray:
    """The job's held-out test rows as uploaded (raw, before standardization)."""
    return np.asarray(arrays.x[split_indices(arrays.y, data.split, arrays.info).test])


def final_weights(checkpoint: bytes, restored_best: bool) -> tuple[dict[str, torch.Tensor], int]:
    """The weights the summary's final metrics came from, and their epoch: the best epoch's
    when the run restored them, else the last epoch's (the run's final checkpoint)."""
    state = TrainState.from_blob(checkpoint)
    if restored_best and state.best_weights is not None:
        return state.best_weights, state.best.epoch
    return state.model, state.epoch


@dataclass(frozen=True)
class DataNames:
    """How the data names its columns and classes (uploads: from their stored info)."""

    feature_names: list[str]
    classes: list[Label] | None
    target: str | None = None


def source_names(source: s.BuiltinSource | s.GeneratorBase, info: DataInfo) -> DataNames:
    """Builtin sets name their features and classes; generated data gets x0.. and 0.."""
    classes: list[Label] | None = (list(range(info.n_classes))
                                   if info.task == "classification" else None)
    if isinstance(source, s.BuiltinSource):
        bunch = getattr(skd, f"load_{source.builtin}")()
        names = [str(n) for n in bunch.feature_names]
        target_names = getattr(bunch, "target_names", None)
        if classes is not None and target_names is not None:
            classes = [t.item() if hasattr(t, "item") else str(t) for t in target_names]
        return DataNames(names, classes, "target")
    return DataNames([f"x{i}" for i in range(info.n_features)], classes, "y")


@dataclass(frozen=True)
class Bundle:
    """What the worker stores: the graph, the weights file and model.json."""

    onnx: bytes
    weights: bytes
    manifest: ModelManifest


@dataclass(frozen=True)
class JobFacts:
    """What the export needs to know about the job beyond its data and weights."""

    job_id: str
    spec: s.JobSpec
    names: DataNames
    weights_epoch: int
    test_metrics: dict[str, float]


def export(job: JobFacts, data: Prepared, weights: dict[str, torch.Tensor],
           check_rows: np.ndarray) -> Bundle:
    """Build the graph, check it against torch on ``check_rows`` (ExportMismatch beyond
    TOLERANCE), and describe it. Runs on CPU whatever device trained the job."""
    module = servable(job.spec, data, {k: v.cpu() for k, v in weights.items()})
    width = data.info.n_features
    graph, exporter = to_onnx(module, width)
    worst = max_difference(graph, module, check_rows)
    if not worst <= TOLERANCE:  # NaN fails too
        raise ExportMismatch(f"the ONNX graph differs from the torch model by {worst:.3g} on "
                             f"the test rows (tolerance {TOLERANCE:g})")
    check = ExportCheck(rows=len(check_rows), max_abs_difference=worst, exporter=exporter)
    weights_file = st_save({k: v.detach().float().contiguous() for k, v in weights.items()},
                           metadata={"job_id": job.job_id, "format": "pt"})
    card = manifest(job, data, module, check)
    card.files = {"model.onnx": sha256(graph), "model.safetensors": sha256(weights_file)}
    return Bundle(graph, weights_file, card)


def manifest(job: JobFacts, data: Prepared, module: Servable,
             check: ExportCheck) -> ModelManifest:
    regression = data.info.task == "regression"
    target = (Scaling(mean=data.target.mean.tolist(), std=data.target.std.tolist())
              if regression else None)
    return ModelManifest(
        job_id=job.job_id, task=data.info.task, spec=job.spec.model_dump(mode="json"),
        feature_names=job.names.feature_names, input_width=data.info.n_features,
        input_shape=list(data.input_shape), classes=job.names.classes,
        target=job.names.target,
        target_units=f"the original units of {job.names.target or 'the target'}"
        if regression else None,
        outputs=module.outputs,
        standardization=Standardization(
            features=Scaling(mean=data.features.mean.tolist(), std=data.features.std.tolist()),
            target=target),
        weights_epoch=job.weights_epoch, test_metrics=job.test_metrics, versions=versions(),
        check=check)


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "opset": str(OPSET), "numpy": np.__version__}
