"""The inference queue: fair between tenants, ordered within a tenant, claimed atomically, and cheap to ask
"where is my job".

RQ keeps each job's record and registries (queued, started, finished, failed, canceled; retries of jobs
whose worker died). Only the waiting line is ours: instead of RQ's one FIFO list, each tenant has a sorted
set of its queued jobs (priority first, then arrival), and tenants take turns by start-time fair queueing:
every tenant carries a virtual time, the tenant with the smallest one is served next, and serving a job
advances its tenant's virtual time by 1 / weight. A tenant that was idle comes back at the current virtual
time, so a backlog never holds another tenant's first job, and weights (TENANT_WEIGHTS) share the GPUs in
proportion. A sorted set per (token shape, tenant) finds jobs that can join a running batch.

Everything that changes the line runs in one Lua script (enqueue, claim, remove), so several workers and
API processes never see half a step. Jobs that RQ itself puts back on its own list (a retry after a
worker died, a job RQ's maintenance re-queues) are adopted into the fair line by the workers (`intake`).

Keys (under the queue prefix `p`): `p:fq:tenants` (tenant -> virtual time, tenants with queued jobs),
`p:fq:vt` (virtual time of idle tenants), `p:fq:vnow`, `p:fq:seq`, `p:fq:t:<tenant>` (its jobs),
`p:fq:s:<shape>:<tenant>` (its jobs of one token shape), `p:fq:all` (every queued job: the depth),
`p:fq:info` (job -> tenant and shape), `p:fq:wake` (a short list idle workers block on).
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

MAX_PRIORITY = 9
WAKE_TOKENS = 64

# The line's functions over keys under the prefix `p`, which the script that includes them declares first
# (this module's scripts take it as ARGV[1]; the gateway's admission script includes FQ_ADD_LIB and
# FQ_POSITION_LIB too).
_FQ_FUNCTIONS = """
local function k(name) return p .. ':fq:' .. name end
local function weight(t, weights)
  local w = weights[t]
  if w == nil or w <= 0 then return 1 end
  return w
end
local function parse_weights(flat)
  local weights = {}
  for i = 1, #flat, 2 do weights[flat[i]] = tonumber(flat[i + 1]) end
  return weights
end
local function info_of(id)
  local info = redis.call('HGET', k('info'), id)
  if not info then return nil, nil end
  local nl = string.find(info, '\\n', 1, true)
  return string.sub(info, 1, nl - 1), string.sub(info, nl + 1)
end
-- take `id` (of tenant t, shape s) out of the line; a tenant left without jobs leaves the tenants set
local function unlink(id, t, s)
  redis.call('ZREM', k('t:' .. t), id)
  redis.call('ZREM', k('s:' .. s .. ':' .. t), id)
  redis.call('ZREM', k('all'), id)
  redis.call('HDEL', k('info'), id)
end
local function settle_tenant(t, vt)
  if redis.call('ZCARD', k('t:' .. t)) == 0 then
    redis.call('ZREM', k('tenants'), t)
    redis.call('HSET', k('vt'), t, vt)
  else
    redis.call('ZADD', k('tenants'), vt, t)
  end
end
"""

# ARGV: prefix, job id, tenant, shape, priority, front (1: ahead of the tenant's other jobs of its priority),
#       inbox (RQ's list: adopt the job only if it is still there, taking it off; '' when enqueued directly)
FQ_ADD_LIB = (_FQ_FUNCTIONS + """
-- queue job `id` of tenant t, shape s (see FairLine.add); returns its sequence number, 0 when not added
local function fq_add(id, t, s, prio, front, inbox)
  if inbox ~= '' and redis.call('LREM', inbox, 1, id) == 0 then return 0 end
  if redis.call('HEXISTS', k('info'), id) == 1 then return 0 end
  local seq = redis.call('INCR', k('seq'))
  local order = (MAX_PRIORITY - prio) * 17592186044416 + (front and 0 or seq)
  redis.call('ZADD', k('t:' .. t), order, id)
  redis.call('ZADD', k('s:' .. s .. ':' .. t), order, id)
  redis.call('ZADD', k('all'), seq, id)
  redis.call('HSET', k('info'), id, t .. '\\n' .. s)
  if not redis.call('ZSCORE', k('tenants'), t) then
    local vt = tonumber(redis.call('HGET', k('vt'), t) or '0')
    local vnow = tonumber(redis.call('GET', k('vnow')) or '0')
    if vnow > vt then vt = vnow end
    redis.call('ZADD', k('tenants'), vt, t)
  end
  redis.call('LPUSH', k('wake'), '1')
  redis.call('LTRIM', k('wake'), 0, WAKE_TOKENS - 1)
  return seq
