"""Exceptions the gateway's service layer raises; `errors.py` turns them (and core.job_store.JobNotFound)
into HTTP answers."""

from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, headers: Optional[dict] = None, fields: Optional[list] = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers, self.fields = status, type_, message, headers, fields


class CannotCancel(RuntimeError):
    pass
