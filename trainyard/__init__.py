"""Trainyard: training as a service.

``trainyard.Trainyard`` (trainyard/sdk.py) is the typed Python client; it, ``trainyard.client``
and ``trainyard.cli`` are the light part (httpx, pydantic, rich, stamina); the CLI is the
composition root that starts the API (``app``) and workers (``worker``), importing them only
inside the commands that need them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainyard.sdk import Trainyard

__all__ = ["Trainyard"]


def __getattr__(name: str) -> Any:
    """``from trainyard import Trainyard`` without loading the client for ``trainyard.cli``'s
    server commands."""
    if name == "Trainyard":
        from trainyard.sdk import Trainyard

        return Trainyard
    raise AttributeError(name)