end
""").replace("MAX_PRIORITY", str(MAX_PRIORITY)).replace("WAKE_TOKENS", str(WAKE_TOKENS))
_LIB = "local p = ARGV[1]\n" + _FQ_FUNCTIONS
_ADD = "local p = ARGV[1]\n" + FQ_ADD_LIB + """
return fq_add(ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7])
""".replace("MAX_PRIORITY", str(MAX_PRIORITY)).replace("WAKE_TOKENS", str(WAKE_TOKENS))

# ARGV: prefix, mode ('new' | 'join'), shape ('' with 'new'), limit, intermediate queue key, RQ job key prefix,
#       tenant weights (name, weight, ...).
# new:  the fair head starts the batch; then jobs of its shape, in fair order among tenants, up to `limit`.
# join: jobs of `shape` while the fair head is of that shape (another shape at the head: the batch drains,
#       so that job starts next). Returns {blocked (0/1), job ids...}; claimed ids go to RQ's intermediate
#       queue in the same step (a worker that dies before starting them leaves them where RQ finds them).
_CLAIM = _LIB + """
local mode, shape, limit, inter, jobkey = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local weights = parse_weights({unpack(ARGV, 7)})
local picked, blocked = {}, 0
local function take(id, t, s, vt)
  unlink(id, t, s)
  local vnow = tonumber(redis.call('GET', k('vnow')) or '0')
  if vt > vnow then redis.call('SET', k('vnow'), vt) end
  settle_tenant(t, vt + 1 / weight(t, weights))
  if redis.call('HGET', jobkey .. id, 'status') == 'queued' then
    redis.call('LPUSH', inter, id)
    table.insert(picked, id)
  end
end
local guard = 0
while #picked < limit and guard < 10000 do
  guard = guard + 1
  local head = redis.call('ZRANGE', k('tenants'), 0, 0, 'WITHSCORES')
  if #head == 0 then break end
  local t, vt = head[1], tonumber(head[2])
  local id = redis.call('ZRANGE', k('t:' .. t), 0, 0)[1]
  if not id then
    redis.call('ZREM', k('tenants'), t)
  else
    local _, s = info_of(id)
    s = s or ''
    if shape == '' then
      shape = s
      take(id, t, s, vt)
    elseif s == shape then
      take(id, t, s, vt)
    elseif mode == 'join' then
      blocked = 1
      break
    else
      -- forming a new batch: the first job of this shape in fair order, skipping other shapes
      local found = false
      local tenants = redis.call('ZRANGE', k('tenants'), 0, -1, 'WITHSCORES')
      for i = 1, #tenants, 2 do
        local u = tenants[i]
        local jid = redis.call('ZRANGE', k('s:' .. shape .. ':' .. u), 0, 0)[1]
        if jid then
          take(jid, u, shape, tonumber(tenants[i + 1]))
          found = true
          break
        end
      end
      if not found then break end
    end
  end
end
table.insert(picked, 1, blocked)
return picked
"""

# ARGV: prefix, job id. Out of the line (canceled while queued, or found not queued); 1 when it was there.
_REMOVE = _LIB + """
local id = ARGV[2]
local t, s = info_of(id)
if not t then return 0 end
unlink(id, t, s)
local vt = tonumber(redis.call('ZSCORE', k('tenants'), t) or redis.call('HGET', k('vt'), t) or '0')
settle_tenant(t, vt)
return 1
"""

# Jobs served before job `id` in fair order (-1: not in the line), with `weights` as parse_weights makes
# them. Its start tag is its tenant's virtual time + its rank / weight; each other tenant's k-th job has
# start tag vt + k / w, and goes first when that is smaller (equal: the tenant whose name sorts first).
# Over the functions of _FQ_FUNCTIONS (the gateway's admission script includes it too, after FQ_ADD_LIB).
FQ_POSITION_LIB = """
local function fq_position(id, weights)
  local t = info_of(id)
  if not t then return -1 end
  local rank = redis.call('ZRANK', k('t:' .. t), id)
  local vt = tonumber(redis.call('ZSCORE', k('tenants'), t) or '0')
  local start = vt + rank / weight(t, weights)
  local ahead = rank
  local tenants = redis.call('ZRANGE', k('tenants'), 0, -1, 'WITHSCORES')
  for i = 1, #tenants, 2 do
    local u = tenants[i]
    if u ~= t then
      local w, vu = weight(u, weights), tonumber(tenants[i + 1])
      local n = redis.call('ZCARD', k('t:' .. u))
      local span = (start - vu) * w
      local count
      if u < t then count = math.floor(span + 1e-9) + 1 else count = math.ceil(span - 1e-9) end
      if count < 0 then count = 0 end
      if count > n then count = n end
      ahead = ahead + count
    end
  end
  return ahead
