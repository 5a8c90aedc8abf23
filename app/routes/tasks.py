"""`POST /v1/<task>`: one endpoint per task, JSON or multipart, answered 202 with the job."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Union

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from core.views import TERMINAL, BatchView, JobView
from model.tasks import TASKS

from ..body import idempotency_key, load_json, parse_request, read_body
from ..callers import Caller, admit, bearer, optional_caller, require_caller
from ..errors import ApiError
from ..jobs import fingerprint
from ..schemas import REQUEST_MODELS, ErrorBody, task_part
from ..state import Fetcher, Jobs, KeyRing, ServerSettings

router = APIRouter(prefix="/v1", tags=["tasks"])
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*(?:=\s*(\d+))?\s*(?=$|[,;\s])", re.IGNORECASE)


def prefer_wait(request: Request, limit: int) -> Optional[int]:
    """Seconds to hold the answer: `Prefer: wait=N` up to `limit`; a bare `Prefer: wait` (as Replicate
    documents it) waits the full `limit`."""
    match = _PREFER_WAIT.search(request.headers.get("prefer", ""))
    if not match:
        return None
    if match.group(1) is None:  # a bare `Prefer: wait`: as long as the server waits
        return limit
    digits = match.group(1).lstrip("0") or "0"
    return min(int(digits), limit) if len(digits) <= 9 else limit  # wait=<5000 digits> is a long wait, not a 500


async def wait_for(service, job_id: str, seconds: int, tenant: str) -> JobView:
    """Poll until the job ends or `seconds` pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    view = await run_in_threadpool(service.view, job_id, None, tenant)
    while view.status not in TERMINAL and loop.time() < deadline:
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        view = await run_in_threadpool(service.view, job_id, None, tenant)
    return view


REPLAY_HEADER = "Idempotent-Replayed"


def job_response(view: JobView, wait: Optional[int], replayed: bool = False) -> JSONResponse:
    headers = {"Location": view.urls["self"]}
    if replayed:
        headers[REPLAY_HEADER] = "true"
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
    status = 200 if view.status in TERMINAL else 202
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


@dataclass(frozen=True)
class Admission:
    caller: Caller
    idempotency_key: Optional[str]
    maybe_replay: bool  # False: the precheck found no job or batch under the Idempotency-Key


class Deferred:
    """An admission still to check: in the thread-pool trip that queues the job (`admitted`: once; its
    answer is kept)."""

    def __init__(self, check: Callable[[], Admission]):
        self._check = check
        self._admission: Optional[Admission] = None

    def check(self) -> Admission:
        if self._admission is None:
            self._admission = self._check()
        return self._admission


# A JSON body at most this large is read before the admission checks (it comes with its headers, in
# practice): the checks then run, in the same order and with the same answers, in the one thread-pool
# trip that also validates and queues the job. A larger body, a chunked one or a form is read only once
# the checks have passed, in a trip of their own.
SMALL_BODY_BYTES = 64 * 1024


def _small_json(request: Request) -> bool:
    headers = request.headers
    if headers.get("content-type", "").split(";")[0].strip().lower() not in ("application/json", ""):
        return False
    length = headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES and "transfer-encoding" not in headers


def _check_admission(request: Request, jobs, settings, keystore, credentials) -> Admission:
    """What a submission is checked for before its body is parsed, cheapest first: the API key, the
    headers, then the rate, queue bound and tenant quota (app/quotas.py); the key and the limits in one
    round trip to Redis (app/callers.py `admit`)."""
    try:
        idem = idempotency_key(request)
    except ApiError:
        require_caller(optional_caller(settings, keystore, credentials))  # a bad key is a 401 first
        raise
    caller, replay = admit(settings, keystore, jobs, credentials, idem)
    return Admission(caller, idem, replay)


