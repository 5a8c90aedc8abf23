"""The README stays a front door and the docs stay true to the repository: README.md is short and starts
with `make run` / `make test`, every relative link (and `#anchor`) in README.md and docs/*.md resolves, the
settings table in docs/operations.md is the one core/settings.py makes, and every task has its section in
docs/tasks.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.paths import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "``", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[*]|(?<!\w)_|_(?!\w)", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_matches_github():
    assert slug("What is guaranteed, and what it relies on") == "what-is-guaranteed-and-what-it-relies-on"
    assert slug("FP8 (`PRECISION=fp8`)") == "fp8-precisionfp8"
    assert slug("The one-call GPU check (`make gpu-check`)") == "the-one-call-gpu-check-make-gpu-check"
    assert slug("`depth-estimation`") == "depth-estimation"


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, more than {MAX_README_LINES}: move the details into the docs/ file for "
        "their audience (api, tasks, webhooks, operations, gpu, architecture, fidelity, development) and link it "
        "from the README's documentation table"
    )


def test_readme_starts_with_make_run_and_make_test():
    text = README.read_text()
    block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no fenced code block: its first one must be `make run` and `make test`"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    for command in ("make run", "make test"):
        assert command in commands, (
            f"README.md's first fenced code block must hold the command `{command}` (the first commands a new "
            f"user types on a fresh machine); it holds: {block.group(1)!r}"
        )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    problems = []
    for number, line in prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: link to {target!r}"
            if not linked.exists():
                problems.append(f"{where}: {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked} "
                                "does not exist; fix the path (relative to the linking file) or add the file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{where}: {linked.name} has no heading with the anchor #{anchor}; link to one of "
                                f"{sorted(anchors(linked))}")
    assert not problems, "\n".join(problems)


def test_settings_table_is_generated():
    from core.settings import Settings

    expected = Settings.model_construct().markdown_table()
    lines = (DOCS / "operations.md").read_text().splitlines()
    header = expected.splitlines()[0]
    assert header in lines, f"docs/operations.md has no settings table (a line {header!r}); paste in the output of " \
                            "`onediffusion settings --table`"
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    table = "\n".join(lines[start:end])
    assert table == expected, (
        "docs/operations.md's settings table differs from core/settings.py: replace it with the output of "
        "`onediffusion settings --table` (or edit the field's description in core/settings.py)"
    )


def test_every_task_has_its_section():
    from model.tasks import TASKS

    text = (DOCS / "tasks.md").read_text()
    headings = [m.group(2) for m in map(HEADING.match, text.splitlines()) if m]
    missing = [task for task in TASKS if not any(f"`{task}`" in h for h in headings)]
    assert not missing, f"docs/tasks.md has no section for {missing}: add a heading with the task's name in " \
                        "backquotes, its fields, defaults, outputs and an example, and a row in its frame table"


def test_docs_cite_only_the_repository():
    """Documents outside the repository cannot be read by its users."""
    for path in markdown_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"\bSPEC\b", line), (
                f"{path.relative_to(ROOT)}:{number} cites a SPEC that is not in the repository; say the fact itself "
                "or point to a file of the repository"
            )
