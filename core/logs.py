"""Structured logs: one JSON object per line, with the job id when there is one."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRET_KEYS = ("secret", "authorization", "api_key", "token")
# RQ logs a failed job's arguments (`arguments`, `kwargs`): for a webhook delivery that is the whole body,
# signed URLs included. They are dropped; the job id says which job it was.
_DROPPED_KEYS = {"arguments", "kwargs", "args"}
_SKIPPED = frozenset(_STANDARD | _DROPPED_KEYS)
_ENCODE = json.JSONEncoder(default=str).encode  # json.dumps(..., default=str), without a new encoder per line
_SIGNED_QUERY = re.compile(r"([?&]sig=)[^&\s\"']+")


def redact(text: str) -> str:
    """Signed URLs lose their signature: `...?expires=1&sig=abc` -> `...?expires=1&sig=[redacted]`."""
    return _SIGNED_QUERY.sub(r"\1[redacted]", text) if "sig=" in text else text  # no "sig=": nothing to find


def _secret(key: str) -> bool:
    return any(s in key.lower() for s in _SECRET_KEYS)


class JsonFormatter(logging.Formatter):
    """A record's fields: ts, level, process, logger, msg, then its extra fields in their order (secret-named
    ones as "[redacted]"), then exc. Per line, only what changes is computed: the timestamp's seconds are
    formatted once per second, and whether an extra field's name is a secret's once per name."""

    def __init__(self, process: str):
        super().__init__()
        self.process = process
        self._second: tuple[int, str] = (-1, "")  # (second, its text): replaced whole, so threads share it safely
        self._secret_names: dict[str, bool] = {}

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def _is_secret(self, key: str) -> bool:
        known = self._secret_names.get(key)
        if known is None:
            known = _secret(key)
            if len(self._secret_names) < 4096:  # field names come from the code: a few dozen
                self._secret_names[key] = known
        return known

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _SKIPPED and not key.startswith("_"):
                entry[key] = "[redacted]" if self._is_secret(key) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return redact(_ENCODE(entry))


def setup_logging(process: str) -> None:
    """JSON lines on stderr (LOG_FORMAT=text for plain lines), level from LOG_LEVEL (default INFO)."""
    root = logging.getLogger()
    if getattr(root, "_onediffusion", None) == process:
        return
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOG_FORMAT", "json") == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter(process))
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    root._onediffusion = process  # type: ignore[attr-defined]
    # Neither format prints the caller's file and line, the thread or the process (both formats are set
    # here): the logging module need not look them up for every record (its documented optimizations).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # RQ narrates every poll and registry sweep at INFO; our own records cover the job events.
    for name in ("rq.worker", "rq.scheduler", "rq.queue", "rq.job"):
        logging.getLogger(name).setLevel(os.environ.get("RQ_LOG_LEVEL", "WARNING").upper())
    # httpx logs every request's full URL at INFO: a webhook's or an input image's query string (often a
    # token) would land in the log. Our own records name the delivery or the field instead.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
