"""Uploads: every bad-data case is a 422 naming the problem, and nothing is stored."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient


def upload(client: TestClient, content: bytes, filename: str = "data.csv",
           **form: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=form)


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def stored(client: TestClient) -> list[Any]:
    return list(client.get("/v1/datasets").json()["items"])


GOOD_CSV = b"a,b,label\n" + b"".join(f"{i},{i % 7},{i % 2}\n".encode() for i in range(60))


def test_csv_upload_infers_classes_and_is_listed(client: TestClient) -> None:
    r = upload(client, GOOD_CSV, target="label")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["rows"], ds["features"], ds["task"], ds["n_classes"]) == (60, 2, "classification", 2)
    assert ds["info"]["classes"] == [0, 1] and len(ds["sha256"]) == 64
    assert client.get(f"/v1/datasets/{ds['id']}").json()["id"] == ds["id"]
    assert [d["id"] for d in stored(client)] == [ds["id"]]


def test_string_labels_and_regression_targets(client: TestClient) -> None:
    csv = b"x,y\n" + b"".join(f"{i},{'cat' if i % 3 else 'dog'}\n".encode() for i in range(30))
    assert upload(client, csv, target="y").json()["info"]["classes"] == ["cat", "dog"]
    reg = b"x,t\n" + b"".join(f"{i},{i * 0.5 + 0.25}\n".encode() for i in range(30))
    body = upload(client, reg, target="t").json()
    assert body["task"] == "regression" and body["info"]["target_range"] == [0.25, 14.75]


def test_npz_with_images_keeps_its_shape(client: TestClient) -> None:
    x = np.random.default_rng(0).normal(size=(40, 1, 4, 4)).astype(np.float32)
    body = upload(client, npz(X=x, y=np.arange(40) % 3), "imgs.npz").json()
    assert body["features"] == 16 and body["info"]["input_shape"] == [1, 4, 4]


@pytest.mark.parametrize(("content", "form", "fragment"), [
    (b"", {"target": "y"}, "empty"),
    (b"a,y\n", {"target": "y"}, "empty"),
    (b"a,b,y\n1,2,0\n3,0\n", {"target": "y"}, "row 3 has 2 fields"),
    (b"a,y\n1,0\nx1,1\n", {"target": "y"}, "'x1' is not a number"),
    (b"a,y\n1,0\nnan,1\n", {"target": "y"}, "NaN or infinite"),
    (b"a,y\n1,0\ninf,1\n", {"target": "y"}, "NaN or infinite"),
    (b"a,y\n1,1\n2,1\n3,1\n", {"target": "y"}, "single class"),
    (b"a,y\n1,0\n2,1\n", {"target": "nope"}, "no column 'nope'"),
    (b"a,y\n1,0\n2,1\n", {}, "target"),
    (b"a,b,y\n1,2,0\n2,3,1\n", {"target": "y", "input_shape": "[1, 3]"}, "holds 3 values"),
    (b"a,b,y\n1,2,0\n2,3,1\n", {"target": "y", "input_shape": "[[1]]"}, "JSON list"),
    (b"\xff\xfe\x00", {"target": "y"}, "UTF-8"),
])
def test_bad_csv_is_refused_and_nothing_stored(client: TestClient, content: bytes,
                                               form: dict[str, str], fragment: str) -> None:
    r = upload(client, content, **form)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"]
    assert r.json()["error"]["fields"], "the refusal must name the field"
    assert stored(client) == []


class Boom:
    """Unpickling this would run code (it must never happen)."""

    def __reduce__(self) -> Any:
        return (Path("/tmp/trainyard-pwned").write_text, ("pwned",))


@pytest.mark.parametrize(("arrays", "fragment"), [
    ({"X": np.zeros((5, 2)), "y": np.zeros(4)}, "5 rows but y has 4"),
    ({"X": np.zeros(5), "y": np.zeros(5)}, "X must be"),
    ({"X": np.zeros((5, 2))}, "'X' and 'y'"),
    ({"X": np.array([[Boom()]] * 4, dtype=object), "y": np.arange(4)}, "never loaded"),
])
def test_bad_npz_is_refused(client: TestClient, arrays: dict[str, Any], fragment: str) -> None:
    Path("/tmp/trainyard-pwned").unlink(missing_ok=True)
    r = upload(client, npz(**arrays), "d.npz")
    assert r.status_code == 422 and fragment in r.json()["error"]["message"]
    assert not Path("/tmp/trainyard-pwned").exists(), "a pickle payload ran"
    assert stored(client) == []


def test_raw_pickle_offered_as_npz_is_refused(client: TestClient) -> None:
    Path("/tmp/trainyard-pwned").unlink(missing_ok=True)
    r = upload(client, pickle.dumps(Boom()), "evil.npz")
    assert r.status_code == 422 and not Path("/tmp/trainyard-pwned").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path.csv", "nul\x00byte.csv",
                                  "..\\..\\win.csv"])
def test_client_file_names_never_become_paths(client: TestClient, app_home: Path,
                                             name: str) -> None:
    r = upload(client, GOOD_CSV, name, target="label")
    assert r.status_code == 201
    label = r.json()["info"]["original_filename"]
    assert "/" not in label and "\\" not in label and "\x00" not in label and ".." not in label
    assert r.json()["id"].startswith("ds_")
    assert not any(p.name in ("passwd", "path.csv", "win.csv") for p in app_home.rglob("*"))


def test_upload_over_the_size_cap_is_413(client: TestClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings().limits, "max_dataset_bytes", 100)
    r = upload(client, GOOD_CSV, target="label")
    assert r.status_code == 413 and "max_dataset_bytes" in r.json()["error"]["message"]
    assert stored(client) == []


def test_dataset_is_referenced_from_a_spec(client: TestClient,
                                          other_client: TestClient) -> None:
    ds = upload(client, GOOD_CSV, target="label").json()
    spec = {"data": {"source": {"dataset": ds["id"]}}, "model": {"hidden": [8]}}
    assert client.post("/v1/jobs", json=spec).status_code == 201
    r = client.post("/v1/jobs", json={**spec, "loss": {"kind": "mse"}})
    assert r.status_code == 422
    missing = other_client.post("/v1/jobs", json=spec)
    assert missing.status_code == 422
    assert missing.json()["error"]["fields"][0]["loc"] == "data.source.dataset"
    assert other_client.get(f"/v1/datasets/{ds['id']}").status_code == 404


def test_dataset_idempotency(client: TestClient) -> None:
    h = {"Idempotency-Key": "up-1"}
    a = client.post("/v1/datasets", files={"file": ("d.csv", GOOD_CSV)},
                    data={"target": "label"}, headers=h)
    b = client.post("/v1/datasets", files={"file": ("d.csv", GOOD_CSV)},
                    data={"target": "label"}, headers=h)
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    c = client.post("/v1/datasets", files={"file": ("d.csv", GOOD_CSV + b"1,2,1\n")},
                    data={"target": "label"}, headers=h)
    assert c.status_code == 409 and len(stored(client)) == 1


def test_multipart_caps_on_files_and_fields(client: TestClient) -> None:
    two_files = [("file", ("a.csv", GOOD_CSV)), ("file", ("b.csv", GOOD_CSV))]
    r = client.post("/v1/datasets", files=two_files, data={"target": "label"})
    assert r.status_code == 400 and "Maximum number of files is 1" in r.json()["error"]["message"]
    many = {f"f{i}": "x" for i in range(40)} | {"target": "label"}
    r = client.post("/v1/datasets", files={"file": ("a.csv", GOOD_CSV)}, data=many)
    assert r.status_code == 400 and "Maximum number of fields" in r.json()["error"]["message"]
    assert stored(client) == []
