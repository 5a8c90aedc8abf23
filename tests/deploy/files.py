"""The deployment files as the deploy tests read them: where they are, their YAML documents, Compose's
interpolation and commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
OBJECT_STORAGE = K8S / "object-storage"
LIFECYCLE = ROOT / "deploy" / "s3-lifecycle.json"


def load_all(path: Path) -> list:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def of_kind(manifests, kind) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == kind}


def interpolate(value) -> str:
    """Compose's `${VAR}`, `${VAR-default}` and `${VAR:-default}`, with every VAR unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def as_args(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
