"""The Redis of the deployment files has a memory bound and never evicts (a full Redis refuses writes,
which the API answers with 503; an evicting one would drop queued jobs and results)."""

from __future__ import annotations

import re

from tests.deploy.files import as_args, interpolate, of_kind

UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}  # as redis.conf reads them
K8S_UNITS = {"Mi": 2**20, "Gi": 2**30, "M": 1000**2, "G": 1000**3}


def bound(args: list[str]) -> tuple[int, str]:
    """(maxmemory in bytes, maxmemory-policy) from redis-server arguments."""
    options = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", interpolate(options["--maxmemory"]).lower()).groups()
    return int(number) * UNITS[unit], options.get("--maxmemory-policy", "noeviction (default)")


def test_compose_redis_is_bounded_and_never_evicts(compose):
    limit, policy = bound(as_args(compose["services"]["redis"]["command"]))
    assert limit > 0 and policy == "noeviction"


def test_k8s_redis_is_bounded_below_its_container_and_never_evicts(manifests):
    (container,) = of_kind(manifests, "StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"]
    limit, policy = bound(as_args(container.get("command", []) + container.get("args", [])))
    assert policy == "noeviction"
    memory = container["resources"]["limits"]["memory"]
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", memory).groups()
    assert 0 < limit < int(number) * K8S_UNITS[unit], "maxmemory must leave room below the container's limit"
