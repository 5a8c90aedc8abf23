"""The playground's JavaScript modules, without a browser: each file stays small, index.html loads one entry
module, every module is reached from it (none is dead), every named import is exported where it points, and
the service hands the modules out as JavaScript (browsers refuse a module of any other type)."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import PLAYGROUND_DIR, mount_playground

MAX_LINES = 400
SCRIPT = re.compile(r"<script\b([^>]*)>", re.I)
IMPORT = re.compile(r'^\s*(?:import|export)\b([^;]*?)\bfrom\s*"([^"]+)"|^\s*import\s*"([^"]+)"', re.M)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|const|let|class)\s+([\w$]+)", re.M)


def modules() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(PLAYGROUND_DIR.glob("*.js"))}


def entry_points() -> list[str]:
    html = (PLAYGROUND_DIR / "index.html").read_text()
    scripts = [attrs for attrs in SCRIPT.findall(html)]
    assert scripts, "index.html loads no script"
    for attrs in scripts:
        assert re.search(r'type="module"', attrs), f"a classic script in index.html: <script{attrs}>"
    return [re.search(r'src="/playground/([^"]+)"', attrs).group(1) for attrs in scripts]


def imports(source: str) -> list[tuple[str, list[str]]]:
    """(file, names imported from it) for each static import or re-export of a module."""
    found = []
    for clause, target, bare in IMPORT.findall(source):
        names = re.search(r"\{([^}]*)\}", clause or "")
        listed = [n.strip().split(" as ")[0].strip() for n in names.group(1).split(",")] if names else []
        found.append((target or bare, [n for n in listed if n]))
    return found


def test_every_module_is_at_most_400_lines():
    sizes = {name: len(text.splitlines()) for name, text in modules().items()}
    assert sizes, "no module under app/static/playground"
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_every_module_is_reached_from_index_html_and_its_imports_exist():
    files = modules()
    seen, todo = set(), entry_points()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        assert name in files, f"{name} is loaded but is not under app/static/playground"
        seen.add(name)
        for target, names in imports(files[name]):
            assert target.startswith("./") and "/" not in target[2:], f"{name} imports {target}: only ./<file>.js here"
            dependency = target[2:]
            assert dependency in files, f"{name} imports {target}, which does not exist"
            exported = set(EXPORT.findall(files[dependency]))
            assert set(names) <= exported, f"{name} imports {sorted(set(names) - exported)} that {dependency} does not export"
            todo.append(dependency)
    assert sorted(set(files) - seen) == [], "modules that index.html never loads"


def test_modules_are_served_as_javascript_and_revalidated():
    app = FastAPI()
    mount_playground(app)
    client = TestClient(app)
    for name in modules():
        answer = client.get(f"/playground/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"].split(";")[0] == "text/javascript", (name, answer.headers["content-type"])
        assert answer.headers["cache-control"] == "no-cache"
        again = client.get(f"/playground/{name}", headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304 and again.headers["cache-control"] == "no-cache"
    page = client.get("/playground/")
    assert page.status_code == 200 and '<script type="module" src="/playground/main.js">' in page.text
