"""URLs the service calls that cannot be turned against it: no loopback, private, link-local, shared,
reserved or cloud-metadata addresses unless an allowlist names them (WEBHOOK_ALLOWLIST for webhooks,
IMAGE_URL_ALLOWLIST for input images by URL; image fetches never reach link-local or metadata addresses,
allowlisted or not, and loopback only at an address named exactly). Checked when a job is submitted and again at every call, where the connection goes
to the address that was checked (no DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable
from urllib.parse import urlsplit

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Cloud metadata and host-agent services: AWS/GCP/Azure IMDS, AWS's IPv6 IMDS, Azure's wireserver,
# Oracle Cloud's IMDS, Alibaba Cloud's metadata.
_METADATA = {ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "168.63.129.16", "192.0.0.192", "100.100.100.200",
)}
# Ranges Python's ipaddress does not call private or reserved but that are never a public receiver:
# IETF protocol assignments, deprecated IPv6 site-local, IPv6 documentation (old and RFC 9637).
_NOT_PUBLIC = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "fec0::/10", "2001:db8::/32", "3fff::/20")]


class UnsafeWebhook(ValueError):
    pass


def _allowed(host: str, address, allowlist: Iterable[str]) -> bool:
    for entry in allowlist:
        if entry == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address) -> list:
    """IPv4 addresses an IPv6 address carries and that routers may deliver to: IPv4-mapped, 6to4
    (2002::/16), Teredo (the client and its server) and NAT64 (64:ff9b::/96)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = []
    if address.ipv4_mapped:
        found.append(address.ipv4_mapped)
    if address.sixtofour:
        found.append(address.sixtofour)
    if address.teredo:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _forbidden(address) -> str | None:
    for inner in embedded_ipv4(address):
        reason = _forbidden_plain(inner)
        if reason:
            return f"{reason} (inside the IPv6 address)"
    return _forbidden_plain(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address)


def _forbidden_plain(address) -> str | None:
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return "a reserved address"
    if any(address in net for net in _NOT_PUBLIC if net.version == address.version):
        return "a reserved address"
    if address.is_private or address in _CGNAT:
        return "a private address"
    return None


def parse_allowlist(text: str) -> list[str]:
    return [item.strip().lower() for item in text.split(",") if item.strip()]


_NEVER_IF_LOCAL = ("a loopback address", "a link-local address", "a cloud metadata address", "a reserved address")


def resolve_checked(url: str, allowlist: Iterable[str], subject: str = "webhook", setting: str = "WEBHOOK_ALLOWLIST",
                    local_never: bool = False) -> tuple[str, str]:
    """(host, an IP address it resolves to that may be called). Raises UnsafeWebhook saying why not.
    `subject` names what the URL is for in messages; with `local_never` link-local, metadata and reserved
    addresses are refused even when the allowlist names them, and loopback unless it names that very
    address (a development image server on this machine), not a range or a host name."""
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:  # e.g. 'http://[::1/', 'http://[127.0.0.1]/', a port out of range
        raise UnsafeWebhook(f"the {subject} URL is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise UnsafeWebhook(f"the {subject} URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UnsafeWebhook(f"the {subject} URL must not carry credentials")
    host = hostname
    try:
        port = port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError, UnicodeError):
        raise UnsafeWebhook(f"the {subject} host {host!r} does not resolve") from None
    allow = list(allowlist)
    addresses = sorted({ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}, key=str)
    for address in addresses:
        reason = _forbidden(address)
        if not reason:
            continue
        named = str(address) in allow  # loopback only where the allowlist names that very address
        if local_never and reason.split(" (")[0] in _NEVER_IF_LOCAL and not (named and address.is_loopback):
            raise UnsafeWebhook(f"the {subject} host {host!r} resolves to {reason}; {subject}s may only name public addresses")
        if not _allowed(host, address, allow):
            raise UnsafeWebhook(
                f"the {subject} host {host!r} resolves to {address}, {reason}; "
                f"{subject}s may only call public addresses (an operator can allow it with {setting})"
            )
    return host, str(addresses[0])
