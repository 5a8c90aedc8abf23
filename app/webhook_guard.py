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


def _forbidden(address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhook("the webhook URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UnsafeWebhook("the webhook URL must not carry credentials")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
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
