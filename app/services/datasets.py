"""Uploaded datasets: parse CSV or NPZ, refuse bad data with a reason, store a normalized NPZ.

Nothing unpickles (``allow_pickle=False``); the stored name is generated; the
client's file name is kept only as a sanitized label.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import zipfile
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npy
from sqlalchemy.orm import Session

from app import repository as repo
from app.clock import new_id, utcnow
from app.config import Limits
from app.errors import TooLarge, Unprocessable
from app.models import Dataset
from app.services import cursors, idempotency, usage
from app.services.rows import found
from app.training.blobs import sha256

MAX_AUTO_CLASSES = 50  # task=auto: an integer target with at most this many values is a class
UNLABELED = "unlabeled"  # features only, no target: for task reconstruction (pretext) jobs
NO_TARGET = -1  # the target's column index in an unlabeled CSV


def _bad(field: str, message: str) -> Unprocessable:
    return Unprocessable(message, fields=[{"loc": field, "message": message}])


def safe_label(name: str | None) -> str:
    """A display label from a client file name: no directories, no control characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip(" .")
    return base[:200] or "dataset"


@dataclass
class Parsed:
    x: np.ndarray
    y_raw: np.ndarray
    feature_names: list[str]
    target: str
    natural_shape: list[int] | None = None


def _float(value: str, row: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        message = f"row {row}, column '{column}': '{value[:40]}' is not a number"
        raise _bad("file", message) from None


def check_size(rows: int, features: int, limits: Limits) -> None:
    """The caps on the decoded data, checked before it is decoded (NPZ headers) or as it is
    parsed (CSV rows), so a small upload cannot expand into a huge array."""
    if rows > limits.max_dataset_rows:
        raise _bad("file", f"{rows:,} rows exceed the limit max_dataset_rows "
                   f"{limits.max_dataset_rows:,}")
    if features > limits.max_dataset_columns:
        raise _bad("file", f"{features:,} columns exceed the limit max_dataset_columns "
                   f"{limits.max_dataset_columns:,}")
    decoded = rows * features * 8
    if decoded > limits.max_dataset_decoded_bytes:
        raise _bad("file", f"{rows:,} rows x {features:,} features decode to {decoded:,} bytes, "
                   f"over the limit max_dataset_decoded_bytes "
                   f"{limits.max_dataset_decoded_bytes:,}")


def _csv_header(rows: Iterator[list[str]], target: str | None, limits: Limits,
                labelled: bool = True) -> tuple[list[str], int]:
    header = next(rows, None)
    if header is None:
        raise _bad("file", "CSV is empty: it needs a header row and at least one data row")
    header = [h.strip() for h in header]
    check_size(0, len(header) - labelled, limits)
    if not labelled:
        if target:
            raise _bad("target", "task unlabeled reads every column as a feature; leave "
                       "target out (or upload with the target and use its features)")
        return header, NO_TARGET
    if not target:
        raise _bad("target", "name the CSV's target column (form field 'target')")
    if target not in header:
        raise _bad("target", f"no column '{target}' in the header {header[:20]}")
    if len(header) < 2:
        raise _bad("file", "CSV has no feature columns besides the target")
    return header, header.index(target)


# A physical line may hold this many times the column cap in commas (quoted fields may hold
# commas) before it is refused unparsed: csv.reader builds a whole row as a list first, so a
# 64 MiB line of commas would otherwise become ~64 M strings before any cap could see it.
COMMA_SLACK = 4


def bounded_lines(lines: Iterator[str], limits: Limits) -> Iterator[str]:
    most = COMMA_SLACK * (limits.max_dataset_columns + 1)
    for number, line in enumerate(lines, start=1):
        if line.count(",") > most:
            raise _bad("file", f"line {number} has over {most:,} commas: more columns than the "
                       f"limit max_dataset_columns {limits.max_dataset_columns:,}")
        yield line


def parse_csv(content: bytes, target: str | None, limits: Limits,
              labelled: bool = True) -> Parsed:
    """Streams the rows: counts are checked against the caps as they are read, and values
    go into one flat float64 buffer (no list of rows of strings)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("file", "CSV must be UTF-8 text") from None
    # newline="": the csv module's own line handling (CR-only files too)
    lines = bounded_lines(io.StringIO(text, newline=""), limits)
    rows = (r for r in csv.reader(lines) if any(c.strip() for c in r))
    try:
        header, t = _csv_header(rows, target, limits, labelled)
        width = len(header) - labelled
        values, y = array("d"), []
        for i, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise _bad("file", f"row {i} has {len(row)} fields but the header has "
                           f"{len(header)}")
            check_size(i - 1, width, limits)
            y.append(row[t].strip() if labelled else "")
            values.extend(_float(v, i, header[j]) for j, v in enumerate(row) if j != t)
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise _bad("file", f"not a readable CSV: {exc}") from None
    if not y:
        raise _bad("file", "CSV is empty: it needs a header row and at least one data row")
    x = np.frombuffer(values, dtype=np.float64).reshape(len(y), width)
    return Parsed(x, np.array(y), [h for i, h in enumerate(header) if i != t],
                  header[t] if labelled else "")


NPZ_KINDS = {"X": "biuf", "y": "biufUS"}  # numeric features; numeric or text labels


NPZ_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def check_compression(archive: zipfile.ZipFile) -> None:
    """numpy writes members stored (savez) or deflated (savez_compressed); any other method
    is refused by name here rather than failing somewhere inside zipfile."""
    for info in archive.infolist():
        if info.compress_type not in NPZ_COMPRESSION:
            raise _bad("file", f"NPZ member {info.filename[:60]!r} uses compression method "
                       f"{info.compress_type}; use numpy.savez or numpy.savez_compressed")


def npz_headers(archive: zipfile.ZipFile,
                labelled: bool = True) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of X and y (X only when unlabeled) from their .npy headers, without
    decoding any data."""
    names = {n.removesuffix(".npy") for n in archive.namelist()}
    wanted = NPZ_KINDS if labelled else {"X": NPZ_KINDS["X"]}
    if not set(wanted) <= names:
        raise _bad("file", f"NPZ needs arrays {' and '.join(map(repr, wanted))}; it has "
                   f"{sorted(names)[:20]}")
    check_compression(archive)
    out = {}
    for name, kinds in wanted.items():
        with archive.open(f"{name}.npy") as member:
            version = npy.read_magic(member)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _fortran, dtype = read(member)
        if dtype.kind not in kinds:
            raise _bad("file", f"{name} must be {'numeric' if name == 'X' else 'numbers or text'}"
                       f"; got dtype {dtype} (object/pickled arrays are never loaded)")
        out[name] = (tuple(shape), dtype)
    return out


def check_npz_shapes(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]],
                     limits: Limits) -> None:
    xs = headers["X"][0]
    if len(xs) < 2:
        raise _bad("file", f"X must be (rows, features...); got X{xs}")
    check_size(xs[0], math.prod(xs[1:]), limits)
    if "y" not in headers:
        return
    ys, ydtype = headers["y"]
    if len(ys) != 1:
        raise _bad("file", f"X must be (rows, features...) and y (rows,); got X{xs}, y{ys}")
    if xs[0] != ys[0]:
        raise _bad("file", f"X has {xs[0]} rows but y has {ys[0]}")
    if ys[0] * ydtype.itemsize > limits.max_dataset_decoded_bytes:
        raise _bad("file", f"y decodes to {ys[0] * ydtype.itemsize:,} bytes, over the limit "
                   f"max_dataset_decoded_bytes {limits.max_dataset_decoded_bytes:,}")


