"""ASGI entry point for `cds-service serve`: the WSGI app behind a body read time limit.

granian reads headers in Rust (with its header read limit) before any Python runs. The body is then
read here, in the event loop, within CDS_BODY_READ_TIMEOUT_S and CDS_MAX_BODY_BYTES, and only a
complete body is handed to the Flask app in a worker thread (a2wsgi). So a client that drips its
body holds no thread, and is answered 408 when its time is up.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
from a2wsgi import WSGIMiddleware

from .audit import flush_all
from .protocol import operation_outcome
from .wsgi import app as wsgi_app

BODY_READ_TIMEOUT_S = float(os.environ.get("CDS_BODY_READ_TIMEOUT_S", "10"))
THREADS = int(os.environ.get("CDS_APP_THREADS", "8"))  # threads running the app (it is CPU-bound)
MAX_BODY = int(wsgi_app.config["MAX_CONTENT_LENGTH"])
_wsgi = WSGIMiddleware(wsgi_app, workers=THREADS)  # type: ignore[arg-type]

Scope = dict[str, Any]


async def _answer(send: Any, status: int, code: str, diagnostics: str) -> None:
    body = orjson.dumps(operation_outcome(code, diagnostics))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # granian ends its workers without running atexit: write out the queued audit
                # records here, as gunicorn's worker_exit does, so no accepted call goes unrecorded
                await asyncio.get_running_loop().run_in_executor(None, flush_all, 10.0)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_READ_TIMEOUT_S
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            await _answer(send, 408, "timeout", f"The request body was not received within {BODY_READ_TIMEOUT_S:g} s")
            return
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        size += len(body)
        if size > MAX_BODY:
            await _answer(send, 413, "too-costly", "The request body is larger than this service accepts")
            return
        chunks.append(body)
        if not message.get("more_body"):
            break
    complete = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return complete
        return dict(await receive())  # after the body: a disconnect, if it comes

    await _wsgi(scope, replay, send)  # type: ignore[arg-type]
