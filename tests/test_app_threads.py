"""The app threads: calls queue for the thread already computing; another thread takes over only
while every busy thread waits (or when a call has been queued too long)."""

from __future__ import annotations

import threading

import pytest

from cds_service.app_threads import AppThreads, waiting

WAIT = 5.0  # seconds: far longer than any step here takes, so a failure shows as a timeout


def blocking_job(pool_events: dict, name: str, release: threading.Event, *, marked: bool):
    started = pool_events.setdefault(f"{name} started", threading.Event())
    done = pool_events.setdefault(f"{name} done", threading.Event())

    def job():
        pool_events[f"{name} thread"] = threading.current_thread().name
        started.set()
        if marked:
            with waiting():
                release.wait(WAIT)
        else:
            release.wait(WAIT)
        done.set()

    return job


def test_a_call_queued_behind_a_computing_one_runs_next_on_the_same_thread():
    pool, events, release = AppThreads(8), {}, threading.Event()
    pool.submit(blocking_job(events, "first", release, marked=False))
    assert events["first started"].wait(WAIT)
    assert pool.submit(blocking_job(events, "second", threading.Event(), marked=False)) is True  # queued
    release.set()
    assert events["second started"].wait(WAIT)
    assert events["second thread"] == events["first thread"]
    assert pool.started == 1  # no thread was woken for it


def test_a_call_submitted_while_the_other_waits_runs_at_once_on_another_thread():
    pool, events, release = AppThreads(8), {}, threading.Event()
    pool.submit(blocking_job(events, "waiting", release, marked=True))
    assert events["waiting started"].wait(WAIT)
    queued = pool.submit(blocking_job(events, "next", threading.Event(), marked=False))
    assert queued is False
    # the second call runs and finishes while the first is still waiting
    assert events["next started"].wait(WAIT)
    assert not events["waiting done"].is_set()
    assert events["next thread"] != events["waiting thread"]
    release.set()


def test_a_call_queued_behind_one_that_starts_waiting_is_taken_over():
    pool, events, release, go_wait = AppThreads(8), {}, threading.Event(), threading.Event()
    entered = threading.Event()

    def computes_then_waits():
        entered.set()
        go_wait.wait(WAIT)  # computing: the next call queues behind it
        with waiting():
            release.wait(WAIT)

    pool.submit(computes_then_waits)
    assert entered.wait(WAIT)
    assert pool.submit(blocking_job(events, "next", threading.Event(), marked=False)) is True
    go_wait.set()  # now it waits: the queued call must not stay behind it
    assert events["next started"].wait(WAIT)
    release.set()


def test_a_wait_nobody_marked_holds_up_the_queue_only_until_spill_stale():
    pool, events, release = AppThreads(8), {}, threading.Event()
    pool.submit(blocking_job(events, "stuck", release, marked=False))
    assert events["stuck started"].wait(WAIT)
    pool.submit(blocking_job(events, "queued", threading.Event(), marked=False))
    pool.spill_stale(60.0)  # not queued that long yet: it stays queued
    assert not events["queued started"].wait(0.2)
    pool.spill_stale(0.0)
    assert events["queued started"].wait(WAIT)
    release.set()


def test_never_more_threads_than_its_size():
    pool, events, release = AppThreads(2), {}, threading.Event()
    for name in ("a", "b", "c"):
        pool.submit(blocking_job(events, name, release, marked=True))
    assert events["a started"].wait(WAIT) and events["b started"].wait(WAIT)
    assert not events["c started"].wait(0.2)  # both threads are busy waiting
    assert pool.started == 2
    release.set()
    assert events["c started"].wait(WAIT)


def test_a_failing_call_leaves_its_thread_working():
    pool, ran = AppThreads(1), threading.Event()

    def fails():
        raise RuntimeError("a bug")

    pool.submit(fails)
    pool.submit(ran.set)
    assert ran.wait(WAIT)


def test_nested_waits_count_once():
    pool, events, release, inner_done = AppThreads(8), {}, threading.Event(), threading.Event()
    entered = threading.Event()

    def nested():
        with waiting():
            with waiting():
                pass
            inner_done.set()
        entered.set()
        release.wait(WAIT)  # computing again, after both waits

    pool.submit(nested)
    assert entered.wait(WAIT)
    # the thread computes again: a new call queues behind it rather than waking another thread
    assert pool.submit(blocking_job(events, "next", threading.Event(), marked=False)) is True
    release.set()
    assert events["next started"].wait(WAIT)
    assert pool.started == 1


def test_waiting_outside_an_app_thread_does_nothing():
    with waiting():
        pass


def test_a_pool_needs_a_thread():
    with pytest.raises(ValueError):
        AppThreads(0)
