"""Outbound FHIR reads for prefetch keys the client did not satisfy.

Only servers on CDS_FHIR_SERVER_ALLOWLIST are ever contacted; the bearer token goes nowhere
else (not to a redirect target, not to a `next` link on another host). All keys are fetched
concurrently within one time budget. Failures carry a short reason without URLs: the query
string contains the patient id.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urljoin, urlsplit

import msgspec
import requests

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class FetchFailed(Exception):
    """A prefetch key could not be fetched; `reason` is safe to log and to show to the client."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass
class FetchResult:
    pages: list[bytes] = field(default_factory=list)  # response bodies, first page first


def _origin_and_path(url: str) -> tuple[str, str, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, f"{parts.hostname.lower()}:{port or default_port}", parts.path.rstrip("/")


def is_allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """True when `url` lies under one of the allowed prefixes: same scheme, host and port, and
    a path that continues the prefix at a segment boundary (so `/fhir` does not admit `/fhir-evil`)."""
    target = _origin_and_path(url)
    if target is None:
        return False
    for prefix in allowlist:
        allowed = _origin_and_path(prefix)
        if allowed is None or allowed[:2] != target[:2]:
            continue
        if target[2] == allowed[2] or target[2].startswith(allowed[2] + "/"):
            return True
    return False


class _Link(msgspec.Struct):
    relation: str = ""
    url: str = ""


class _BundleLinks(msgspec.Struct):
    resourceType: str = ""
    link: list[_Link] = []


_links_decoder = msgspec.json.Decoder(_BundleLinks)


def next_link(body: bytes) -> str | None:
    """The searchset's `next` URL, if any (bodies that are not JSON objects have none)."""
    try:
        bundle = _links_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    for link in bundle.link:
        if link.relation == "next" and link.url:
            return link.url
    return None


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
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._token = access_token
        self._allowlist = allowlist
        self._budget = budget_seconds
        self._max_pages = max_pages
        self._max_bytes = max_response_bytes
        self._session_factory = session_factory

    def fetch_all(self, queries: Mapping[str, str]) -> tuple[dict[str, FetchResult], dict[str, str]]:
        """Fetch every query concurrently. Returns (results, failures: key -> reason)."""
        deadline = time.monotonic() + self._budget
        results: dict[str, FetchResult] = {}
        failures: dict[str, str] = {}
        if not queries:
            return results, failures
        pool = ThreadPoolExecutor(max_workers=min(8, len(queries)), thread_name_prefix="fhir-fetch")
        try:
            futures = {pool.submit(self._fetch_key, key, query, deadline): key for key, query in queries.items()}
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
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return results, failures

    def _fetch_key(self, key: str, query: str, deadline: float) -> FetchResult:
        url = urljoin(self.base_url, query.lstrip("/"))
        result = FetchResult()
        with self._session_factory() as session:
            session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
            while url is not None:
                if len(result.pages) >= self._max_pages:
                    raise FetchFailed(key, f"more than {self._max_pages} pages of results")
                if not is_allowed(url, self._allowlist):
                    raise FetchFailed(key, "a link points outside the allowed FHIR server")
                body = self._get(session, key, url, deadline)
                result.pages.append(body)
                url = next_link(body)
                if url is not None:
                    url = urljoin(self.base_url, url)
        return result

    def _get(self, session: requests.Session, key: str, url: str, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchFailed(key, f"no answer within the {self._budget:g} s budget")
        started = time.monotonic()
        try:
            response = session.get(
                url,
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/fhir+json, application/json"},
                timeout=(min(remaining, 3.0), remaining),
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout:
            raise FetchFailed(key, "the FHIR server timed out") from None
        except requests.RequestException as exc:
            raise FetchFailed(key, f"could not reach the FHIR server ({type(exc).__name__})") from None
        with response:
            log.info("fhir fetch key=%s status=%s ms=%.1f", key, response.status_code, (time.monotonic() - started) * 1000)
            if response.is_redirect or 300 <= response.status_code < 400:
                raise FetchFailed(key, f"the FHIR server answered a redirect (HTTP {response.status_code}); not followed")
            if response.status_code != 200:
                raise FetchFailed(key, f"the FHIR server answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise FetchFailed(key, "the FHIR server's answer is larger than allowed")
            chunks: list[bytes] = []
            size = 0
            try:
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise FetchFailed(key, "the FHIR server's answer is larger than allowed")
                    if time.monotonic() > deadline:
                        raise FetchFailed(key, f"no answer within the {self._budget:g} s budget")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise FetchFailed(key, f"the FHIR server's answer broke off ({type(exc).__name__})") from None
        return b"".join(chunks)
