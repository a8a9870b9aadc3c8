"""Tests for downloading images from client URLs and refusing server-side request forgery.

No test here sends a packet anywhere but loopback. The autouse ``loopback_only`` fixture makes
every host name lookup numeric-only (so nothing can reach a DNS server) and fails any socket
connection to a non-loopback address. Addresses in private, link-local or metadata ranges are
checked through the validator, stub resolvers and ``httpx.MockTransport``, never contacted.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from imgembed import __version__
from imgembed.errors import (
    ForbiddenURLError,
    ImageFetchError,
    ImgembedError,
    PayloadTooLargeError,
)
from imgembed.preprocess.fetch import fetch_url_bytes, system_resolver, validate_address
from imgembed.server.errors import http_status
from imgembed.settings import FetchPolicy

logger = logging.getLogger(__name__)

IMAGE_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LOOPBACK_POLICY = FetchPolicy(allowed_hosts=("127.0.0.1/32",), timeout_s=2.0)
DEFAULT_FIELD = "input_image_url"


# --- Network guard ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Allow numeric name resolution only, and connections to loopback only; record connections."""
    connected: list[str] = []
    original_getaddrinfo = socket.getaddrinfo
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def numeric_getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        return original_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    def check(address: Any) -> None:
        if not isinstance(address, tuple):
            return
        host = address[0]
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise AssertionError(f"test tried to connect to non-loopback address {address!r}")
        connected.append(host)

    def guarded_connect(self: socket.socket, address: Any) -> None:
        check(address)
        return original_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    return connected


# --- Local image server ------------------------------------------------------------------------


@dataclass
class ServedRequest:
    """One request the local server received."""

    path: str
    headers: dict[str, str]


@dataclass
class LocalServer:
    """A running loopback HTTP server and what it has seen."""

    port: int
    requests: list[ServedRequest] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


class _ImageServer(ThreadingHTTPServer):
    daemon_threads = True
    stopping: threading.Event
    record: LocalServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log instead of printing: clients that hang up mid-body are expected here."""
        logger.debug("local server: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5
    server: _ImageServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("local server: " + format, *args)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.server.record.requests.append(ServedRequest(self.path, dict(self.headers.items())))
        try:
            self._route(parts.path, parse_qs(parts.query))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        stopping = self.server.stopping
        if path in ("/image", "/redirect/0"):
            self._answer(200, IMAGE_BYTES, {"Content-Type": "image/png"})
        elif path.startswith("/status/"):
            self._answer(int(path.rsplit("/", 1)[1]), b"no image here")
        elif path.startswith("/redirect/"):
            hops_left = int(path.rsplit("/", 1)[1])
            self._answer(302, b"", {"Location": f"/redirect/{hops_left - 1}"})
        elif path == "/absolute-redirect":
            self._answer(
                301, b"", {"Location": f"http://127.0.0.1:{self.server.server_port}/image"}
            )
        elif path == "/nested/dir/relative-redirect":
            self._answer(307, b"", {"Location": "../../image"})
        elif path == "/redirect-to":
            self._answer(302, b"", {"Location": query["target"][0]})
        elif path == "/no-location":
            self._answer(302, b"")
        elif path == "/set-cookie":
            self._answer(302, b"", {"Location": "/headers", "Set-Cookie": "session=secret; Path=/"})
        elif path == "/headers":
            self._answer(200, json.dumps(dict(self.headers.items())).encode())
        elif path == "/slow":
            if not stopping.wait(5):
                self._answer(200, IMAGE_BYTES)
        elif path == "/trickle":
            self._send_head(200, {"Content-Length": "100"})
            for _ in range(100):
                if stopping.wait(0.1):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path == "/declared-too-large":
            self._send_head(200, {"Content-Length": "5000"})
            self.wfile.write(b"x" * 5000)
        elif path == "/chunked-endless":
            self._send_head(200, {"Transfer-Encoding": "chunked"})
            for _ in range(4000):
                if stopping.is_set():
                    return
                self.wfile.write(b"100\r\n" + b"x" * 256 + b"\r\n")
        elif path == "/lying-short":
            self._send_head(200, {"Content-Length": "1000"})
            self.wfile.write(b"x" * 10)
            self.close_connection = True
        elif path == "/lying-long":
            self._send_head(200, {"Content-Length": "10"})
            self.wfile.write(b"y" * 5000)
            self.close_connection = True
        else:
            self._answer(404, b"unknown test route")

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._send_head(status, {**(headers or {}), "Content-Length": str(len(body))})
        self.wfile.write(body)


@contextmanager
def running_server(tls: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    """Serve the test routes on 127.0.0.1 from a background thread, over TLS when given."""
    httpd = _ImageServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.stopping = threading.Event()
    httpd.record = LocalServer(port=httpd.server_port)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd.record
    finally:
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A plain HTTP test server on 127.0.0.1."""
    with running_server() as record:
        yield record


