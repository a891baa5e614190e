"""The ASGI bridge `cds-service serve` runs: the body read in the event loop, the app in a thread."""

from __future__ import annotations

import asyncio
import json
import threading

from conftest import SELECT, load_request
from flask import Flask, request

from cds_service.asgi import Bridge


def call(bridge: Bridge, chunks: list[bytes], *, path: str = SELECT, query: bytes = b"", delay: float = 0.0):
    """One HTTP call through the bridge; returns the ASGI messages it sent."""
    sent: list[dict] = []
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        if delay:
            await asyncio.sleep(delay)
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": path, "root_path": "",
        "query_string": query, "headers": [(b"content-type", b"application/json"), (b"x-probe", b"yes")],
        "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    asyncio.run(bridge(scope, receive, send))
    return sent


def echo_bridge(**options) -> tuple[Bridge, list[dict]]:
    seen: list[dict] = []
    app = Flask(__name__)

    @app.post("/<path:anything>")
    def echo(anything):
        seen.append({"body": request.get_data(), "query": request.args.get("q"), "probe": request.headers.get("X-Probe"),
                     "thread": threading.current_thread().name})  # fmt: skip
        return {"ok": True}

    settings = {"threads": 2, "body_read_timeout_s": 5.0, "max_body": 1000, **options}
    return Bridge(app.wsgi_app, **settings), seen


def test_a_hook_call_through_the_bridge_answers_as_the_app_does(make_app):
    app = make_app()
    body = json.dumps(load_request("acute-lbp-defer")).encode()
    direct = app.test_client().post(SELECT, data=body, content_type="application/json")
    sent = call(Bridge(app.wsgi_app, threads=2, body_read_timeout_s=5.0, max_body=5_000_000), [body[:100], body[100:]])
    start, answer = sent
    assert start["status"] == direct.status_code == 200
    assert dict(start["headers"])[b"content-type"] == b"application/json"
    bridged = json.loads(answer["body"])
    assert [card["summary"] for card in bridged["cards"]] == [card["summary"] for card in direct.get_json()["cards"]]


def test_the_app_gets_the_whole_body_its_query_and_headers_in_a_worker_thread():
    bridge, seen = echo_bridge()
    sent = call(bridge, [b'{"a":', b" 1}"], path="/x", query=b"q=2")
    assert seen == [{"body": b'{"a": 1}', "query": "2", "probe": "yes", "thread": seen[0]["thread"]}]
    assert seen[0]["thread"].startswith("cds-app")
    assert json.loads(sent[1]["body"]) == {"ok": True}


def test_the_answer_is_sent_whole_once_the_app_has_finished():
    # one start and one body message: the worker thread never waits on the event loop mid-answer
    # (a2wsgi's responder sent three, each a blocking hand-over to the loop under the GIL)
    bridge, _ = echo_bridge()
    sent = call(bridge, [b"{}"], path="/x")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert not sent[1].get("more_body")


def test_a_body_over_the_limit_is_answered_413_and_never_reaches_the_app():
    bridge, seen = echo_bridge(max_body=10)
    sent = call(bridge, [b"x" * 6, b"y" * 6], path="/x")
    assert sent[0]["status"] == 413 and seen == []
    assert json.loads(sent[1]["body"])["resourceType"] == "OperationOutcome"


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_never_reaches_the_app():
    bridge, seen = echo_bridge(body_read_timeout_s=0.05)
    sent = call(bridge, [b"{", b"}"], path="/x", delay=0.2)
    assert sent[0]["status"] == 408 and seen == []
    assert "not received within" in json.loads(sent[1]["body"])["issue"][0]["diagnostics"]


def concurrent_calls(bridge: Bridge, paths: list[str], gap: float = 0.05) -> dict[str, float]:
    """POSTs to each path through the bridge, `gap` seconds apart, in one event loop: when each
    was answered, in seconds from the first."""
    answered: dict[str, float] = {}

    async def one(path: str, after: float, started: float) -> None:
        await asyncio.sleep(after)
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body":
                answered[path] = asyncio.get_running_loop().time() - started

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
                 "root_path": "", "query_string": b"", "headers": [], "server": ("127.0.0.1", 8080),
                 "client": ("127.0.0.1", 50000)}  # fmt: skip
        await bridge(scope, receive, send)

    async def main():
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(one(path, i * gap, started) for i, path in enumerate(paths)))

    asyncio.run(main())
    return answered


def waiting_app(release: threading.Event) -> Flask:
    from cds_service.app_threads import waiting

    app = Flask(__name__)

    @app.post("/marked-wait")
    def marked_wait():  # as the FHIR client and the database do
        with waiting():
            release.wait(5)
        return {}

    @app.post("/unmarked-wait")
    def unmarked_wait():  # a wait the service forgot to mark
        release.wait(5)
        return {}

    @app.post("/compute")
    def compute():
        release.set()
        return {}

    return app


def test_a_call_that_waits_on_a_server_does_not_hold_up_the_next_call(monkeypatch):
    monkeypatch.setattr("cds_service.asgi.SPILL_AFTER_S", 30.0)  # only the marked wait can let it through
    release = threading.Event()
    bridge = Bridge(waiting_app(release).wsgi_app, threads=4, body_read_timeout_s=5.0, max_body=1000)
    answered = concurrent_calls(bridge, ["/marked-wait", "/compute"])
    assert answered["/compute"] < 2.0  # not after the 5 s wait: it ran on another thread meanwhile
    assert answered["/marked-wait"] < 2.0  # and its answer let the waiting call go on


def test_a_wait_the_service_did_not_mark_holds_up_the_next_call_only_briefly(monkeypatch):
    monkeypatch.setattr("cds_service.asgi.SPILL_AFTER_S", 0.05)
    release = threading.Event()
    bridge = Bridge(waiting_app(release).wsgi_app, threads=4, body_read_timeout_s=5.0, max_body=1000)
    answered = concurrent_calls(bridge, ["/unmarked-wait", "/compute"])
    assert answered["/compute"] < 2.0
