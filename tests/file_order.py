"""Longest test files first. `make test` spreads whole files over two pytest workers (`--dist loadfile`),
handing the next file to whichever worker is free; a long file handed out last runs alone at the end while
the other worker idles. Ordering files by how long they took (tests/durations.json, per file, written by
`make test-durations`) keeps both busy to the end. A file not listed yet counts as a median one."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

DURATIONS = Path(__file__).resolve().parent / "durations.json"


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def load(path: Path = DURATIONS) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def longest_first(items: list, seconds: dict[str, float]) -> list:
    """`items` with whole files ordered by their recorded seconds, longest first; within a file, and
    between files of equal weight, the collection order stays."""
    if not seconds:
        return list(items)
    default = statistics.median(seconds.values())
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(file_of(item.nodeid), len(first_seen))
    return sorted(items, key=lambda item: (-seconds.get(file_of(item.nodeid), default), first_seen[file_of(item.nodeid)]))


class Recorder:
    """Sums each file's setup, call and teardown seconds as reports arrive (on xdist's controller, every
    worker's), and writes them, largest first, at the end of the session."""

    def __init__(self, out: Path):
        self.out = out
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session) -> None:
        if hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
            return
        ordered = dict(sorted(((k, round(v, 1)) for k, v in self.seconds.items()), key=lambda kv: -kv[1]))
        self.out.write_text(json.dumps(ordered, indent=1) + "\n")
