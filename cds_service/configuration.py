"""Configuration: one validated Settings object, read from the environment once at start-up.

Tests inject overrides through ``create_app(config={...})``; nothing else reads os.environ.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTALLED_HOOKS = Path(sys.prefix) / "share" / "lumbar-mri-cds" / "hooks"  # pyproject data-files


def default_hooks_dir() -> Path:
    """hooks/ of a checkout; else the service definitions installed with the package."""
    checkout = PROJECT_ROOT / "hooks"
    return checkout if checkout.is_dir() else INSTALLED_HOOKS


class AuthMode(enum.StrEnum):
    """How CDS clients must authenticate (CDS Hooks 2.0 section 'Trusting CDS Clients')."""

    REQUIRED = "required"  # every discovery, service and feedback call carries a valid JWT
    OFF = "off"  # local trial only; logged as a warning at every start


class AuditWrite(enum.StrEnum):
    """How audit records reach the database."""

    BACKGROUND = "background"  # queued, written in batches by a thread: no latency, survives a database blip
    INLINE = "inline"  # written before the answer (tests, or sites that prefer it)


class ClientProfile(enum.StrEnum):
    """What a CDS client needs beyond CDS Hooks 2.0 as written; per trusted issuer, or the default."""

    GENERIC = "generic"  # CDS Hooks 2.0 as written
    EPIC = "epic"  # selectionBehavior any; the rating also as Epic's score band; the site's preference-list codes
    SANDBOX = "sandbox"  # ratings also in extension.systemActions (the CDS Hooks sandbox reads only that)


class PractitionerRecord(enum.StrEnum):
    """How the audit trail records the ordering user (context.userId)."""

    HASH = "hash"  # a keyed hash (CDS_AUDIT_KEY): overrides per practitioner, without the identity
    CLEAR = "clear"  # the userId itself (e.g. "Practitioner/123")
    OFF = "off"  # not recorded


class PrefetchFailurePolicy(enum.StrEnum):
    """What to do when a prefetch key can be neither read from the request nor fetched."""

    FAIL = "fail"  # answer 412 Precondition Failed with an OperationOutcome (default, safe)
    OMIT = "omit"  # carry on; the record marks the data as unavailable


@dataclass(frozen=True)
class Thresholds:
    """Clinical thresholds (clinical-rules.md 10.8: configuration choices, not guideline numbers)."""

    acute_episode_days: int = 42  # "6 weeks" (ACR V1/V2; Choosing Wisely)
    conservative_care_days: int = 42  # "6 weeks of optimal medical management" (ACR V3)
    repeat_imaging_months: int = 12  # repeat lumbar MRI look-back (project heuristic, ACP 2011)
    elderly_age: int = 65  # ACR V6 "elderly" (older ACR text: >70)
    cancer_risk_age: int = 50  # a weaker cancer risk factor (ACP 2007 table 1)
    cancer_no_improvement_days: int = 28  # "no improvement after 1 month" of care: a weaker cancer risk factor
    adult_age: int = 18  # the service serves adults only (paediatric back pain: ACR topic 230)
    egfr_low: float = 30.0  # mL/min/1.73 m2 (ACR-NKF GBCA consensus 2021)
    egfr_lookback_days: int = 90
    fever_celsius: float = 38.0
    infection_signs_lookback_days: int = 14  # temperature, ESR, CRP
    recent_infection_days: int = 90  # bacteraemia, sepsis, UTI count as "recent"
    red_flag_recent_days: int = 14  # bladder/bowel finding counts as "new" within this window
    aki_lookback_days: int = 30
    pregnancy_lookback_days: int = 30  # pregnancy status and urine hCG observations

    @property
    def repeat_imaging_days(self) -> int:
        return round(self.repeat_imaging_months * 30.44)


@dataclass(frozen=True)
class Settings:
    database_url: str = f"sqlite:///{PROJECT_ROOT / 'var' / 'cds.sqlite3'}"
    hooks_dir: Path = field(default_factory=default_hooks_dir)
    auth: AuthMode = AuthMode.REQUIRED
    cors_origins: tuple[str, ...] = ("*",)
    fhir_server_allowlist: tuple[str, ...] = ()  # URL prefixes; empty = never call out
    fhir_budget_seconds: float = 2.0  # total time for all fallback fetches of one request
    fhir_max_pages: int = 10  # `next` links followed per prefetch key
    fhir_max_response_bytes: int = 20 * 1024 * 1024
    max_body_bytes: int = 10 * 1024 * 1024
    max_orders: int = 50  # draft orders per hook call; more is a 400 naming context.draftOrders.entry
    client_profile: ClientProfile = ClientProfile.SANDBOX  # for clients whose issuer names none (and CDS_AUTH=off)
    public_base_url: str | None = None  # external URL behind a proxy (JWT `aud`)
    site_codes: Path | None = None  # order codes for suggested studies; default knowledge/site_codes.json
    trusted_issuers: Path | None = None  # CDS clients whose JWTs are accepted
    jwt_leeway_seconds: float = 60.0  # clock skew allowed on exp and iat (the sandbox's iat runs ahead)
    jwt_max_lifetime_seconds: float = 3600.0  # exp - iat; also bounds how long a jti is remembered
    audit_key: str | None = None  # HMAC key for patient keys in the audit trail (a site secret)
    audit_write: AuditWrite = AuditWrite.BACKGROUND
    audit_practitioner: PractitionerRecord = PractitionerRecord.HASH
    dashboard_token: str | None = None  # /dashboard is off (404) unless set
    silent: bool = False  # evaluate and audit, but answer no cards (silent roll-out), for every service
    # the served stack (serve.py, asgi.py): read by `cds-service serve` before any worker starts
    app_threads: int = 8  # threads per worker that may run the app (app_threads.py)
    body_read_timeout_s: float = 10.0  # a body not received by then is answered 408
    header_read_timeout_ms: int = 5000  # granian cuts a client off when its headers take longer
    thresholds: Thresholds = field(default_factory=Thresholds)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    if value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


# environment variable -> (Settings field, parser)
_ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "CDS_DATABASE_URL": ("database_url", str),
    "CDS_HOOKS_DIR": ("hooks_dir", Path),
    "CDS_AUTH": ("auth", AuthMode),
    "CDS_CORS_ORIGINS": ("cors_origins", _csv),
    "CDS_FHIR_SERVER_ALLOWLIST": ("fhir_server_allowlist", _csv),
    "CDS_FHIR_BUDGET_SECONDS": ("fhir_budget_seconds", float),
    "CDS_FHIR_MAX_PAGES": ("fhir_max_pages", int),
    "CDS_FHIR_MAX_RESPONSE_BYTES": ("fhir_max_response_bytes", int),
    "CDS_MAX_BODY_BYTES": ("max_body_bytes", int),
    "CDS_MAX_ORDERS": ("max_orders", int),
    "CDS_CLIENT_PROFILE": ("client_profile", ClientProfile),
    "CDS_PUBLIC_BASE_URL": ("public_base_url", str),
    "CDS_SITE_CODES": ("site_codes", Path),
    "CDS_TRUSTED_ISSUERS": ("trusted_issuers", Path),
    "CDS_JWT_LEEWAY_SECONDS": ("jwt_leeway_seconds", float),
    "CDS_JWT_MAX_LIFETIME_SECONDS": ("jwt_max_lifetime_seconds", float),
    "CDS_AUDIT_KEY": ("audit_key", str),
    "CDS_AUDIT_WRITE": ("audit_write", AuditWrite),
    "CDS_AUDIT_PRACTITIONER": ("audit_practitioner", PractitionerRecord),
    "CDS_DASHBOARD_TOKEN": ("dashboard_token", str),
    "CDS_SILENT": ("silent", _bool),
    "CDS_APP_THREADS": ("app_threads", int),
    "CDS_BODY_READ_TIMEOUT_S": ("body_read_timeout_s", float),
    "CDS_HEADER_READ_TIMEOUT_MS": ("header_read_timeout_ms", int),
}

_THRESHOLD_PREFIX = "CDS_THRESHOLD_"  # e.g. CDS_THRESHOLD_ELDERLY_AGE=70


_POSITIVE = ("fhir_budget_seconds", "fhir_max_pages", "fhir_max_response_bytes", "max_body_bytes", "max_orders",
             "jwt_max_lifetime_seconds", "app_threads", "body_read_timeout_s", "header_read_timeout_ms")  # fmt: skip
_ENV_FOR = {attr: name for name, (attr, _) in _ENVIRONMENT.items()}


@functools.cache
def _adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Settings)  # pydantic validates the whole object: types, enums, nested thresholds


def load_settings(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """One validated Settings object from the environment, then explicit overrides (field names).

    Raises ValueError with one line naming the variable, what is wrong and an example; never the value."""
    from pydantic import ValidationError

    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for name, (attr, parse) in _ENVIRONMENT.items():
        if environ.get(name, "") != "":
            raw[attr] = parse(environ[name]) if parse is _csv else environ[name].strip()
    thresholds = {
        threshold.name: environ[_THRESHOLD_PREFIX + threshold.name.upper()].strip()
        for threshold in dataclasses.fields(Thresholds)
        if environ.get(_THRESHOLD_PREFIX + threshold.name.upper(), "") != ""
    }
    if thresholds:
        raw["thresholds"] = thresholds
    for key, value in (overrides or {}).items():
        raw[key] = dataclasses.asdict(value) if isinstance(value, Thresholds) else value
    try:
        settings: Settings = _adapter().validate_python(raw)
    except ValidationError as exc:
        raise ValueError(_explain(exc.errors()[0])) from None
    for attr in _POSITIVE:
        if getattr(settings, attr) <= 0:
            default = getattr(Settings(), attr)
            raise ValueError(f"{_ENV_FOR.get(attr, attr)}: must be positive, for example {default}")
    return settings


def _explain(error: Any) -> str:
    """ "CDS_THRESHOLD_ELDERLY_AGE: Input should be a valid integer, for example 65" (never the value)."""
    loc = [str(part) for part in error.get("loc", ())]
    if len(loc) >= 2 and loc[0] == "thresholds":
        variable = _THRESHOLD_PREFIX + loc[1].upper()
        example = getattr(Thresholds(), loc[1], None)
    else:
        variable = _ENV_FOR.get(loc[0], loc[0]) if loc else "settings"
        example = getattr(Settings(), loc[0], None) if loc else None
    message = str(error.get("msg", "invalid")).split(",")[0]
    if isinstance(example, enum.Enum):
        example = example.value
    return f"{variable}: {message}" + (f", for example {example}" if example not in (None, "", ()) else "")
