"""The synchronous client: `Client`, its job handle `Job` and batch handle `Batch`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import httpx

from . import _common as c
from .errors import ApiError, NotSupported, WaitTimeout, error_from_response
from .images import encode_images, to_pil
from .tasks import TaskMethods
from .types import Event, Output, Progress, Webhook

RETRY_STATUSES = (429, 503)


class Client(TaskMethods):
    """A client of the OneDiffusion service.

    `base_url` defaults to $ONEDIFFUSION_URL (else http://127.0.0.1:8000), `api_key` to
    $ONEDIFFUSION_API_KEY. Submissions are retried on 429 / 503 after the API's Retry-After (up to
    `max_retries` times, each wait at most `max_retry_after` s) with one idempotency key, so a retry
    never makes a second job."""

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 90.0,
                 max_retries: int = 4, max_retry_after: float = 120.0, http: Optional[httpx.Client] = None):
        self.base_url = c.base_url(base_url)
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(c.headers(api_key))

    # ---- plumbing ----
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, url: str, *, idempotent: bool, retry_on: Sequence[int] = RETRY_STATUSES,
                 **kwargs) -> httpx.Response:
        """One API call, retried on `retry_on` statuses (always safe: nothing was done) and, when
        `idempotent`, on connection errors."""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if not idempotent or attempt == self.max_retries:
                    raise
                delay = c.retry_delay(None, attempt)
                c.log.warning("%s %s failed (%s); retry %d in %.1f s", method, url, type(exc).__name__, attempt + 1, delay)
                time.sleep(delay)
                continue
            if response.status_code in retry_on and attempt < self.max_retries:
                delay = c.retry_delay(response, attempt)
                if delay <= self.max_retry_after:
                    c.log.warning("%s %s answered %d; retry %d in %.1f s", method, url, response.status_code, attempt + 1, delay)
                    time.sleep(delay)
                    continue
            if response.is_error:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")

    # ---- tasks ----
    def submit(self, task: str, /, *, idempotency_key: Optional[str] = None, prefer_wait: Optional[int] = None,
               **fields: Any) -> Union["Job", "Batch"]:
        """Queue `task` with `fields` (the API's names); the job handle comes back at once (or, with
        `prefer_wait`, when it ends within that many seconds). With `num_outputs` > 1 the server makes a
        batch of that many jobs, and a `Batch` handle comes back."""
        body = encode_images(c.task_fields(fields))
        headers = {"Idempotency-Key": idempotency_key or c.new_idempotency_key()}
        if prefer_wait:
            headers["Prefer"] = f"wait={c.cap_wait(prefer_wait, self._http.timeout)}"
        response = self._request("POST", f"/v1/{task}", idempotent=True, json=body, headers=headers)
        answer = response.json()
        return Batch(self, answer) if c.is_batch(answer) else Job(self, answer)

    def run(self, task: str, /, *, timeout: Optional[float] = None, on_progress: Optional[Callable[[Progress], Any]] = None,
            idempotency_key: Optional[str] = None, **fields: Any) -> Union["Job", "Batch"]:
        """Submit and wait for the end (`Prefer: wait`, then the event stream; with `on_progress`, the event
        stream from the start, so that every job reports its progress); raises JobFailed / JobCanceled when
        the job (or, for num_outputs > 1, one of the batch's jobs) does not succeed."""
        handle = self.submit(task, idempotency_key=idempotency_key, prefer_wait=c.submit_wait(timeout, on_progress), **fields)
        if isinstance(handle, Batch):
            return handle.wait(timeout=timeout, raise_on_failure=True)
        return handle.wait(timeout=timeout, on_progress=on_progress)

    def _task(self, task: str, fields: dict, wait: bool, timeout: Optional[float],
              on_progress: Optional[Callable[[Progress], Any]], idempotency_key: Optional[str]) -> Union["Job", "Batch"]:
        if wait:
            return self.run(task, timeout=timeout, on_progress=on_progress, idempotency_key=idempotency_key, **fields)
        return self.submit(task, idempotency_key=idempotency_key, **fields)

    # ---- jobs and batches ----
    def job(self, job_id: str) -> "Job":
        return Job(self, self._request("GET", f"/v1/jobs/{job_id}", idempotent=True).json())

    def list_jobs(self, *, status: Optional[str] = None, task: Optional[str] = None, limit: Optional[int] = None,
                  cursor: Optional[str] = None) -> "c.Page":
        """One page of your jobs, newest first (`GET /v1/jobs`): a list with `next_cursor` (pass it as
        `cursor` for the next page; None on the last). `iter_jobs` follows the pages for you."""
        body = self._listing("/v1/jobs", c.listing_params(limit, cursor, status=status, task=task))
        return c.Page([Job(self, item) for item in c.list_body(body)], c.next_cursor(body))

    def iter_jobs(self, *, status: Optional[str] = None, task: Optional[str] = None, page_size: int = 100) -> Iterator["Job"]:
        """Every job of yours (that matches), newest first, page after page."""
        cursor = None
        while True:
            page = self.list_jobs(status=status, task=task, limit=page_size, cursor=cursor)
            yield from page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def list_batches(self, *, status: Optional[str] = None, limit: Optional[int] = None,
                     cursor: Optional[str] = None) -> "c.Page":
        """One page of your batches, newest first (`GET /v1/batches`), paged like `list_jobs`."""
        body = self._listing("/v1/batches", c.listing_params(limit, cursor, status=status))
        return c.Page([Batch(self, item) for item in c.list_body(body)], c.next_cursor(body))

    def iter_batches(self, *, status: Optional[str] = None, page_size: int = 100) -> Iterator["Batch"]:
        cursor = None
        while True:
            page = self.list_batches(status=status, limit=page_size, cursor=cursor)
            yield from page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def _listing(self, path: str, params: dict) -> Any:
        try:
            return self._request("GET", path, idempotent=True, params=params).json()
        except ApiError as exc:
            if exc.status in (404, 405):
                raise NotSupported(f"this server ({self.base_url}) cannot list {path.rsplit('/', 1)[-1]} (GET {path} answered "
                                   f"{exc.status}); keep the ids of what you submit") from None
            raise

    def submit_batch(self, items: Iterable[Any], webhook: Union[Webhook, dict, None] = None, *,
                     idempotency_key: Optional[str] = None) -> "Batch":
        """Queue many tasks at once: items are `{"task": ..., **fields}` dicts or `(task, fields)` pairs.
        Validated as a whole (nothing is queued if one item is bad). Sent with an idempotency key (yours,
        or a new one), so retries after 429 / 503 or a broken connection never make a second batch."""
        body: dict[str, Any] = {"items": [encode_images(item) for item in c.batch_items(items)]}
        if webhook is not None:
            body["webhook"] = c.to_json(webhook)
        headers = {"Idempotency-Key": idempotency_key or c.new_idempotency_key()}
        response = self._request("POST", "/v1/batches", idempotent=True, json=body, headers=headers)
        return Batch(self, response.json())

    def batch(self, batch_id: str) -> "Batch":
        return Batch(self, self._request("GET", f"/v1/batches/{batch_id}", idempotent=True).json())

    def _fetch(self, output: Output) -> bytes:
        if c.same_origin(output.url, self.base_url):
            return self._request("GET", output.url, idempotent=True).content
        # another origin (a proxy's PUBLIC_URL): the signed URL, without sending the key there
        response = httpx.get(output.signed_url, timeout=self._http.timeout)
        if response.is_error:
            raise error_from_response(response)
        return response.content


class Job(c.JobFields):
    """A submitted job: its latest state, plus wait / cancel / events / download."""

    def __init__(self, client: Client, body: dict):
        self.client = client
        self._update(body)

    def refresh(self) -> "Job":
        self._update(self.client._request("GET", f"/v1/jobs/{self.id}", idempotent=True).json())
        return self

    def cancel(self) -> "Job":
        """Cancel: a queued job is dropped, a running one stops at its next step (Conflict once ended)."""
        self._update(self.client._request("POST", f"/v1/jobs/{self.id}/cancel", idempotent=True).json())
        return self

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """The job's server-sent events (queued, started, progress, finished) until it ends; the
        handle is updated from the `finished` event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = c.SSEParser()
        # the server sends a keep-alive every 15 s; a shorter read timeout when the caller's time is shorter
        read = 20.0 if timeout is None else max(0.1, min(20.0, timeout))
        try:
            with self.client._http.stream("GET", f"/v1/jobs/{self.id}/events", timeout=httpx.Timeout(10.0, read=read)) as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                yield from self._read_events(response.iter_lines(), parser, deadline, timeout)
        except httpx.ReadTimeout:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {self.id} still {self.status} after {timeout} s") from None
            raise

    def _read_events(self, lines, parser, deadline, timeout) -> Iterator[Event]:
        """Events out of the stream's lines; the handle follows progress and the final job."""
        for line in lines:
            event = parser.feed(line)
            if event is not None:
                if event.type == "progress":
                    self.progress = Progress.from_json(event.data)
                if event.type == "finished":
                    self._update(event.data)
                yield event
                if event.type == "finished":
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {self.id} still {self.status} after {timeout} s")

    def wait(self, timeout: Optional[float] = None, on_progress: Optional[Callable[[Progress], Any]] = None,
             raise_on_failure: bool = True) -> "Job":
        """Wait for the end, following the event stream (polling if the stream breaks); raises
        JobFailed / JobCanceled unless `raise_on_failure` is False, WaitTimeout after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.done:
            try:
                for event in self.events(timeout=timeout):
                    if event.type == "progress" and on_progress:
                        on_progress(self.progress)
            except (httpx.TransportError, ValueError):
                c.log.info("event stream of %s broke; polling", self.id)
            interval = 0.2
            while not self.done:
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {self.id} still {self.status} after {timeout} s")
                time.sleep(interval)
                interval = min(2.0, interval * 1.5)
                step = self.progress
                self.refresh()
                if on_progress and self.progress and self.progress != step:
                    on_progress(self.progress)
        if raise_on_failure:
            self._check_ended_well()
        return self

    def read(self, which: Any = None) -> bytes:
        """The bytes of an output (by name, index or Output; the first one when None)."""
        return self.client._fetch(self.output(which))

    def image(self, which: Any = None):
        """An output as a PIL image (needs Pillow)."""
        return to_pil(self.read(which))

    def images(self) -> list:
        return [self.image(o) for o in self.outputs]

    def download(self, directory: Union[str, Path]) -> list[Path]:
        """Save every output under `directory` (made if missing); the paths written."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for output in self.outputs:
            path = folder / Path(output.name).name
            path.write_bytes(self.read(output))
            paths.append(path)
        return paths


class Batch:
    """A submitted batch: counts, its jobs, and `wait()` for all of them."""

    def __init__(self, client: Client, body: dict):
        self.client = client
        self._update(body)

    def _update(self, body: dict) -> None:
        self.raw = body
        self.id: str = body["id"]
        self.status: str = body["status"]
        self.counts: dict = body.get("counts") or {}
        self.jobs: list[Job] = [Job(self.client, j) for j in body.get("jobs") or []]

    def refresh(self) -> "Batch":
        self._update(self.client._request("GET", f"/v1/batches/{self.id}", idempotent=True).json())
        return self

    def wait(self, timeout: Optional[float] = None, interval: float = 0.5, raise_on_failure: bool = False) -> "Batch":
        """Poll until every item has ended. Failed items do not raise (look at `jobs`) unless
        `raise_on_failure`: then the first failed or canceled job raises JobFailed / JobCanceled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.refresh().status != "completed":
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"batch {self.id} still running after {timeout} s")
            time.sleep(interval)
        if raise_on_failure:
            for job in self.jobs:
                job._check_ended_well()
        return self

    def cancel(self) -> "Batch":
        """Cancel every job of the batch that has not ended."""
        self._update(self.client._request("POST", f"/v1/batches/{self.id}/cancel", idempotent=True).json())
        return self

    def images(self) -> list:
        """Every output image of every job, in job order (needs Pillow)."""
        return [image for job in self.jobs for image in job.images()]

    def download(self, directory: Union[str, Path]) -> list[Path]:
        """Save every job's outputs under `directory` as `<job index>-<name>`; the paths written."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        paths = []
        for index, job in enumerate(self.jobs):
            for output in job.outputs:
                path = c.output_path(directory, index, output.name)
                path.write_bytes(job.read(output))
                paths.append(path)
        return paths

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self.status} {self.counts}>"
