"""Submissions need somewhere to put their inputs and outputs: with the object storage unusable (bucket
missing, writes refused, endpoint down) they get 503 naming STORAGE_URL, and nothing is queued."""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from .state import Gate


async def storage_writable(request: Request, gate: Gate) -> None:
    """Router dependency of the submitting routes (POST, not cancel); raises StorageUnavailable (503).
    The store is asked in the thread pool (asking may block), and only when the gate's last answer has
    lapsed; in between, the answer it holds costs no trip to the thread pool."""
    if request.method == "POST" and not request.scope["path"].endswith("/cancel"):
        if not gate.held():
            await run_in_threadpool(gate.ensure)