async def admit_submission(request: Request, jobs: Jobs, settings: ServerSettings, keystore: KeyRing,
                           credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Union[Admission, Deferred]:
    """The admission checks (`_check_admission`) before the body is read, in a thread-pool trip; for a
    small JSON body, deferred to the trip that queues the job (SMALL_BODY_BYTES). A request without a key
    is a 401 at once either way."""
    if credentials is None and not settings.auth_disabled:
        require_caller(None)
    check = partial(_check_admission, request, jobs, settings, keystore, credentials)
    if _small_json(request):
        return Deferred(check)
    return await run_in_threadpool(check)


def admitted(admission: Union[Admission, Deferred]) -> Admission:
    return admission.check() if isinstance(admission, Deferred) else admission


_URL_SCHEME = re.compile(rb"https?:", re.IGNORECASE)


def _validated(model, raw: bytes):
    data = load_json(raw) if raw else {}
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return model.model_validate(data)


def _admitted_and_validated(admission, model, raw: bytes) -> tuple[Admission, object]:
    return admitted(admission), _validated(model, raw)


def _queue(service, settings, task: str, model, body, admission) -> tuple[Union[JobView, BatchView], bool]:
    """Check a deferred admission, validate the body (`bytes`: JSON text not parsed yet, with no image by
    URL), then queue the job; `num_outputs` > 1 queues a batch of that many jobs differing only by seed
    (seed, seed+1, ...). One trip to the thread pool for all of it."""
    admission = admitted(admission)
    if isinstance(body, bytes):
        body = _validated(model, body)
    caller, idem = admission.caller, admission.idempotency_key
    priority = caller.job_priority(body.priority)
    part = task_part(body, task)
    if body.num_outputs <= 1:
        return service.submit_once(task, part, caller.tenant, caller.key_id, body.webhook, body.output_format,
                                   idem, True, admission.maybe_replay, priority)
    first = body.seed if body.seed is not None else secrets.randbelow(2**31)
    items = [(task, part.model_copy(update={"seed": (first + i) % 2**63}), body.output_format)
             for i in range(body.num_outputs)]
    # the request as the client sent it (no drawn seed; the priority it runs at): an identical retry under the
    # same key is a replay
    sent = fingerprint("num_outputs", task, body.model_dump(mode="json", exclude={"task", "priority"}),
                       *([priority] if priority else []))
    return service.submit_batch_once(items, body.webhook, caller.tenant, caller.key_id, idem, True,
                                     admission.maybe_replay, sent, [priority] * len(items))


def _endpoint(task: str):
    model = REQUEST_MODELS[task]

    async def submit(request: Request, service: Jobs, settings: ServerSettings, fetcher: Fetcher,
                     admission: Union[Admission, Deferred] = Depends(admit_submission)) -> JSONResponse:
        wait = prefer_wait(request, settings.max_wait_s)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("application/json", ""):
            body = await read_body(request)  # parsed and validated with the rest, in _queue
            if _URL_SCHEME.search(body):  # may hold images by URL: validated now, fetched below
                admission, body = await run_in_threadpool(_admitted_and_validated, admission, model, body)
        else:
            body = await parse_request(request, model, settings.max_body_bytes)  # multipart (or a 415)
        if not isinstance(body, bytes):
            admission.caller.job_priority(body.priority)  # a priority the key refuses fetches nothing
            limits = settings.task_limits()
            body = await fetcher.fetch_all(  # images by URL, checked first, off the request threads
                body, admission.caller.tenant, lambda checked: task_part(checked, task).plan(limits))
        view, replayed = await run_in_threadpool(_queue, service, settings, task, model, body, admission)
        admission = admitted(admission)  # checked in that trip
        if isinstance(view, BatchView):
            headers = {"Location": view.urls["self"], **({REPLAY_HEADER: "true"} if replayed else {})}
            return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)
        if wait:
            view = await wait_for(service, view.id, wait, admission.caller.tenant)
        return job_response(view, wait, replayed)

    submit.__name__ = "submit_" + task.replace("-", "_")
    return submit, model


def _docs(model) -> str:
    text = (model.__doc__ or "").strip()
    return (
        f"{text}\n\nSend JSON (images as base64 or data URIs) or multipart/form-data (images as files, "
        "lists and objects as JSON text). Answers 202 with the job; with `Prefer: wait=N` (N up to the "
        "server's limit, 60 s by default) it answers 200 with the finished job when it ends in time."
    )


SUBMIT_RESPONSES = {
    200: {"model": JobView, "description": "Finished within Prefer: wait"},
    **{code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "The body is not valid JSON"), (401, "Missing, wrong or revoked API key"),
        (409, "The Idempotency-Key was used for a different request"),
        (413, "The body is too large"), (415, "Not JSON or multipart"), (422, "Invalid request: the message says what to change"),
        (429, "Rate, quota or queue limit: retry after Retry-After seconds"), (503, "The job store is unreachable"),
    )},
}

for _task in TASKS:
    _handler, _model = _endpoint(_task)
    ref = {"$ref": f"#/components/schemas/{_model.__name__}"}
    router.add_api_route(
        f"/{_task}",
        _handler,
        methods=["POST"],
        status_code=202,
        summary=f"Run {_task}",
        description=_docs(_model),
        response_model=Union[JobView, BatchView],  # a batch when num_outputs > 1
        responses=SUBMIT_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                # the multipart content gets its own schema (`<Task>Form`, app/form_schema.py) in the document
                "content": {"application/json": {"schema": ref}, "multipart/form-data": {}},
            }
        },
    )
