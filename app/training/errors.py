"""The core's deliberate refusal of a run's data. Torch-free, so the pure-Python planners
(shapes, resample) raise it too; the worker files it under reason ``data`` and treats every
other exception, other ValueErrors included, as a bug (reason ``error``)."""

from __future__ import annotations


class DataError(ValueError):
    """The data cannot be used as the spec asks (a message a person can act on)."""
