"""One figure at a time, to SVG or PNG bytes.

matplotlib loads on the first plot, not with the app: an API process that draws nothing
stays small. Only the object-oriented API is used (``Figure`` and a canvas per format,
never pyplot's global figure manager), and one lock serializes drawing: matplotlib is not
thread-safe, and the routes run in the threadpool. At most one figure's memory is held at
a time, and at most ``MAX_WAITING`` requests wait for the lock: the threadpool serves every
plain ``def`` route, so a burst of plot requests must not take all of its threads. One more
is refused at once with 503 and Retry-After.

Each plotted series carries a ``gid`` of the form ``series-<name>`` (``series-<name>--<i>``
for the bars of one series), which matplotlib writes as the SVG element's ``id``: a reader
(the dashboard's browser test) can count the series of a drawn plot.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from app.errors import ApiError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Format = Literal["svg", "png"]
MEDIA_TYPES: dict[Format, str] = {"svg": "image/svg+xml", "png": "image/png"}
_LOCK = threading.Lock()
MAX_WAITING = 4  # drawing or queued for the lock, per API process
_SLOTS = threading.BoundedSemaphore(MAX_WAITING)
PNG_DPI = 110


class PlotsBusy(ApiError):
    status, code = 503, "busy"


@functools.cache
def _matplotlib() -> Any:
    """matplotlib with the Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 10,
                                "axes.spines.top": False, "axes.spines.right": False,
                                "axes.grid": True, "grid.alpha": 0.3})
    return matplotlib


@contextmanager
def figure(panels: int = 1, width: float = 7.0, height: float = 4.0) -> Iterator[
        tuple[Figure, list[Axes]]]:
    """A figure with ``panels`` axes side by side (held under the drawing lock)."""
    if not _SLOTS.acquire(blocking=False):
        raise PlotsBusy(f"{MAX_WAITING} plots are being drawn or waiting; retry shortly",
                        headers={"Retry-After": "1"})
    try:
        with _LOCK:
            yield _new_figure(panels, width, height)
    finally:
        _SLOTS.release()


def _new_figure(panels: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    _matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width if panels == 1 else 5.0 * panels, height),
                 layout="constrained")
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:  # epochs, rounds, trials: whole numbers (set_xticks overrides it)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def to_bytes(fig: Figure, fmt: Format) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        fig.savefig(buffer, format="png", dpi=PNG_DPI)
    else:
        from matplotlib.backends.backend_svg import FigureCanvasSVG

        FigureCanvasSVG(fig)
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def draw(fmt: Format, build: Callable[[list[Axes]], None], panels: int = 1,
         title: str | None = None) -> bytes:
    """Draw ``build`` on fresh axes and return the encoded figure."""
    with figure(panels) as (fig, axes):
        if title:
            fig.suptitle(title)
        build(axes)
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        return to_bytes(fig, fmt)


def series(artist: Any, name: str) -> None:
    """Tag a drawn series (a line, a scatter, a band, or a container of bars)."""
    patches = getattr(artist, "patches", None)
    if patches is not None:  # a BarContainer: each bar is its own SVG element
        for i, patch in enumerate(patches):
            patch.set_gid(f"series-{name}--{i}")
        return
    for item in artist if isinstance(artist, list) else [artist]:
        item.set_gid(f"series-{name}")