# --- Helpers -----------------------------------------------------------------------------------


def fetch(url: str, policy: FetchPolicy = LOOPBACK_POLICY, **options: Any) -> bytes:
    return asyncio.run(fetch_url_bytes(url, policy, **options))


def expect_error(
    call: Callable[[], object],
    error_type: type[ImgembedError],
    status_code: int,
    phrase: str,
    field_name: str = DEFAULT_FIELD,
) -> ImgembedError:
    """Run ``call``, and check that it raises exactly ``error_type`` with the given details."""
    with pytest.raises(ImgembedError) as caught:
        call()
    error = caught.value
    assert type(error) is error_type, f"{type(error).__name__}: {error.message}"
    assert http_status(error) == status_code
    assert error.field == field_name
    assert phrase in error.message, error.message
    return error


class StubResolver:
    """Answers from a table and records every lookup; never touches DNS."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answers = self.answers[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]


class RecordingTransport(httpx.MockTransport):
    """An in-memory transport: records requests and answers from a function, no sockets."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []

        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return answer(request) if answer else httpx.Response(200, content=IMAGE_BYTES)

        super().__init__(handle)


def fetch_with_mock(
    url: str, resolver: StubResolver, transport: RecordingTransport, policy: FetchPolicy
) -> bytes:
    async def run() -> bytes:
        async with httpx.AsyncClient(transport=transport) as client:
            return await fetch_url_bytes(url, policy, resolver=resolver, client=client)

    return asyncio.run(run())


# --- Address validator -------------------------------------------------------------------------


