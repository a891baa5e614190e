"""Settings from the environment."""

from __future__ import annotations

import pytest

from cds_service.configuration import AuthMode, ClientProfile, Thresholds, load_settings


def test_defaults_are_safe():
    settings = load_settings({})
    assert settings.auth is AuthMode.REQUIRED
    assert settings.fhir_server_allowlist == ()
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.cors_origins == ("*",)
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("var/cds.sqlite3")


def test_environment_is_parsed():
    settings = load_settings(
        {
            "CDS_FHIR_SERVER_ALLOWLIST": "https://a.example/fhir, https://b.example/r4",
            "CDS_CORS_ORIGINS": "https://sandbox.cds-hooks.org",
            "CDS_FHIR_BUDGET_SECONDS": "1.5",
            "CDS_AUTH": "off",
            "CDS_CLIENT_PROFILE": "generic",
            "CDS_THRESHOLD_ELDERLY_AGE": "70",
        }
    )
    assert settings.fhir_server_allowlist == ("https://a.example/fhir", "https://b.example/r4")
    assert settings.cors_origins == ("https://sandbox.cds-hooks.org",)
    assert settings.fhir_budget_seconds == 1.5
    assert settings.auth is AuthMode.OFF
    assert settings.client_profile is ClientProfile.GENERIC
    assert settings.thresholds.elderly_age == 70


@pytest.mark.parametrize(
    "name, value",
    [
        ("CDS_AUTH", "maybe"),
        ("CDS_FHIR_BUDGET_SECONDS", "soon"),
        ("CDS_CLIENT_PROFILE", "perhaps"),
        ("CDS_MAX_BODY_BYTES", "-1"),
        ("CDS_APP_THREADS", "0"),
        ("CDS_APP_THREADS", "many"),
        ("CDS_BODY_READ_TIMEOUT_S", "-5"),
        ("CDS_HEADER_READ_TIMEOUT_MS", "soon"),
    ],
)
def test_bad_values_stop_the_start_naming_the_variable(name, value):
    with pytest.raises(ValueError) as raised:
        load_settings({name: value})
    assert name in str(raised.value) or "positive" in str(raised.value)


def test_service_definitions_are_found_outside_a_checkout(monkeypatch, tmp_path):
    """After `pip install .` (the image) there is no hooks/ beside the package: the installed copy is used."""
    from cds_service import configuration

    monkeypatch.setattr(configuration, "PROJECT_ROOT", tmp_path)
    assert configuration.default_hooks_dir() == configuration.INSTALLED_HOOKS
    monkeypatch.setattr(configuration, "PROJECT_ROOT", configuration.Path(__file__).resolve().parent.parent)
    assert configuration.default_hooks_dir().name == "hooks"


TYPED = ["CDS_AUTH", "CDS_FHIR_BUDGET_SECONDS", "CDS_FHIR_MAX_PAGES", "CDS_FHIR_MAX_RESPONSE_BYTES", "CDS_MAX_BODY_BYTES",
         "CDS_MAX_ORDERS", "CDS_CLIENT_PROFILE", "CDS_JWT_LEEWAY_SECONDS", "CDS_JWT_MAX_LIFETIME_SECONDS",
         "CDS_AUDIT_WRITE", "CDS_SILENT"]  # fmt: skip


@pytest.mark.parametrize(
    "name", TYPED + ["CDS_THRESHOLD_" + f.name.upper() for f in __import__("dataclasses").fields(Thresholds)]
)
def test_every_bad_value_is_one_line_naming_the_variable_and_an_example_never_the_value(name):
    with pytest.raises(ValueError) as raised:
        load_settings({name: "Canary O'Value"})
    message = str(raised.value)
    assert "\n" not in message and message.startswith(name + ": ") and "for example" in message
    assert "Canary" not in message


def test_the_served_stack_settings_are_read_with_the_others():
    settings = load_settings(
        {"CDS_APP_THREADS": "2", "CDS_BODY_READ_TIMEOUT_S": "4.5", "CDS_HEADER_READ_TIMEOUT_MS": "900"}
    )
    assert (settings.app_threads, settings.body_read_timeout_s, settings.header_read_timeout_ms) == (2, 4.5, 900)
    assert (load_settings({}).app_threads, load_settings({}).body_read_timeout_s) == (8, 10.0)
