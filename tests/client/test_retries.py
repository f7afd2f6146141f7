"""The light client retries what is transient (429/503 with Retry-After, a refused
connection) and gives up, bounded, on what is not. A real HTTP server on a local port
plays the API: it answers from a script of statuses."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from trainyard.client import FIRST_CONTACT_SECONDS, ApiFailure, Client

JOB = {"id": "job_1", "status": "running"}


class Script:
    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.times: list[float] = []


def serve(script: Script, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            script.seen.append((self.command, self.path, dict(self.headers)))
            script.times.append(time.monotonic())
            status, headers = script.answers.pop(0) if script.answers else (200, {})
            body = json.dumps(JOB if status < 400 else
                              {"error": {"code": "x", "message": f"status {status}"}}).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def api() -> Iterator[tuple[Script, Client]]:
    script = Script([])
    server = serve(script)
    yield script, Client(f"http://127.0.0.1:{server.server_port}", "key", retry_timeout=20)
    server.shutdown()


def test_503_and_429_are_retried_after_what_retry_after_asks(
        api: tuple[Script, Client]) -> None:
    script, client = api
    script.answers = [(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})]
    assert client.get_job("job_1") == JOB
    assert len(script.seen) == 3
    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    assert min(gaps) >= 0.95, gaps  # waited as asked (stamina's own first wait is 0.1 s)


def test_a_retried_submission_keeps_one_idempotency_key(api: tuple[Script, Client]) -> None:
    script, client = api
    script.answers = [(503, {"Retry-After": "0"}), (503, {})]
    client.submit({"data": {}})
    keys = {headers["Idempotency-Key"] for _, _, headers in script.seen}
    assert len(script.seen) == 3 and len(keys) == 1 and keys.pop().startswith("client-")


def test_client_errors_are_not_retried(api: tuple[Script, Client]) -> None:
    script, client = api
    script.answers = [(422, {}), (200, {})]
    with pytest.raises(ApiFailure, match="HTTP 422: status 422"):
        client.get_job("job_1")
    assert len(script.seen) == 1


def test_retries_are_bounded_and_the_last_answer_is_reported(
        api: tuple[Script, Client]) -> None:
    script, client = api
    client.attempts = 3
    script.answers = [(503, {"Retry-After": "0"})] * 5
    with pytest.raises(ApiFailure, match="HTTP 503"):
        client.get_job("job_1")
    assert len(script.seen) == 3


def test_a_refused_connection_is_retried_until_the_server_comes_up() -> None:
    with socket.socket() as probe:  # a free port with nobody listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Script([])

    late = threading.Timer(1.0, lambda: servers.append(serve(script, port)))
    servers: list[ThreadingHTTPServer] = []
    late.start()
    assert Client(f"http://127.0.0.1:{port}", "key", retry_timeout=30).get_job("job_1") == JOB
    assert len(script.seen) == 1
    servers[0].shutdown()


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return super().handle_request(request)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_server_never_reached_is_given_up_on_after_the_first_contact_window() -> None:
    """A wrong TRAINYARD_URL (nobody listening) fails after a few tries, not the whole
    retry budget: 8 attempts took ~13 s before."""
    client = Client(f"http://127.0.0.1:{_free_port()}", "key")
    client.http = httpx.Client(base_url=client.base, transport=(counting := CountingTransport()))
    with pytest.raises(httpx.ConnectError):
        client.get_job("job_1")
    assert 2 <= counting.requests <= 6 < client.attempts  # backoff 0.1 s doubling, 3 s window


def test_once_reached_a_refused_connection_is_a_restart_and_is_waited_for() -> None:
    port = _free_port()
    script = Script([])
    first = serve(script, port)
    client = Client(f"http://127.0.0.1:{port}", "key")
    assert client.get_job("job_1") == JOB
    first.shutdown()
    first.server_close()
    servers: list[ThreadingHTTPServer] = []
    late = threading.Timer(FIRST_CONTACT_SECONDS + 1, lambda: servers.append(serve(script, port)))
    late.start()
    assert client.get_job("job_1") == JOB  # past the first-contact window: still retried
    assert len(script.seen) == 2
    servers[0].shutdown()
