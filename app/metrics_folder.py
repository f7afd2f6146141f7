"""The host's folder for prometheus_client's multiprocess files (see ``app.observability``).

Standard library only: it must run before prometheus_client is imported, which reads
``PROMETHEUS_MULTIPROC_DIR`` once, at import, to choose how values are stored."""

from __future__ import annotations

import os
import re
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(default: Path) -> Path:
    """Choose and export this host's metrics folder.

    An inherited ``PROMETHEUS_MULTIPROC_DIR`` (from ``trainyard run``, or set by an
    operator) is used as it is. Otherwise ``default`` is emptied when no process that wrote
    there is alive (prometheus_client's rule: wipe it between runs), so counters restart
    with the service, not each time one of its processes restarts."""
    inherited = os.environ.get(MULTIPROC_ENV)
    if inherited:
        return Path(inherited)
    folder = default.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = list(folder.glob("*.db"))
    writers = {pid for pid in map(_writer_pid, files) if pid is not None}
    if not any(map(_alive, writers)):
        for stale in files:
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def _writer_pid(file: Path) -> int | None:
    """prometheus_client names each file ``<kind>_<pid>.db``."""
    found = re.search(r"_(\d+)\.db$", file.name)
    return int(found.group(1)) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
