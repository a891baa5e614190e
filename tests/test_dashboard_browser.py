"""The served dashboard in a real browser (Playwright for Python driving Debian's chromium).

Seeded audit and feedback rows must show as the expected numbers, charts must have the right number
of bars, the login must be required, and no patient identifier may appear in the page's text.
Screenshots are saved under var/ for review. Skipped, saying why, where chromium is absent
(.ci/run installs it)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest
from conftest import ROOT
from helpers import issue_cards
from servers import served_stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
TOKEN = "browser-dashboard-token"


@pytest.fixture
def served_dashboard(tmp_path):
    from cds_service.storage import Store

    database = f"sqlite:///{tmp_path}/cds.sqlite3"
    store = Store(database)
    store.migrate()
    for index in range(3):
        issue_cards(store, f"browser-card-{index}", issuer=None)  # three defer-imaging cards
    now = datetime.now(UTC)
    store.add_feedback("lumbar-mri-order-select", [{
        "raw": {"n": 1}, "card_uuid": "browser-card-0", "outcome": "overridden", "accepted_suggestions": None,
        "override_reason_system": "urn:lumbar-mri-cds:override-reason", "override_reason_code": "specialist-request",
        "override_reason_display": "Requested by a specialist", "user_comment": None, "outcome_timestamp": now,
        "received_at": now, "issuer": None, "tenant": None}])  # fmt: skip
    env = {"CDS_AUTH": "off", "CDS_DATABASE_URL": database, "WEB_CONCURRENCY": "1", "CDS_DASHBOARD_TOKEN": TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}  # fmt: skip
    with served_stack(env, tmp_path / "serve.log") as base:
        yield base


def test_the_dashboard_in_a_browser(served_dashboard):
    from playwright.sync_api import sync_playwright

    shots = ROOT / "var"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(served_dashboard + "/dashboard")
        assert page.url.endswith("/dashboard/login")  # the login is required
        page.screenshot(path=str(shots / "dashboard-login.png"))
        page.fill("input[name=token]", TOKEN)
        page.click("button")
        page.wait_for_url(served_dashboard + "/dashboard")
        text = page.inner_text("body")
        assert "Consultations: 3" in text
        topics = page.locator("svg[aria-label='Cards shown by topic'] rect")
        assert topics.count() == 1  # one topic: defer-imaging
        rules = page.locator("svg[aria-label='Override rate per rule'] g.bar")
        assert rules.count() == 1 and "100.0 %" in (rules.first.text_content() or "")  # 1 of 1 answered: overridden
        assert "Requested by a specialist (specialist-request): 1" in text
        assert "MRN" not in text and "pt-" not in text and "Patient/" not in text
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
        page.goto(served_dashboard + "/dashboard/rules")
        assert page.locator("tr#R-01").count() == 1
        page.screenshot(path=str(shots / "dashboard-rules.png"), full_page=True)
        browser.close()
