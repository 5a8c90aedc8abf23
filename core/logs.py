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
_SIGNED_QUERY = re.compile(r"([?&]sig=)[^&\s\"']+")


def redact(text: str) -> str:
    """Signed URLs lose their signature: `...?expires=1&sig=abc` -> `...?expires=1&sig=[redacted]`."""
    return _SIGNED_QUERY.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in _DROPPED_KEYS:
                entry[key] = "[redacted]" if any(s in key.lower() for s in _SECRET_KEYS) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(entry, default=str))


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
    # RQ narrates every poll and registry sweep at INFO; our own records cover the job events.
    for name in ("rq.worker", "rq.scheduler", "rq.queue", "rq.job"):
        logging.getLogger(name).setLevel(os.environ.get("RQ_LOG_LEVEL", "WARNING").upper())
    # httpx logs every request's full URL at INFO: a webhook's or an input image's query string (often a
    # token) would land in the log. Our own records name the delivery or the field instead.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
