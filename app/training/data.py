"""Data: load a source, split it, standardize on train only, place it on the device once.

The whole dataset lives as tensors on the training device; batches are index
slices of a per-epoch permutation (see ``loop.py``), never a DataLoader.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

from app import spec as s
from app.training.errors import DataError as DataError  # its home; imported from here too
from app.training.labels import labelled_subset
from app.training.resample import resample
from app.training.sequences import motif_order
from app.training.shapes import (
    BUILTIN_INFO,
    DataInfo,
    effective_input_shape,
    job_info,
    train_rows,
)


@dataclass
class Uploaded:
    """An uploaded dataset as the caller resolved it: the arrays and the row shape stored with
    them at upload (a CNN views each row so unless the spec gives data.input_shape)."""

    x: np.ndarray
    y: np.ndarray
    input_shape: tuple[int, ...] | None = None
    task: s.Task | None = None  # the dataset's own (a reconstruction job splits by it)


# Uploaded datasets are resolved by the caller (the worker reads them from SQL).
ArrayLoader = Callable[[str], Uploaded]


@dataclass
class Arrays:
    x: np.ndarray  # (rows, features) float32
    y: np.ndarray  # (rows,) int64 labels or float32 targets
    info: DataInfo


@functools.cache
def load_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read once per process (digits: ~20 ms of CSV parsing per job otherwise); the arrays
    are read-only because every job shares them."""
    bunch = getattr(skd, f"load_{name}")()
    x, y = np.asarray(bunch.data), np.asarray(bunch.target)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _spirals(src: s.SpiralsSource) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(src.seed)
    y = np.arange(src.n_samples) % src.n_classes
    t = rng.uniform(0.05, 1.0, src.n_samples)
    angle = 2 * math.pi * (src.turns * t + y / src.n_classes)
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) * 3.0
    return x + rng.normal(0, src.noise * 0.3, x.shape), y


FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sin": np.sin,
    "cos": np.cos,
    "abs": np.abs,
    "square": np.square,
    "step": lambda x: (x > 0).astype(np.float64),
    "sawtooth": lambda x: x - np.floor(x),
}


def _function(src: s.FunctionSource) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(src.seed)
    x = rng.uniform(src.x_min, src.x_max, src.n_samples)
    y = FUNCTIONS[src.fn](x) + rng.normal(0, src.noise, src.n_samples)
    return x[:, None], y


def _clusters_per_class(src: s.MakeClassificationSource) -> int:
    """scikit-learn's default is 2, which needs 2 x n_classes <= 2**n_informative; the spec
    allows n_classes up to 2**n_informative, so those specs get one cluster per class."""
    return 2 if 2 * src.n_classes <= 2**src.n_informative else 1


def generate(src: s.GeneratorBase) -> tuple[np.ndarray, np.ndarray]:
    """Rows from a synthetic generator; a pure function of its parameters and seed."""
    n, seed = src.n_samples, src.seed
    match src:
        case s.MoonsSource():
            return skd.make_moons(n, noise=src.noise, random_state=seed)
        case s.CirclesSource():
            return skd.make_circles(n, noise=src.noise, factor=src.factor, random_state=seed)
        case s.BlobsSource():
            return skd.make_blobs(
                n, n_features=src.n_features, centers=src.centers,
                cluster_std=src.cluster_std, random_state=seed,
            )
        case s.SpiralsSource():
            return _spirals(src)
        case s.MakeClassificationSource():
            return skd.make_classification(
                n, n_features=src.n_features, n_informative=src.n_informative,
                n_redundant=src.n_redundant, n_classes=src.n_classes,
                class_sep=src.class_sep, flip_y=src.flip_y, random_state=seed,
                n_clusters_per_class=_clusters_per_class(src),
            )
        case s.MakeRegressionSource():
            return skd.make_regression(
                n, n_features=src.n_features, n_informative=min(src.n_informative,
                src.n_features), noise=src.noise, random_state=seed,
            )
        case s.FunctionSource():
            return _function(src)
        case s.MotifOrderSource():
            return motif_order(src)
    raise DataError(f"unknown generator {src!r}")


def arrays_info(x: np.ndarray, y: np.ndarray, task: s.Task,
                input_shape: tuple[int, ...] | None = None) -> DataInfo:
    n_classes = int(y.max()) + 1 if task == "classification" else 0
    return DataInfo(task, x.shape[0], x.shape[1], n_classes, input_shape)


def load_arrays(source: s.BuiltinSource | s.GeneratorBase | s.DatasetSource,
                uploaded: ArrayLoader | None = None, task: s.Task | None = None) -> Arrays:
    """Load any source as (x float32, y) with its DataInfo."""
    if isinstance(source, s.BuiltinSource):
        x, y = load_builtin(source.builtin)
        info = BUILTIN_INFO[source.builtin]
    elif isinstance(source, s.DatasetSource):
        if uploaded is None or task is None:
            raise DataError(f"dataset {source.dataset} cannot be resolved here")
        loaded = uploaded(source.dataset)
        x, y = loaded.x, loaded.y
        info = arrays_info(x, y, loaded.task or task, loaded.input_shape)
    else:
        from app.training.shapes import synthetic_info

        x, y = generate(source)
        info = synthetic_info(source)
    y_cast = y.astype(np.int64) if info.task == "classification" else y.astype(np.float32)
    return Arrays(np.asarray(x, dtype=np.float32), y_cast, info)


