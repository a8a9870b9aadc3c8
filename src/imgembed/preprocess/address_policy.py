"""Which IP addresses an image download may connect to.

The tables list every range a server-side request forgery could aim at: loopback, private,
link-local, cloud metadata, carrier-grade NAT, unspecified, multicast, broadcast and reserved.
IPv6 addresses that embed an IPv4 address (IPv4-mapped, IPv4-compatible, IPv4-translated, 6to4,
NAT64, Teredo) are judged by the IPv4 address they carry as well, so ``::ffff:127.0.0.1`` is as
loopback as ``127.0.0.1``.

The checks use explicit tables rather than ``ipaddress``'s ``is_private`` and friends, whose
meaning has changed between Python releases. Nothing here touches the network: callers resolve
the host and pass each address to :func:`validate_address`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable

from imgembed.errors import ForbiddenURLError
from imgembed.settings import FetchPolicy

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_RANGES: tuple[tuple[str, str], ...] = (
    # Cloud metadata first: these single addresses sit inside wider ranges listed below.
    ("169.254.169.254/32", "a cloud metadata address"),
    ("169.254.170.2/32", "a cloud metadata address"),
    ("100.100.100.200/32", "a cloud metadata address"),
    ("168.63.129.16/32", "a cloud metadata address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "a reserved address"),
    ("192.0.2.0/24", "a reserved documentation address"),
    ("192.88.99.0/24", "a reserved relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a reserved benchmarking address"),
    ("198.51.100.0/24", "a reserved documentation address"),
    ("203.0.113.0/24", "a reserved documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)

_IPV6_RANGES: tuple[tuple[str, str], ...] = (
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("64:ff9b:1::/48", "a local NAT64 address"),
    ("100::/64", "a reserved discard address"),
    ("2001:2::/48", "a reserved benchmarking address"),
    ("2001:10::/28", "a reserved address"),
    ("2001:db8::/32", "a reserved documentation address"),
    ("3fff::/20", "a reserved documentation address"),
    ("5f00::/16", "a reserved segment routing address"),
    ("fc00::/7", "a private address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)

SEND_BYTES_INSTEAD = "send the image bytes in the request instead (image_b64)"
"""The alternative every download error offers the client."""

_SHOWN_URL_LENGTH = 200

_IPV4_TABLE = tuple((ipaddress.IPv4Network(network), reason) for network, reason in _IPV4_RANGES)
_IPV6_TABLE = tuple((ipaddress.IPv6Network(network), reason) for network, reason in _IPV6_RANGES)

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def validate_address(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    policy: FetchPolicy,
    host: str,
    *,
    url: str | None = None,
    field: str = "input_image_url",
) -> None:
    """Refuse an address the policy does not let the server contact.

    Args:
        ip: One address the host resolved to (or the host itself when it is an IP literal).
        policy: Download rules; ``allow_private_networks`` and ``allowed_hosts`` lift the refusal.
        host: Host name as written in the URL, matched case-insensitively against allowed names.
        url: URL being fetched, quoted in the message; the host is quoted when it is not given.
        field: Request field the URL came from, recorded on the error.

    Raises:
        ForbiddenURLError: The address is loopback, private, link-local, cloud metadata or another
            range that is not publicly routable, and nothing in the policy allows it.
    """
    if policy.allow_private_networks:
        return
    allowed_names, allowed_networks = _allowed(policy.allowed_hosts)
    if normalise_host_name(host) in allowed_names:
        return
    if any(ip.version == network.version and ip in network for network in allowed_networks):
        return
    reason = refusal_reason(ip)
    if reason is None:
        return
    if _is_literal_of(host, ip):
        what = f"{host} is {reason}"
    else:
        what = f"{host} resolves to {ip}, which is {reason}"
    logger.info("refused to fetch %s: %s", shorten(url or host), what)
    raise ForbiddenURLError(
        f"refused to fetch {shorten(url or host)}: {what}; the server does not contact loopback, "
        "private, link-local, cloud metadata or other non-public addresses, to prevent "
        f"server-side request forgery. Use a publicly reachable URL, {SEND_BYTES_INSTEAD}, or "
        "ask the operator to add the host to IMGEMBED_FETCH_ALLOWED_HOSTS",
        field=field,
    )


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Find IPv4 addresses an IPv6 address carries and that a connection may end up reaching.

    Args:
        address: The IPv6 address to inspect.

    Returns:
        The embedded IPv4 addresses (none for an ordinary IPv6 address).
    """
    found: list[ipaddress.IPv4Address] = []
    low_bits = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    elif (
        (address in _IPV4_COMPATIBLE and int(address) > 1)
        or address in _IPV4_TRANSLATED
        or address in _NAT64_WELL_KNOWN
    ):
        found.append(low_bits)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def refusal_reason(address: IPAddress) -> str | None:
    """Say why an address must not be contacted, or ``None`` when it is an ordinary public one.

    Args:
        address: A resolved IPv4 or IPv6 address (an IPv6 scope id is ignored).

    Returns:
        A phrase such as ``"a private address"`` or ``"an address that embeds 127.0.0.1, a
        loopback address"``, ready to follow "is" in a message; ``None`` when the address is
        allowed.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _lookup(address, _IPV4_TABLE)
    unscoped = ipaddress.IPv6Address(int(address))
    reason = _lookup(unscoped, _IPV6_TABLE)
    if reason is not None:
        return reason
    for inner in embedded_ipv4(unscoped):
        inner_reason = _lookup(inner, _IPV4_TABLE)
        if inner_reason is not None:
            return f"an address that embeds {inner}, {inner_reason}"
    return None


def parse_allowed_hosts(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """Split operator-configured allowed hosts into host names and IP networks.

    Args:
        entries: Host names (any case, optional trailing dot), IP addresses or CIDR networks.

    Returns:
        The lower-cased host names without trailing dots, and the networks.
    """
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in entries:
        cleaned = entry.strip()
        if not cleaned:
            continue
        try:
            networks.append(ipaddress.ip_network(cleaned, strict=False))
        except ValueError:
            names.add(normalise_host_name(cleaned))
    return frozenset(names), tuple(networks)


def normalise_host_name(host: str) -> str:
    """Lower-case a host name and drop a trailing dot, so ``Images.Internal.`` matches."""
    return host.lower().rstrip(".")


def shorten(url: str) -> str:
    """Shorten a URL for a message, so a megabyte of query string does not end up in logs."""
    if len(url) <= _SHOWN_URL_LENGTH:
        return url
    return url[:_SHOWN_URL_LENGTH] + "…"


def _is_literal_of(host: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


@functools.lru_cache(maxsize=32)
def _allowed(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    return parse_allowed_hosts(entries)


def _lookup(address: IPAddress, table: Iterable[tuple[IPNetwork, str]]) -> str | None:
    for network, reason in table:
        if address in network:
            return reason
    return None
