"""The asyncio client: `AsyncClient`, `AsyncJob`, `AsyncBatch` (the same API as the sync ones, awaited)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Optional, Sequence, Union

import httpx

from . import _common as c
from .errors import ApiError, NotSupported, WaitTimeout, error_from_response
from .images import aencode_images, to_pil
from .tasks import AsyncTaskMethods
from .types import Event, Output, Progress, Webhook

RETRY_STATUSES = (429, 503)


class AsyncClient(AsyncTaskMethods):
    """The asyncio twin of `Client` (same arguments, same retries); use `async with`."""

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 90.0,
                 max_retries: int = 4, max_retry_after: float = 120.0, http: Optional[httpx.AsyncClient] = None):
        self.base_url = c.base_url(base_url)
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(c.headers(api_key))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _request(self, method: str, url: str, *, idempotent: bool, retry_on: Sequence[int] = RETRY_STATUSES,
                       **kwargs) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if not idempotent or attempt == self.max_retries:
                    raise
                delay = c.retry_delay(None, attempt)
                c.log.warning("%s %s failed (%s); retry %d in %.1f s", method, url, type(exc).__name__, attempt + 1, delay)
                await asyncio.sleep(delay)
                continue
            if response.status_code in retry_on and attempt < self.max_retries:
                delay = c.retry_delay(response, attempt)
                if delay <= self.max_retry_after:
                    c.log.warning("%s %s answered %d; retry %d in %.1f s", method, url, response.status_code, attempt + 1, delay)
                    await asyncio.sleep(delay)
                    continue
            if response.is_error:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")

    async def submit(self, task: str, /, *, idempotency_key: Optional[str] = None, prefer_wait: Optional[int] = None,
                     **fields: Any) -> Union["AsyncJob", "AsyncBatch"]:
        """As `Client.submit`: an AsyncBatch when `num_outputs` > 1."""
        body = await aencode_images(c.task_fields(fields))
        headers = {"Idempotency-Key": idempotency_key or c.new_idempotency_key()}
        if prefer_wait:
            headers["Prefer"] = f"wait={c.cap_wait(prefer_wait, self._http.timeout)}"
        response = await self._request("POST", f"/v1/{task}", idempotent=True, json=body, headers=headers)
        answer = response.json()
        return AsyncBatch(self, answer) if c.is_batch(answer) else AsyncJob(self, answer)

    async def run(self, task: str, /, *, timeout: Optional[float] = None,
                  on_progress: Optional[Callable[[Progress], Any]] = None, idempotency_key: Optional[str] = None,
                  **fields: Any) -> Union["AsyncJob", "AsyncBatch"]:
        handle = await self.submit(task, idempotency_key=idempotency_key, prefer_wait=c.submit_wait(timeout, on_progress),
                                   **fields)
        if isinstance(handle, AsyncBatch):
            return await handle.wait(timeout=timeout, raise_on_failure=True)
        return await handle.wait(timeout=timeout, on_progress=on_progress)

    async def _task(self, task: str, fields: dict, wait: bool, timeout: Optional[float],
                    on_progress: Optional[Callable[[Progress], Any]], idempotency_key: Optional[str]) -> Union["AsyncJob", "AsyncBatch"]:
        if wait:
            return await self.run(task, timeout=timeout, on_progress=on_progress, idempotency_key=idempotency_key, **fields)
        return await self.submit(task, idempotency_key=idempotency_key, **fields)

    async def job(self, job_id: str) -> "AsyncJob":
        return AsyncJob(self, (await self._request("GET", f"/v1/jobs/{job_id}", idempotent=True)).json())

    async def list_jobs(self, *, status: Optional[str] = None, task: Optional[str] = None, limit: Optional[int] = None,
                        cursor: Optional[str] = None) -> "c.Page":
        """As `Client.list_jobs`: one page, with `next_cursor`."""
        body = await self._listing("/v1/jobs", c.listing_params(limit, cursor, status=status, task=task))
        return c.Page([AsyncJob(self, item) for item in c.list_body(body)], c.next_cursor(body))

    async def iter_jobs(self, *, status: Optional[str] = None, task: Optional[str] = None,
                        page_size: int = 100) -> AsyncIterator["AsyncJob"]:
        cursor = None
        while True:
            page = await self.list_jobs(status=status, task=task, limit=page_size, cursor=cursor)
            for job in page:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def list_batches(self, *, status: Optional[str] = None, limit: Optional[int] = None,
                           cursor: Optional[str] = None) -> "c.Page":
        body = await self._listing("/v1/batches", c.listing_params(limit, cursor, status=status))
        return c.Page([AsyncBatch(self, item) for item in c.list_body(body)], c.next_cursor(body))

    async def iter_batches(self, *, status: Optional[str] = None, page_size: int = 100) -> AsyncIterator["AsyncBatch"]:
        cursor = None
        while True:
            page = await self.list_batches(status=status, limit=page_size, cursor=cursor)
            for batch in page:
                yield batch
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def _listing(self, path: str, params: dict) -> Any:
        try:
            return (await self._request("GET", path, idempotent=True, params=params)).json()
        except ApiError as exc:
            if exc.status in (404, 405):
                raise NotSupported(f"this server ({self.base_url}) cannot list {path.rsplit('/', 1)[-1]} (GET {path} answered "
                                   f"{exc.status}); keep the ids of what you submit") from None
            raise

    async def submit_batch(self, items: Iterable[Any], webhook: Union[Webhook, dict, None] = None, *,
                           idempotency_key: Optional[str] = None) -> "AsyncBatch":
        """As `Client.submit_batch`, with an idempotency key."""
        body: dict[str, Any] = {"items": [await aencode_images(item) for item in c.batch_items(items)]}
        if webhook is not None:
            body["webhook"] = c.to_json(webhook)
        headers = {"Idempotency-Key": idempotency_key or c.new_idempotency_key()}
        response = await self._request("POST", "/v1/batches", idempotent=True, json=body, headers=headers)
        return AsyncBatch(self, response.json())

    async def batch(self, batch_id: str) -> "AsyncBatch":
        return AsyncBatch(self, (await self._request("GET", f"/v1/batches/{batch_id}", idempotent=True)).json())

    async def _fetch(self, output: Output) -> bytes:
        if c.same_origin(output.url, self.base_url):
            return (await self._request("GET", output.url, idempotent=True)).content
        async with httpx.AsyncClient(timeout=self._http.timeout) as plain:
            response = await plain.get(output.signed_url)
        if response.is_error:
            raise error_from_response(response)
        return response.content


class AsyncJob(c.JobFields):
    def __init__(self, client: AsyncClient, body: dict):
        self.client = client
        self._update(body)

    async def refresh(self) -> "AsyncJob":
        self._update((await self.client._request("GET", f"/v1/jobs/{self.id}", idempotent=True)).json())
        return self

    async def cancel(self) -> "AsyncJob":
        self._update((await self.client._request("POST", f"/v1/jobs/{self.id}/cancel", idempotent=True)).json())
        return self

    async def events(self, timeout: Optional[float] = None) -> AsyncIterator[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = c.SSEParser()
        read = 20.0 if timeout is None else max(0.1, min(20.0, timeout))
        try:
            async with self.client._http.stream("GET", f"/v1/jobs/{self.id}/events", timeout=httpx.Timeout(10.0, read=read)) as response:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                async for event in self._read_events(response.aiter_lines(), parser, deadline, timeout):
                    yield event
        except httpx.ReadTimeout:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {self.id} still {self.status} after {timeout} s") from None
            raise

    async def _read_events(self, lines, parser, deadline, timeout) -> AsyncIterator[Event]:
        """Events out of the stream's lines; the handle follows progress and the final job."""
        async for line in lines:
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

    async def wait(self, timeout: Optional[float] = None, on_progress: Optional[Callable[[Progress], Any]] = None,
                   raise_on_failure: bool = True) -> "AsyncJob":
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.done:
            try:
                async for event in self.events(timeout=timeout):
                    if event.type == "progress" and on_progress:
                        on_progress(self.progress)
            except (httpx.TransportError, ValueError):
                c.log.info("event stream of %s broke; polling", self.id)
            interval = 0.2
            while not self.done:
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {self.id} still {self.status} after {timeout} s")
                await asyncio.sleep(interval)
                interval = min(2.0, interval * 1.5)
                step = self.progress
                await self.refresh()
                if on_progress and self.progress and self.progress != step:
                    on_progress(self.progress)
        if raise_on_failure:
            self._check_ended_well()
        return self

    async def read(self, which: Any = None) -> bytes:
        return await self.client._fetch(self.output(which))

    async def image(self, which: Any = None):
        return to_pil(await self.read(which))

    async def download(self, directory: Union[str, Path]) -> list[Path]:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for output in self.outputs:
            path = folder / Path(output.name).name
            path.write_bytes(await self.read(output))
            paths.append(path)
        return paths


