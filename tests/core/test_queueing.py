"""The fair line in a real Redis: tenants take turns (weighted), a backlog never holds another tenant's
first job, positions are the order jobs are claimed in, and batches form by token shape."""

from __future__ import annotations

import random
import uuid

import pytest
from redis import Redis
from rq import Queue

from core.queueing import FairLine, fair_queue, parse_weights, token_shape

S, T = "64x64x1", "128x64x1"


@pytest.fixture
def redis(redis_url):
    return Redis.from_url(redis_url)


@pytest.fixture
def line(redis):
    return FairLine(redis, "fq" + uuid.uuid4().hex[:8])


def queued(redis, job_ids):
    """RQ's status field, which a claim checks (a job canceled meanwhile is skipped)."""
    with redis.pipeline() as pipe:
        for job_id in job_ids:
            pipe.hset(f"rq:job:{job_id}", "status", "queued")
            pipe.expire(f"rq:job:{job_id}", 600)
        pipe.execute()


def add(redis, line, tenant, count, shape=S, priority=0):
    ids = [f"{tenant}-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
    queued(redis, ids)
    for job_id in ids:
        line.add(job_id, tenant, shape, priority)
    return ids


def claim_all(line, limit=1):
    order = []
    while True:
        ids, _ = line.claim(limit, line.key("inter"))
        if not ids:
            return order
        order += ids


def test_a_backlog_never_holds_another_tenants_first_job(redis, line):
    a = add(redis, line, "a", 24)
    (b,) = add(redis, line, "b", 1)
    assert line.position(b) == 1 and line.position(a[5]) == 6
    first, _ = line.claim(4, line.key("inter"))
    assert b in first and len(first) == 4


def test_positions_are_the_claim_order(redis, line):
    rng = random.Random(1)
    line.weights = {"a": 2.0, "c": 0.5}
    ids = []
    for _ in range(40):
        tenant = rng.choice("abc")
        ids += add(redis, line, tenant, 1, priority=rng.choice([0, 0, 0, 5]))
    positions = {job_id: line.position(job_id) for job_id in ids}
    order = claim_all(line)
    assert sorted(positions.values()) == list(range(len(ids)))
    assert [positions[j] for j in order] == list(range(len(ids)))


def test_weights_share_the_turns(redis, line):
    line.weights = parse_weights("a=2")
    add(redis, line, "a", 30)
    add(redis, line, "b", 30)
    first = claim_all(line)[:30]
    assert sum(j.startswith("a-") for j in first) == 20


def test_priority_goes_first_within_a_tenant(redis, line):
    low = add(redis, line, "a", 3)
    (high,) = add(redis, line, "a", 1, priority=5)
    assert line.position(high) == 0 and line.position(low[0]) == 1
    assert claim_all(line)[0] == high


def test_batches_form_by_shape_and_drain_for_another_shape_at_the_head(redis, line):
    a = add(redis, line, "a", 6, shape=S)
    (b,) = add(redis, line, "b", 1, shape=T)
    first, _ = line.claim(4, line.key("inter"))  # a new batch: the head and jobs of its shape, skipping b
    assert first == a[:4]
    joiners, blocked = line.claim(4, line.key("inter"), shape=S)  # b waits at the head: no joiners
    assert joiners == [] and blocked
    assert line.claim(4, line.key("inter"))[0] == [b]
    assert line.claim(4, line.key("inter"), shape=S) == (a[4:], False)
    assert redis.llen(line.key("inter")) == 7  # claimed jobs are on RQ's intermediate queue


def test_a_job_no_longer_queued_is_skipped_and_removed_jobs_leave_the_line(redis, line):
    a = add(redis, line, "a", 3)
    redis.hset(f"rq:job:{a[0]}", "status", "canceled")
    line.remove(a[1])
    assert line.depth() == 2 and line.position(a[1]) is None and line.position(a[2]) == 1
    assert claim_all(line) == [a[2]]
    assert line.depth() == 0


def test_rq_requeued_jobs_are_adopted_at_the_front(redis):
    name = "fq" + uuid.uuid4().hex[:8]
    fair = fair_queue(redis, name)
    plain = Queue(name, connection=redis)
    first = fair.enqueue("worker.entry.run_job", "t", {}, meta={"tenant": "a", "bucket": "64x64x1x4"})
    retried = plain.enqueue("worker.entry.run_job", "t", {}, meta={"tenant": "a", "bucket": "64x64x1x9"})
    assert fair.count == 2 and redis.llen(fair.key) == 1
    assert fair.intake() == 1 and fair.intake() == 0
    assert redis.llen(fair.key) == 0 and fair.count == 2
    assert fair.get_job_position(retried.id) == 0 and fair.get_job_position(first.id) == 1


def test_token_shape():
    assert token_shape("64x96x2x30") == "64x96x2"
    assert token_shape("64x64x4x60xrope1.5_400_1_3") == "64x64x4x60xrope1.5_400_1_3"
    with pytest.raises(ValueError):
        parse_weights("a=0")
