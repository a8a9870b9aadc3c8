"""Download an image from a client-supplied URL without letting the client aim the server at itself.

A URL in a request is an instruction to make an outbound connection from inside the operator's
network, so every download goes through these steps:

1. Parse the URL with httpx and insist on an allowed scheme (http, https), a host, a valid port and
   no ``user:password@`` part (credentials are never sent).
2. Resolve the host once. Numeric tricks such as ``2130706433``, ``0x7f.1`` or ``127.1`` are
   canonicalised by the resolver, so the check below sees the real ``127.0.0.1``.
3. Refuse the URL if *any* resolved address is loopback, private, link-local, cloud metadata,
   carrier-grade NAT, unspecified, multicast, broadcast or reserved, including IPv6 forms that
   embed such an IPv4 address (see :mod:`imgembed.preprocess.address_policy`). The operator can
   lift this with ``FetchPolicy.allow_private_networks`` or per host or network with
   ``FetchPolicy.allowed_hosts``.
4. Connect to the validated address itself, never to the name, so a DNS server that answers
   differently the second time (DNS rebinding) has no second time. The request URL's host is
   replaced by the IP address, the original ``Host`` header is sent, and for https the
   ``sni_hostname`` request extension (honoured by httpcore) makes TLS send the original name as
   SNI and verify the certificate against it.
5. Follow redirects by hand, up to ``FetchPolicy.max_redirects``, repeating steps 1 to 4 for
   every hop.
6. Refuse a body whose ``Content-Length`` exceeds ``FetchPolicy.max_bytes`` before reading it, and
   count the streamed bytes, stopping as soon as the limit is passed (chunked or lying servers).

The whole download, resolution to last byte, runs under ``asyncio.timeout(policy.timeout_s)``; the
same value also bounds each httpx phase. The default client ignores proxy and certificate
environment variables, keeps no cookies and reuses no connections (so a TLS connection verified
for one host name is never reused for another name on the same address). A client passed in by
the caller is used as given; it should be configured the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Protocol

import httpx

from imgembed import __version__
from imgembed.errors import ForbiddenURLError, ImageFetchError, PayloadTooLargeError
from imgembed.preprocess.address_policy import (
    SEND_BYTES_INSTEAD,
    IPAddress,
    shorten,
    validate_address,
)
from imgembed.settings import MEBIBYTE, FetchPolicy

__all__ = ["Resolver", "fetch_url_bytes", "parse_image_url", "system_resolver", "validate_address"]

logger = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class Resolver(Protocol):
    """Turns a host name into IP address strings; tests substitute one that never touches DNS."""

    async def __call__(self, host: str, port: int) -> list[str]: ...


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve a host with the operating system's resolver, off the event loop.

    Args:
        host: Host name (IDNA-encoded) or numeric address in any form the system accepts.
        port: Port the connection will use.

    Returns:
        The distinct IP addresses, in the resolver's order.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def fetch_url_bytes(
    url: str,
    policy: FetchPolicy,
    *,
    field: str = "input_image_url",
    resolver: Resolver | None = None,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Download the body at a client-supplied URL, following the module's safety rules.

    Args:
        url: Absolute http or https URL from the request.
        policy: Limits on schemes, addresses, redirects, time and size.
        field: Request field the URL came from, recorded on every error.
        resolver: Host name resolver; the operating system's resolver when ``None``.
        client: httpx client to send with; a fresh, locked-down client when ``None``.

    Returns:
        The response body of the final (non-redirect) response.

    Raises:
        ForbiddenURLError: The scheme, credentials or an address (on any hop) is refused.
        PayloadTooLargeError: The body is, or is announced to be, larger than ``policy.max_bytes``.
        ImageFetchError: The URL is malformed, the host does not resolve or answer, the server
            answers with an error status, redirects too often, or the download times out.
    """
    resolve = resolver if resolver is not None else system_resolver
    try:
        async with asyncio.timeout(policy.timeout_s):
            if client is not None:
                return await _follow(url, policy, field, resolve, client)
            async with _locked_down_client(policy) as own_client:
                return await _follow(url, policy, field, resolve, own_client)
    except TimeoutError as error:
        raise _timed_out(url, policy, field) from error


