"""The threads that run the app under `cds-service serve`: as few as the calls need.

A hook call is CPU-bound unless it waits (a FHIR query, the database, a key set), and under the GIL
two computing threads are no faster than one: each call handed to a sleeping thread costs a wake-up
and GIL hand-overs between CPUs, which measured about a quarter of served throughput. So a call is
queued for a thread that is already computing, and picks up right after the call before it; another
thread is woken only when no thread is computing, which is when every busy thread is waiting.

The service marks its waits with `waiting()`. A wait it does not mark (a bug) cannot hold up the
calls queued behind it for long: `spill_stale` (run by the bridge's event loop on a timer) gives a
call queued longer than a few milliseconds a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Job = Callable[[], None]

_local = threading.local()  # in each app thread: its pool, and how deep in waiting() it is


class AppThreads:
    """Runs jobs on at most `size` threads, on as few of them as keeps every job moving."""

    def __init__(self, size: int, name: str = "cds-app") -> None:
        if size < 1:
            raise ValueError("an app thread pool needs at least one thread")
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._queued: deque[tuple[float, Job]] = deque()
        self._parked: list[threading.Lock] = []  # idle threads, the most recently idle last
        self._computing = 0  # threads running a job and not inside waiting()
        self.started = 0

    def submit(self, job: Job) -> bool:
        """Run `job` on an app thread. True when it was queued behind a computing thread."""
        with self._lock:
            self._queued.append((time.monotonic(), job))
            if self._computing:
                return True  # a computing thread takes it when its job is done
            self._wake_one()
            return False

    def spill_stale(self, older_than_s: float) -> None:
        """Wake another thread when the oldest queued job has waited longer than `older_than_s`."""
        with self._lock:
            if self._queued and self._queued[0][0] <= time.monotonic() - older_than_s:
                self._wake_one()

    def _wake_one(self) -> None:
        """With the lock held: one more thread computing, a parked one if any (it is warm)."""
        if self._parked:
            self._computing += 1
            self._parked.pop().release()
        elif self.started < self.size:
            self._computing += 1
            self.started += 1
            threading.Thread(target=self._work, name=f"{self.name}-{self.started}", daemon=True).start()

    def _work(self) -> None:
        _local.pool, _local.depth = self, 0
        parking = threading.Lock()
        parking.acquire()
        while True:
            with self._lock:
                job = self._queued.popleft()[1] if self._queued else None
                if job is None:
                    self._computing -= 1
                    self._parked.append(parking)
            if job is None:
                parking.acquire()  # until _wake_one, which counted this thread as computing again
                continue
            try:
                job()
            except BaseException:  # a job delivers its own errors; this keeps the thread alive
                log.exception("app thread job failed")

    def _begin_wait(self) -> None:
        with self._lock:
            self._computing -= 1
            if self._queued and not self._computing:
                self._wake_one()

    def _end_wait(self) -> None:
        with self._lock:
            self._computing += 1


@contextmanager
def waiting() -> Iterator[None]:
    """Around a wait for something outside the process: calls queued behind this one may run on
    another thread meanwhile. Outside an app thread (tests, gunicorn), nothing is done."""
    pool: AppThreads | None = getattr(_local, "pool", None)
    if pool is None or _local.depth:
        yield
        return
    _local.depth = 1
    pool._begin_wait()
    try:
        yield
    finally:
        pool._end_wait()
        _local.depth = 0
