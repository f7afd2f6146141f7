"""onnxruntime sessions for predictions, kept per API process in an LRU bounded in bytes and
keyed by (job, sha256 of its graph): a re-exported model is a new key, never a stale hit.

onnxruntime is imported on the first prediction, not with the app (the API's idle memory)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from app.config import get_settings
from app.training.manifest import ModelManifest

# What a session holds beyond its graph's bytes (the initializers are copied into its
# arena; the graph itself is parsed): measured ~1.5-2x with onnxruntime 1.30 on CPU.
MEMORY_PER_GRAPH_BYTE = 2


@dataclass
class Loaded:
    """One model ready to run, with what predict needs from its model.json."""

    session: Any  # onnxruntime.InferenceSession (imported lazily)
    manifest: ModelManifest
    sha256: str
    cost: int
    columns: dict[str, int] | None = field(default=None)  # feature name -> column

    def __post_init__(self) -> None:
        names = self.manifest.feature_names
        if len(set(names)) == len(names) == self.manifest.input_width:
            self.columns = {name: i for i, name in enumerate(names)}


def new_session(graph: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # no busy-waiting threads between requests: the API shares its cores with the workers
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])


class SessionCache:
    """Least recently used first out, while the sum of costs exceeds ``max_bytes``. A model
    costlier than the whole budget is served but not kept."""

    def __init__(self, max_bytes: int, threads: int) -> None:
        self.max_bytes, self.threads = max_bytes, threads
        self._items: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, sha256: str) -> Loaded | None:
        with self._lock:
            item = self._items.get((job_id, sha256))
            if item is not None:
                self._items.move_to_end((job_id, sha256))
            return item

    def load(self, job_id: str, graph: bytes, sha256: str, manifest: ModelManifest) -> Loaded:
        item = Loaded(new_session(graph, self.threads), manifest, sha256,
                      len(graph) * MEMORY_PER_GRAPH_BYTE)
        if item.cost <= self.max_bytes:
            self._keep((job_id, sha256), item)
        return item

    def _keep(self, key: tuple[str, str], item: Loaded) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while self.used > self.max_bytes:
                self._items.popitem(last=False)

    @property
    def used(self) -> int:
        return sum(item.cost for item in self._items.values())

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._items)


@lru_cache(maxsize=1)
def sessions() -> SessionCache:
    settings = get_settings()
    return SessionCache(settings.predict_cache_bytes, settings.predict_threads)
