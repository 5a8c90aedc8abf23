"""Writes `tasks.py` (one typed method per task, sync and async) from the service's OpenAPI document.

    python -m onediffusion_client.codegen http://127.0.0.1:8000/openapi.json   # or a saved openapi.json
    make client-codegen     # in the service's repository: from its app, no server needed (`--app`)

The service's test suite renders this again from the running service and compares it with the
committed file, so the client's methods cannot drift from the API."""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).with_name("tasks.py")

# Client-side options every task method adds after the API's fields.
CLIENT_OPTIONS = ("wait", "timeout", "on_progress", "idempotency_key")

SPECIAL_TYPES = {
    "image": "ImageLike",
    "mask": "ImageLike",
    "images": "Sequence[ImageLike]",
    "classes": "Sequence[Union[str, ClassSpec, dict]]",
    "cameras": "Sequence[Union[Camera, dict]]",
    "frames": "Sequence[Union[Frame, dict]]",
    "webhook": "Union[Webhook, dict, None]",
}
FALLBACK_DOCS = {"webhook": "Webhook(url, secret): called (signed) when the job ends"}
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}
LAST = ("webhook", "output_format", "priority")  # service options go after the task's own fields


def task_schemas(openapi: dict) -> dict[str, tuple[str, dict]]:
    """task name -> (schema name, request schema) for every `POST /v1/<task>` tagged `tasks`."""
    out: dict[str, tuple[str, dict]] = {}
    components = openapi["components"]["schemas"]
    for path, item in openapi["paths"].items():
        post = item.get("post")
        if not post or "tasks" not in post.get("tags", []) or not path.startswith("/v1/"):
            continue
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[1]
        out[path[len("/v1/"):]] = (name, components[name])
    return out


def _nullable(schema: dict) -> tuple[dict, bool]:
    options = schema.get("anyOf")
    if options and any(o.get("type") == "null" for o in options):
        rest = [o for o in options if o.get("type") != "null"]
        return (rest[0] if len(rest) == 1 else {"anyOf": rest}), True
    return schema, False


def python_type(name: str, schema: dict) -> str:
    inner, nullable = _nullable(schema)
    if name in SPECIAL_TYPES:
        text = SPECIAL_TYPES[name]
    elif "enum" in inner:
        text = "Literal[" + ", ".join(repr(v) for v in inner["enum"]) + "]"
    elif inner.get("type") == "array":
        text = f"Sequence[{SCALARS.get(inner.get('items', {}).get('type'), 'Any')}]"
    else:
        text = SCALARS.get(inner.get("type"), "Any")
    if nullable and not text.startswith("Optional[") and "None" not in text:
        text = f"Optional[{text}]"
    return text


def limits(schema: dict) -> str:
    inner, _ = _nullable(schema)
    parts = []
    for key, label in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                       ("multipleOf", "multiple of"), ("minItems", "at least"), ("maxItems", "at most")):
        if key in inner:
            value = inner[key]
            parts.append(f"{label} {value}" + (" items" if key in ("minItems", "maxItems") else ""))
    return f" ({', '.join(parts)})" if parts else ""


def parameters(schema: dict) -> list[dict[str, Any]]:
    """The method's API parameters in order: required fields (positional), then optional ones."""
    props = schema["properties"]
    required = set(schema.get("required", []))
    names = [n for n in props if n not in LAST] + [n for n in LAST if n in props]
    params = []
    for name in names:
        if keyword.iskeyword(name) or name in CLIENT_OPTIONS:
            raise ValueError(f"field {name!r} cannot be a parameter name")
        prop = props[name]
        params.append({
            "name": name,
            "type": python_type(name, prop),
            "required": name in required,
            "default": prop.get("default"),
            "doc": (prop.get("description") or FALLBACK_DOCS.get(name) or prop.get("title") or "").strip() + limits(prop),
        })
    return sorted(params, key=lambda p: not p["required"])


def _doc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _method(task: str, schema: dict, is_async: bool) -> str:
    params = parameters(schema)
    handle = "AsyncJob" if is_async else "Job"
    if "num_outputs" in (schema.get("properties") or {}):  # above 1 the answer is a batch
        handle = f"Union[{handle}, {'AsyncBatch' if is_async else 'Batch'}]"
    sig = ["self"]
    required = [p for p in params if p["required"]]
    optional = [p for p in params if not p["required"]]
    sig += [f"{p['name']}: {p['type']}" for p in required]
    sig.append("*")
    sig += [f"{p['name']}: {p['type']} = {p['default']!r}" for p in optional]
    sig += ["wait: bool = True", "timeout: Optional[float] = None",
            "on_progress: Optional[ProgressCallback] = None", "idempotency_key: Optional[str] = None"]
    body_fields = ", ".join(f"{p['name']}={p['name']}" for p in params)
    summary = " ".join((schema.get("description") or f"Run {task}.").split())
    lines = [
        f"    {'async ' if is_async else ''}def {task.replace('-', '_')}(",
        *[f"        {s}," for s in sig],
        f"    ) -> {handle}:",
        f'        """`POST /v1/{task}`: {_doc(summary)}',
        "",
        "        Args:",
        *[f"            {p['name']}: {_doc(' '.join(p['doc'].split()))}" for p in params],
        "            wait: run to the end (True) or return the queued job at once (False).",
        "            timeout: seconds to wait for the end (None: no limit).",
        "            on_progress: called with each Progress while waiting.",
        "            idempotency_key: makes retries of this submission return the first job (one is made up when omitted).",
        '        """',
        f"        return {'await ' if is_async else ''}self._task(",
        f"            {task!r}, dict({body_fields}), wait, timeout, on_progress, idempotency_key",
        "        )",
    ]
    return "\n".join(lines)


def render(openapi: dict) -> str:
    tasks = task_schemas(openapi)
    header = f'''"""One typed method per task of the OneDiffusion API ({openapi["info"]["title"]} {openapi["info"]["version"]}).

Generated by `python -m onediffusion_client.codegen <openapi.json>`; do not edit by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union

from .images import ImageLike
from .types import Camera, ClassSpec, Frame, Progress, Webhook

if TYPE_CHECKING:
    from .aio import AsyncBatch, AsyncJob
    from .client import Batch, Job

ProgressCallback = Callable[[Progress], Any]
TASKS = {tuple(tasks)!r}

'''
    sync = "\n\n".join(_method(t, s, False) for t, (_, s) in tasks.items())
    aio = "\n\n".join(_method(t, s, True) for t, (_, s) in tasks.items())
    return (
        header
        + "\nclass TaskMethods:\n    \"\"\"Task methods of `Client`: each submits, and by default waits for the end.\"\"\"\n\n"
        + sync
        + "\n\n\nclass AsyncTaskMethods:\n    \"\"\"Task methods of `AsyncClient`.\"\"\"\n\n"
        + aio
        + "\n"
    )


def load(source: str) -> dict:
    if source == "--app":  # the service's own app, imported from the current directory
        from app.main import create_app
        from core.settings import Settings

        return create_app(Settings(auth_disabled=True)).openapi()
    if source.startswith(("http://", "https://")):
        import httpx

        return httpx.get(source, timeout=30).raise_for_status().json()
    return json.loads(Path(source).read_text())


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m onediffusion_client.codegen <openapi.json URL or file | --app>")
    TARGET.write_text(render(load(argv[0])))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main(sys.argv[1:])
