"""Who may call the service: CORS for browser clients, and CDS Hooks 2.0 client JWTs.

Preflight requests carry no credentials, so they are answered first, before authentication.
Every discovery, service and feedback call then needs `Authorization: Bearer <JWT>` signed by a
trusted CDS client (CDS_TRUSTED_ISSUERS), unless CDS_AUTH=off (a local trial only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import requests
from flask import Flask, Response, g, request
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import InvalidTokenError, PyJWKClientConnectionError, PyJWKClientError, PyJWKError

from .app_threads import waiting
from .configuration import AuthMode, ClientProfile, Settings
from .protocol import operation_outcome
from .runtime import json_response

log = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Accept"
EXPOSED_HEADERS = "WWW-Authenticate, Retry-After"
ALGORITHMS = ("ES384", "RS384", "ES256", "RS256")  # asymmetric only: never none, never HMAC
_KEY_TYPES = {"ES": "EC", "RS": "RSA"}
JWKS_MAX_BYTES = 64 * 1024
JWKS_TIMEOUT_SECONDS = 3.0
JWKS_REFRESH_COOLDOWN_SECONDS = 5.0  # an unknown kid refreshes a JWK Set at most this often
UNAUTHENTICATED_ENDPOINTS = {"health.alive", "health.ready", "openapi.serve", "metrics.exposition", "static"}
OWN_AUTHENTICATION = ("dashboard.",)  # the dashboard has its own token (CDS_DASHBOARD_TOKEN), not client JWTs


# --- CORS ------------------------------------------------------------------------------------------


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


# --- trusted issuers ---------------------------------------------------------------------------------


class TrustError(ValueError):
    """CDS_TRUSTED_ISSUERS is unusable: raised at start-up."""


class LimitedJWKClient(PyJWKClient):
    """PyJWKClient (cache, kid selection, refresh on an unknown kid after a cooldown) fetching with
    a timeout, no redirects and a size limit."""

    def fetch_data(self) -> Any:
        try:
            with (
                waiting(),
                requests.get(
                    self.uri,
                    timeout=JWKS_TIMEOUT_SECONDS,
                    allow_redirects=False,
                    stream=True,
                    headers={"Accept": "application/json"},
                ) as response,
            ):
                if response.status_code != 200:
                    raise PyJWKClientConnectionError(f"JWK Set fetch answered HTTP {response.status_code}")
                body = response.raw.read(JWKS_MAX_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise PyJWKClientConnectionError(f"JWK Set fetch failed ({type(exc).__name__})") from None
        if len(body) > JWKS_MAX_BYTES:
            raise PyJWKClientConnectionError("JWK Set larger than allowed")
        try:
            jwk_set = self._as_jwk_set_payload(json.loads(body))
        except ValueError:
            raise PyJWKClientError("JWK Set is not JSON") from None
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(jwk_set)
        self._last_successful_fetch = time.monotonic()
        return jwk_set


@dataclass
class TrustedIssuer:
    iss: str
    keys: PyJWKSet | None = None  # an inline JWK Set
    jku: tuple[str, ...] = ()  # or allowed JWK Set URLs
    clients: dict[str, LimitedJWKClient] | None = None
    profile: ClientProfile | None = None  # what this client needs (generic, epic, sandbox); None: the default
    site_codes: str | None = None  # this client's order codes (Epic: its preference-list codes)

    def key_for(self, header: dict[str, Any]) -> PyJWK:
        kid = header.get("kid")
        if self.keys is not None:  # pinned keys: a jku header is not fetched (the sandbox always sends one)
            for key in self.keys.keys:
                if key.key_id == kid:
                    return key
            raise AuthError("unknown kid")
        jku = header.get("jku")
        if jku is None:
            if len(self.jku) != 1:
                raise AuthError("no jku, and the issuer has several JWK Set URLs")
            jku = self.jku[0]
        if jku not in self.jku:
            raise AuthError("jku not allowed for this issuer")
        if self.clients is None or not isinstance(kid, str):
            raise AuthError("no kid, or no JWK Set client for this issuer")
        try:
            return self.clients[jku].get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            raise AuthError(f"JWK Set unavailable: {exc}") from None
        except (PyJWKClientError, PyJWKError):
            raise AuthError("unknown kid") from None


def load_trusted_issuers(path: Path | None) -> dict[str, TrustedIssuer]:
    """{"issuers": [{"iss": ..., "jwks": {"keys": [...]}} | {"iss": ..., "jku": ["https://..."]}]}"""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = raw["issuers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"CDS_TRUSTED_ISSUERS: {exc}") from None
    issuers: dict[str, TrustedIssuer] = {}
    for entry in entries:
        iss = entry.get("iss") if isinstance(entry, dict) else None
        if not isinstance(iss, str) or not iss:
            raise TrustError("CDS_TRUSTED_ISSUERS: every issuer needs an 'iss'")
        try:
            profile = ClientProfile(entry["profile"]) if "profile" in entry else None
        except ValueError:
            choices = ", ".join(p.value for p in ClientProfile)
            raise TrustError(f"CDS_TRUSTED_ISSUERS: {iss}: profile must be one of {choices}") from None
        site_codes = entry.get("siteCodes")
        if site_codes is not None and not Path(str(site_codes)).is_file():
            raise TrustError(f"CDS_TRUSTED_ISSUERS: {iss}: siteCodes {site_codes!r} is not a readable file")
        if ("jwks" in entry) == ("jku" in entry):
            raise TrustError(f"CDS_TRUSTED_ISSUERS: {iss}: give exactly one of 'jwks' and 'jku'")
        if "jwks" in entry:
            try:
                keys = PyJWKSet.from_dict(entry["jwks"])
            except (PyJWKError, ValueError, TypeError, KeyError) as exc:
                raise TrustError(f"CDS_TRUSTED_ISSUERS: {iss}: bad JWK Set ({exc})") from None
            for key in keys.keys:
                size = getattr(key.key, "key_size", None)
                if key.key_type == "RSA" and size is not None and size < MIN_RSA_BITS:
                    raise TrustError(f"CDS_TRUSTED_ISSUERS: {iss}: key {key.key_id!r} is RSA {size} bits; "
                                     f"at least {MIN_RSA_BITS} are required")  # fmt: skip
            issuers[iss] = TrustedIssuer(iss, keys=keys, profile=profile, site_codes=site_codes)
        else:
            urls = tuple(entry["jku"]) if isinstance(entry["jku"], list) else (entry["jku"],)
            if not urls or not all(isinstance(u, str) and u.startswith("https://") for u in urls):
                raise TrustError(f"CDS_TRUSTED_ISSUERS: {iss}: jku must be a list of https URLs")
            clients = {
                url: LimitedJWKClient(
                    url,
                    cache_keys=False,
                    lifespan=300,
                    timeout=JWKS_TIMEOUT_SECONDS,
                    cooldown_duration=JWKS_REFRESH_COOLDOWN_SECONDS,
                )
                for url in urls
            }
            issuers[iss] = TrustedIssuer(iss, jku=urls, clients=clients, profile=profile, site_codes=site_codes)
    return issuers


# --- token verification -------------------------------------------------------------------------------


class AuthError(Exception):
    """Why a token was refused: logged, never sent to the client."""


@dataclass(frozen=True)
class Client:
    iss: str
    jti: str
    tenant: str | None
    expires: float
    profile: ClientProfile | None = None
    site_codes: str | None = None


ReplayCheck = Callable[[Client], bool]  # True when the jti was not seen before (and is now remembered)


class Authenticator:
    def __init__(
        self,
        issuers: dict[str, TrustedIssuer],
        remember_jti: ReplayCheck,
        *,
        leeway: float = 60.0,
        max_lifetime: float = 3600.0,
    ) -> None:
        self.issuers = issuers
        self.remember_jti = remember_jti
        self.leeway = leeway
        self.max_lifetime = max_lifetime

    def verify(self, token: str, audience: str) -> Client:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except InvalidTokenError:
            raise AuthError("not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError(f"algorithm not allowed: {str(alg)[:20]!r}")  # never a 5,600-character header
        if header.get("typ") not in (None, "JWT"):
            raise AuthError("typ is not JWT")
        if not isinstance(header.get("kid"), str):
            raise AuthError("no kid")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError(f"unknown issuer {str(unverified.get('iss'))[:100]!r}")
        key = issuer.key_for(header)
        _check_key_matches(key, alg)
        _check_key_strength(key)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer.iss,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired") from None
        except jwt.ImmatureSignatureError:
            nbf = unverified.get("nbf")
            late = isinstance(nbf, int | float) and nbf > time.time() + self.leeway
            raise AuthError("nbf in the future" if late else "iat in the future") from None
        except jwt.InvalidAudienceError:
            received = str(unverified.get("aud"))[:200]
            raise AuthError(f"aud is not this service's URL: expected {audience!r}, received {received!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim}") from None
        except InvalidTokenError as exc:
            raise AuthError(f"invalid token ({type(exc).__name__})") from None
        if isinstance(claims["aud"], list) and claims["aud"] != [audience]:
            # a token for several audiences could be replayed by any of them: ours alone, or refused
            raise AuthError(f"aud lists other audiences besides {audience!r}")
        if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 255:
            raise AuthError("jti is not a string of at most 255 characters")
        if not isinstance(claims.get("exp"), int | float) or not isinstance(claims.get("iat"), int | float):
            raise AuthError("exp and iat must be numbers")
        if "tenant" in claims and (not isinstance(claims["tenant"], str) or len(claims["tenant"]) > 255):
            raise AuthError("tenant is not a string of at most 255 characters")
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise AuthError("token lifetime too long")
        tenant = claims.get("tenant") if isinstance(claims.get("tenant"), str) else None
        client = Client(issuer.iss, claims["jti"], tenant, float(claims["exp"]) + self.leeway, issuer.profile,
                        issuer.site_codes)  # fmt: skip
        if not self.remember_jti(client):
            raise AuthError("jti replayed")
        return client


_CURVES = {"ES256": "P-256", "ES384": "P-384"}
MIN_RSA_BITS = 2048


def _check_key_strength(key: PyJWK) -> None:
    """RSA keys under 2048 bits are refused (NIST SP 800-131A): at start for inline keys, here for
    keys fetched from a jku."""
    size = getattr(key.key, "key_size", None)
    if key.key_type == "RSA" and size is not None and size < MIN_RSA_BITS:
        raise AuthError("RSA key too short")


def _check_key_matches(key: PyJWK, alg: str) -> None:
    """The algorithm is pinned by the key, not chosen by the token: an RSA key never verifies an
    ES384 token, a P-256 key never an ES384 one, and a key declaring `alg` only that algorithm."""
    data = getattr(key, "_jwk_data", {})
    if key.key_type != _KEY_TYPES[alg[:2]]:
        raise AuthError("key type does not match the algorithm")
    if data.get("alg") not in (None, alg):
        raise AuthError("key is declared for another algorithm")
    if alg in _CURVES and data.get("crv") != _CURVES[alg]:
        raise AuthError("key curve does not match the algorithm")


class ReplayStoreUnavailable(Exception):
    """The shared jti store cannot be reached: the call is refused (503), never let through."""


class ReplayGuard:
    """Each jti once within its token's lifetime, in the shared database (all workers and instances).
    Fails closed: with the database away a token cannot be checked, so it is not accepted (a per-process
    memory let each worker, and the recovered database, accept the same jti once more)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __call__(self, client: Client) -> bool:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return bool(self.store.remember_jti(client.iss, client.jti, client.expires))
        except SQLAlchemyError as exc:
            log.warning("jti replay store unavailable (%s): call refused", type(exc).__name__)
            raise ReplayStoreUnavailable() from None


