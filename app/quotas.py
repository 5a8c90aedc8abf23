"""Admission limits: a request rate per API key, a number of active (queued or running) jobs per tenant,
a bound on the whole queue, and Idempotency-Key replays. Each limit answers 429 with Retry-After.

The decisions are Redis scripts over per-tenant keys, so every API process decides alone and the
bounds stay exact under concurrency (a script runs atomically; no lock is shared between submissions):

- `precheck`, before the body is parsed (cheapest first): a replay passes; else the key's rate is counted
  and the queue and tenant bounds are looked at. One round trip, the API key's lookup included for a
  request that presents one (`precheck_keyed`).
- `commit`, with the job records ready: the Idempotency-Key, queue bound and tenant quota are checked
  again and, when they hold, the submission's writes (the job records and RQ's queue entries, the
  tenant's active set, the listing, the key) are applied in the same script. One round trip: nothing is
  reserved that a crash could leak, and no job is queued that the bounds refuse. It answers the first new
  job's queue position too (the fair line's own position function), so the 202 needs no read after it.

A tenant's active jobs are a set of job ids: SCARD is O(1) and the end-of-job hook's SREM is idempotent
(a retried hook cannot count a job twice, which a counter would). Should a hook be missed (a job
record that expired), the scripts drop ended ids, but only when the count would refuse: accepting a
job never reads the set's members.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from redis import Redis
from rq.job import Job

from core.connection import Keys
from core.queueing import FQ_ADD_LIB, FQ_POSITION_LIB, FairQueue
from core.settings import Settings

from .errors import ApiError

RATE_WINDOW_S = 60
JOB_PREFIX = Job.redis_job_namespace_prefix  # RQ's job records: <prefix><job id>

# The tenant's active count, repaired when it would refuse: ids of jobs that ended without their hook or
# whose record expired are dropped (at most the limit's worth of reads, and only on that path).
_ACTIVE = """
local function active_jobs(set, job_prefix, n, limit)
  local count = redis.call('SCARD', set)
  if count + n <= limit then return count end
  count = 0
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local status = redis.call('HGET', job_prefix .. id, 'status')
    if status == 'queued' or status == 'started' or status == 'deferred' or status == 'scheduled' then
      count = count + 1
    else
      redis.call('SREM', set, id)
    end
  end
  return count
end
-- The queue bound and the tenant quota for `n` new jobs: nil when both hold, else {limit, count seen}.
-- The queue is RQ's list (jobs RQ re-queued, not yet adopted) and the fair line's set of every job.
local function refused_bound(list, line_all, active_set, job_prefix, depth, quota, n)
  if depth > 0 then
    local queued = redis.call('LLEN', list) + redis.call('ZCARD', line_all)
    if queued + n > depth then return {'queue', queued} end
  end
  if quota > 0 then
    local active = active_jobs(active_set, job_prefix, n, quota)
    if active + n > quota then return {'quota', active} end
  end
  return nil
end
"""

# The precheck: a replay passes (`replays`: key names, '' = none); else the rate is counted (limit 0 =
# none; the counter lives `window` s) and the queue bound and tenant quota are looked at for `n` new jobs.
_PRECHECK_LIB = _ACTIVE + """
local function precheck(replays, rate_key, list, active_set, line_all, rate, depth, quota, n, window, job_prefix)
  for _, name in ipairs(replays) do
    if name ~= '' and redis.call('EXISTS', name) == 1 then return {'replay', 0} end
  end
  if rate > 0 then
    local count = redis.call('INCR', rate_key)
    if count == 1 then redis.call('EXPIRE', rate_key, window) end
    if count > rate then return {'rate', count} end
  end
  local refused = refused_bound(list, line_all, active_set, job_prefix, depth, quota, n)
  if refused then return refused end
  return {'ok', 0}
end
"""

# KEYS: job replay key, batch replay key ('' = none), rate counter, queue (RQ's list: jobs RQ re-queued, not
# yet in the fair line), tenant's active set, the fair line's set of every queued job (core/queueing.py)
# ARGV: rate limit, queue limit, active limit, new jobs, rate counter lifetime (s), job key prefix
# (limit 0 = none)
_PRECHECK = _PRECHECK_LIB + """
return precheck({KEYS[1], KEYS[2]}, KEYS[3], KEYS[4], KEYS[5], KEYS[6], tonumber(ARGV[1]), tonumber(ARGV[2]),
                tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6])
