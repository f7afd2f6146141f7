"""The client's event stream follower (``trainyard watch``): it reconnects with
Last-Event-ID after a drop or a close, backs off on 503/429 (after Retry-After) and on a
refused connection, stops at 204, and never yields an event twice or skips one. A real HTTP
server on a local port plays the API from a script of answers; the real API's side is
tests/api/test_events_api.py and test_events_stream.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from trainyard.client import ApiFailure, Client, follow_events

Answer = tuple[int, dict[str, str], list[int]]  # status, headers, event ids sent before a drop


def frame(seq: int) -> bytes:
    data = json.dumps({"kind": "progress", "seq": seq, "data": {"epoch": seq}})
    return f": heartbeat\n\nevent: progress\nid: {seq}\ndata: {data}\n\n".encode()


class Script:
    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.last_ids: list[str | None] = []


def serve(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.last_ids.append(self.headers.get("Last-Event-ID"))
            status, headers, seqs = script.answers.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if status != 200:
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # no length: the stream ends when the connection closes
            for seq in seqs:
                self.wfile.write(frame(seq))
            self.close_connection = True

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def api(request: pytest.FixtureRequest) -> Iterator[tuple[Script, Client]]:
    script = Script(list(request.param))
    server = serve(script)
    yield script, Client(f"http://127.0.0.1:{server.server_port}", "key", attempts=4,
                         retry_timeout=20)
    server.shutdown()


DROPS = [(503, {"Retry-After": "0"}, []), (200, {}, [1, 2]), (429, {"Retry-After": "0"}, []),
         (200, {}, [3]), (200, {}, [4, 5]), (204, {}, [])]


@pytest.mark.parametrize("api", [DROPS], indirect=True)
def test_it_resumes_after_each_drop_exactly_where_it_stopped(api: tuple[Script, Client]) -> None:
    script, client = api
    seqs = [event["seq"] for event in follow_events(client, "/v1/jobs/job_1/events")]
    assert seqs == [1, 2, 3, 4, 5]
    assert script.last_ids == [None, None, "2", "2", "3", "5"]
    assert script.answers == []


QUIET = [(200, {}, [])] * 4


@pytest.mark.parametrize("api", [QUIET], indirect=True)
def test_streams_that_close_before_any_event_end_in_a_failure(
        api: tuple[Script, Client]) -> None:
    script, client = api
    with pytest.raises(ApiFailure, match="closed 4 times without an event"):
        list(follow_events(client, "/v1/jobs/job_1/events"))
    assert len(script.last_ids) == 4


@pytest.mark.parametrize("api", [[(404, {}, [])]], indirect=True)
def test_a_refusal_is_reported_not_retried(api: tuple[Script, Client]) -> None:
    script, client = api
    with pytest.raises(ApiFailure, match="HTTP 404"):
        list(follow_events(client, "/v1/jobs/job_1/events"))
    assert len(script.last_ids) == 1


def test_a_refused_connection_is_retried_then_reported() -> None:
    client = Client("http://127.0.0.1:9", "key", attempts=2, retry_timeout=5)
    with pytest.raises(Exception, match="onnect"):
        list(follow_events(client, "/v1/jobs/job_1/events"))
