from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import pytest

from cds_service import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SCENARIOS = json.loads((FIXTURES / "scenarios.json").read_text())
CLOCK = datetime.fromisoformat(SCENARIOS["clock"])
SELECT = "/cds-services/lumbar-mri-order-select"
SIGN = "/cds-services/lumbar-mri-order-sign"


def load_request(name: str) -> dict:
    return copy.deepcopy(_cached(FIXTURES / "requests" / f"{name}.json"))


_cache: dict[Path, dict] = {}


def _cached(path: Path) -> dict:
    if path not in _cache:
        _cache[path] = json.loads(path.read_text())
    return _cache[path]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tests never depend on the developer's CDS_* environment."""
    import os

    for name in list(os.environ):
        if name.startswith("CDS_") and not name.startswith("CDS_TEST_"):  # CDS_TEST_*: the test harness's own
            monkeypatch.delenv(name)


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cds.sqlite3'}"


@pytest.fixture
def make_app(database_url):
    def factory(**config):
        config.setdefault("database_url", database_url)
        config.setdefault("auth", "off")  # tests of authentication turn it on (tests/test_authentication.py)
        config.setdefault("audit_write", "inline")  # deterministic; the background writer has its own tests
        config.setdefault("clock", lambda: CLOCK)
        if config["auth"] == "required":  # what a deployment with authentication must configure
            config.setdefault("public_base_url", "http://localhost")
            config.setdefault("audit_key", "test-audit-key")
        return create_app(config)

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
