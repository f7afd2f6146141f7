"""The pure training core: torch, numpy, scikit-learn and ``app.spec`` only.

Nothing here imports FastAPI, SQLAlchemy or Celery (a test guards it), so the
core can be run and tested in a plain Python process. This package's
``__init__`` imports nothing heavy: ``app.training.shapes`` is torch-free and
the API uses it to validate specs without importing torch.
"""
