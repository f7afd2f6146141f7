"""Measure the peak bytes of tensors a piece of torch code allocates (CPU included).

A dispatch mode sees every operator, backward ones too, and the storage of every
tensor they return; a weak reference tells when a storage is freed. The peak of the
live total is what the code allocated on top of what existed before (weights, data):
an output sharing an input's storage (a view, an in-place op) is not new memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

T = TypeVar("T")


def _address(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # a wrapper without real storage (double backward)
        return 0


def _alive(ref: Any) -> bool:
    return not ref.expired()


class PeakBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """``with PeakBytes() as p: ...``; then ``p.peak`` is the most bytes alive at once."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.storages: dict[int, tuple[Any, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {_address(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            try:
                storage = t.untyped_storage()
                key = storage.data_ptr()
            except RuntimeError:  # a wrapper without real storage (double backward)
                continue
            known = self.storages.get(key)
            if key and key not in inputs and (known is None or not _alive(known[0])):
                self.storages[key] = (StorageWeakRef(storage),  # type: ignore[no-untyped-call]
                                      storage.nbytes())
        live = sum(n for ref, n in self.storages.values() if _alive(ref))
        self.peak = max(self.peak, live)
        return out


def peak_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` and return its result and the peak bytes it allocated."""
    with PeakBytes() as probe:
        result = fn()
    return result, probe.peak
