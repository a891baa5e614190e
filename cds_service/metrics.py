"""Prometheus metrics at /metrics, correct under several gunicorn workers (multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set, as gunicorn.conf.py does). Label values are bounded: service ids
come from the service definitions, never from the URL."""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

REQUESTS = Counter("cds_requests_total", "HTTP requests, by service (or endpoint) and status", ["service", "status"])
LATENCY = Histogram(
    "cds_request_seconds",
    "Request latency, by service (or endpoint)",
    ["service"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
FHIR_FALLBACK = Counter(
    "cds_fhir_fallback_total", "Prefetch keys fetched from the EHR's FHIR server, by outcome", ["outcome"]
)
CARDS = Counter("cds_cards_total", "Cards answered (or held back by silent mode), by topic", ["topic", "silent"])
RATINGS = Counter("cds_ratings_total", "Appropriateness ratings written back, by rating", ["rating"])
AUTH_FAILURES = Counter("cds_auth_failures_total", "Refused CDS client tokens, by reason", ["reason"])

# Coarse on purpose: /metrics is unauthenticated, and separate labels for an unknown issuer, an unknown
# kid and the right kid would let an outsider enumerate the trusted issuers and their keys.
_AUTH_REASONS = (
    ("no bearer", "missing"),
    ("expired", "expired"),
    ("in the future", "not-yet-valid"),
    ("aud", "audience"),
    ("replayed", "replay"),
    ("not a JWT", "malformed"),
)

bp = Blueprint("metrics", __name__)


@lru_cache(maxsize=512)
def _child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, bound once: every label set here comes from a closed
    list (service ids, statuses, ratings, topics), so the cache stays small."""
    return metric.labels(*labels)


def auth_failure(reason: str) -> None:
    label = next((category for needle, category in _AUTH_REASONS if needle in reason), "invalid")
    _child(AUTH_FAILURES, label).inc()


def evaluation(evaluation: Any) -> None:
    record = evaluation.record
    if record is not None:
        for source in record.sources.values():
            if source == "fetched":
                _child(FHIR_FALLBACK, "fetched").inc()
            elif source == "unavailable":
                _child(FHIR_FALLBACK, "failed").inc()
    silent = "true" if evaluation.silent else "false"
    for result in evaluation.results:
        _child(RATINGS, result.assessment.rating).inc()
        for card in result.cards:
            _child(CARDS, card.topic.value, silent).inc()


def fetch_failed(keys: int) -> None:
    """Keys that could not be fetched when the call ended in a 412."""
    _child(FHIR_FALLBACK, "failed").inc(keys)


def init_app(app: Flask, service_ids: list[str]) -> None:
    known = set(service_ids)
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        # `cds-service serve` and gunicorn.conf.py make it; a server started some other way (granian
        # or gunicorn run by hand) would otherwise fail every call when a metric is first written
        os.makedirs(folder, exist_ok=True)

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()
        service = (request.view_args or {}).get("service_id")
        # bounded label values: a known service id, else the endpoint's name
        g.metrics_label = service if service in known else (request.endpoint or "unknown").split(".")[-1]

    @app.after_request
    def count(response: Response) -> Response:
        label = g.get("metrics_label", "unknown")
        _child(REQUESTS, label, str(response.status_code)).inc()
        _child(LATENCY, label).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    app.register_blueprint(bp)


@bp.get("/metrics")
def exposition() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = DEFAULT_REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
