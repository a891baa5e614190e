"""Outbound FHIR reads for prefetch keys the client did not satisfy.

Only servers on CDS_FHIR_SERVER_ALLOWLIST are ever contacted; the bearer token goes nowhere
else (not to a redirect target, not to a `next` link on another host). All keys are fetched
concurrently within one time budget. Failures carry a short reason without URLs: the query
string contains the patient id.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import requests.structures
import urllib3
from requests.utils import requote_uri

from .app_threads import waiting

log = logging.getLogger(__name__)


class _RedactQueryStrings(logging.Filter):
    """urllib3 logs request lines ("GET /fhir/Condition?patient=123") at DEBUG: the query string
    holds the patient id. Whatever it still logs loses its query strings."""

    _QUERY = re.compile(r"\?[^\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._QUERY.sub("?(redacted)", record.getMessage())
        record.args = None
        return True


_urllib3_log = logging.getLogger("urllib3")
_urllib3_log.setLevel(logging.WARNING)  # no request lines, even when the service runs at DEBUG
_urllib3_log.addFilter(_RedactQueryStrings())
for _name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_RedactQueryStrings())

_READ_SIZE = 1024 * 1024
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


class FetchFailed(Exception):
    """A prefetch key could not be fetched; `reason` is safe to log and to show to the client."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass
class FetchResult:
    pages: list[Any] = field(default_factory=list)  # parsed response bodies, first page first


class PageParser(Protocol):
    """Turns a response body into a page; returns the page and its `next` URL, or raises ValueError."""

    def __call__(self, body: bytes) -> tuple[Any, str | None]: ...


_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normalised_path(path: str) -> str | None:
    """The path with percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2), or None when
    it holds a dot segment (encoded or not) or an encoded slash: a server may resolve either, and
    `/fhir/tenant-a/%2e%2e/tenant-b` must not pass as a path under `/fhir/tenant-a`."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "%" and i + 2 < len(path):
            try:
                char = chr(int(path[i + 1 : i + 3], 16))
            except ValueError:
                return None
            if char in ("/", "\\"):
                return None
            out.append(char if char in _UNRESERVED else path[i : i + 3].upper())
            i += 3
            continue
        out.append(path[i])
        i += 1
    normalised = "".join(out)
    if any(segment in (".", "..") for segment in normalised.split("/")) or "\\" in normalised:
        return None
    return normalised


def _origin_and_path(url: str) -> tuple[str, str, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    path = _normalised_path(parts.path)
    if path is None:
        return None
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, f"{parts.hostname.lower()}:{port or default_port}", path.rstrip("/")


def is_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """True when `url` lies under one of the allowed prefixes: same scheme, host and port, and
    a path that continues the prefix at a segment boundary (so `/fhir` does not admit `/fhir-evil`)."""
    return _under(_origin_and_path(url), _prefixes(allowlist))


@lru_cache(maxsize=64)
def _prefixes(allowlist: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """The allowlist's prefixes, parsed once (it is configuration, not request content)."""
    return tuple(parsed for parsed in map(_origin_and_path, allowlist) if parsed is not None)


def _under(target: tuple[str, str, str] | None, prefixes: tuple[tuple[str, str, str], ...]) -> bool:
    if target is None:
        return False
    for allowed in prefixes:
        if allowed[:2] == target[:2] and (target[2] == allowed[2] or target[2].startswith(allowed[2] + "/")):
            return True
    return False


