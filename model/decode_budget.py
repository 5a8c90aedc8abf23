"""A process-wide budget on the memory that decoding input images may take at once.

Each decode reserves its estimated peak (from the image's header, before any pixel is decoded) and gives
it back when done; a decode that does not fit waits its turn for a while and is then refused
(`DecodeBusy`, which the API answers 503 with Retry-After), so eight large requests at once cost what one
does, one after the other, instead of eight times the memory. After the last decode in flight, memory
freed by the decoders is handed back to the operating system (glibc keeps freed heap otherwise)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class DecodeBusy(RuntimeError):
    """The decode budget stayed full for longer than a request may wait."""

    def __init__(self, waited_s: float):
        super().__init__(f"the server is decoding other large images; waited {waited_s:g} s for room, retry shortly")
        self.retry_after_s = max(1, int(waited_s))


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_M_MMAP_THRESHOLD = -3


def give_memory_back() -> None:
    """Return freed heap pages to the system (glibc's malloc_trim; nothing elsewhere)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def map_large_blocks(threshold: int = 1 << 20) -> None:
    """Allocate blocks of `threshold` bytes and more with mmap, so freeing a decoded image unmaps it at once.
    (glibc's default threshold grows to 32 MB after the first large free, after which image buffers come
    from heap arenas that keep them.) Called once at start by processes that decode untrusted images."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, threshold)


class DecodeBudget:
    """Bytes of decoded pixels in flight in this process, at most `capacity`. A single decode larger than
    the whole budget runs when it is alone (the input limits bound it)."""

    def __init__(self, capacity: int, wait_s: float = 10.0):
        self.capacity = capacity
        self.wait_s = wait_s
        self.in_use = 0
        self.holders = 0
        self._changed = threading.Condition()

    def configure(self, capacity: int, wait_s: float) -> None:
        with self._changed:
            self.capacity, self.wait_s = capacity, wait_s
            self._changed.notify_all()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, min(nbytes, self.capacity))
        started = time.monotonic()
        with self._changed:
            while self.in_use + nbytes > self.capacity and self.holders:
                left = self.wait_s - (time.monotonic() - started)
                if left <= 0:
                    raise DecodeBusy(self.wait_s)
                self._changed.wait(left)
            self.in_use += nbytes
            self.holders += 1
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= nbytes
                self.holders -= 1
                idle = self.holders == 0
                self._changed.notify_all()
            if idle:
                give_memory_back()


# The process's budget; the API sizes it from DECODE_BUDGET_MB at start.
DECODE_BUDGET = DecodeBudget(512 * 1024 * 1024)
