"""Webhook URLs may only reach public addresses unless allow-listed."""

from __future__ import annotations

import pytest

from core.webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked


@pytest.mark.parametrize(
    "url,reason",
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://100.64.1.1/hook", "private"),
        ("http://[fd12::1]/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://169.254.10.10/", "link-local"),
        ("http://0.0.0.0/", "reserved"),
        ("http://224.0.0.1/", "reserved"),
        ("ftp://example.com/", "http:// or https://"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_refused(url, reason):
    with pytest.raises(UnsafeWebhook, match=reason):
        resolve_checked(url, [])


def test_public_address_is_allowed():
    assert resolve_checked("https://8.8.8.8/hook", []) == ("8.8.8.8", "8.8.8.8")


def test_allowlist_by_ip_cidr_and_host():
    assert resolve_checked("http://127.0.0.1:9/x", parse_allowlist("127.0.0.1"))[1] == "127.0.0.1"
    assert resolve_checked("http://10.9.8.7/x", parse_allowlist("10.0.0.0/8, other.example"))[1] == "10.9.8.7"
    assert resolve_checked("http://localhost/x", parse_allowlist("LOCALHOST"))[0] == "localhost"
    with pytest.raises(UnsafeWebhook):
        resolve_checked("http://10.9.8.7/x", parse_allowlist("192.168.0.0/16"))
