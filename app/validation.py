"""Checks that need to know the data: task vs loss, shapes, and the limits.

Each problem is reported with the JSON path of the field and a reason a person
can act on; the API turns them into one 422 before anything is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app import spec as s
from app.config import Limits
from app.training import shapes
from app.training.metric_names import epoch_metric_names as epoch_metric_names  # re-exported


@dataclass
class Problem:
    loc: tuple[str | int, ...]
    msg: str


class SpecRejected(ValueError):
    def __init__(self, problems: list[Problem], status: int = 422) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))
        self.problems, self.status = problems, status


def _reconstruction_problems(spec: s.JobSpec) -> list[Problem]:
    """A pretext job predicts its own inputs: squared error, no labels, no pasted patches."""
    problems = []
    if spec.loss.kind != "mse":
        problems.append(Problem(("loss", "kind"), f"task reconstruction predicts the input "
                                f"features with loss mse, not {spec.loss.kind}"))
    if spec.data.labels is not None:
        problems.append(Problem(("data", "labels"), "task reconstruction uses no labels; "
                                "leave data.labels out (it pretrains on every training row)"))
    if spec.regularization.cutmix is not None:
        problems.append(Problem(("regularization", "cutmix"), "task reconstruction would "
                                "need the pasted patch in its targets too; use mixup, "
                                "input_noise or input_mask"))
    return problems


def _task_problems(spec: s.JobSpec, info: shapes.DataInfo) -> list[Problem]:
    if info.task == "reconstruction":
        return _reconstruction_problems(spec)
    loss = spec.loss
    wants = "classification" if loss.kind in s.CLASSIFICATION_LOSSES else "regression"
    if wants != info.task:
        return [Problem(("loss", "kind"), f"{loss.kind} is a {wants} loss but the data is a "
                        f"{info.task} task; use " + ("cross_entropy, nll or bce"
                                                     if info.task == "classification"
                                                     else "mse, mae or huber"))]
    problems = []
    if loss.kind == "bce" and info.n_classes != 2:
        problems.append(Problem(("loss", "kind"), f"bce is binary but the data has "
                                f"{info.n_classes} classes; use cross_entropy"))
    weights = getattr(loss, "class_weights", None)
    if weights is not None and len(weights) != info.n_classes:
        problems.append(Problem(("loss", "class_weights"), f"has {len(weights)} entries for "
                                f"{info.n_classes} classes"))
    return problems


def _shape_problems(spec: s.JobSpec, info: shapes.DataInfo) -> list[Problem]:
    shape = shapes.effective_input_shape(spec.data, info)
    problems = []
    if math.prod(shape) != info.n_features:
        problems.append(Problem(("data", "input_shape"), f"{list(shape)} holds "
                                f"{math.prod(shape)} values but each row has "
                                f"{info.n_features} features"))
    if isinstance(spec.model, s.RNN | s.Transformer):
        if len(shape) != 2:
            problems.append(Problem(("data", "input_shape"), f"is {list(shape)}, but "
                                    f"{s.SEQUENCE_VIEW}; set data.input_shape to [C, L] "
                                    "(digits: [8, 8] reads each image column by column)"))
        return problems
    needs_shape = isinstance(spec.model, s.CNN) or spec.regularization.cutmix is not None \
        or spec.regularization.augment is not None
    if needs_shape and len(shape) < 2:
        field = "model" if isinstance(spec.model, s.CNN) else "regularization"
        problems.append(Problem((field,), "needs image or sequence data: set data.input_shape "
                                "to [channels, length] or [channels, height, width]"))
    return problems


def _training_problems(spec: s.JobSpec, info: shapes.DataInfo) -> list[Problem]:
    problems = []
    reg, has_val = spec.regularization, spec.data.split.val > 0
    known = epoch_metric_names(info.task, has_val)
    monitors: list[tuple[tuple[str, ...], str]] = []
    if reg.early_stopping is not None:
        monitors.append((("regularization", "early_stopping", "monitor"),
                         reg.early_stopping.monitor))
    if isinstance(spec.schedule, s.ReduceOnPlateau):
        monitors.append((("schedule", "monitor"), spec.schedule.monitor))
    for loc, name in monitors:
        if name not in known:
            hint = "" if has_val else " (no validation split: data.split.val is 0)"
            problems.append(Problem(loc, f"'{name}' is not logged for this job{hint}; "
                                    f"choose one of {sorted(known)}"))
    until = spec.training.until
    if until is not None and until.train_accuracy is not None and info.task != "classification":
        problems.append(Problem(("training", "until", "train_accuracy"), "is logged for "
                                "classification only; use train_loss"))
    if shapes.uses_batch_norm(spec.model) and spec.training.batch_size == 1:
        problems.append(Problem(("training", "batch_size"), shapes.BATCH_NORM_NEEDS_TWO))
    return problems + _recurrent_problems(spec)


def _recurrent_problems(spec: s.JobSpec) -> list[Problem]:
    """What torch's recurrent kernels cannot do (each failed in a worker when accepted)."""
    model, tr = spec.model, spec.training
    if not isinstance(model, s.RNN):
        return []
    problems = []
    if model.cell == "lstm" and tr.precision == "bf16":
        problems.append(Problem(("training", "precision"), "bf16 autocast of an lstm fails "
                                "in oneDNN on CPUs without bf16 support; use fp32 or cell: gru"))
    if tr.sharpness is not None and tr.device != "cpu":
        problems.append(Problem(("training", "sharpness"), "needs second derivatives, which "
                                "cuDNN's recurrent kernels do not provide; set "
                                "training.device to cpu or leave sharpness out"))
    return problems


