"""The served stack: `cds-service serve` (what `make run`, the Dockerfile and the README use).

granian reads each request's headers in Rust, asynchronously, before any Python runs: a client that
sends its headers one byte at a time holds no worker, and is cut off at the header read limit. The
body is then read in the event loop within its own time limit (asgi.py), and only a complete body
reaches the Flask app, in a worker thread. Measured on 2 cores (README, "Why granian"): with 200
slow-header and 50 slow-body connections open, every /healthz probe and hook call was answered
within 1 s (gunicorn's sync workers and gthread: 0 of 2).

Settings (environment): HOST (127.0.0.1), PORT (8080), WEB_CONCURRENCY (workers: default the CPUs
this container may use), CDS_HEADER_READ_TIMEOUT_MS (5000), CDS_BODY_READ_TIMEOUT_S (10),
CDS_APP_THREADS (up to 8 threads per worker running the app).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _whole_number(name: str, default: int) -> int:
    """PORT and WEB_CONCURRENCY (not CDS_ settings): a whole number of at least 1, or a one-line error
    naming the variable (never its value)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}: must be a whole number of at least 1, for example {default}")
    return int(value)


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
        settings = load_settings()
        create_app()
        port = _whole_number("PORT", 8080)
        workers = _whole_number("WEB_CONCURRENCY", usable_cpus())
    except ValueError as exc:
        print(f"cds-service: not started: {exc}", file=sys.stderr)
        return 2
    _metrics_dir()
    Granian(
        "cds_service.asgi:app",  # the body read in the event loop, within its time limit (asgi.py)
        address=os.environ.get("HOST", "127.0.0.1"),
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=settings.header_read_timeout_ms),
        respawn_failed_workers=True,
        log_access=False,  # the service logs one line per call itself, without query strings
    ).serve()
    return 0
