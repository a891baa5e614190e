"""The served stack: `cds-service serve` (what `make run`, the Dockerfile and the README use).

granian reads each request in Rust, asynchronously, before the app runs: a client that sends its
headers one byte at a time holds no Python worker, and is cut off after the header read limit.
Measured on 2 cores (README, "Serving"): with 200 slow-header and 50 slow-body connections open,
every /healthz probe and hook call was answered within 1 s (gunicorn's sync workers answered 1 of
2; gthread with 16 threads, 1 of 2), at 0.97x the throughput of gunicorn sync workers on W1.
A body is read by the app's thread (blocking threads per worker), so slow bodies are bounded by
CDS_BLOCKING_THREADS; put a reverse proxy with a body read timeout in front for larger floods.

Settings (environment): HOST (127.0.0.1), PORT (8080), WEB_CONCURRENCY (workers: default the CPUs
this container may use), CDS_BLOCKING_THREADS (64), CDS_HEADER_READ_TIMEOUT_MS (5000).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_BLOCKING_THREADS = 64
DEFAULT_HEADER_READ_TIMEOUT_MS = 5000


def usable_cpus() -> int:
    """The CPUs this process may use: the cgroup quota (a container's --cpus), else its affinity."""
    quota = Path("/sys/fs/cgroup/cpu.max")
    try:
        limit, period = quota.read_text().split()[:2]
        if limit != "max":
            return max(1, int(int(limit) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _metrics_dir() -> None:
    """Prometheus multiprocess mode: every worker writes its samples to files in one fresh folder,
    which is removed when the server stops."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        return
    path = tempfile.mkdtemp(prefix="cds-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def main() -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    from . import create_app
    from .configuration import load_settings

    try:  # a bad setting, issuers file or service definition: one line, before any worker starts
        load_settings()
        create_app()
    except ValueError as exc:
        print(f"cds-service: not started: {exc}", file=sys.stderr)
        return 2
    _metrics_dir()
    workers = int(os.environ.get("WEB_CONCURRENCY") or usable_cpus())
    Granian(
        "cds_service.wsgi:app",
        address=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8080")),
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=int(os.environ.get("CDS_BLOCKING_THREADS", DEFAULT_BLOCKING_THREADS)),
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(os.environ.get("CDS_HEADER_READ_TIMEOUT_MS", DEFAULT_HEADER_READ_TIMEOUT_MS))
        ),
        respawn_failed_workers=True,
        log_access=False,  # the service logs one line per call itself, without query strings
    ).serve()
    return 0