REFUSED_ADDRESSES = [
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("10.0.0.5", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.255", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.1.1", "a link-local address"),
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.170.2", "a cloud metadata address"),
    ("100.100.100.200", "a cloud metadata address"),
    ("168.63.129.16", "a cloud metadata address"),
    ("100.64.0.1", "a carrier-grade NAT address"),
    ("100.127.255.254", "a carrier-grade NAT address"),
    ("0.0.0.0", "an unspecified address"),
    ("0.1.2.3", "an unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("255.255.255.255", "the broadcast address"),
    ("240.0.0.1", "a reserved address"),
    ("192.0.2.1", "a reserved documentation address"),
    ("198.18.0.1", "a reserved benchmarking address"),
    ("::1", "a loopback address"),
    ("::", "an unspecified address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("fc00::1", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("ff02::1", "a multicast address"),
    ("fec0::1", "a site-local address"),
    ("2001:db8::1", "a reserved documentation address"),
    ("::ffff:127.0.0.1", "embeds 127.0.0.1, a loopback address"),
    ("::ffff:169.254.169.254", "embeds 169.254.169.254, a cloud metadata address"),
    ("::ffff:10.0.0.5", "embeds 10.0.0.5, a private address"),
    ("::127.0.0.1", "embeds 127.0.0.1, a loopback address"),
    ("::ffff:0:7f00:1", "embeds 127.0.0.1, a loopback address"),
    ("2002:7f00:1::", "embeds 127.0.0.1, a loopback address"),
    ("2002:c0a8:101::", "embeds 192.168.1.1, a private address"),
    ("64:ff9b::a00:5", "embeds 10.0.0.5, a private address"),
    ("64:ff9b::169.254.169.254", "embeds 169.254.169.254, a cloud metadata address"),
    ("64:ff9b:1::1", "a local NAT64 address"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "embeds 10.0.0.5, a private address"),
]


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_validator_refuses_non_public_address(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    error = expect_error(
        lambda: validate_address(ip, FetchPolicy(), address),
        ForbiddenURLError,
        400,
        reason,
    )
    assert error.code == "url_forbidden"
    assert f"{address} is " in error.message
    assert "server-side request forgery" in error.message
    assert "IMGEMBED_FETCH_ALLOWED_HOSTS" in error.message


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.0",
        "172.32.0.1",
        "2606:4700:4700::1111",
        "::ffff:93.184.216.34",
        "2002:5db8:d822::",
        "64:ff9b::808:808",
    ],
)
def test_validator_accepts_public_address(address: str) -> None:
    validate_address(ipaddress.ip_address(address), FetchPolicy(), "images.example.com")


def test_validator_names_host_and_resolved_address_and_field() -> None:
    expect_error(
        lambda: validate_address(
            ipaddress.ip_address("10.0.0.5"),
            FetchPolicy(),
            "images.example.com",
            url="http://images.example.com/x.jpg",
            field="images[2].url",
        ),
        ForbiddenURLError,
        400,
        "refused to fetch http://images.example.com/x.jpg: images.example.com resolves to "
        "10.0.0.5, which is a private address",
        field_name="images[2].url",
    )


def test_allow_private_networks_lifts_every_refusal() -> None:
    policy = FetchPolicy(allow_private_networks=True)
    for address, _ in REFUSED_ADDRESSES:
        validate_address(ipaddress.ip_address(address), policy, address)


@pytest.mark.parametrize(
    ("allowed_hosts", "address", "host"),
    [
        (("10.0.0.0/8",), "10.0.0.5", "10.0.0.5"),
        (("10.0.0.0/8",), "10.0.0.5", "images.internal"),
        (("169.254.169.254",), "169.254.169.254", "169.254.169.254"),
        (("fd00::/8",), "fd12::1", "images.internal"),
        (("Images.Internal",), "10.0.0.5", "images.internal"),
        (("images.internal",), "192.168.1.1", "IMAGES.INTERNAL."),
    ],
)
def test_allowed_hosts_admit_by_network_or_name(
    allowed_hosts: tuple[str, ...], address: str, host: str
) -> None:
    validate_address(ipaddress.ip_address(address), FetchPolicy(allowed_hosts=allowed_hosts), host)


@pytest.mark.parametrize(
    ("allowed_hosts", "address", "host", "reason"),
    [
        (("10.0.0.0/8",), "192.168.1.1", "192.168.1.1", "a private address"),
        (("images.internal",), "10.0.0.5", "other.internal", "a private address"),
        (("::/0",), "127.0.0.1", "127.0.0.1", "a loopback address"),
        (("0.0.0.0/0",), "::1", "::1", "a loopback address"),
    ],
)
def test_allowed_hosts_admit_nothing_else(
    allowed_hosts: tuple[str, ...], address: str, host: str, reason: str
) -> None:
    expect_error(
        lambda: validate_address(
            ipaddress.ip_address(address), FetchPolicy(allowed_hosts=allowed_hosts), host
        ),
        ForbiddenURLError,
        400,
        reason,
    )


# --- URL checks that need no network -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "error_type", "phrase"),
    [
        ("file:///etc/passwd", ForbiddenURLError, "the scheme 'file' is not allowed"),
        ("ftp://example.com/a.jpg", ForbiddenURLError, "the scheme 'ftp' is not allowed"),
        ("gopher://example.com/", ForbiddenURLError, "the scheme 'gopher' is not allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", ForbiddenURLError, "the scheme 'data' is not"),
        ("http://user:hunter2@example.com/a.jpg", ForbiddenURLError, "carries credentials"),
        ("http://user@example.com/a.jpg", ForbiddenURLError, "carries credentials"),
        ("http:///a.jpg", ImageFetchError, "has no host"),
        ("images/a.jpg", ImageFetchError, "is not an absolute URL"),
        ("http://[::1/a.jpg", ImageFetchError, "is not a valid URL"),
        ("http://127.0.0.1:99999/a.jpg", ImageFetchError, "expected a port from 1 to 65535"),
    ],
)
def test_url_is_checked_before_any_lookup(
    url: str, error_type: type[ImgembedError], phrase: str, loopback_only: list[str]
) -> None:
    resolver = StubResolver({})
    error = expect_error(
        lambda: fetch(url, FetchPolicy(), resolver=resolver, field="url"),
        error_type,
        400,
        phrase,
        field_name="url",
    )
    assert "hunter2" not in error.message
    assert resolver.lookups == []
    assert loopback_only == []


