"""Uploads: every bad-data case is a 422 naming the problem, and nothing is stored."""

from __future__ import annotations

import io
import pickle
import zipfile
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


# ------------------------------------------------ decoded-size caps, streaming, list views


def npy_member(shape: tuple[int, ...], dtype: str, data: bytes = b"") -> bytes:
    """A .npy file whose header declares ``shape`` (the data may be shorter: a lie)."""
    from numpy.lib import format as npy

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                     "shape": shape})
    return buf.getvalue() + data


def npz_of(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return buf.getvalue()


@pytest.mark.parametrize(("x_shape", "y", "fragment"), [
    ((1_000_000, 10_000), ("<i8", (1_000_000,)), "max_dataset_decoded_bytes"),
    ((2_000_000, 1), ("<i8", (2_000_000,)), "max_dataset_rows"),
    ((10, 20_000), ("<i8", (10,)), "max_dataset_columns"),
    ((10, 2), ("<U100000000", (10,)), "max_dataset_decoded_bytes"),
    ((10, 2), ("|O", (10,)), "never loaded"),
])
def test_npz_headers_are_checked_before_anything_is_decoded(
        client: TestClient, x_shape: tuple[int, ...], y: tuple[str, tuple[int, ...]],
        fragment: str) -> None:
    # The data is 16 bytes whatever the header says: had the archive been loaded first,
    # numpy would have failed on the short data, not named the cap.
    content = npz_of(X=npy_member(x_shape, "<f8", b"\0" * 16), y=npy_member(y[1], y[0]))
    r = upload(client, content, "bomb.npz")
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]["message"]
    assert r.json()["error"]["fields"] == [{"loc": "file", "message": r.json()["error"]["message"]}]
    assert stored(client) == []


def test_a_compressed_bomb_is_refused_by_its_decoded_size(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings().limits, "max_dataset_decoded_bytes", 16 * 1024 * 1024)
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((4000, 2000), dtype=np.uint8), y=np.arange(4000) % 2)
    assert len(buf.getvalue()) < 100_000  # 8 MB of uint8, 64 MB as float64
    r = upload(client, buf.getvalue(), "zeros.npz")
    assert r.status_code == 422 and "max_dataset_decoded_bytes" in r.json()["error"]["message"]
    assert stored(client) == []


@pytest.mark.parametrize(("limit", "value", "fragment"), [
    ("max_dataset_rows", 50, "51 rows exceed the limit max_dataset_rows"),  # stops at row 51
    ("max_dataset_columns", 1, "2 columns exceed the limit max_dataset_columns"),
    ("max_dataset_decoded_bytes", 40 * 16, "41 rows x 2 features"),
])
def test_csv_caps_are_checked_as_rows_stream(client: TestClient,
                                            monkeypatch: pytest.MonkeyPatch, limit: str,
                                            value: int, fragment: str) -> None:
    from app.config import get_settings

    monkeypatch.setattr(get_settings().limits, limit, value)
    r = upload(client, GOOD_CSV, target="label")  # 60 rows, 2 features
    assert r.status_code == 422 and fragment in r.json()["error"]["message"], r.text
    assert stored(client) == []


def test_every_feature_name_is_stored_and_list_items_are_slim(client: TestClient) -> None:
    names = [f"feature_{i}" for i in range(1500)]
    rows = [",".join(str((i * j) % 5) for j in range(1500)) + f",{i % 2}" for i in range(6)]
    content = ("\n".join([",".join([*names, "label"]), *rows]) + "\n").encode()
    ds = upload(client, content, target="label").json()
    assert client.get(f"/v1/datasets/{ds['id']}").json()["info"]["feature_names"] == names
    listed = client.get("/v1/datasets")
    [item] = listed.json()["items"]
    assert "info" not in item and item["features"] == 1500
    assert item["links"]["self"] == f"/v1/datasets/{ds['id']}"
    assert len(listed.content) < 1000  # feature names stay out of list views


def test_dataset_list_pages_with_a_cursor(client: TestClient) -> None:
    ids = [upload(client, GOOD_CSV + f"{i},0,1\n".encode(), target="label").json()["id"]
           for i in range(3)]
    first = client.get("/v1/datasets?limit=2").json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = client.get(f"/v1/datasets?limit=2&cursor={first['next_cursor']}").json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    assert [d["id"] for d in first["items"] + second["items"]] == ids[::-1]  # newest first


def test_healthz_answers_while_a_large_upload_parses(
        app_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload route parses in a worker thread, so the event loop keeps serving.

    The parse is held until five /healthz requests have been answered while it runs: off
    the loop, they are; on the loop (as an ``async def`` route did), the loop is the one
    waiting, nothing answers, the hold times out and the upload fails. No clocks involved."""
    import asyncio
    import threading

    import httpx

    from app.main import create_app
    from app.services import datasets as dataset_service
    from tests.api.conftest import make_key

    parsing, answered = threading.Event(), threading.Event()
    real_parse = dataset_service.parse_csv

    def held_parse(*args: Any, **kwargs: Any) -> Any:
        parsing.set()
        assert answered.wait(20), "no /healthz answer while the upload parsed"
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(dataset_service, "parse_csv", held_parse)
    content = b"a,b,label\n" + b"".join(b"%d.5,%d,%d\n" % (i, i % 7, i % 2) for i in range(500))
    headers = {"Authorization": f"Bearer {make_key('alice')}"}

    async def scenario() -> int:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=headers, timeout=60) as client:
            upload = asyncio.create_task(client.post(
                "/v1/datasets", files={"file": ("big.csv", content)}, data={"target": "label"}))
            while not parsing.is_set() and not upload.done():
                await asyncio.sleep(0.01)
            for _ in range(5):
                assert (await client.get("/healthz")).status_code == 200
            answered.set()
            return (await upload).status_code

    assert asyncio.run(scenario()) == 201
    assert parsing.is_set()


def test_a_line_of_commas_is_refused_before_the_csv_reader_splits_it(
        client: TestClient) -> None:
    """csv.reader builds a whole row as a list before any cap can count it: this line alone
    took 248 MiB in csv.reader (measured), on top of the ~160 MiB the request's copies of a
    20 MB body take (the client's, the upload's, the text, StringIO's 4-byte buffer)."""
    import tracemalloc

    content = b"a,label\n" + b"," * 20_000_000 + b"\n1,0\n"
    tracemalloc.start()
    try:
        r = upload(client, content, target="label")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 422, r.text
    assert "line 2 has over" in r.json()["error"]["message"]
    assert "max_dataset_columns" in r.json()["error"]["message"]
    assert peak < 200 * 1024 * 1024, peak
    assert stored(client) == []


def test_an_npz_with_another_compression_method_is_refused_by_name(client: TestClient) -> None:
    import io
    import zipfile

    import numpy as np

    arrays = {"X": np.zeros((10, 2), np.float32), "y": np.arange(10) % 2}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, array)
            archive.writestr(f"{name}.npy", member.getvalue())
    r = upload(client, buffer.getvalue(), "d.npz")
    assert r.status_code == 422, r.text
    assert "compression method 14" in r.json()["error"]["message"]
    assert stored(client) == []
