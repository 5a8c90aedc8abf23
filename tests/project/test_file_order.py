"""The order `make test` hands files out in: longest first, each file whole, and the recorder that
keeps tests/durations.json current."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests import file_order


def _items(*nodeids):
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_longest_files_first_each_file_whole_and_in_its_order():
    items = _items("a.py::1", "a.py::2", "b.py::1", "c.py::1", "c.py::2", "d.py::1")
    ordered = file_order.longest_first(items, {"a.py": 1.0, "b.py": 30.0, "c.py": 10.0})
    # d.py is not listed: it counts as the median (10 s), after c.py, which was collected first
    assert [i.nodeid for i in ordered] == ["b.py::1", "c.py::1", "c.py::2", "d.py::1", "a.py::1", "a.py::2"]


def test_no_durations_keeps_the_collection_order():
    items = _items("b.py::1", "a.py::1")
    assert file_order.longest_first(items, {}) == items


def test_the_recorder_sums_every_phase_per_file(tmp_path):
    out = tmp_path / "durations.json"
    recorder = file_order.Recorder(out)
    for nodeid, seconds in [("x.py::t", 1.25), ("x.py::t", 2.0), ("y.py::t[1]", 0.5), ("x.py::u", 0.5)]:
        recorder.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=seconds))
    recorder.pytest_sessionfinish(SimpleNamespace(config=SimpleNamespace()))
    assert json.loads(out.read_text()) == {"x.py": 3.8, "y.py": 0.5}
    assert list(json.loads(out.read_text())) == ["x.py", "y.py"]


def test_the_committed_durations_are_read():
    seconds = file_order.load()
    assert seconds, "tests/durations.json is missing or empty: run `make test-durations`"
    assert all(name.startswith("tests/") and name.endswith(".py") and value >= 0 for name, value in seconds.items())
