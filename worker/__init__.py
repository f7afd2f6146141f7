"""Celery glue: the task bodies, the SQL-backed sink, the reaper loop."""
