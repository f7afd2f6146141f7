"""Tags, notes and keep on jobs and experiments; list filters; ordering by summary figures
with keyset cursors; retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


def submit(client: TestClient, **metadata: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={**tiny_spec(), "metadata": metadata})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def trained(client: TestClient, **spec: Any) -> str:
    """Run to completion in this process, so the summary figures are real."""
    from app.config import get_settings
    from app.db import get_sessionmaker
    from worker.execution import execute

    job_id: str = client.post("/v1/jobs", json=tiny_spec(**spec)).json()["id"]
    assert execute(job_id, get_sessionmaker(), get_settings()) == "succeeded"
    return job_id


def test_metadata_is_stored_apart_from_the_spec(client: TestClient) -> None:
    job = submit(client, tags=["baseline", "moons", "baseline"], note="first try", keep=True)
    assert (job["tags"], job["note"], job["keep"]) == (["baseline", "moons"], "first try", True)
    assert "metadata" not in job["spec"]
    plain = submit(client)
    assert (plain["tags"], plain["note"], plain["keep"]) == ([], None, False)
    assert plain["spec"] == job["spec"]  # the same training, whatever was said about it


@pytest.mark.parametrize(("metadata", "loc"), [
    ({"tags": ["a"] * 17}, "metadata.tags"),
    ({"tags": ["has space"]}, "metadata.tags.0"),
    ({"tags": ["x" * 65]}, "metadata.tags.0"),
    ({"note": "n" * 2001}, "metadata.note"),
    ({"colour": "red"}, "metadata.colour"),
])
def test_bad_metadata_is_refused_naming_the_field(client: TestClient, metadata: dict[str, Any],
                                                 loc: str) -> None:
    response = client.post("/v1/jobs", json={**tiny_spec(), "metadata": metadata})
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["loc"] == loc
    assert client.get("/v1/jobs").json()["items"] == []


def test_patch_replaces_what_it_names_and_nothing_else(client: TestClient,
                                                       other_client: TestClient) -> None:
    job = submit(client, tags=["a"], note="keep me", keep=False)
    url = f"/v1/jobs/{job['id']}"
    patched = client.patch(url, json={"tags": ["b", "c"]}).json()
    assert (patched["tags"], patched["note"], patched["keep"]) == (["b", "c"], "keep me", False)
    patched = client.patch(url, json={"note": None, "keep": True}).json()
    assert (patched["tags"], patched["note"], patched["keep"]) == (["b", "c"], None, True)
    assert patched["spec"] == job["spec"]
    assert client.patch(url, json={"spec": {}}).status_code == 422
    assert other_client.patch(url, json={"tags": []}).status_code == 404
    assert client.get(url).json()["tags"] == ["b", "c"]


def test_experiments_carry_their_own_metadata_not_their_base(client: TestClient) -> None:
    request = {"kind": "cross_validation", "k": 2, "base": tiny_spec(),
               "metadata": {"tags": ["cv"], "note": "folds"}}
    exp = client.post("/v1/experiments", json=request).json()
    assert (exp["tags"], exp["note"], exp["keep"]) == (["cv"], "folds", False)
    assert "metadata" not in exp["request"] and "metadata" not in exp["request"]["base"]
    kids = client.get(f"/v1/experiments/{exp['id']}/jobs").json()["items"]
    assert all(k["tags"] == [] for k in kids)
    refused = client.post("/v1/experiments", json={
        "kind": "cross_validation", "k": 2,
        "base": {**tiny_spec(), "metadata": {"tags": ["child"]}}})
    assert refused.status_code == 422 and "base.metadata" in refused.text
    patched = client.patch(f"/v1/experiments/{exp['id']}", json={"tags": ["cv", "done"]})
    assert patched.json()["tags"] == ["cv", "done"]
    listed = client.get("/v1/experiments", params={"tag": "done"}).json()["items"]
    assert [x["id"] for x in listed] == [exp["id"]]
    assert client.get("/v1/experiments", params={"tag": "nope"}).json()["items"] == []


def test_list_filters_combine(client: TestClient, other_client: TestClient) -> None:
    a = submit(client, tags=["red", "big"])
    b = submit(client, tags=["red"])
    client.post("/v1/jobs", json={**tiny_spec(name="50%_off"), "metadata": {"tags": ["red"]}})
    submit(other_client, tags=["red", "big"])  # another tenant's: never listed

    def ids(**params: Any) -> list[str]:
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["items"]]

    assert ids(tag=["red", "big"]) == [a["id"]]
    assert set(ids(tag="red")) >= {a["id"], b["id"]} and len(ids(tag="red")) == 3
    assert len(ids(name_prefix="50%")) == 1 and ids(name_prefix="5_%") == []  # no wildcards
    created = a["created_at"]
    assert b["id"] in ids(created_after=created) and a["id"] in ids(created_after=created)
    assert ids(created_before=created) == []
    assert ids(created_after="2999-01-01") == []
    for bad in ({"created_after": "0.5"}, {"created_after": "2026-13-45"}, {"tag": "a b"},
                {"order_by": "nonsense"}):
        response = client.get("/v1/jobs", params=bad)
        assert response.status_code == 422, (bad, response.text)
        assert next(iter(bad)) in response.text


def test_order_by_a_summary_figure_pages_through_every_finished_job(
        client: TestClient) -> None:
    finished = [trained(client, optimizer__lr=lr) for lr in (0.001, 0.01, 0.05, 0.2)]
    submit(client)  # queued: has no figure, so no place in an ordered list
    accuracy = {j: client.get(f"/v1/jobs/{j}").json()["summary"]["test"]["accuracy"]
                for j in finished}
    for order_by, reverse in (("test_accuracy", False), ("-test_accuracy", True)):
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"order_by": order_by, "limit": 1}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/jobs", params=params).json()
            seen += [j["id"] for j in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
        expected = sorted(finished, key=lambda j: (accuracy[j], j), reverse=reverse)
        assert seen == expected
    first = client.get("/v1/jobs", params={"order_by": "val_loss", "limit": 1}).json()
    wrong = client.get("/v1/jobs", params={"order_by": "-val_loss",
                                           "cursor": first["next_cursor"]})
    assert wrong.status_code == 422 and "cursor" in wrong.text


def test_retention_deletes_what_is_old_unkept_and_finished(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import update

    from app import config
    from app.clock import utcnow
    from app.db import session_scope
    from app.models import Experiment, Job
    from app.services import admin

    old, kept, fresh = trained(client), trained(client), trained(client)
    client.patch(f"/v1/jobs/{kept}", json={"keep": True})
    queued = submit(client)["id"]
    exp = client.post("/v1/experiments", json={"kind": "cross_validation", "k": 2,
                                                "base": tiny_spec()}).json()["id"]
    client.post(f"/v1/experiments/{exp}/cancel")
    long_ago = utcnow() - timedelta(days=40)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_([old, kept, queued]))
                        .values(updated_at=long_ago))
        session.execute(update(Experiment).where(Experiment.id == exp)
                        .values(updated_at=long_ago))
    assert admin.collect_garbage() == {"jobs": 0, "experiments": 0}  # retention is off

    monkeypatch.setenv("TRAINYARD_RETENTION_DAYS", "30")
    monkeypatch.setenv("TRAINYARD_RETENTION_BATCH", "1")  # bounded batches, looped by gc
    config.get_settings.cache_clear()
    assert admin.collect_garbage() == {"jobs": 1, "experiments": 1}
    assert client.get(f"/v1/jobs/{old}").status_code == 404
    assert client.get(f"/v1/experiments/{exp}").status_code == 404
    for alive in (kept, fresh, queued):
        assert client.get(f"/v1/jobs/{alive}").status_code == 200


def test_the_reaper_collects_at_most_once_per_retention_interval(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention's queries run in a reaper pass only when its interval has passed (a pass
    comes every few seconds; retention is measured in days)."""
    from sqlalchemy import update

    from app import config
    from app.clock import utcnow
    from app.db import get_sessionmaker, session_scope
    from app.models import Job
    from app.services import retention

    def age(job_id: str) -> None:
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id)
                            .values(updated_at=utcnow() - timedelta(days=40)))

    monkeypatch.setenv("TRAINYARD_RETENTION_DAYS", "30")
    monkeypatch.setenv("TRAINYARD_RETENTION_INTERVAL_SECONDS", "300")
    config.get_settings.cache_clear()
    settings, now = config.get_settings(), [1000.0]
    schedule = retention.Schedule(clock=lambda: now[0])
    first, second = trained(client), trained(client)
    age(first)
    assert retention.collect_if_due(get_sessionmaker(), settings, schedule)["jobs"] == [first]
    age(second)
    now[0] += 299  # within the interval: nothing is even looked at
    assert retention.collect_if_due(get_sessionmaker(), settings, schedule)["jobs"] == []
    assert client.get(f"/v1/jobs/{second}").status_code == 200
    now[0] += 1
    assert retention.collect_if_due(get_sessionmaker(), settings, schedule)["jobs"] == [second]
