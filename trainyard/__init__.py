"""Trainyard: training as a service.

``trainyard.client`` and ``trainyard.cli`` are the light part (httpx, stdlib); the CLI is the
composition root that starts the API (``app``) and workers (``worker``), importing them only
inside the commands that need them."""