@pytest.mark.parametrize(
    ("url", "error_type", "phrase"),
    [
        ("http://2130706433/a.jpg", ForbiddenURLError, "2130706433 resolves to 127.0.0.1"),
        ("http://0x7f000001/a.jpg", ForbiddenURLError, "0x7f000001 resolves to 127.0.0.1"),
        ("http://0x7f.1/a.jpg", ForbiddenURLError, "0x7f.1 resolves to 127.0.0.1"),
        ("http://127.1/a.jpg", ForbiddenURLError, "127.1 resolves to 127.0.0.1"),
        ("http://0177.0.0.1/a.jpg", ImageFetchError, "Invalid IPv4 address"),
        ("http://[::ffff:127.0.0.1]/a.jpg", ForbiddenURLError, "embeds 127.0.0.1, a loopback"),
        ("http://[::1]/a.jpg", ForbiddenURLError, "::1 is a loopback address"),
        ("http://0.0.0.0/a.jpg", ForbiddenURLError, "0.0.0.0 is an unspecified address"),
        ("http://[::]/a.jpg", ForbiddenURLError, ":: is an unspecified address"),
        ("http://169.254.169.254/latest/meta-data/", ForbiddenURLError, "cloud metadata"),
    ],
)
def test_numeric_host_tricks_cannot_reach_loopback(
    url: str, error_type: type[ImgembedError], phrase: str, loopback_only: list[str]
) -> None:
    expect_error(lambda: fetch(url, FetchPolicy()), error_type, 400, phrase)
    assert loopback_only == []


def test_system_resolver_canonicalises_numeric_hosts() -> None:
    assert asyncio.run(system_resolver("127.0.0.1", 80)) == ["127.0.0.1"]
    assert asyncio.run(system_resolver("2130706433", 80)) == ["127.0.0.1"]


# --- Resolution and pinning, without sockets ---------------------------------------------------


def test_name_resolving_to_private_address_is_refused_before_connecting() -> None:
    resolver = StubResolver({"images.example.com": [["10.0.0.5"]]})
    transport = RecordingTransport()
    expect_error(
        lambda: fetch_with_mock(
            "http://images.example.com/x.jpg", resolver, transport, FetchPolicy()
        ),
        ForbiddenURLError,
        400,
        "refused to fetch http://images.example.com/x.jpg: images.example.com resolves to "
        "10.0.0.5, which is a private address",
    )
    assert resolver.lookups == ["images.example.com"]
    assert transport.requests == []


