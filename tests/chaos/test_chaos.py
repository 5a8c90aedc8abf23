"""Chaos, bounded to fit in CI; `python -m tests.chaos.run` runs the same scenarios longer. Each test
prints its figures (run with -s to see them)."""

from __future__ import annotations

import json

from tests.chaos import scenarios
from tests.service.harness import RedisServer


def report(figures: dict) -> None:
    print("\nCHAOS " + json.dumps(figures))


def test_worker_sigkills_lose_nothing(make_service):
    service = make_service(job_retries=3, workers=2)  # the two workers start together
    figures = scenarios.worker_kills(service, jobs=8, kills=2, seed=1)
    report(figures)
    assert figures["stuck_or_lost"] == 0
    assert figures["succeeded"] + figures["failed_with_reason"] == figures["accepted"]
    assert set(figures["failure_types"]) <= {"worker_lost"}
    assert figures["kills"] >= 1


def test_redis_restart_under_load_loses_no_accepted_job(make_service, tmp_path):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        service = make_service(redis=redis.url)
        figures = scenarios.redis_restarts(service, redis, jobs=10, restarts=2, seed=2)
        report(figures)
        assert figures["accepted"] >= 5
        assert figures["stuck_or_lost"] == 0 and figures["succeeded"] == figures["accepted"]
    finally:
        redis.stop()


def test_webhook_receiver_down_for_a_while(make_service, receiver):
    service = make_service()
    figures = scenarios.webhook_outage(service, receiver, jobs=4, down_s=4, seed=3)
    report(figures)
    assert figures["succeeded"] == 4
    assert figures["deliveries_received"] == figures["deliveries_expected"] == 4
    assert figures["signatures_valid"]


def test_api_restart_while_jobs_run(make_service):
    service = make_service()
    figures = scenarios.api_restart(service, jobs=4, seed=4)
    report(figures)
    assert figures["succeeded"] == 4 and figures["stuck_or_lost"] == 0
