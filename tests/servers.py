"""Test helpers: the app served by real workers (gunicorn, or the served stack `cds-service serve`),
and log capture in a given style."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT

from cds_service.logs import configure_logging


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(base: str, tries: int = 200) -> None:
    for _ in range(tries):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.1)


@contextlib.contextmanager
def served_stack(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`cds-service serve` (granian, as deployed) on a free loopback port, with `env` on top of this
    process's; yields the base URL. Logs go to `log_path`."""
    port = free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve"], cwd=ROOT,
                                  env={**os.environ, **env, "PORT": str(port)}, stdout=log, stderr=log)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(base)
            yield base
        finally:
            server.terminate()
            server.wait(20)


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workers: int = 2) -> Iterator[tuple[str, Path]]:
    """The service under gunicorn (gunicorn.conf.py) on a free loopback port; yields (base URL, log
    file). Logs go to a file, never an unread pipe, which would block the workers once full."""
    port = free_port()
    log_file = Path(tempfile.mkstemp(prefix="cds-gunicorn-", suffix=".log")[1])
    with open(log_file, "wb") as stderr:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "cds_service.wsgi:app",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base)
        yield base, log_file
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(10)


@contextlib.contextmanager
def captured_logs(style: str) -> Iterator[io.StringIO]:
    """Everything the service logs, rendered in `style` ("json" or "console")."""
    stream = io.StringIO()
    configure_logging(style, "INFO")
    logging.getLogger().handlers[0].stream = stream
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()