class ConnectionPools:
    """Keep-alive connections to the EHR's FHIR servers, reused across hook calls: one pool per
    server origin, per process. A pool holds no per-call state: the bearer token is a header of
    each request, and requests are sent at the adapter level, so no cookie jar exists that could
    carry something set for one user into another user's call."""

    def __init__(self, max_servers: int = 16, connections_per_server: int = 16, max_threads: int = 64) -> None:
        self._adapters: dict[str, _FhirAdapter] = {}
        self._max_servers = max_servers
        self._connections = connections_per_server
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        """Fetching threads kept alive between hook calls: starting six threads per call put
        their start-up on every call's critical path. Idle threads are reused and new ones started
        only when none is idle, so a thread still held by a slow server from an earlier call
        never delays this one. Created in the process that uses it (gunicorn forks after
        --preload, and threads do not survive a fork)."""
        with self._lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(max_workers=self._max_threads, thread_name_prefix="fhir-fetch")
                self._executor_pid = os.getpid()
            return self._executor

    def adapter_for(self, base_url: str) -> _FhirAdapter:
        origin = _origin_and_path(base_url)
        key = f"{origin[0]}://{origin[1]}" if origin else base_url  # one adapter per scheme and origin
        with self._lock:
            adapter = self._adapters.get(key)
            if adapter is None:
                if len(self._adapters) >= self._max_servers:
                    self._adapters.pop(next(iter(self._adapters))).close()
                adapter = self._adapters[key] = _FhirAdapter(self._connections)
            return adapter

    def close(self) -> None:
        with self._lock:
            for adapter in self._adapters.values():
                adapter.close()
            self._adapters.clear()
            if self._executor is not None and self._executor_pid == os.getpid():
                self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class _FhirAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter without the per-request work this client never needs. Every query of a call
    runs its send under the GIL one after another, so this work stood between the call's queries
    (measured: 178 us of CPU per query through the stock adapter, 124 us through urllib3 alone).
    `send` itself is the stock one, which is what the `responses`-based tests replace.

    - no proxies: requests are sent at the adapter level, so the environment's proxies were never
      consulted; the stock adapter still parsed every URL twice to find none;
    - the connection pool is looked up once, not per request: the pool manager holds one pool (one
      adapter per scheme and origin), so the one kept is replaced whenever another is looked up;
    - no cookies: nothing reads them, and no jar may carry one user's cookie into another's call."""

    def __init__(self, connections: int) -> None:
        super().__init__(pool_connections=1, pool_maxsize=connections, max_retries=0)
        self._kept: tuple[tuple[str, object, object], Any] | None = None  # (origin and TLS setting, pool)

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> Any:
        # "scheme://host:port": the URL up to its third slash (the client sends absolute URLs only)
        key = ("/".join(str(request.url).split("/", 3)[:3]), verify, cert)
        kept = self._kept
        if kept is not None and kept[0] == key:
            return kept[1]
        pool = super().get_connection_with_tls_context(request, verify, None, cert)  # may close the kept one
        self._kept = (key, pool)
        return pool

    def request_url(self, request: requests.PreparedRequest, proxies: Mapping[str, str] | None) -> str:
        return request.path_url

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = requests.structures.CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = str(req.url)
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self._kept = None
        super().close()


class FhirClient:
    """Fetches a set of relative FHIR queries from one allowed server with one bearer token."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        allowlist: tuple[str, ...],
        budget_seconds: float,
        max_pages: int,
        max_response_bytes: int,
        parse: PageParser,
        pools: ConnectionPools | None = None,
    ) -> None:
        self._parse = parse
        self._pools = pools
        self.base_url = base_url.rstrip("/") + "/"
        self._allowlist = allowlist
        self._budget = budget_seconds
        self._max_pages = max_pages
        self._max_bytes = max_response_bytes
        own = _origin_and_path(self.base_url)
        self._own = (own,) if own is not None else ()
        # Prepared by hand: no cookie jar is ever consulted. What every query shares (method, headers,
        # with requests' check of the token as a header value) is prepared once per call.
        self._template = requests.PreparedRequest()
        self._template.prepare_method("GET")
        self._template.prepare_headers(
            {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json, application/json"}
        )
        self._template.prepare_body(None, None)
        self._template.prepare_hooks(None)
        self._answers: dict[str, tuple[int, float]] = {}  # key -> its last page's status, ms for all its pages

    def fetch_all(self, queries: Mapping[str, str]) -> tuple[dict[str, FetchResult], dict[str, str]]:
        """Fetch every query concurrently. Returns (results, failures: key -> reason)."""
        started = time.monotonic()
        deadline = started + self._budget
        results: dict[str, FetchResult] = {}
        failures: dict[str, str] = {}
        pending: set = set()
        if not queries:
            return results, failures
        workers = min(8, len(queries))
        pool = (
            self._pools.executor()
            if self._pools
            else ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-fetch")
        )
        # One connection pool for all keys, holding one connection per concurrent key.
        adapter = self._pools.adapter_for(self.base_url) if self._pools else _FhirAdapter(workers)
        try:
            # Every first request is prepared here, before any is sent: the fetching threads then only
            # send, so the queries reach the server together instead of one per thread start-up.
            first: dict[str, requests.PreparedRequest] = {}
            for key, query in queries.items():
                try:
                    first[key] = self._prepare(key, urljoin(self.base_url, query.lstrip("/")))
                except FetchFailed as failed:
                    failures[key] = failed.reason
            futures = {pool.submit(self._fetch_key, adapter, key, ready, deadline): key for key, ready in first.items()}
            with waiting():  # meanwhile, calls queued behind this one run on another app thread
                done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            for future in done:
                key = futures[future]
                error = future.exception()
                if error is None:
                    results[key] = future.result()
                elif isinstance(error, FetchFailed):
                    failures[key] = error.reason
                else:  # a bug in this module must not leak; say what failed, log the type only
                    log.error("fhir fetch key=%s failed unexpectedly: %s", key, type(error).__name__)
                    failures[key] = "unexpected error while fetching"
            for future in pending:
                failures[futures[future]] = f"no answer within the {self._budget:g} s budget"
            self._log_answers(queries, started)
        finally:
            for future in pending:
                future.cancel()  # not started yet: it never will be
            if self._pools is None:
                pool.shutdown(wait=False, cancel_futures=True)
            if self._pools is None and not pending:
                adapter.close()  # a thread still waiting on a slow server keeps using it until it gives up
        return results, failures

    def _fetch_key(
        self,
        adapter: requests.adapters.HTTPAdapter,
        key: str,
        ready: requests.PreparedRequest,
        deadline: float,
    ) -> FetchResult:
        result = FetchResult()
        while True:
            body = self._get(adapter, key, ready, deadline)
            try:
                page, url = self._parse(body)  # parsed here, while other keys still wait on the network
            except ValueError as exc:
                raise FetchFailed(key, f"the FHIR server's data is not valid FHIR JSON ({exc})") from None
            result.pages.append(page)
            if url is None:
                return result
            if len(result.pages) >= self._max_pages:
                raise FetchFailed(key, f"more than {self._max_pages} pages of results")
            try:
                absolute = urljoin(self.base_url, url)
            except ValueError:  # e.g. an unclosed IPv6 bracket: urljoin cannot even split it
                raise FetchFailed(key, "the FHIR server's next link is not a URL") from None
            ready = self._prepare(key, absolute)

    def _prepare(self, key: str, url: str) -> requests.PreparedRequest:
        # on the allowlist, and under this call's fhirServer: the token is never sent to another server.
        # No whitespace or control characters: urlsplit drops some of them, so the URL checked would
        # not be the URL sent.
        target = None if _CONTROL_OR_SPACE.search(url) else _origin_and_path(url)
        if not _under(target, _prefixes(self._allowlist)) or not _under(target, self._own):
            raise FetchFailed(key, "a link points outside the request's FHIR server")
        # Sent at the adapter level: no session cookies, hooks, environment proxies or redirects.
        prepared = self._template.copy()
        if url.isascii():  # checked above: http(s), a host, no userinfo; only the quoting is left to do
            prepared.url = requote_uri(url)
        else:  # an international host name needs requests' IDNA encoding
            prepared.prepare_url(url, None)
        return prepared

    def _get(
        self, adapter: requests.adapters.HTTPAdapter, key: str, prepared: requests.PreparedRequest, deadline: float
    ) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchFailed(key, f"no answer within the {self._budget:g} s budget")
        started = time.monotonic()
        try:
            response = adapter.send(prepared, stream=True, timeout=(min(remaining, 3.0), remaining))
        except requests.Timeout:
            raise FetchFailed(key, "the FHIR server timed out") from None
        except requests.RequestException as exc:
            raise FetchFailed(key, f"could not reach the FHIR server ({type(exc).__name__})") from None
        with response:
            earlier = self._answers.get(key, (0, 0.0))[1]  # a key's earlier pages
            self._answers[key] = (response.status_code, earlier + (time.monotonic() - started) * 1000)
            if response.is_redirect or 300 <= response.status_code < 400:
                raise FetchFailed(
                    key, f"the FHIR server answered a redirect (HTTP {response.status_code}); not followed"
                )
            if response.status_code != 200:
                raise FetchFailed(key, f"the FHIR server answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise FetchFailed(key, "the FHIR server's answer is larger than allowed")
            return self._read_body(response, key, deadline)

    def _log_answers(self, queries: Mapping[str, str], started: float) -> None:
        """One line per call, not one per query: each key's status and time (no URL: the query string
        holds the patient id), `-` for a key that got no answer."""
        if not log.isEnabledFor(logging.INFO):
            return
        parts = []
        for key in queries:
            answer = self._answers.get(key)
            parts.append(f"{key}={answer[0]}/{answer[1]:.1f}" if answer else f"{key}=-")
        log.info("fhir fetch ms=%.1f %s", (time.monotonic() - started) * 1000, " ".join(parts))

    def _read_body(self, response: requests.Response, key: str, deadline: float) -> bytes:
        """The body as it arrives, checked against the size limit and the budget after each read:
        a server that drips its answer cannot hold a fetching thread past the budget (the caller
        has stopped waiting by then; the thread must stop too, or it would tie up the pool)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = response.raw.read1(_READ_SIZE, decode_content=True)  # whatever has arrived, up to _READ_SIZE
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise FetchFailed(key, f"the FHIR server's answer broke off ({type(exc).__name__})") from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_bytes:
                raise FetchFailed(key, "the FHIR server's answer is larger than allowed")
            if time.monotonic() > deadline:
                raise FetchFailed(key, f"no answer within the {self._budget:g} s budget")
