"""A predict body parsed the fast way (orjson into one float32 array, or a .npy matrix) is
the very matrix the strict way (pydantic) gives, and anything irregular still gets the strict
way's 422 naming the field; a .npy body through the real app answers as the JSON rows do."""

from __future__ import annotations

import io
import re
import time
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.prediction_schemas import BadBody, PredictRequest, read_json, read_npy
from tests.api.test_models_api import bird_csv, held_out, trained
from tests.conftest import tiny_spec


def strict(raw: bytes) -> np.ndarray:
    rows = PredictRequest.model_validate_json(raw).rows
    assert rows is not None
    with np.errstate(over="ignore"):
        return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("rows", [
    [[0, 1, 2], [3, 4, 5]],                      # integers (digits' pixels)
    [[0.1, -2.5e-3, 7.0], [1e30, 3.4e38, -0.0]],  # floats, up to float32's edge
    [[1e39, 0, 0]],                              # beyond float32: inf, refused by feature later
    [[18446744073709551615, 0.5, 1]],            # a uint64
    [[]],                                        # no values: refused by width later
])
def test_plain_rows_take_the_fast_way_to_the_same_matrix(rows: list[list[Any]]) -> None:
    raw = orjson.dumps({"rows": rows})
    body = read_json(raw)
    assert isinstance(body.rows, np.ndarray) and body.rows.dtype == np.float32
    assert np.array_equal(body.rows, strict(raw)) and body.count == len(rows)


@pytest.mark.parametrize(("raw", "loc"), [
    (b'{"rows": [[0.1, true, 0.3]]}', ("rows", 0, 1)),
    (b'{"rows": [[0.1, "0.2", 0.3]]}', ("rows", 0, 1)),
    (b'{"rows": [[0.1, null, 0.3]]}', ("rows", 0, 1)),
    (b'{"rows": [[0.1, [0.2], 0.3]]}', ("rows", 0, 1)),
    (b'{"rows": [[0.1], [0.2]], "records": []}', ()),
    (b'{"rows": [[0.1]], "extra": 1}', ("extra",)),
    (b'{"records": [{"a": false}]}', ("records", 0, "a")),
    (b'{"records": [{"a": "1"}]}', ("records", 0, "a")),
    (b'{"records": [[1.0]]}', ("records", 0)),
    (b'[[1, 2]]', ()),
    (b'{"rows": [[1, 2]]', ()),
])
def test_anything_irregular_gets_pydantics_refusal(raw: bytes, loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as refused:
        read_json(raw)
    where = refused.value.errors()[0]["loc"]  # the union's variant aside ("list[...]")
    assert tuple(p for p in where if not str(p).startswith("list["))[:len(loc)] == loc


def test_ragged_and_nan_rows_are_parsed_the_strict_way() -> None:
    """The service then names the row of the wrong width, or the feature that is NaN."""
    ragged = read_json(b'{"rows": [[1, 2, 3], [1, 2]]}')
    assert ragged.rows == [[1, 2, 3], [1, 2]]
    nan = read_json(b'{"rows": [[1, NaN, 3]]}')
    assert isinstance(nan.rows, list) and np.isnan(nan.rows[0][1])


def test_plain_records_are_kept_as_sent_and_named_ones_with_true_in_them_too() -> None:
    body = read_json(b'{"records": [{"is_true": 1.5, "b": 2}]}')
    assert body.records == [{"is_true": 1.5, "b": 2}] and body.field == "records"


def npy(x: np.ndarray, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, **kwargs)
    return buffer.getvalue()


def test_a_npy_body_is_read_without_copying_or_pickles() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(read_npy(npy(x)).rows, x)  # type: ignore[arg-type]
    assert np.array_equal(read_npy(npy(np.asfortranarray(x))).rows, x)  # type: ignore[arg-type]
    assert np.array_equal(read_npy(npy(x.astype(">f4"))).rows, x)  # type: ignore[arg-type]
    for bad, why in [(npy(x.astype(np.float64)), "not float32"),
                     (npy(x.ravel()), "is not [rows, features]"),
                     (npy(x)[:-4], "needs 48 bytes of data; the body has 44"),
                     (npy(x) + b"\0", "needs 48 bytes"),
                     (npy(np.array([{"a": 1}], dtype=object)), "is not float32"),
                     (b"\x80\x04\x95 a pickle", "not a .npy file"),
                     (b"", "not a .npy file")]:
        with pytest.raises(BadBody, match=re.escape(why)):
            read_npy(bad)


def hand_made_npy(header: str, data: bytes) -> bytes:
    """A version 1.0 .npy file with this header dict, whatever it says (np.save would not
    write a lying one)."""
    text = header + " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + data


@pytest.mark.parametrize(("shape", "data"), [
    ("(-2, -2)", 16), ("(-3, -1)", 12), ("(9223372036854775807, 0)", 0), ("(1, True)", 4),
    ("(True, True)", 4), ("(2.0, 2)", 16), ("(0, 9223372036854775807)", 0)])
def test_a_npy_header_with_impossible_dimensions_is_refused(shape: str, data: int) -> None:
    """numpy's header check takes any int (negatives, booleans): these reached reshape and
    answered 500 before."""
    for fortran in ("False", "True"):
        body = hand_made_npy(f"{{'descr': '<f4', 'fortran_order': {fortran}, "
                             f"'shape': {shape}, }}", b"\0" * data)
        with pytest.raises(BadBody):
            read_npy(body)


dimension = st.one_of(st.integers(-2**63, 2**63), st.booleans(),
                      st.sampled_from([0, 1, 2, 3]))


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(dimension, min_size=0, max_size=3), fortran=st.booleans(),
       data=st.integers(0, 64))
