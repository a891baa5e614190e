"""Hostile input: thousands of generated requests, and not one answer is a 5xx.

schemathesis generates requests from the OpenAPI document (valid and invalid), against the app in
process; hypothesis attacks the request parser, the record builder and the rules directly."""

from __future__ import annotations

import copy
import json

import pytest
import schemathesis
from conftest import SELECT, load_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.protocol import CdsError
from cds_service.protocol.fhir import decode_hook_request

FAST = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _app_for_schemathesis():
    import tempfile

    from cds_service import create_app

    database = tempfile.mkdtemp(prefix="cds-schemathesis-")
    return create_app({"database_url": f"sqlite:///{database}/cds.sqlite3", "auth": "off", "audit_write": "inline"})


schema = schemathesis.openapi.from_wsgi("/openapi.json", _app_for_schemathesis())


@schema.parametrize()
@settings(FAST, max_examples=400)
def test_no_generated_request_gets_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
        assert response.json()["resourceType"] == "OperationOutcome"


# --- JSON of any shape -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
CODE = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["G83.4", "M54.50", "Z85.3", "8310-5", "72148", "R33.9", "Ⅿ54.5", "\u0000", ""]),
)
DATE = st.one_of(
    st.none(),
    st.text(max_size=25),
    st.integers(),
    st.sampled_from(
        [
            "2026-05-30",
            "2026-05",
            "2026",
            "2026-13-45",
            "2026-05-30T10:00:00",
            "2026-05-30T10:00:00Z",
            "yesterday",
            "0000-00-00",
            "9999-12-31T23:59:59+14:00",
        ]
    ),
)


@settings(FAST, max_examples=500)
@given(st.binary(max_size=300))
def test_request_parser_accepts_or_refuses_any_bytes(body):
    try:
        decode_hook_request(body)
    except CdsError as error:
        assert error.status == 400


@settings(FAST, max_examples=300)
@given(st.text(max_size=200).map(str.encode))
def test_request_parser_accepts_or_refuses_any_text(body):
    try:
        decode_hook_request(body)
    except CdsError as error:
        assert error.status == 400


@st.composite
def odd_condition(draw):
    resource = {
        "resourceType": draw(
            st.sampled_from(
                [
                    "Condition",
                    "Observation",
                    "ServiceRequest",
                    "Procedure",
                    "Device",
                    "Patient",
                    "Encounter",
                    "OperationOutcome",
                    "",
                ]
            )
        )
    }
    for name, values in [
        ("id", st.one_of(st.text(max_size=8), st.integers())),
        ("subject", st.one_of(JSON, st.just({"reference": "Patient/pt-acute-lbp"}))),
        (
            "code",
            st.one_of(
                JSON,
                st.builds(
                    lambda s, c: {"coding": [{"system": s, "code": c}]},
                    st.sampled_from(
                        ["http://hl7.org/fhir/sid/icd-10-cm", "http://loinc.org", "http://snomed.info/sct", "urn:x"]
                    ),
                    CODE,
                ),
            ),
        ),
        ("clinicalStatus", JSON),
        ("verificationStatus", JSON),
        ("status", st.one_of(st.text(max_size=10), JSON)),
        ("onsetDateTime", DATE),
        ("recordedDate", DATE),
        ("effectiveDateTime", DATE),
        ("birthDate", DATE),
        (
            "valueQuantity",
            st.one_of(
                JSON,
                st.builds(
                    lambda v, u: {"value": v, "unit": u},
                    st.one_of(st.floats(allow_nan=False), st.text(max_size=5)),
                    st.sampled_from(["Cel", "[degF]", "%", "", None]),
                ),
            ),
        ),
        ("bodySite", JSON),
        ("safety", JSON),
        ("patient", JSON),
        ("performedDateTime", DATE),
    ]:
        if draw(st.booleans()):
            resource[name] = draw(values)
    return resource


@pytest.fixture(scope="module")
def module_client(tmp_path_factory):
    from cds_service import create_app

    database = tmp_path_factory.mktemp("hostile") / "cds.sqlite3"
    return create_app({"database_url": f"sqlite:///{database}", "auth": "off", "audit_write": "inline"}).test_client()


@settings(FAST, max_examples=400)
@given(
    st.lists(odd_condition(), max_size=6),
    st.sampled_from(["conditions", "observations", "procedures", "devices", "patient"]),
)
def test_record_builder_never_fails_on_odd_resources(module_client, resources, key):
    request = load_request("acute-lbp-defer")
    if key == "patient":
        request["prefetch"]["patient"] = resources[0] if resources else None
    else:
        request["prefetch"][key]["entry"] = [{"resource": r} for r in resources]
    response = module_client.post(SELECT, json=request)
    assert response.status_code in (200, 400, 412), response.get_json()  # an OperationOutcome value means "missing"


@settings(FAST, max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["patient", "conditions", "observations", "serviceRequests", "procedures", "devices", "extra"]),
        JSON,
        max_size=6,
    )
)
def test_any_prefetch_shape_gets_a_clear_answer(module_client, prefetch):
    request = load_request("acute-lbp-defer")
    request["prefetch"] = prefetch
    assert module_client.post(SELECT, json=request).status_code in (200, 400, 412)


