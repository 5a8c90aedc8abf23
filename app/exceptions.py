"""Exceptions the service layer raises; `errors.py` turns them into HTTP answers."""

from __future__ import annotations

from typing import Optional


class ApiError(Exception):
    def __init__(self, status: int, type_: str, message: str, headers: Optional[dict] = None, fields: Optional[list] = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers, self.fields = status, type_, message, headers, fields


class JobNotFound(LookupError):
    """No such job or batch, or one that belongs to another tenant (the same answer, so ids do not leak)."""


class CannotCancel(RuntimeError):
    pass