class AsyncBatch:
    def __init__(self, client: AsyncClient, body: dict):
        self.client = client
        self._update(body)

    def _update(self, body: dict) -> None:
        self.raw = body
        self.id: str = body["id"]
        self.status: str = body["status"]
        self.counts: dict = body.get("counts") or {}
        self.jobs: list[AsyncJob] = [AsyncJob(self.client, j) for j in body.get("jobs") or []]

    async def refresh(self) -> "AsyncBatch":
        self._update((await self.client._request("GET", f"/v1/batches/{self.id}", idempotent=True)).json())
        return self

    async def wait(self, timeout: Optional[float] = None, interval: float = 0.5,
                   raise_on_failure: bool = False) -> "AsyncBatch":
        deadline = None if timeout is None else time.monotonic() + timeout
        while (await self.refresh()).status != "completed":
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"batch {self.id} still running after {timeout} s")
            await asyncio.sleep(interval)
        if raise_on_failure:
            for job in self.jobs:
                job._check_ended_well()
        return self

    async def cancel(self) -> "AsyncBatch":
        self._update((await self.client._request("POST", f"/v1/batches/{self.id}/cancel", idempotent=True)).json())
        return self

    async def images(self) -> list:
        return [await job.image(o) for job in self.jobs for o in job.outputs]

    async def download(self, directory: Union[str, Path]) -> list[Path]:
        Path(directory).mkdir(parents=True, exist_ok=True)
        paths = []
        for index, job in enumerate(self.jobs):
            for output in job.outputs:
                path = c.output_path(directory, index, output.name)
                path.write_bytes(await job.read(output))
                paths.append(path)
        return paths