def init_auth(app: Flask, settings: Settings, authenticator: Authenticator | None) -> None:
    if settings.auth is AuthMode.OFF:
        log.warning("CDS_AUTH=off: CDS clients are NOT authenticated. Use this only for a local trial.")
        return
    assert authenticator is not None

    @app.before_request
    def authenticate() -> Response | None:
        if request.method == "OPTIONS" or request.endpoint in UNAUTHENTICATED_ENDPOINTS or request.endpoint is None:
            return None
        if request.endpoint.startswith(OWN_AUTHENTICATION):
            return None
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _refuse("no bearer token")
        # the audience is this service's configured URL, never the Host or forwarded headers
        audience = str(settings.public_base_url).rstrip("/") + request.path
        try:
            g.cds_client = authenticator.verify(token.strip(), audience)
        except AuthError as error:
            return _refuse(str(error))
        except ReplayStoreUnavailable:
            g.problem = "replay store unavailable"
            outcome = operation_outcome("transient", "The service cannot check tokens right now; retry later")
            return json_response(outcome, 503, {"Retry-After": "10"})
        return None


def _refuse(reason: str) -> Response:
    from . import metrics

    log.warning("authentication failed: %s", reason)
    metrics.auth_failure(reason)
    g.problem = "authentication failed"
    outcome = operation_outcome("login", "Authentication failed")
    return json_response(outcome, 401, {"WWW-Authenticate": 'Bearer realm="cds-services", error="invalid_token"'})
