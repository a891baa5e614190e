"""ASGI entry point for `cds-service serve`: the WSGI app behind a body read time limit.

granian reads headers in Rust (with its header read limit) before any Python runs. The body is then
read here, in the event loop, within CDS_BODY_READ_TIMEOUT_S and CDS_MAX_BODY_BYTES, and only a
complete body is handed to the Flask app in a worker thread. So a client that drips its body
holds no thread, and is answered 408 when its time is up.

The app runs to completion in its thread and its whole answer is sent from the event loop
afterwards: one hand-over each way. (a2wsgi's own responder hands every part of the answer back to
the loop and blocks on each; with CPU-bound calls in other threads each hand-over waits for the
GIL, which halved served throughput and tripled p99.) Every answer here is small JSON or HTML,
built whole by Flask: nothing streams. Calls go to as few threads as keep them moving
(app_threads.py): a call queues for the thread already computing, and another thread takes over
only while that one waits.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import orjson
from a2wsgi.wsgi import build_environ

from .app_threads import AppThreads
from .audit import flush_all
from .protocol import operation_outcome

Scope = dict[str, Any]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

# A call queued this long behind a computing thread gets a thread of its own: longer than W1 calls
# queue at full load, short enough that a wait the service did not mark holds nothing up for long.
SPILL_AFTER_S = 0.02


class Bridge:
    """An ASGI app serving a WSGI app: the body read in the event loop, the app run in a thread."""

    def __init__(self, wsgi_app: Callable[..., Any], *, threads: int, body_read_timeout_s: float, max_body: int):
        self.wsgi_app = wsgi_app
        self.body_read_timeout_s = body_read_timeout_s
        self.max_body = max_body
        self.threads = AppThreads(threads)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            body = await self._read_body(receive, send)
            if body is not None:
                environ: Any = build_environ(scope, io.BytesIO(body))  # type: ignore[arg-type]  # a file, as WSGI asks
                # the body is complete: its length is known even when the client sent it chunked
                environ["CONTENT_LENGTH"] = str(len(body))
                environ.pop("HTTP_TRANSFER_ENCODING", None)
                status, headers, answer = await self._in_thread(environ)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": answer})

    @staticmethod
    async def _lifespan(receive: Any, send: Any) -> None:
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

    async def _read_body(self, receive: Any, send: Any) -> bytes | None:
        """The whole body within the time and size limits; None when the client was answered."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_read_timeout_s):  # one deadline, not a task per message
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await _answer(send, 413, "too-costly", "The request body is larger than this service accepts")
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            diagnostics = f"The request body was not received within {self.body_read_timeout_s:g} s"
            await _answer(send, 408, "timeout", diagnostics)
            return None

    async def _in_thread(self, environ: dict[str, Any]) -> Answer:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()

        def job() -> None:
            try:
                result = self._run(environ)
            except BaseException as exc:  # delivered to the awaiting call, as run_in_executor would
                loop.call_soon_threadsafe(_settle, answer, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, answer, result, None)

        if self.threads.submit(job):
            loop.call_later(SPILL_AFTER_S, self.threads.spill_stale, SPILL_AFTER_S)
        return await answer

    def _run(self, environ: dict[str, Any]) -> Answer:
        """The WSGI app, called in a worker thread: its status, headers and whole body."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return _no_write

        iterable = self.wsgi_app(environ, start_response)
        try:
            body = b"".join(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        status, headers = started
        encoded = [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in headers]
        return int(status.split(" ", 1)[0]), encoded, body


def _settle(future: asyncio.Future[Answer], result: Answer | None, error: BaseException | None) -> None:
    if future.done():  # the call was cancelled (the client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def _no_write(data: bytes) -> None:
    raise RuntimeError("the WSGI write() callable is not supported: return the body instead")


async def _answer(send: Any, status: int, code: str, diagnostics: str) -> None:
    body = orjson.dumps(operation_outcome(code, diagnostics))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def __getattr__(name: str) -> Any:
    """`cds_service.asgi:app`, the service, built when a server first asks for it (so that tests
    can import the bridge without starting a service)."""
    if name != "app":
        raise AttributeError(name)
    from .wsgi import app as wsgi_app

    settings = wsgi_app.extensions["cds"].settings  # validated by load_settings, as create_app made it
    app = Bridge(
        wsgi_app,
        threads=settings.app_threads,
        body_read_timeout_s=settings.body_read_timeout_s,
        max_body=settings.max_body_bytes,
    )
    globals()["app"] = app
    return app
