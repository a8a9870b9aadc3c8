"""Slow and stalled clients over real HTTP (fake models, deadlines of about a second): headers that
never end, silent connections and bodies shorter than their Content-Length get 408 and a closed
connection; slow uploads do not stop other clients; an unexpected exception gets a 500 with the
request id on a connection that stays usable, and no exception reaches uvicorn."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fakes import fake_config, fake_engine, fake_server
from servers import in_process_server

from imgembed.server.app import create_app

HEADER_TIMEOUT_S = 1.0
BODY_IDLE_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 3.0


def timed_config() -> object:
    return fake_config(
        header_timeout_s=HEADER_TIMEOUT_S,
        body_idle_timeout_s=BODY_IDLE_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    with fake_server(timed_config()) as running:
        parts = urlsplit(running.url)
        yield parts.hostname or "", parts.port or 0


def raw_connection(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=30)


def read_until_closed(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_headers_that_never_end_get_408_and_the_connection_closes(
    address: tuple[str, int],
) -> None:
    with raw_connection(address) as connection:
        connection.sendall(b"POST /v1/siglip/embed-text HTTP/1.1\r\nHost: x\r\n")
        answer = read_until_closed(connection)  # returns once the server closes
    status, body = status_and_body(answer)
    assert status == 408
    assert b"connection: close" in answer.lower()
    assert body["error"]["field"] == "headers"  # type: ignore[index]
    assert "IMGEMBED_HEADER_TIMEOUT_S" in body["error"]["message"]  # type: ignore[index]


def test_a_silent_connection_is_closed_with_408(address: tuple[str, int]) -> None:
    with raw_connection(address) as connection:
        status, _ = status_and_body(read_until_closed(connection))
    assert status == 408


def test_a_kept_alive_connection_times_the_next_requests_headers(
    address: tuple[str, int],
) -> None:
    with raw_connection(address) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = connection.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        connection.sendall(b"GET /health HTTP/1.1\r\n")  # and then nothing
        status, _ = status_and_body(read_until_closed(connection))
    assert status == 408


def test_a_body_shorter_than_its_content_length_gets_408(address: tuple[str, int]) -> None:
    with raw_connection(address) as connection:
        connection.sendall(
            b"POST /v1/siglip/embed-text HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"texts": ['
        )
        answer = read_until_closed(connection)
    status, body = status_and_body(answer)
    assert status == 408
    assert b"connection: close" in answer.lower()
    assert body["error"]["field"] == "body"  # type: ignore[index]
    assert "IMGEMBED_BODY_IDLE_TIMEOUT_S" in body["error"]["message"]  # type: ignore[index]


def test_a_body_trickled_past_the_whole_body_deadline_gets_408(
    address: tuple[str, int],
) -> None:
    with raw_connection(address) as connection:
        connection.sendall(
            b"POST /v1/siglip/embed-text HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        answer = b""
        connection.settimeout(BODY_IDLE_TIMEOUT_S / 4)
        for _ in range(200):  # one byte every quarter of the idle timeout: never idle too long
            try:
                connection.sendall(b" ")
                answer = connection.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
    assert status_and_body(answer)[0] == 408


def test_slow_uploads_do_not_stop_other_clients(address: tuple[str, int]) -> None:
    """Eight clients trickle bodies until their deadline; every normal request made meanwhile is
    answered before the first of them is refused (an order of events, not a timing)."""
    events: list[tuple[str, float]] = []
    lock = threading.Lock()

    def slow_client() -> None:
        with raw_connection(address) as connection:
            connection.sendall(
                b"POST /v1/siglip/embed-text HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            connection.settimeout(0.2)
            while True:
                try:
                    connection.sendall(b" ")
                    if connection.recv(65536):
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        with lock:
            events.append(("slow client refused", time.monotonic()))

    slow = [threading.Thread(target=slow_client) for _ in range(8)]
    for thread in slow:
        thread.start()
    time.sleep(0.3)
    normal = http.client.HTTPConnection(*address, timeout=30)
    for _ in range(5):
        normal.request(
            "POST",
            "/v1/siglip/embed-text",
            body=json.dumps({"texts": ["a cat"]}),
            headers={"Content-Type": "application/json"},
        )
        response = normal.getresponse()
        response.read()
        assert response.status == 200
        with lock:
            events.append(("normal answered", time.monotonic()))
    for thread in slow:
        thread.join(timeout=60)
    kinds = [kind for kind, _ in sorted(events, key=lambda event: event[1])]
    assert kinds.count("slow client refused") == 8
    assert kinds[:5] == ["normal answered"] * 5


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("path", "v2"), [("/boom", False), ("/v2/boom", True)])
def test_an_unexpected_exception_is_a_500_with_the_request_id_and_the_connection_stays(
    path: str, v2: bool
) -> None:
    config = timed_config()
    app = create_app(config, engine=fake_engine(config))  # type: ignore[arg-type]

    async def boom() -> None:
        raise RuntimeError("simulated failure with a secret in it")

    app.add_api_route(path, boom, methods=["GET"])
    records = LogRecords()
    logging.getLogger().addHandler(records)
    try:
        with in_process_server(app) as url:
            parts = urlsplit(url)
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            connection.request("GET", path, headers={"X-Request-ID": "req-boom-1"})
            response = connection.getresponse()
            body = json.loads(response.read())
            local = connection.sock.getsockname()
            connection.request("GET", "/health")
            again = connection.getresponse()
            again.read()
            assert again.status == 200
            assert connection.sock.getsockname() == local  # the same connection
    finally:
        logging.getLogger().removeHandler(records)
    assert response.status == 500
    message = body["error"] if v2 else body["error"]["message"]
    assert "req-boom-1" in message
    assert "secret" not in json.dumps(body)
    tracebacks = [record for record in records.records if record.exc_info]
    assert len(tracebacks) == 1
    assert "req-boom-1" in tracebacks[0].getMessage()
    assert not any("Exception in ASGI" in record.getMessage() for record in records.records)