end
"""
# ARGV: prefix, job id, weights... -> fq_position
_POSITION = _LIB + FQ_POSITION_LIB + """
return fq_position(ARGV[2], parse_weights({unpack(ARGV, 3)}))
"""


def parse_weights(text: str) -> dict[str, float]:
    """TENANT_WEIGHTS: 'acme=2,beta=0.5' -> {'acme': 2.0, 'beta': 0.5}; unnamed tenants weigh 1."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"TENANT_WEIGHTS entry {part!r} is not tenant=weight")
        weight = float(value)
        if not weight > 0:
            raise ValueError(f"TENANT_WEIGHTS entry {part!r}: the weight must be above 0")
        weights[name.strip()] = weight
    return weights


def token_shape(bucket: str) -> str:
    """The token shape of a job's bucket (height x width x frames x steps [x rope...]): the bucket without
    its step count. Jobs of one token shape can share denoiser steps whatever their step counts; RoPE-scaled
    jobs keep their full bucket (their scaling depends on the batch's schedule)."""
    parts = bucket.split("x")
    if len(parts) < 4:
        return bucket
    return bucket if len(parts) > 4 else "x".join(parts[:3])


def _flat(weights: dict[str, float]) -> list:
    return [v for name, weight in weights.items() for v in (name, repr(weight))]


class FairLine:
    """The waiting line in Redis: add (in the caller's pipeline), claim, remove, position, depth."""

    def __init__(self, redis: Redis, prefix: str, weights: Optional[dict[str, float]] = None):
        self.redis = redis
        self.prefix = prefix
        self.weights = weights or {}
        self._add = redis.register_script(_ADD)
        self._claim = redis.register_script(_CLAIM)
        self._remove = redis.register_script(_REMOVE)
        self._position = redis.register_script(_POSITION)

    def key(self, name: str) -> str:
        return f"{self.prefix}:fq:{name}"

    @property
    def add_sha(self) -> str:
        """The SHA that a pipelined add names (the gateway's admission script runs such adds itself)."""
        return self._add.sha

    @property
    def weight_args(self) -> list:
        """The tenant weights as the line's scripts take them: name, weight, ..."""
        return _flat(self.weights)

    @property
    def wake_key(self) -> str:
        return self.key("wake")

    def add(self, job_id: str, tenant: str, shape: str, priority: int = 0, front: bool = False, pipe=None,
            inbox: str = ""):
        """Queue a job (in `pipe`, a MULTI pipeline, when given: then it is queued with everything else
        the pipeline does, or not at all). With `inbox`, only if the job is still on that list (adoption)."""
        priority = max(0, min(MAX_PRIORITY, int(priority or 0)))
        return self._add(args=[self.prefix, job_id, tenant or "", shape, priority, int(front), inbox], client=pipe or self.redis)

    def claim(self, limit: int, intermediate_key: str, shape: Optional[str] = None, pipe=None):
        """Claim up to `limit` jobs: a new batch (`shape` None: the fair head and jobs of its shape) or
        joiners of a running batch of `shape`. (job ids, whether another shape waits at the head); in a
        pipeline, the pipeline's answer at this place goes through `claimed`."""
        mode = "new" if shape is None else "join"
        args = [self.prefix, mode, shape or "", limit, intermediate_key, Job.redis_job_namespace_prefix, *_flat(self.weights)]
        if pipe is None:
            return self.claimed(self._claim(args=args))
        # EVALSHA as is, so the pipeline stays one round trip (redis-py would first ask SCRIPT EXISTS); after
        # a Redis restart the first such call fails with NoScriptError and `load_scripts` loads them again.
        pipe.evalsha(self._claim.sha, 0, *args)

    def load_scripts(self) -> None:
        for script in (self._add, self._claim, self._remove, self._position):
            script.sha = self.redis.script_load(script.script)

    @staticmethod
    def claimed(out) -> tuple[list[str], bool]:
        return [i.decode() if isinstance(i, bytes) else i for i in out[1:]], bool(out[0])

    def remove(self, job_id: str, pipe=None) -> None:
        self._remove(args=[self.prefix, job_id], client=pipe or self.redis)

    def position(self, job_id: str) -> Optional[int]:
        """Jobs to be served before this one (0 = next), by the fair order; None when it is not waiting."""
        ahead = self._position(args=[self.prefix, job_id, *self.weight_args])
        return None if ahead < 0 else int(ahead)

    def depth(self) -> int:
        return int(self.redis.zcard(self.key("all")))

    def job_ids(self) -> list[str]:
        return [i.decode() for i in self.redis.zrange(self.key("all"), 0, -1)]


