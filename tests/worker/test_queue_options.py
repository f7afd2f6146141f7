"""Broker options: the Redis redelivery sweep follows the visibility timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.queue import broker_options


@pytest.mark.parametrize(("timeout", "sweep"), [(2.0, 1.0), (20.0, 5.0), (3600.0, 10.0)])
def test_redis_sweep_runs_at_least_every_quarter_timeout(timeout: float, sweep: float) -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0",
                        broker_visibility_timeout=timeout)
    options = broker_options(settings)
    assert options["visibility_timeout"] == timeout
    # kombu scans every interval * throttle seconds; its default (10 * 10) would leave a
    # 2 s timeout waiting up to 100 s.
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == sweep


def test_default_visibility_timeout_outlasts_the_job_time_limit() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", job_time_limit_seconds=7200)
    assert broker_options(settings)["visibility_timeout"] > 7200


def test_embedded_broker_gets_folders_not_a_timeout(tmp_path: Path) -> None:
    options = broker_options(Settings(home=tmp_path))
    assert "visibility_timeout" not in options
    assert Path(options["data_folder_in"]).is_dir()


def test_pool_children_may_take_their_time_to_load_torch(tmp_path: Path) -> None:
    """Celery kills a child whose init runs past worker_proc_alive_timeout (default 4 s);
    loading torch there takes longer on a busy machine (the poison-job fault test)."""
    from app.queue import make_celery

    assert make_celery(Settings(home=tmp_path)).conf.worker_proc_alive_timeout >= 30
