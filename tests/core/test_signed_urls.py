"""Signed file URLs: a forged signature is refused, never an error (the fuzzer found `sig=%C2%90` gave 500)."""

from __future__ import annotations

from core.connection import keys_for
from core.url_signing import UrlSigner


def test_signatures():
    signer = UrlSigner(None, keys_for("sigtest"), secret="a-test-signing-secret")
    query = dict(part.split("=") for part in signer.query("job1", "image.png", 60).split("&"))
    expires = int(query["expires"])
    assert signer.valid("job1", "image.png", expires, query["sig"])
    assert not signer.valid("job1", "image.jpeg", expires, query["sig"])
    for forged in ("\x90", "é" * 64, "", "00" * 32):
        assert not signer.valid("job1", "image.png", expires, forged)
