"""The end of a completed run: every split evaluated with the final (or restored best)
weights, the classification report, recorded predictions and the sharpness measures."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
import torch

from app import spec as s
from app.training.experiments.ensemble import RECORDED_DECIMALS
from app.training.metrics import Evaluator, confusion_matrix, macro_f1
from app.training.models import count_parameters
from app.training.regularize import BestTracker
from app.training.results import GradNorms, Pruned, SharpnessResult, Summary


@dataclass(frozen=True)
class RunFacts:
    """How the loop went, as the summary reports it."""

    epochs_completed: int
    best: BestTracker
    stopped_epoch: int | None
    pruned: Pruned | None
    restored_best_weights: bool
    grad_norms: GradNorms | None = None  # training.record_grad_norms


def summarize(spec: s.JobSpec, ev: Evaluator, device: torch.device, run: RunFacts) -> Summary:
    data, task = ev.data, ev.data.info.task
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}
    final = {name: {k: float(v) for k, v in ev.metrics(x, y).items()}
             for name, (x, y) in splits.items() if x.shape[0] > 0}
    main = {"classification": "accuracy", "reconstruction": "mse"}.get(task, "rmse")
    summary = Summary(
        task=task, epochs_completed=run.epochs_completed,
        best_epoch=run.best.best_epoch if run.best.best_epoch > 0 else None,
        monitor=run.best.monitor, best_value=run.best.best,
        early_stopped=run.stopped_epoch is not None and run.pruned is None,
        stopped_epoch=run.stopped_epoch, pruned=run.pruned,
        restored_best_weights=run.restored_best_weights,
        parameters=count_parameters(ev.model),
        rows={"train": int(data.x_train.shape[0]), "val": int(data.x_val.shape[0]),
              "test": int(data.x_test.shape[0])},
        seed=spec.training.seed, device=str(device), versions=versions(),
        train=final["train"], val=final.get("val"), test=final["test"],
        generalization_gap={k: final["train"][k] - final["test"][k] for k in ("loss", main)})
    if task == "classification":
        cm = confusion_matrix(ev.labels(data.x_test), data.y_test, data.info.n_classes).cpu()
        summary.macro_f1, summary.confusion_matrix = macro_f1(cm), cm.tolist()
    if spec.training.record_predictions:
        summary.predictions = predictions(ev)
    if spec.training.sharpness is not None:
        summary.sharpness = sharpness(ev, spec.training.sharpness, spec.training.seed)
    summary.grad_norms = run.grad_norms
    return summary


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scikit_learn": sklearn.__version__}


def predictions(ev: Evaluator) -> dict[str, list[Any]]:
    """Class probabilities, or values in original units, for dev and test rows."""
    data = ev.data
    out: dict[str, list[Any]] = {}
    for name, x in {"dev": data.x_dev, "test": data.x_test}.items():
        if x is None:
            continue
        raw = ev.outputs(x)
        if data.info.task == "regression":
            scale = data.target
            values = raw.squeeze(1).cpu().double().numpy() * scale.std[0] + scale.mean[0]
        elif data.info.task == "reconstruction":  # the features, in their original units
            scale = data.features
            values = raw.cpu().double().numpy() * scale.std + scale.mean
        elif ev.binary_logit:
            p = torch.sigmoid(raw)
            values = torch.cat([1 - p, p], dim=1).cpu().numpy()
        else:
            values = torch.softmax(raw, dim=1).cpu().numpy()
        out[name] = np.round(values, RECORDED_DECIMALS).tolist()  # what ensembles read
    return out


def sharpness(ev: Evaluator, spec: s.Sharpness, seed: int) -> SharpnessResult:
    from app.training.sharpness import epsilon_sharpness, top_hessian_eigenvalue

    x, y = ev.data.x_train[: spec.max_rows], ev.data.y_train[: spec.max_rows]
    model = ev.model
    model.eval()

    def closure() -> torch.Tensor:
        return ev.loss_fn(model(x).float(), y)

    top = top_hessian_eigenvalue(model, closure, spec.power_iterations, seed)
    sharp = epsilon_sharpness(model, closure, spec.epsilon, spec.ascent_steps)
    return SharpnessResult(hessian_top_eigenvalue=top, epsilon_sharpness=sharp,
                           epsilon=spec.epsilon, rows=int(x.shape[0]))