@settings(FAST, max_examples=300)
@given(JSON, JSON)
def test_any_draft_order_shape_gets_a_clear_answer(module_client, code, reasons):
    request = load_request("acute-lbp-defer")
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order["code"], order["reasonCode"] = code, reasons
    assert module_client.post(SELECT, json=request).status_code in (200, 400)


# --- the safety property over random records ----------------------------------------------------------

RED_FLAGS = [
    ("http://hl7.org/fhir/sid/icd-10-cm", c)
    for c in ("G83.4", "R33.9", "M21.371", "Z85.3", "C79.51", "M46.26", "Z94.0", "M81.0", "S32.010A", "G06.1")
]


@settings(FAST, max_examples=300)
@given(
    st.sampled_from(RED_FLAGS),
    st.sampled_from(["2026-05-31", "2026-05-20", None]),
    st.lists(odd_condition(), max_size=3),
    st.sampled_from(["acute-lbp-defer", "subacute-no-conservative-care", "repeat-imaging"]),
)
def test_an_active_red_flag_is_never_deferred_whatever_else_is_in_the_record(
    module_client, flag, onset, noise, scenario
):
    request = load_request(scenario)
    patient_id = request["context"]["patientId"]
    red_flag = {
        "resourceType": "Condition",
        "id": "red-flag",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": flag[0], "code": flag[1]}]},
    }
    if onset:
        red_flag["onsetDateTime"] = onset
    entries = request["prefetch"]["conditions"]["entry"]
    entries += [
        {"resource": {**r, "id": f"noise-{i}"}} for i, r in enumerate(noise) if r.get("resourceType") == "Condition"
    ]
    entries.append({"resource": red_flag})
    response = module_client.post(SELECT, json=request)
    if response.status_code == 400:
        return  # the noise was invalid FHIR: refused as a whole, nothing deferred
    assert response.status_code == 200
    topics = [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]
    assert topics and "defer-imaging" not in topics, (flag, topics)  # advice is shown, and it is not deferral


# --- sizes ---------------------------------------------------------------------------------------------


def test_bodies_near_and_over_the_limit(make_app):
    limit = 256 * 1024
    client = make_app(max_body_bytes=limit).test_client()
    request = load_request("acute-lbp-defer")
    request["extension"] = {"padding": ""}
    request["extension"]["padding"] = "x" * (limit - len(json.dumps(request).encode()) - 1)
    near = json.dumps(request).encode()
    assert len(near) < limit
    assert client.post(SELECT, data=near, content_type="application/json").status_code == 200
    request["extension"]["padding"] += "x" * 10
    over = json.dumps(request).encode()
    assert len(over) > limit
    response = client.post(SELECT, data=over, content_type="application/json")
    assert response.status_code == 413 and response.get_json()["resourceType"] == "OperationOutcome"


def test_a_huge_array_is_answered_with_a_400_naming_it(client):
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"] += [{}] * 100_000
    response = client.post(SELECT, json=request)
    assert response.status_code == 400  # at most CDS_MAX_ORDERS (50) draft orders are evaluated
    assert response.get_json()["issue"][0]["expression"] == ["context.draftOrders.entry"]


def test_unicode_in_codes_and_ids_is_answered(client):
    request = load_request("acute-lbp-defer")
    request["context"]["draftOrders"]["entry"][0]["resource"]["code"]["coding"][0]["code"] = "７２１４８"
    request["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["coding"][0]["code"] = "M54.5\u200b0"
    request["hookInstance"] = "🦴" * 50
    assert client.post(SELECT, json=request).status_code == 200


# --- every value the service reads, one at a time -------------------------------------------------

MUTATED = ["cauda-equina", "device-mr-conditional", "medication-failed-care", "prior-imaging-study"]


def _positions(node, path=()):
    """The path of every value inside `node` (objects and lists included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,)
            yield from _positions(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield path + (index,)
            yield from _positions(value, path + (index,))


@pytest.mark.parametrize("name", MUTATED)
def test_any_value_in_the_draft_orders_or_prefetch_replaced_or_removed_gets_a_clear_answer(module_client, name):
    """Each value in the draft orders and the prefetch (objects and lists too), one at a time,
    replaced by [], {} or 5, or removed: never a 5xx. Generated JSON missed what this found: an odd
    type one level inside a coding or an extension (a status code, a coding's system, a url)."""
    base = load_request(name)
    for entry in base["context"]["draftOrders"]["entry"]:  # so that the rating's extension code runs too
        entry["resource"]["extension"] = [{"url": "http://example.org/site-extension", "valueString": "kept"}]
    failures = []
    for path in [("context", "draftOrders", *p) for p in _positions(base["context"]["draftOrders"])] + [
        ("prefetch", *p) for p in _positions(base["prefetch"])
    ]:
        for value in ([], {}, 5, "remove"):
            request = copy.deepcopy(base)
            parent = request
            for step in path[:-1]:
                parent = parent[step]
            if value == "remove":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            status = module_client.post(SELECT, json=request).status_code
            if status >= 500:
                failures.append(("/".join(map(str, path)), value))
    assert not failures, failures[:10]
