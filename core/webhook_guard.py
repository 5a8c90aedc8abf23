"""Webhook URLs that cannot be turned against us: no loopback, private, link-local, shared or
cloud-metadata addresses unless WEBHOOK_ALLOWLIST names them. Checked when a job is submitted and again
at every delivery, where the connection goes to the address that was checked (no DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable
from urllib.parse import urlsplit

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


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
    if address.is_private or address in _CGNAT:
        return "a private address"
    return None


def parse_allowlist(text: str) -> list[str]:
    return [item.strip().lower() for item in text.split(",") if item.strip()]


def resolve_checked(url: str, allowlist: Iterable[str]) -> tuple[str, str]:
    """(host, an IP address it resolves to that may be called). Raises UnsafeWebhook saying why not."""
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:  # e.g. 'http://[::1/', 'http://[127.0.0.1]/', a port out of range
        raise UnsafeWebhook(f"the webhook URL is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise UnsafeWebhook("the webhook URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UnsafeWebhook("the webhook URL must not carry credentials")
    host = hostname
    try:
        port = port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError, UnicodeError):
        raise UnsafeWebhook(f"the webhook host {host!r} does not resolve") from None
    allow = list(allowlist)
    addresses = sorted({ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}, key=str)
    for address in addresses:
        reason = _forbidden(address)
        if reason and not _allowed(host, address, allow):
            raise UnsafeWebhook(
                f"the webhook host {host!r} resolves to {address}, {reason}; "
                "webhooks may only call public addresses (an operator can allow it with WEBHOOK_ALLOWLIST)"
            )
    return host, str(addresses[0])