def parse_npz(content: bytes, limits: Limits, labelled: bool = True) -> Parsed:
    """Checks the members' headers (dtype, shape, decoded size) before loading anything; an
    unlabeled upload reads X only."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            check_npz_shapes(npz_headers(archive, labelled), limits)
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            x = npz["X"]
            y = npz["y"] if labelled else np.zeros(x.shape[0], dtype=np.float32)
    except ValueError as exc:  # a malformed header, or data shorter than its header says
        if isinstance(exc, Unprocessable):
            raise
        raise _bad("file", f"NPZ refused: {exc} (object/pickled arrays are never loaded)") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError,  # encrypted
            zlib.error):  # corrupt deflate data
        raise _bad("file", "not a readable NPZ archive") from None
    natural = list(x.shape[1:]) if x.ndim > 2 else None
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    return Parsed(flat, y, [f"x{i}" for i in range(flat.shape[1])], "y" if labelled else "",
                  natural)


def _is_number_array(values: np.ndarray) -> np.ndarray | None:
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    try:
        return values.astype(np.float64)
    except ValueError:
        return None


def decide_task(y_raw: np.ndarray, task: str) -> tuple[str, np.ndarray | None]:
    numeric = _is_number_array(y_raw)
    if task == "regression":
        if numeric is None:
            raise _bad("task", "regression needs a numeric target")
        return "regression", numeric
    if task == "classification" or numeric is None:
        return "classification", numeric
    integral = bool(np.all(np.isfinite(numeric)) and np.all(numeric == np.round(numeric)))
    many = len(np.unique(numeric)) > MAX_AUTO_CLASSES
    return ("classification" if integral and not many else "regression"), numeric


def encode_labels(y_raw: np.ndarray, numeric: np.ndarray | None) -> tuple[np.ndarray, list[Any]]:
    values = numeric if numeric is not None else y_raw.astype(str)
    classes, y = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise _bad("file", f"the target has a single class ({classes[0]!r}); a classifier "
                   "needs at least two")
    labels = [c.item() if hasattr(c, "item") else str(c) for c in classes]
    return y.astype(np.int64), labels


def check_values(parsed: Parsed) -> None:
    if parsed.x.shape[0] == 0:
        raise _bad("file", "the data has no rows")
    bad = ~np.isfinite(parsed.x)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        raise _bad("file", f"row {r + 1}, feature '{parsed.feature_names[c]}' is NaN or infinite")


def parse_shape(raw: str | None, natural: list[int] | None, features: int) -> list[int] | None:
    if not raw:
        return natural
    try:
        shape = json.loads(raw)
        assert isinstance(shape, list) and 2 <= len(shape) <= 3
        assert all(isinstance(v, int) and v >= 1 for v in shape)
    except (ValueError, AssertionError):
        raise _bad("input_shape", "must be a JSON list like [1, 40] or [1, 8, 8]") from None
    if math.prod(shape) != features:
        raise _bad("input_shape", f"{shape} holds {math.prod(shape)} values but each row has "
                   f"{features} features")
    return shape


def build_dataset(*, content: bytes, filename: str | None, fmt: str | None, target: str | None,
                  task: str, input_shape: str | None, name: str | None,
                  limits: Limits) -> Dataset:
    """Validate an upload completely and build the (unsaved) row."""
    if len(content) > limits.max_dataset_bytes:
        raise TooLarge(f"upload of {len(content):,} bytes exceeds the limit max_dataset_bytes "
                       f"{limits.max_dataset_bytes:,}")
    label = safe_label(filename)
    kind = fmt or ("npz" if label.lower().endswith(".npz") else "csv")
    if kind not in ("csv", "npz"):
        raise _bad("format", "format must be 'csv' or 'npz'")
    labelled = task != UNLABELED
    parsed = (parse_csv(content, target, limits, labelled) if kind == "csv"
              else parse_npz(content, limits, labelled))
    check_values(parsed)
    decided, numeric = decide_task(parsed.y_raw, task) if labelled else (UNLABELED, None)
    info: dict[str, Any] = {"target": parsed.target or None,
                            "feature_names": parsed.feature_names,
                            "original_filename": label, "original_sha256": sha256(content)}
    if decided == UNLABELED:  # no target: y is stored as zeros, never read as labels
        y, n_classes = np.zeros(parsed.x.shape[0], dtype=np.float32), 0
    elif decided == "classification":
        y, info["classes"] = encode_labels(parsed.y_raw, numeric)
        n_classes = len(info["classes"])
    else:
        assert numeric is not None
        if not np.all(np.isfinite(numeric)):
            raise _bad("file", "the target has NaN or infinite values")
        y, n_classes = numeric.astype(np.float32), 0
        info["target_range"] = [float(y.min()), float(y.max())]
    info["input_shape"] = parse_shape(input_shape, parsed.natural_shape, parsed.x.shape[1])
    buffer = io.BytesIO()
    np.savez(buffer, x=parsed.x.astype(np.float32), y=y)
    blob = buffer.getvalue()
    return Dataset(id=new_id("ds"), tenant_id="", name=safe_label(name) if name else label,
                   format=kind, task=decided, rows=int(parsed.x.shape[0]),
                   features=int(parsed.x.shape[1]), n_classes=n_classes, info=info,
                   sha256=sha256(blob), size_bytes=len(blob), blob=blob,
                   created_at=utcnow())


def create(session: Session, *, tenant_id: str, dataset: Dataset, idempotency_key: str | None,
           request_hash: str, limits: Limits) -> tuple[Dataset, bool]:
    """Store a built dataset, or replay the one ``idempotency_key`` stored."""

    def insert(key: str | None) -> Dataset:
        usage.check_dataset(session, tenant_id, dataset.size_bytes, limits)  # locks to COMMIT
        dataset.tenant_id, dataset.idempotency_key = tenant_id, key
        dataset.request_hash = request_hash
        repo.add_dataset(session, dataset)
        return dataset

    def find(key: str) -> Dataset | None:
        return repo.dataset_by_idempotency_key(session, tenant_id, key)

    return idempotency.create_once(session, key=idempotency_key, digest=request_hash,
                                   find=find, insert=insert)


def upload(session: Session, *, tenant_id: str, idempotency_key: str | None, limits: Limits,
           content: bytes, filename: str | None, fmt: str | None, target: str | None,
           task: str, input_shape: str | None, name: str | None) -> tuple[Dataset, bool]:
    """Validate an upload completely, then store it (or replay). Returns (dataset, created)."""
    usage.check_dataset(session, tenant_id, 0, limits, lock=False)  # before parsing anything
    dataset = build_dataset(content=content, filename=filename, fmt=fmt, target=target,
                            task=task, input_shape=input_shape, name=name, limits=limits)
    form = {"target": target, "task": task, "format": fmt, "input_shape": input_shape,
            "name": name}
    return create(session, tenant_id=tenant_id, dataset=dataset, idempotency_key=idempotency_key,
                  request_hash=idempotency.request_hash(form, content), limits=limits)


def list_page(session: Session, tenant_id: str, *, cursor: str | None,
              limit: int) -> tuple[Sequence[Dataset], str | None]:
    """Newest first, without ``info`` or the blob."""
    return cursors.page(lambda before, n: repo.list_datasets(session, tenant_id, before=before,
                                                             limit=n), cursor, limit)


def get(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    return found(repo.get_dataset(session, tenant_id, dataset_id), "dataset", dataset_id)


def stored_arrays(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of a stored dataset blob (never unpickles)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return npz["x"], npz["y"]
