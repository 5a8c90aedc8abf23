"""Structured logs: one JSON object per line, with the job id when there is one."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRET_KEYS = ("secret", "authorization", "api_key", "token")


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
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = "[redacted]" if any(s in key.lower() for s in _SECRET_KEYS) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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
