"""Submissions need somewhere to put their inputs and outputs: with the object storage unusable (bucket
missing, writes refused, endpoint down) they get 503 naming STORAGE_URL, and nothing is queued."""

from __future__ import annotations

from fastapi import Request


def storage_writable(request: Request) -> None:
    """Router dependency of the submitting routes (POST, not cancel); raises StorageUnavailable (503)."""
    if request.method == "POST" and not request.url.path.endswith("/cancel"):
        request.app.state.storage_gate.ensure()
