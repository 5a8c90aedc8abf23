"""One piece of work per item, each in a process forked from the caller: for probes run in a child
interpreter that pays its imports (torch, diffusers: seconds on two cores) once, while every item still
starts from the same state and none sees what another did. Standard library only, so importing it adds
nothing to what a probe measures."""

from __future__ import annotations

import json
import os
import traceback
from typing import Callable


def each_in_a_fork(items: list[str], work: Callable[[str], dict]) -> dict[str, dict]:
    """item -> what `work(item)` returned (a JSON object) in a forked child, or {"error": its traceback, or
    the child's exit status when it died without a report}."""
    results: dict[str, dict] = {}
    for item in items:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                report = work(item)
            except BaseException:
                report = {"error": traceback.format_exc()}
            with os.fdopen(write, "w") as out:
                out.write(json.dumps(report))
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as answer:
            results[item] = json.loads(answer.read() or '{"error": "no answer"}')
        _, status = os.waitpid(pid, 0)
        if status and "error" not in results[item]:
            results[item] = {"error": f"exit status {status}"}
    return results