def _normalized_maps(model: s.MLP | s.CNN, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(channels, values per channel) at each norm layer, as models.py builds them."""
    if isinstance(model, s.MLP):
        return [(1, w) if model.norm == "instance" else (w, 1) for w in model.hidden]
    spatial, out = shape[1:], []
    for c in model.channels:
        out.append((c, math.prod(spatial)))
        if model.pool != "none" and min(spatial) >= 2:
            spatial = tuple(d // 2 for d in spatial)
    return out


def _norm_problems(spec: s.JobSpec, info: shapes.DataInfo) -> list[Problem]:
    """Instance and group norms divide by a standard deviation over values torch insists
    are more than one (group norm even in eval); a spec that leaves one fails in the worker."""
    model, shape = spec.model, shapes.effective_input_shape(spec.data, info)
    if isinstance(model, s.RNN | s.Transformer):
        return []  # a Transformer's layer norms read d_model values per token, never one
    maps = _normalized_maps(model, shape)
    where = "hidden" if isinstance(model, s.MLP) else "channels"
    if model.norm == "instance":
        for i, (_, values) in enumerate(maps):
            if values < 2:
                return [Problem(("model", "norm"), f"instance norm needs at least 2 values "
                                f"per channel but {where}[{i}] has 1; use another norm"
                                + ("" if where == "hidden" else " or less pooling"))]
    n_train = shapes.train_rows(info, spec.data.split)
    if model.norm == "batch" and spec.training.batch_size != 1 and n_train < 2:
        return [Problem(("data", "split"), f"batch norm needs batches of 2 rows but the "
                        f"training split gets {n_train} row; lower data.split.val or test")]
    grouped = model.norm == "group" or (model.norm == "layer" and where == "channels")
    groups = model.groups if model.norm == "group" else 1  # a conv layer norm is 1 group
    if grouped:
        for i, (channels, values) in enumerate(maps):
            if channels // groups * values < 2:
                return [Problem(("model", "groups" if groups > 1 else "norm"),
                                f"{model.norm} norm leaves one value per group at "
                                f"{where}[{i}]: it would normalize it to 0, and torch "
                                "refuses it on a one-row batch or eval chunk; use fewer "
                                "groups or more channels")]
    return []


def _split_problems(spec: s.JobSpec, info: shapes.DataInfo) -> list[Problem]:
    """The split must leave training rows, and a stratified split puts at least one row of
    every class in each split, so each split needs n_classes rows (else the worker fails)."""
    split = spec.data.split
    n_test = math.ceil(info.n_rows * split.test)
    n_train = shapes.train_rows(info, split)
    if n_train < 1:
        return [Problem(("data", "split"), f"val {split.val:g} and test {split.test:g} leave "
                        f"no training rows of {info.n_rows}; lower them")]
    folds = (_fold_problems(spec.data.rows, info, info.n_rows - n_test)
             if isinstance(spec.data.rows, s.FoldRows) else [])
    if info.task != "classification" or not split.stratify:
        return folds
    sizes = {"test": n_test, "train": n_train, "val": info.n_rows - n_test - n_train}
    for name, rows in sizes.items():
        if (rows > 0 or name != "val") and rows < info.n_classes:
            return [Problem(("data", "split", "stratify"), f"a stratified split needs at least "
                            f"{info.n_classes} rows (one per class) in each split but the "
                            f"{name} split gets {rows} of {info.n_rows}; use more rows, a "
                            "larger split fraction, or stratify: false")]
    return folds


def _fold_problems(rows: s.FoldRows, info: shapes.DataInfo, dev: int) -> list[Problem]:
    """k folds need k development rows; stratified, they need a class of at least k rows,
    which the data guarantees (pigeonhole) only up to ceil(rows / classes)."""
    if rows.k > dev:
        return [Problem(("data", "rows", "k"), f"{rows.k} folds need at least {rows.k} "
                        f"development rows but there are {dev}; use a smaller k")]
    largest = math.ceil(dev / info.n_classes) if info.task == "classification" else dev
    if rows.stratify and rows.k > largest:
        return [Problem(("data", "rows", "k"), f"{rows.k} stratified folds need a class with "
                        f"at least {rows.k} rows, which {dev} development rows over "
                        f"{info.n_classes} classes guarantee only up to k={largest}; use a "
                        "smaller k or stratify: false")]
    return []


def _limit_problems(spec: s.JobSpec, info: shapes.DataInfo, limits: Limits) -> list[Problem]:
    checks = [
        (("model",), "parameters", shapes.parameter_count(spec, info), limits.max_parameters),
        (("model",), "layers", shapes.layer_count(spec), limits.max_layers),
        (("model",), "width", shapes.max_width(spec), limits.max_width),
        (("training", "epochs"), "epochs", spec.training.epochs, limits.max_epochs),
        (("training", "epochs"), "work (epochs x training rows)",
         spec.training.epochs * shapes.train_rows(info, spec.data.split), limits.max_work),
    ]
    if isinstance(spec.training.batch_size, int):
        checks.append((("training", "batch_size"), "batch_size", spec.training.batch_size,
                       limits.max_batch_size))
    if isinstance(spec.data.source, s.GeneratorBase):
        checks.append((("data", "source", "n_samples"), "generated rows", info.n_rows,
                       limits.max_rows_synthetic))
        checks.append((("data", "source", "n_samples"), "generated values (rows x features)",
                       info.n_rows * info.n_features, limits.max_synthetic_values))
    return [Problem(loc, f"{what} {value:,} exceeds the limit {cap:,}")
            for loc, what, value, cap in checks if value > cap]


_PARTS = {  # MemoryEstimate field: (what the message calls it, the field to change, advice)
    "data": ("data", ("data", "source"), "use fewer rows or features"),
    "parameters": ("weights and optimizer state", ("model",), "use a smaller model"),
    "activations": ("activations", ("training", "batch_size"), "lower training.batch_size"),
    "eval_outputs": ("evaluation outputs", ("data", "source"), "use fewer rows or classes"),
    "predictions": ("recorded predictions", ("training", "record_predictions"),
                    "turn off training.record_predictions or use fewer rows"),
}


def _memory_problems(spec: s.JobSpec, info: shapes.DataInfo, limits: Limits) -> list[Problem]:
    """What a worker would need (shapes.memory_estimate) against the memory caps."""
    est, h = shapes.memory_estimate(spec, info), shapes.human_bytes
    cap, problems = limits.max_activation_bytes, []
    widths = {"cnn": "channels", "mlp": "hidden widths", "rnn": "hidden size",
              "transformer": "d_model, heads or ff"}[spec.model.kind]
    if est.train_batch > cap:
        problems.append(Problem(("training", "batch_size"), f"needs about {h(est.train_batch)} "
                                f"of activations per training batch of {est.batch_rows:,} rows; "
                                f"the limit max_activation_bytes is {h(cap)}; lower batch_size "
                                f"or the model's {widths}"))
    if est.sharpness > cap:
        problems.append(Problem(("training", "sharpness", "max_rows"), "the sharpness measure "
                                f"needs about {h(est.sharpness)} of activations on "
                                f"{est.sharpness_rows:,} rows; the limit max_activation_bytes "
                                f"is {h(cap)}; lower max_rows"))
    if est.total > limits.max_memory_bytes:
        sizes = {part: getattr(est, part) for part in _PARTS}
        largest = max(sizes, key=sizes.__getitem__)
        parts = ", ".join(f"{_PARTS[p][0]} {h(n)}" for p, n in sizes.items() if n)
        problems.append(Problem(_PARTS[largest][1], f"needs about {h(est.total)} of memory in "
                                f"a worker ({parts}); the limit max_memory_bytes is "
                                f"{h(limits.max_memory_bytes)}; {_PARTS[largest][2]}"))
    return problems


def check_spec(spec: s.JobSpec, info: shapes.DataInfo, limits: Limits) -> None:
    """Raise SpecRejected listing every problem (empty list: the spec can run). ``info`` is
    the source's: it splits the rows whatever the task; ``shapes.job_info`` gives the rest."""
    if info.task == "unlabeled" and spec.task != "reconstruction":
        raise SpecRejected([Problem(("task",), "the dataset was uploaded without a target "
                                    "(task unlabeled): only task reconstruction can use it")])
    job = shapes.job_info(spec.task, info)
    problems = _task_problems(spec, job) + _shape_problems(spec, job)
    problems += _training_problems(spec, job) + _split_problems(spec, info)
    if not problems:  # the layers' sizes need a consistent shape
        problems += _norm_problems(spec, info)
    if not problems:  # counting parameters needs a consistent shape
        problems += _limit_problems(spec, info, limits)
    if not problems:  # the memory estimate is derived from the capped sizes: name those first
        problems += _memory_problems(spec, info, limits)
    if problems:
        raise SpecRejected(problems)