def test_any_private_address_among_several_is_refused() -> None:
    resolver = StubResolver({"images.example.com": [["93.184.216.34", "10.0.0.5"]]})
    transport = RecordingTransport()
    expect_error(
        lambda: fetch_with_mock(
            "https://images.example.com/x.jpg", resolver, transport, FetchPolicy()
        ),
        ForbiddenURLError,
        400,
        "resolves to 10.0.0.5, which is a private address",
    )
    assert transport.requests == []


def test_public_name_is_fetched_from_the_validated_address() -> None:
    resolver = StubResolver({"images.example.com": [["93.184.216.34"], ["10.0.0.5"]]})
    transport = RecordingTransport()
    body = fetch_with_mock(
        "https://Images.Example.com:8443/x.jpg?size=large", resolver, transport, FetchPolicy()
    )
    assert body == IMAGE_BYTES
    assert resolver.lookups == ["images.example.com"]
    (request,) = transport.requests
    assert str(request.url) == "https://93.184.216.34:8443/x.jpg?size=large"
    assert request.headers["Host"] == "images.example.com:8443"
    assert request.extensions["sni_hostname"] == "images.example.com"
    assert request.headers["User-Agent"] == f"imgembed/{__version__}"
    assert "authorization" not in request.headers
    assert "cookie" not in request.headers


def test_every_redirect_hop_is_resolved_and_validated_again() -> None:
    resolver = StubResolver(
        {"a.example.com": [["93.184.216.34"]], "b.example.com": [["169.254.169.254"]]}
    )

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://b.example.com/latest/meta-data/"})

    transport = RecordingTransport(answer)
    expect_error(
        lambda: fetch_with_mock("https://a.example.com/x.jpg", resolver, transport, FetchPolicy()),
        ForbiddenURLError,
        400,
        "b.example.com resolves to 169.254.169.254, which is a cloud metadata address",
    )
    assert resolver.lookups == ["a.example.com", "b.example.com"]
    assert [request.headers["Host"] for request in transport.requests] == ["a.example.com"]


def test_unresolvable_host_is_reported() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    expect_error(
        lambda: fetch("http://no-such-host.test/x.jpg", FetchPolicy(), resolver=failing),
        ImageFetchError,
        400,
        "could not resolve the host 'no-such-host.test'",
    )


def test_host_without_addresses_is_reported() -> None:
    expect_error(
        lambda: fetch(
            "http://empty.test/x.jpg", FetchPolicy(), resolver=StubResolver({"empty.test": [[]]})
        ),
        ImageFetchError,
        400,
        "resolved to no address",
    )


# --- Against a real server on 127.0.0.1 --------------------------------------------------------


def test_fetches_image_from_allowed_loopback(server: LocalServer) -> None:
    assert fetch(server.url("/image")) == IMAGE_BYTES


def test_loopback_is_refused_without_allowed_hosts(
    server: LocalServer, loopback_only: list[str]
) -> None:
    expect_error(
        lambda: fetch(server.url("/image"), FetchPolicy(timeout_s=2.0)),
        ForbiddenURLError,
        400,
        "127.0.0.1 is a loopback address",
    )
    assert server.requests == []
    assert loopback_only == []


def test_numeric_trick_reaches_only_what_was_validated(server: LocalServer) -> None:
    assert fetch(server.url("/image", host="2130706433")) == IMAGE_BYTES


def test_allowed_host_name_is_pinned_to_resolved_address(server: LocalServer) -> None:
    resolver = StubResolver({"images.test": [["127.0.0.1"], ["10.0.0.5"]]})
    policy = FetchPolicy(allowed_hosts=("IMAGES.test",), timeout_s=2.0)
    body = fetch(server.url("/headers", host="images.test"), policy, resolver=resolver)
    headers = {name.lower(): value for name, value in json.loads(body).items()}
    assert headers["host"] == f"images.test:{server.port}"
    assert headers["user-agent"] == f"imgembed/{__version__}"
    assert "authorization" not in headers
    assert resolver.lookups == ["images.test"]