class FairQueue(Queue):
    """RQ's queue with the fair line in place of its FIFO list: RQ's enqueue (the gateway's, a group's, a
    retry through this class) saves the job record as RQ does and adds the job to the line. RQ's own list
    stays an inbox for what RQ re-queues through a plain Queue; workers adopt those (`intake`)."""

    weights: dict[str, float] = {}

    @property
    def line(self) -> FairLine:
        line = self.__dict__.get("_line")
        if line is None:
            prefix = self.name
            line = self.__dict__["_line"] = FairLine(self.connection, prefix, self.weights)
        return line

    def _enqueue_async_job(self, job: Job, pipeline=None, at_front: bool = False, unique: bool = False) -> Job:
        is_deferred = job.get_status(refresh=False) == JobStatus.DEFERRED
        self._prepare_for_queue(job)
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        if is_deferred:
            self.deferred_job_registry.remove(job, pipeline=pipe)
        self._persist_job(job, pipe)
        meta = job.meta or {}
        self.line.add(job.id, meta.get("tenant", ""), token_shape(meta.get("bucket", "")), meta.get("priority", 0),
                      front=at_front or bool(job.started_at), pipe=pipe)
        if pipeline is None:
            pipe.execute()
        return job

    @property
    def count(self) -> int:
        """Queued jobs: the fair line and RQ's inbox (jobs not adopted yet)."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.zcard(self.line.key("all"))
            pipe.llen(self.key)
            line, inbox = pipe.execute()
        return int(line) + int(inbox)

    def get_job_ids(self, offset: int = 0, length: int = -1) -> list[str]:
        ids = self.line.job_ids() + [i.decode() for i in self.connection.lrange(self.key, 0, -1)]
        return ids[offset:] if length < 0 else ids[offset:offset + length]

    def get_job_position(self, job_or_id) -> Optional[int]:
        """O(tenants x log N): the job's place in the fair order (see FairLine.position)."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        position = self.line.position(job_id)
        if position is None:  # in RQ's inbox, not adopted yet: behind the line
            return self.line.depth()
        return position

    def intake(self, limit: int = 64) -> int:
        """Adopt the jobs RQ put on its own list (retries, re-queues) into the fair line, ahead of their
        tenant's other jobs (they waited once already). Returns how many were adopted."""
        ids = [i.decode() for i in self.connection.lrange(self.key, 0, limit - 1)]
        adopted = 0
        for job_id in ids:
            try:
                job = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
            except NoSuchJobError:
                job = None
            if job is None or job.get_status(refresh=False) != JobStatus.QUEUED:
                self.connection.lrem(self.key, 1, job_id)  # expired or no longer queued: nothing to run
                continue
            meta = job.meta or {}
            adopted += bool(self.line.add(job_id, meta.get("tenant", ""), token_shape(meta.get("bucket", "")),
                                          meta.get("priority", 0), front=True, inbox=self.key))
        return adopted


def fair_queue(redis: Redis, name: str, weights: Iterable = ()) -> FairQueue:
    queue = FairQueue(name, connection=redis)
    queue.weights = dict(weights)
    return queue
