"""Lumbar spine MRI appropriateness as a CDS Hooks 2.0 service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from .configuration import Settings, load_settings

__all__ = ["create_app"]

# create_app(config) keys that are collaborators rather than settings (tests inject these).
_INJECTABLE = ("clock", "fhir_client_factory")


def create_app(config: Mapping[str, Any] | Settings | None = None) -> Flask:
    """Application factory: settings from the environment, overridden by `config`."""
    from . import api, dashboard, feedback, health, metrics, openapi
    from .audit import AuditTrail
    from .configuration import AuthMode
    from .evaluation import Evaluator
    from .knowledge import Knowledge
    from .logs import init_request_log
    from .runtime import Runtime
    from .security import Authenticator, ReplayGuard, TrustError, init_auth, init_cors, load_trusted_issuers
    from .services import load_services
    from .storage import Store

    if isinstance(config, Settings):
        settings, injected = config, {}
    else:
        config = dict(config or {})
        injected = {key: config.pop(key) for key in _INJECTABLE if key in config}
        settings = load_settings(overrides=config)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    knowledge = Knowledge()
    store = Store(settings.database_url)
    store.migrate_if_reachable()  # a database away at start: hook calls answered, /readyz says not ready
    app.extensions["cds"] = Runtime(
        settings=settings,
        services=load_services(settings.hooks_dir),
        knowledge=knowledge,
        evaluator=Evaluator(settings, knowledge, **injected),
        store=store,
        audit=AuditTrail(store, settings.audit_key, settings.audit_write, settings.audit_practitioner),
    )
    # Request hooks run in this order: timing, the CORS preflight (before any credential), then
    # authentication; the request log line is written last.
    metrics.init_app(app, list(app.extensions["cds"].services))
    init_cors(app, settings.cors_origins)
    authenticator = None
    if settings.auth is AuthMode.REQUIRED:
        issuers = load_trusted_issuers(settings.trusted_issuers)
        if not issuers:
            raise TrustError(
                "CDS_AUTH=required but no trusted CDS client is configured: set CDS_TRUSTED_ISSUERS "
                "(or CDS_AUTH=off for a local trial only)"
            )
        if not settings.public_base_url:
            raise TrustError(
                "CDS_AUTH=required needs CDS_PUBLIC_BASE_URL (e.g. https://cds.hospital.org): token audiences are "
                "matched against it, never against the Host header"
            )
        if not settings.audit_key:
            raise TrustError(
                "CDS_AUTH=required needs CDS_AUDIT_KEY (a site secret, e.g. `openssl rand -hex 32`): without it "
                "patient keys change at every restart and cannot be followed across instances"
            )
        authenticator = Authenticator(
            issuers,
            ReplayGuard(store),
            leeway=settings.jwt_leeway_seconds,
            max_lifetime=settings.jwt_max_lifetime_seconds,
        )
    init_auth(app, settings, authenticator)
    app.register_blueprint(api.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(dashboard.bp)
    api.register_error_handlers(app)
    init_request_log(app)
    return app
