"""The deploy tests' fixtures: the Compose file and the Kubernetes manifests, parsed once per module."""

from __future__ import annotations

import pytest

from tests.deploy.files import COMPOSE, K8S, load_all


@pytest.fixture(scope="module")
def compose() -> dict:
    (doc,) = load_all(COMPOSE)
    return doc


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [dict(doc, _file=path.name) for doc in load_all(path)]
    return docs