"""

# The precheck of a request that presents an API key, with the key's lookup in the same round trip: the
# key's record (app/api_keys.py) is read and checked here first (a key that is unknown, revoked or whose
# secret does not match answers {'key', false} and counts nothing); then its tenant's precheck runs. The
# record comes back with the decision, and the caller checks it again (KeyStore.verified) before using it.
# KEYS: the API keys' hash, the key's rate counter, queue (RQ's list), the fair line's set of every job
# ARGV: key id, SHA-256 (hex) of the presented secret, Idempotency-Key ('' = none), the names' stems that
# the tenant (and ':' and the Idempotency-Key) complete: Keys.idempotency(''), Keys.active_jobs(''); then
# rate limit, queue limit, active limit, new jobs, rate counter lifetime (s), job key prefix
_PRECHECK_KEYED = _PRECHECK_LIB + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'key', 0, false} end
local record = cjson.decode(raw)
local revoked = record['revoked_at']
if type(record['tenant']) ~= 'string' or record['sha256'] ~= ARGV[2]
    or (revoked ~= nil and revoked ~= cjson.null and revoked ~= false and revoked ~= 0 and revoked ~= '') then
  return {'key', 0, false}
end
local tenant = record['tenant']
local replay = ''
if ARGV[3] ~= '' then replay = ARGV[4] .. tenant .. ':' .. ARGV[3] end
local decision = precheck({replay}, KEYS[2], KEYS[3], ARGV[5] .. tenant, KEYS[4], tonumber(ARGV[6]),
                          tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], ARGV[11])
decision[3] = raw
return decision
"""

# KEYS: replay key ('' = none), queue (RQ's list), tenant's active set, the fair line's set of every job
# ARGV: queue limit, active limit, new jobs, job key prefix, the fair line's prefix, the SHA of its add
# script, then the writes: their count, then per write its argument count and arguments; then the tenant
# weights (name, weight, ...). The writes name keys beside KEYS (RQ's job records); RQ needs a single Redis,
# not a cluster, so every key is on this server. A write that calls the line's add script (a script cannot
# call another) runs its function here. `ok` answers the queue length after the writes and the queue
# position of the first job added, as FairQueue.get_job_position reads it (-1: no job added): the same
# function over the same state, so the answer needs no read of its own.
_COMMIT = _ACTIVE + "local p = ARGV[5]\n" + FQ_ADD_LIB + FQ_POSITION_LIB + """
if KEYS[1] ~= '' then
  local held = redis.call('GET', KEYS[1])
  if held then return {'replay', held} end
end
local refused = refused_bound(KEYS[2], KEYS[4], KEYS[3], ARGV[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
if refused then return refused end
local at = 8
local first
for _ = 1, tonumber(ARGV[7]) do
  local argc = tonumber(ARGV[at])
  if ARGV[at + 1] == 'EVALSHA' and ARGV[at + 2] == ARGV[6] then
    -- EVALSHA sha 0 prefix id tenant shape priority front inbox
    fq_add(ARGV[at + 5], ARGV[at + 6], ARGV[at + 7], tonumber(ARGV[at + 8]), ARGV[at + 9] == '1', ARGV[at + 10])
    first = first or ARGV[at + 5]
  else
    redis.call(unpack(ARGV, at + 1, at + argc))
  end
  at = at + argc + 1
end
local position = -1
if first then
  position = fq_position(first, parse_weights({unpack(ARGV, at)}))
  if position < 0 then position = redis.call('ZCARD', KEYS[4]) end  -- not in the line: behind it
end
return {'ok', redis.call('LLEN', KEYS[2]) + redis.call('ZCARD', KEYS[4]), position}
"""


@dataclass(frozen=True)
class Decision:
    """A script's answer: `ok`, `replay` (value: the stored record, at commit), or the limit that refused
    (`rate`, `queue`, `quota`; value: the count it saw)."""

    outcome: str
    value: object = None
    position: Optional[int] = None  # `ok` at commit: the first new job's queue position (None: no job added)