def parse_image_url(raw: str, policy: FetchPolicy, *, field: str = "input_image_url") -> httpx.URL:
    """Parse a URL and check the parts that need no network: scheme, host, port, credentials.

    Args:
        raw: URL as the client sent it (or as a redirect resolved it).
        policy: Supplies the allowed schemes.
        field: Request field the URL came from, recorded on the error.

    Returns:
        The parsed URL.

    Raises:
        ForbiddenURLError: The scheme is not allowed or the URL carries credentials.
        ImageFetchError: The URL cannot be parsed, is relative, or lacks a host or valid port.
    """
    expected = "expected an absolute URL such as https://example.com/image.jpg"
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as error:
        raise ImageFetchError(
            f"{shorten(raw)!r} is not a valid URL ({error}); {expected}", field=field
        ) from error
    if not url.scheme:
        raise ImageFetchError(f"{shorten(raw)!r} is not an absolute URL; {expected}", field=field)
    if url.scheme not in policy.allowed_schemes:
        schemes = ", ".join(policy.allowed_schemes)
        raise ForbiddenURLError(
            f"refused to fetch {shorten(raw)!r}: the scheme {url.scheme!r} is not allowed; "
            f"expected one of {schemes}. Host the image at such a URL or {SEND_BYTES_INSTEAD}",
            field=field,
        )
    if url.userinfo:
        without_credentials = url.copy_with(username=None, password=None)
        raise ForbiddenURLError(
            f"refused to fetch {shorten(str(without_credentials))}: the URL carries credentials "
            "(user:password@), which the server never sends to image hosts. Remove them and make "
            "the image readable without them (a pre-signed URL, for example), or "
            f"{SEND_BYTES_INSTEAD}",
            field=field,
        )
    if not url.host:
        raise ImageFetchError(f"{shorten(raw)!r} has no host; {expected}", field=field)
    if url.port is not None and not 0 < url.port < 65536:
        raise ImageFetchError(
            f"{shorten(raw)!r} has port {url.port}; expected a port from 1 to 65535", field=field
        )
    return url


async def _follow(
    raw_url: str, policy: FetchPolicy, field: str, resolve: Resolver, client: httpx.AsyncClient
) -> bytes:
    url = parse_image_url(raw_url, policy, field=field)
    for hop in range(policy.max_redirects + 1):
        async with _open(url, policy, field, resolve, client) as response:
            if response.status_code not in _REDIRECT_STATUSES:
                _check_status(response, url, field)
                return await _read_body(response, url, policy, field)
            location = response.headers.get("location")
            if not location:
                raise ImageFetchError(
                    f"fetching {shorten(str(url))} failed: the server answered "
                    f"{_status(response)} without a Location header, so there is nowhere to "
                    "follow; use the image's final URL",
                    field=field,
                )
        if hop == policy.max_redirects:
            raise ImageFetchError(
                f"gave up fetching {shorten(raw_url)}: it redirected more than "
                f"{policy.max_redirects} times (the server follows at most "
                f"{policy.max_redirects} redirects); use the image's final URL",
                field=field,
            )
        try:
            next_url = url.join(location)
        except httpx.InvalidURL as error:
            raise ImageFetchError(
                f"fetching {shorten(str(url))} failed: it redirected to {shorten(location)!r}, "
                f"which is not a valid URL ({error}); use the image's final URL",
                field=field,
            ) from error
        logger.debug("following redirect %d from %s to %s", hop + 1, url, next_url)
        url = parse_image_url(str(next_url), policy, field=field)
    raise AssertionError("unreachable: the loop returns or raises")


@asynccontextmanager
async def _open(
    url: httpx.URL, policy: FetchPolicy, field: str, resolve: Resolver, client: httpx.AsyncClient
) -> AsyncIterator[httpx.Response]:
    """Resolve, validate and connect; yields a response whose body has not been read yet."""
    addresses = await _resolve_and_validate(url, policy, field, resolve)
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = _build_request(url, address, policy)
        logger.debug("fetching %s from %s", url, address)
        try:
            response = await client.send(request, stream=True, auth=None, follow_redirects=False)
        except httpx.ConnectError as error:
            failure = error
            continue
        except httpx.RequestError as error:
            raise _transport_failure(url, error, policy, field) from error
        try:
            yield response
        finally:
            await response.aclose()
        return
    raise ImageFetchError(
        f"could not connect to {url.host} for {shorten(str(url))} ({failure}); check that the "
        f"host is up and publicly reachable, or {SEND_BYTES_INSTEAD}",
        field=field,
    ) from failure