def test_cookies_are_not_kept_across_redirects(server: LocalServer) -> None:
    body = fetch(server.url("/set-cookie"))
    headers = {name.lower() for name in json.loads(body)}
    assert "cookie" not in headers
    assert server.paths() == ["/set-cookie", "/headers"]


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(404, "answered 404 Not Found"), (503, "answered 503 Service Unavailable")],
)
def test_error_status_is_reported(server: LocalServer, status: int, phrase: str) -> None:
    error = expect_error(
        lambda: fetch(server.url(f"/status/{status}")), ImageFetchError, 400, phrase
    )
    assert error.code == "image_fetch_failed"


@pytest.mark.parametrize("hops", [1, 5])
def test_follows_redirects_up_to_the_limit(server: LocalServer, hops: int) -> None:
    assert fetch(server.url(f"/redirect/{hops}")) == IMAGE_BYTES
    assert len(server.requests) == hops + 1


def test_too_many_redirects_are_refused(server: LocalServer) -> None:
    expect_error(
        lambda: fetch(server.url("/redirect/6")),
        ImageFetchError,
        400,
        "redirected more than 5 times",
    )
    assert len(server.requests) == 6


def test_zero_redirects_allowed(server: LocalServer) -> None:
    policy = FetchPolicy(allowed_hosts=("127.0.0.1/32",), max_redirects=0, timeout_s=2.0)
    assert fetch(server.url("/redirect/0"), policy) == IMAGE_BYTES
    expect_error(
        lambda: fetch(server.url("/redirect/1"), policy),
        ImageFetchError,
        400,
        "redirected more than 0 times",
    )


@pytest.mark.parametrize("path", ["/absolute-redirect", "/nested/dir/relative-redirect"])
def test_absolute_and_relative_locations(server: LocalServer, path: str) -> None:
    assert fetch(server.url(path)) == IMAGE_BYTES
    assert server.paths() == [path, "/image"]


def test_redirect_to_metadata_address_is_refused_before_connecting(
    server: LocalServer, loopback_only: list[str]
) -> None:
    resolver = StubResolver({})
    target = "http://169.254.169.254/latest/meta-data/iam/"
    expect_error(
        lambda: fetch(server.url(f"/redirect-to?target={target}"), resolver=resolver),
        ForbiddenURLError,
        400,
        f"refused to fetch {target}: 169.254.169.254 is a cloud metadata address",
    )
    assert resolver.lookups == []
    assert set(loopback_only) == {"127.0.0.1"}
    assert len(server.requests) == 1


def test_redirect_to_name_of_private_address_is_refused(
    server: LocalServer, loopback_only: list[str]
) -> None:
    resolver = StubResolver({"internal.test": [["10.0.0.5"]]})
    expect_error(
        lambda: fetch(server.url("/redirect-to?target=http://internal.test/x"), resolver=resolver),
        ForbiddenURLError,
        400,
        "internal.test resolves to 10.0.0.5, which is a private address",
    )
    assert resolver.lookups == ["internal.test"]
    assert set(loopback_only) == {"127.0.0.1"}


def test_redirect_to_file_scheme_is_refused(server: LocalServer) -> None:
    expect_error(
        lambda: fetch(server.url("/redirect-to?target=file:///etc/passwd")),
        ForbiddenURLError,
        400,
        "the scheme 'file' is not allowed",
    )


def test_redirect_without_location_is_reported(server: LocalServer) -> None:
    expect_error(
        lambda: fetch(server.url("/no-location")),
        ImageFetchError,
        400,
        "answered 302 Found without a Location header",
    )


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_whole_download_times_out(server: LocalServer, path: str) -> None:
    policy = FetchPolicy(allowed_hosts=("127.0.0.1/32",), timeout_s=0.5)
    started = time.monotonic()
    expect_error(
        lambda: fetch(server.url(path), policy, field="image_url"),
        ImageFetchError,
        400,
        "timed out after 0.5 s",
        field_name="image_url",
    )
    assert time.monotonic() - started < 2.0