@dataclass
class SplitIndices:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(y: np.ndarray, split: s.Split, info: DataInfo) -> SplitIndices:
    """Train/val/test row indices with the exact counts of ``shapes.train_rows``."""
    n = len(y)
    idx = np.arange(n)
    strat = split.stratify and info.task == "classification"
    n_test = math.ceil(n * split.test)
    n_train = train_rows(info, split)
    try:
        rest, test = train_test_split(idx, test_size=n_test, random_state=split.seed,
                                      stratify=y if strat else None)
        if n_train == len(rest):
            return SplitIndices(np.sort(rest), np.array([], dtype=np.int64), np.sort(test))
        train, val = train_test_split(rest, train_size=n_train, random_state=split.seed + 1,
                                      stratify=y[rest] if strat else None)
    except ValueError as exc:  # e.g. a class with a single row cannot be stratified
        raise DataError(f"cannot split the data as asked: {exc}") from exc
    return SplitIndices(np.sort(train), np.sort(val), np.sort(test))


@dataclass
class Standardizer:
    """Affine scaling fitted on the training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    @classmethod
    def identity(cls, width: int) -> Standardizer:
        return cls(np.zeros(width, dtype=np.float32), np.ones(width, dtype=np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


@dataclass
class Prepared:
    """A job's data, resident on the training device."""

    info: DataInfo
    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    features: Standardizer
    target: Standardizer  # regression targets; identity for classification
    dev_index: np.ndarray | None = None  # sorted train+val row indices (predictions order)
    x_dev: torch.Tensor | None = None  # those rows, standardized (record_predictions only)

    @property
    def has_val(self) -> bool:
        return self.x_val.shape[0] > 0


def _check_shape(data: s.Data, info: DataInfo) -> tuple[int, ...]:
    shape = effective_input_shape(data, info)
    if math.prod(shape) != info.n_features:
        raise DataError(f"data.input_shape {list(shape)} holds {math.prod(shape)} values but "
                        f"each row has {info.n_features} features")
    return shape


def prepare(data: s.Data, arrays: Arrays, device: torch.device,
            keep_dev: bool = False, task: s.JobTask = "supervised") -> Prepared:
    """Split, standardize on train only, and move every split to ``device`` once.

    The split is the source's own (stratified by its labels when it has classes) whatever
    the task, so a reconstruction job pretrains on exactly the training rows a supervised
    job on the same data and split trains on, never on its validation or test rows."""
    info, x, y = arrays.info, arrays.x, arrays.y
    shape = _check_shape(data, info)
    idx = split_indices(y, data.split, info)
    dev = np.sort(np.concatenate([idx.train, idx.val]))
    if data.target_offset is not None:
        y = _offset_targets(y, dev, data.target_offset, info)
    if data.rows is not None:
        labels = y[dev] if info.task == "classification" else None
        try:
            train, val = resample(dev, labels, data.rows)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        idx = SplitIndices(train, val, idx.test)
    if data.labels is not None:
        idx.train = labelled_subset(idx.train, y, data.labels, info.task == "classification",
                                    info.n_classes)
    width = x.shape[1]
    features = Standardizer.fit(x[idx.train]) if data.standardize else Standardizer.identity(width)
    regression = info.task == "regression" and data.standardize_target
    target = Standardizer.fit(y[idx.train, None]) if regression else Standardizer.identity(1)
    info = job_info(task, info)

    def to_device(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xs = torch.from_numpy(features.apply(x[rows])).to(device)
        if info.task == "reconstruction":  # the targets are the inputs (one tensor)
            return xs, xs
        ys = y[rows]
        if info.task == "regression":
            ys = target.apply(ys[:, None])[:, 0]
        return xs, torch.from_numpy(ys).to(device)

    (xt, yt), (xv, yv), (xs, ys) = (to_device(i) for i in (idx.train, idx.val, idx.test))
    x_dev = torch.from_numpy(features.apply(x[dev])).to(device) if keep_dev else None
    return Prepared(info, shape, xt, yt, xv, yv, xs, ys, features, target, dev, x_dev)


def _offset_targets(y: np.ndarray, dev: np.ndarray, offset: list[float],
                    info: DataInfo) -> np.ndarray:
    if info.task != "regression":
        raise DataError("data.target_offset applies to regression data only")
    if len(offset) != len(dev):
        raise DataError(f"data.target_offset has {len(offset)} values for {len(dev)} "
                        "development rows")
    shifted = y.copy()
    shifted[dev] -= np.asarray(offset, dtype=shifted.dtype)
    return shifted
