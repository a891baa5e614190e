"""Who may call the service: CORS for browser clients (the CDS Hooks sandbox).

Preflight requests carry no credentials, so they are answered here, before any authentication.
"""
from __future__ import annotations

from flask import Flask, Response, request

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Accept"
EXPOSED_HEADERS = "WWW-Authenticate, Retry-After"


def init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    allow_any = "*" in origins

    def allowed_origin() -> str | None:
        origin = request.headers.get("Origin")
        if allow_any:
            return "*"
        return origin if origin in origins else None

    @app.before_request
    def answer_preflight() -> Response | None:
        if request.method != "OPTIONS":
            return None
        response = Response(status=204)
        origin = allowed_origin()
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        if not allow_any:
            response.headers["Vary"] = "Origin"
        return response

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        origin = allowed_origin()
        if origin and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if not allow_any:
            response.headers.add("Vary", "Origin")
        return response