def test_any_npy_header_is_read_or_refused_never_an_error(shape: list[Any], fortran: bool,
                                                          data: int) -> None:
    """Whatever a header claims, the body is read as that many float32 rows or refused
    with BadBody (a 422): no other exception can reach the route."""
    dims = "(" + "".join(f"{d!r}, " for d in shape) + ")"
    body = hand_made_npy(f"{{'descr': '<f4', 'fortran_order': {fortran}, 'shape': {dims}, }}",
                         b"\0" * data)
    try:
        rows = read_npy(body).rows
    except BadBody:
        return
    assert rows is not None and list(rows.shape) == shape and rows.dtype == np.float32


def test_a_deeply_nested_npy_header_is_refused() -> None:
    body = hand_made_npy("{'descr': '<f4', 'fortran_order': False, 'shape': "
                         + "-" * 3000 + "1, }", b"")
    with pytest.raises(BadBody, match=re.escape("not a .npy file")):
        read_npy(body)


@pytest.fixture()
def bird_job(client: TestClient) -> tuple[str, np.ndarray]:
    upload = client.post("/v1/datasets", files={"file": ("birds.csv", bird_csv())},
                         data={"target": "species"}).json()
    spec = tiny_spec(data={"source": {"dataset": upload["id"]}},
                     model={"kind": "mlp", "hidden": [16]}, training={"epochs": 4})
    return trained(client, spec)["id"], held_out(spec, "alice")[0]


def test_a_npy_body_answers_as_json_rows_do_and_its_refusals_name_the_problem(
        client: TestClient, bird_job: tuple[str, np.ndarray]) -> None:
    job_id, rows = bird_job
    url = f"/v1/jobs/{job_id}/predict"

    def post(content: bytes) -> Any:
        return client.post(url, content=content, headers={"Content-Type": "application/x-npy"})

    by_json = client.post(url, json={"rows": rows.tolist()}).json()
    by_npy = post(npy(rows.astype(np.float32)))
    assert by_npy.status_code == 200 and by_npy.json() == by_json
    for content, status, words in [
            (npy(rows.astype(np.float64)), 422, "dtype <f8 is not float32"),
            (npy(rows[:, :5].astype(np.float32)), 422, "has 5 values; the model takes 6"),
            (npy(np.full((2, 6), np.nan, dtype=np.float32)), 422, "feature 'wing' is NaN"),
            (npy(np.zeros((10_001, 6), dtype=np.float32)), 422, "max_predict_rows"),
            (npy(np.zeros((0, 6), dtype=np.float32)), 422, "no rows"),
            (b"rows,as,csv\n", 422, "not a .npy file"),
            (npy(np.zeros((700_000, 6), dtype=np.float32)), 413, "max_predict_bytes")]:
        refused = post(content)
        assert refused.status_code == status and words in refused.text, refused.text


def test_a_ready_model_is_trusted_for_model_state_seconds_per_tenant(
        client: TestClient, other_client: TestClient, bird_job: tuple[str, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Read once, then no SQL: a state changed behind the API's back is seen only when the
    trust runs out (instantly with 0); another tenant never reaches the cached model."""
    from app.config import get_settings
    from app.services import predict
    from app.services.predict import ReadyModels
    from tests.api.test_models_api import set_model

    job_id, url, row = bird_job[0], f"/v1/jobs/{bird_job[0]}/predict", {"rows": [[0.0] * 6]}
    assert client.post(url, json=row).status_code == 200  # read and trusted
    set_model(job_id, "pending")
    assert client.post(url, json=row).status_code == 200  # trusted: SQL not read again
    assert other_client.post(url, json=row).status_code == 404
    monkeypatch.setenv("TRAINYARD_MODEL_STATE_SECONDS", "0")  # as an API process started so
    get_settings.cache_clear()
    monkeypatch.setattr(predict, "ready", ReadyModels())
    set_model(job_id, "ready")
    assert client.post(url, json=row).status_code == 200  # read again, not trusted now
    set_model(job_id, "pending")
    assert client.post(url, json=row).status_code == 409
    monkeypatch.setenv("TRAINYARD_MODEL_STATE_SECONDS", "5")
    get_settings.cache_clear()
    stale = ReadyModels()
    stale.put("alice", job_id, "sha", read_at=time.monotonic() - 5.1)  # read 5.1 s ago
    fresh = ReadyModels()
    fresh.put("alice", job_id, "sha", read_at=time.monotonic())
    assert stale.get("alice", job_id) is None and fresh.get("alice", job_id) == "sha"
    assert fresh.get("bob", job_id) is None
