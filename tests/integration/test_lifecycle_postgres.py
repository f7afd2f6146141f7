"""Managing runs on Postgres + Redis through real HTTP and the CLI: metadata and its 4xx
paths, tag filters and ordering by a summary figure, quotas (403) and usage."""

from __future__ import annotations

import pytest

from tests.conftest import Stack, tiny_spec, wait_job

pytestmark = pytest.mark.integration
CSV = b"a,b,label\n" + b"".join(b"%d.5,%d,%d\n" % (i, i % 7, i % 2) for i in range(60))


def test_managing_runs_on_postgres(distributed: Stack) -> None:
    distributed.start_worker("w1")
    key = distributed.new_key("lifecycle")
    with distributed.client(key) as http, distributed.client() as other:
        ids = []
        for lr in (0.001, 0.05):
            body = {**tiny_spec(optimizer__lr=lr), "metadata": {"tags": ["pg", f"lr{lr}"]}}
            ids.append(http.post("/v1/jobs", json=body).json()["id"])
        finished = [wait_job(http, job_id) for job_id in ids]
        assert all(j["status"] == "succeeded" for j in finished)

        assert http.patch(f"/v1/jobs/{ids[0]}", json={"note": "slow", "keep": True}).json()[
            "note"] == "slow"
        assert http.patch(f"/v1/jobs/{ids[0]}", json={"tags": ["a b"]}).status_code == 422
        assert other.patch(f"/v1/jobs/{ids[0]}", json={}).status_code == 404
        tagged = http.get("/v1/jobs", params={"tag": ["pg", "lr0.05"]}).json()["items"]
        assert [j["id"] for j in tagged] == [ids[1]]
        ranked = http.get("/v1/jobs", params={"order_by": "-test_accuracy"}).json()["items"]
        accuracy = [j["summary"]["test"]["accuracy"] for j in finished]
        assert [j["id"] for j in ranked] == [i for _, i in sorted(
            zip(accuracy, ids, strict=True), key=lambda pair: (pair[0], pair[1]),
            reverse=True)]

        distributed.cli("tenants", "quota", "lifecycle", "--datasets", "0")
        refused = http.post("/v1/datasets", files={"file": ("d.csv", CSV)},
                            data={"target": "label"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "quota_exceeded"
        usage = http.get("/v1/usage").json()
        assert usage["quota"]["datasets"] == 0 and usage["datasets"] == 0
        assert usage["storage_bytes"]["checkpoints"] > 0
        assert usage["storage_bytes"]["model_exports"] >= 0