class Quotas:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings, queue: FairQueue):
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.queue_key = queue.key  # RQ's list of the inference queue (an inbox for what RQ re-queues)
        self.line = queue.line  # the fair line the gateway's jobs join
        self._precheck = redis.register_script(_PRECHECK)
        self._precheck_keyed = redis.register_script(_PRECHECK_KEYED)
        self._commit = redis.register_script(_COMMIT)
        self._encode = redis.connection_pool.get_encoder().encode

    # ---- the two admission steps -------------------------------------------------------------------------
    def precheck(self, tenant: str, key_id: str, replay_keys: tuple[Optional[str], Optional[str]],
                 new_jobs: int) -> bool:
        """Before the body: True when one of `replay_keys` (the job and batch Idempotency-Keys) is held (a
        replay creates no work, so it is not held to the limits); else counts the rate and raises the
        429 of the first limit that refuses."""
        outcome, value = self._precheck(
            keys=[*(name or "" for name in replay_keys), self._rate_key(key_id), self.queue_key,
                  self.keys.active_jobs(tenant), self.line.key("all")],
            args=[self.settings.rate_limit_per_minute, self.settings.max_queue_depth,
                  self.settings.max_active_jobs_per_tenant, new_jobs, RATE_WINDOW_S * 2, JOB_PREFIX],
        )
        decision = Decision(outcome.decode(), value)
        if decision.outcome == "replay":
            return True
        self.refuse(decision)
        return False

    def precheck_keyed(self, keys_hash: str, key_id: str, secret_sha256: str, idempotency_key: Optional[str],
                       new_jobs: int) -> tuple[Decision, Optional[bytes]]:
        """`precheck` with the API key's lookup in the same round trip: (the decision, the key's record).
        `key` (record None) when the key is unknown, revoked or its secret does not match: nothing was
        counted. Nothing is raised here: the caller checks the record (a 401 goes before any 429), then
        `refuse`s the decision. The tenant's names are made as `JobService._idempotent` and
        `Keys.active_jobs` make them."""
        outcome, value, raw = self._precheck_keyed(
            keys=[keys_hash, self._rate_key(key_id), self.queue_key, self.line.key("all")],
            args=[key_id, secret_sha256, idempotency_key or "", self.keys.idempotency(""), self.keys.active_jobs(""),
                  self.settings.rate_limit_per_minute, self.settings.max_queue_depth,
                  self.settings.max_active_jobs_per_tenant, new_jobs, RATE_WINDOW_S * 2, JOB_PREFIX],
        )
        return Decision(outcome.decode(), value), raw or None

    def commit(self, tenant: str, replay_key: Optional[str], new_jobs: int, writes: list[tuple]) -> Decision:
        """Check the replay key, queue bound and tenant quota and, when they hold, apply `writes` (redis
        commands as argument tuples), all in one atomic step. `ok` carries the queue length after it and
        the queue position of the first job the writes add to the fair line (`get_job_position`'s answer
        at that moment); `replay` the record stored under the key; a refusal raises its 429."""
        flat: list = [len(writes)]
        for command in writes:
            flat.append(len(command))
            flat.extend(self._encode(arg) for arg in command)
        outcome, value, *position = self._commit(
            keys=[replay_key or "", self.queue_key, self.keys.active_jobs(tenant), self.line.key("all")],
            args=[self.settings.max_queue_depth, self.settings.max_active_jobs_per_tenant, new_jobs, JOB_PREFIX,
                  self.line.prefix, self.line.add_sha, *flat, *self.line.weight_args],
        )
        first = position[0] if position and position[0] >= 0 else None
        decision = Decision(outcome.decode(), value, first)
        self.refuse(decision)
        return decision

    # ---- answers -------------------------------------------------------------------------------------------
    def refuse(self, decision: Decision) -> None:
        """The 429 of a refusing decision (nothing for `ok` or `replay`)."""
        if decision.outcome == "rate":
            limit = self.settings.rate_limit_per_minute
            retry = RATE_WINDOW_S - int(time.time() % RATE_WINDOW_S)
            raise ApiError(429, "rate_limited", f"more than {limit} submissions a minute for this key; retry in {retry} s",
                           {"Retry-After": str(retry)})
        if decision.outcome == "queue":
            raise ApiError(429, "queue_full", f"the service queue is full ({decision.value} jobs waiting); retry later",
                           {"Retry-After": "30"})
        if decision.outcome == "quota":
            limit = self.settings.max_active_jobs_per_tenant
            raise ApiError(429, "quota_exceeded",
                           f"this tenant has {decision.value} queued or running jobs and the limit is {limit}; "
                           "wait for some to finish", {"Retry-After": "10"})

    def check_rate(self, key_id: str) -> None:
        """Count one submission against the key's rate alone (callers that skip `precheck`)."""
        limit = self.settings.rate_limit_per_minute
        if limit <= 0:
            return
        with self.redis.pipeline() as pipe:
            pipe.incr(self._rate_key(key_id))
            pipe.expire(self._rate_key(key_id), RATE_WINDOW_S * 2)
            count, _ = pipe.execute()
        if count > limit:
            self.refuse(Decision("rate", count))

    def _rate_key(self, key_id: str) -> str:
        """A fixed window per key and minute."""
        return f"{self.keys.prefix}:rate:{key_id}:{int(time.time() // RATE_WINDOW_S)}"

    # ---- the tenant's active set ---------------------------------------------------------------------------
    def added(self, tenant: str, job_ids: list[str], pipe) -> None:
        """Count new jobs as active (inside the submission's writes)."""
        pipe.sadd(self.keys.active_jobs(tenant), *job_ids)
        pipe.expire(self.keys.active_jobs(tenant), self.settings.results_ttl_s)
