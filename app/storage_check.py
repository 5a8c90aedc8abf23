"""Submissions need somewhere to put their inputs and outputs: with the object storage unusable (bucket
missing, writes refused, endpoint down) they get 503 naming STORAGE_URL, and nothing is queued."""

from __future__ import annotations

from fastapi import Request

from .state import Gate


def storage_writable(request: Request, gate: Gate) -> None:
    """Router dependency of the submitting routes (POST, not cancel); raises StorageUnavailable (503).
    A plain function: FastAPI runs it in the thread pool, where asking the storage may block."""
    if request.method == "POST" and not request.url.path.endswith("/cancel"):
        gate.ensure()