async def _resolve_and_validate(
    url: httpx.URL, policy: FetchPolicy, field: str, resolve: Resolver
) -> list[IPAddress]:
    host = url.host
    literal = _ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        name = url.raw_host.decode("ascii")
        try:
            resolved = await resolve(name, url.port or (443 if url.scheme == "https" else 80))
        except OSError as error:
            raise ImageFetchError(
                f"could not resolve the host {name!r} of {shorten(str(url))} "
                f"({error.strerror or error}); check the host name in the URL",
                field=field,
            ) from error
        addresses = [ipaddress.ip_address(address) for address in resolved]
    if not addresses:
        raise ImageFetchError(
            f"the host {host!r} of {shorten(str(url))} resolved to no address; check the host "
            "name in the URL",
            field=field,
        )
    for address in addresses:
        validate_address(address, policy, host, url=str(url), field=field)
    return addresses


def _build_request(url: httpx.URL, address: IPAddress, policy: FetchPolicy) -> httpx.Request:
    extensions: dict[str, object] = {"timeout": httpx.Timeout(policy.timeout_s).as_dict()}
    if url.scheme == "https" and _ip_literal(url.host) is None:
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": f"imgembed/{__version__}",
        "Accept": "image/*, */*;q=0.5",
        "Accept-Encoding": "identity",
    }
    return httpx.Request(
        "GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions
    )


def _check_status(response: httpx.Response, url: httpx.URL, field: str) -> None:
    if response.is_success:
        return
    raise ImageFetchError(
        f"fetching {shorten(str(url))} failed: the server answered {_status(response)}; expected a "
        "2xx response carrying the image. Check that the URL is correct and publicly readable",
        field=field,
    )


async def _read_body(
    response: httpx.Response, url: httpx.URL, policy: FetchPolicy, field: str
) -> bytes:
    limit = f"{policy.max_bytes} bytes ({policy.max_bytes / MEBIBYTE:g} MiB)"
    advice = "send a smaller image, or ask the operator to raise IMGEMBED_FETCH_MAX_BYTES"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise PayloadTooLargeError(
            f"refused to download {shorten(str(url))}: the server announced {declared} bytes and "
            f"the limit is {limit}; {advice}",
            field=field,
        )
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > policy.max_bytes:
                raise PayloadTooLargeError(
                    f"stopped downloading {shorten(str(url))} after more than {policy.max_bytes} "
                    f"bytes: the limit is {limit}; {advice}",
                    field=field,
                )
    except httpx.RequestError as error:
        raise _transport_failure(url, error, policy, field) from error
    return bytes(body)


def _transport_failure(
    url: httpx.URL, error: httpx.RequestError, policy: FetchPolicy, field: str
) -> ImageFetchError:
    if isinstance(error, httpx.TimeoutException):
        return _timed_out(str(url), policy, field)
    detail = str(error) or type(error).__name__
    return ImageFetchError(
        f"fetching {shorten(str(url))} failed: {detail}; check that the server at that URL is up "
        f"and answers with the image, or {SEND_BYTES_INSTEAD}",
        field=field,
    )


def _timed_out(url: str, policy: FetchPolicy, field: str) -> ImageFetchError:
    return ImageFetchError(
        f"fetching {shorten(url)} timed out after {policy.timeout_s:g} s, the time allowed for a "
        f"whole download; use a faster host or a smaller image, {SEND_BYTES_INSTEAD}, or ask "
        "the operator to raise IMGEMBED_FETCH_TIMEOUT_S",
        field=field,
    )


@asynccontextmanager
async def _locked_down_client(policy: FetchPolicy) -> AsyncIterator[httpx.AsyncClient]:
    refuse_all_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        cookies=refuse_all_cookies,
        timeout=httpx.Timeout(policy.timeout_s),
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        yield client


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _status(response: httpx.Response) -> str:
    reason = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
    return f"{response.status_code} {reason}".rstrip()
