"""The catalog: every spec option and experiment kind with its parameters, generated from
``app.spec`` and ``app.experiment_spec``.

Built from the pydantic models' JSON schemas, so it cannot drift from what the
API accepts.
"""

from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from app import experiment_spec as e
from app import spec as s

COMPONENTS: dict[str, tuple[str, list[type[BaseModel]]]] = {
    "data.source": ("builtin", [s.BuiltinSource, s.MoonsSource, s.CirclesSource, s.BlobsSource,
                                s.SpiralsSource, s.MakeClassificationSource,
                                s.MakeRegressionSource, s.FunctionSource, s.MotifOrderSource,
                                s.DatasetSource]),
    "model": ("kind", [s.MLP, s.CNN, s.RNN, s.Transformer]),
    "loss": ("kind", [s.CrossEntropy, s.NLL, s.BCE, s.MSE, s.MAE, s.Huber]),
    "optimizer": ("kind", [s.SGD, s.Adagrad, s.Adadelta, s.RMSprop, s.Adam, s.AdamW]),
    "schedule": ("kind", [s.Constant, s.Step, s.MultiStep, s.Exponential, s.Cosine, s.OneCycle,
                          s.ReduceOnPlateau]),
}
BLOCKS: dict[str, type[BaseModel]] = {
    "data": s.Data, "data.split": s.Split, "regularization": s.Regularization,
    "regularization.early_stopping": s.EarlyStopping, "regularization.mixup": s.Mix,
    "regularization.cutmix": s.Mix, "regularization.augment": s.Augment, "training": s.Training,
    "model.init_from": s.InitFrom, "data.labels": s.Labels,
}
EXPERIMENTS: list[type[BaseModel]] = [e.CrossValidation, e.Sweep, e.Bagging, e.Boosting,
                                      e.BiasVariance, e.BatchSize, e.OptimizerComparison,
                                      e.Depth]
VALUES = ("default", "enum", "const", "examples")  # user data, shown as it is
KEEP = ("type", "default", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "minItems", "maxItems", "items", "anyOf", "description", "examples")


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return {"object": node["$ref"].rsplit("/", 1)[-1]}
        return {k: v if k in VALUES else _resolve(v, defs) for k, v in node.items()
                if k in KEEP or k == "prefixItems"}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def parameters(model: type[BaseModel], *skip: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    return {name: _resolve(prop, defs) for name, prop in schema.get("properties", {}).items()
            if name not in skip}


def _option_name(model: type[BaseModel], key: str) -> str:
    if model is s.BuiltinSource:
        return "builtin"
    if model is s.DatasetSource:
        return "dataset"
    default = model.model_fields[key].default
    if isinstance(default, str):
        return default
    return str(typing.get_args(model.model_fields[key].annotation)[0])


def _summary(model: type[BaseModel]) -> str:
    """The docstring's first paragraph on one line."""
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


@lru_cache(maxsize=1)
def catalog() -> dict[str, Any]:
    components = {}
    for path, (key, models) in COMPONENTS.items():
        options = {}
        for model in models:
            tag = "synthetic" if "synthetic" in model.model_fields else key
            name = _option_name(model, tag)
            options[name] = {"select_with": {tag: name} if tag != "dataset" else {"dataset": "ID"},
                             "description": _summary(model),
                             "parameters": parameters(model, tag)}
        if path == "data.source":
            options["builtin"]["select_with"] = {"builtin": list(typing.get_args(
                s.BuiltinSource.model_fields["builtin"].annotation))}
        components[path] = {"discriminator": key if path != "data.source" else
                            "builtin | synthetic | dataset", "options": options}
    blocks = {path: {"description": _summary(m), "parameters": parameters(m)}
              for path, m in BLOCKS.items()}
    experiments = {_option_name(m, "kind"): {
        "description": _summary(m),
        "parameters": parameters(m, "kind", "base")} for m in EXPERIMENTS}
    blocks["task"] = {"description": "What a job learns: its data's target, or its own inputs "
                      "(a self-supervised pretext task); the spec's top-level field.",
                      "parameters": {"task": parameters(s.JobSpec)["task"]}}
    blocks["sweep.objective"] = {"description": _summary(e.Objective),
                                 "parameters": parameters(e.Objective)}
    blocks["sweep.early_termination"] = {"description": _summary(e.MedianStopping),
                                         "parameters": parameters(e.MedianStopping)}
    return {"version": 1, "components": components, "blocks": blocks,
            "experiments": experiments}