SMALL_POLICY = FetchPolicy(allowed_hosts=("127.0.0.1/32",), max_bytes=1000, timeout_s=2.0)


def test_announced_size_over_limit_is_refused_before_reading(server: LocalServer) -> None:
    error = expect_error(
        lambda: fetch(server.url("/declared-too-large"), SMALL_POLICY),
        PayloadTooLargeError,
        413,
        "the server announced 5000 bytes and the limit is 1000 bytes",
    )
    assert error.code == "payload_too_large"


def test_streamed_body_over_limit_is_cut_off(server: LocalServer) -> None:
    started = time.monotonic()
    expect_error(
        lambda: fetch(server.url("/chunked-endless"), SMALL_POLICY),
        PayloadTooLargeError,
        413,
        "after more than 1000 bytes: the limit is 1000 bytes",
    )
    assert time.monotonic() - started < 2.0


def test_body_shorter_than_announced_is_reported(server: LocalServer) -> None:
    expect_error(
        lambda: fetch(server.url("/lying-short"), SMALL_POLICY),
        ImageFetchError,
        400,
        "peer closed connection without sending complete message body",
    )


def test_bytes_beyond_announced_length_are_never_read(server: LocalServer) -> None:
    assert fetch(server.url("/lying-long"), SMALL_POLICY) == b"y" * 10


def test_connection_refused_is_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    expect_error(
        lambda: fetch(f"http://127.0.0.1:{free_port}/x.jpg"),
        ImageFetchError,
        400,
        "could not connect to 127.0.0.1",
    )


# --- TLS: the original name is sent as SNI and verified, while the connection goes to the IP ---


def self_signed_certificate(directory: Path, host_name: str) -> tuple[Path, Path]:
    """Write a throwaway certificate for ``host_name`` and its key; needs ``cryptography``."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "certificate.pem"
    key_path = directory / "key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[LocalServer, ssl.SSLContext, list[str]]]:
    """An HTTPS test server on 127.0.0.1 for ``images.test``, a client context trusting it, and
    the SNI names the server has received."""
    certificate_path, key_path = self_signed_certificate(tmp_path, "images.test")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate_path, key_path)
    server_names: list[str] = []
    server_context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    client_context = ssl.create_default_context(cafile=str(certificate_path))
    with running_server(server_context) as record:
        yield record, client_context, server_names


def fetch_over_tls(url: str, client_context: ssl.SSLContext) -> bytes:
    async def run() -> bytes:
        async with httpx.AsyncClient(verify=client_context, trust_env=False) as client:
            return await fetch_url_bytes(
                url,
                LOOPBACK_POLICY,
                resolver=StubResolver(
                    {"images.test": [["127.0.0.1"]], "wrong.test": [["127.0.0.1"]]}
                ),
                client=client,
            )

    return asyncio.run(run())


def test_https_sends_original_name_as_sni_and_verifies_it(
    tls_server: tuple[LocalServer, ssl.SSLContext, list[str]],
) -> None:
    record, client_context, server_names = tls_server
    body = fetch_over_tls(f"https://images.test:{record.port}/headers", client_context)
    headers = {name.lower(): value for name, value in json.loads(body).items()}
    assert headers["host"] == f"images.test:{record.port}"
    assert server_names == ["images.test"]


def test_https_certificate_must_match_the_original_name(
    tls_server: tuple[LocalServer, ssl.SSLContext, list[str]],
) -> None:
    record, client_context, server_names = tls_server
    expect_error(
        lambda: fetch_over_tls(f"https://wrong.test:{record.port}/image", client_context),
        ImageFetchError,
        400,
        "certificate verify failed",
    )
    assert server_names == ["wrong.test"]
    assert record.requests == []
