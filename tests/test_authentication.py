"""CDS client authentication (CDS Hooks 2.0 JWT): an attack corpus, one case per test."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
import responses
from conftest import ROOT, SELECT, load_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers import BASE, EC_KEY, ISS, issue_cards, jwk, token

from cds_service import create_app
from cds_service.security import TrustError, load_trusted_issuers

OTHER_ISS, JKU_ISS = "https://other.example.org", "https://jku-ehr.example.org"
JKU = "https://jku-ehr.example.org/.well-known/jwks.json"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JKU_KEY = ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def issuers_file(tmp_path):
    path = tmp_path / "issuers.json"
    path.write_text(
        json.dumps(
            {
                "issuers": [
                    {"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1", "ES384"), jwk(RSA_KEY, "rsa-1", "RS384")]}},
                    {"iss": JKU_ISS, "jku": [JKU]},
                ]
            }
        )
    )
    return path


@pytest.fixture
def secure(make_app, issuers_file):
    return make_app(auth="required", trusted_issuers=issuers_file)


@pytest.fixture
def client(secure):
    return secure.test_client()


def call(client, bearer, path=SELECT, body=None):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    return client.post(path, json=body or load_request("acute-lbp-defer"), headers=headers)


def assert_refused(response, caplog=None, reason=None):
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["issue"][0]["diagnostics"] == "Authentication failed"  # nothing an attacker can use
    if caplog is not None and reason is not None:
        assert reason in caplog.text


def test_valid_es384_token_is_accepted(client):
    assert call(client, token()).status_code == 200


def test_valid_rs384_token_is_accepted(client):
    assert call(client, token(key=RSA_KEY, alg="RS384", kid="rsa-1")).status_code == 200


def test_sandbox_clock_skew_is_tolerated(client):
    assert call(client, token(iat=int(time.time()) + 1)).status_code == 200  # the sandbox's iat runs up to 0.5 s ahead


def test_expired_token(client, caplog):
    assert_refused(call(client, token(iat=int(time.time()) - 900, exp=int(time.time()) - 600)), caplog, "expired")


def test_iat_too_far_in_the_future(client, caplog):
    assert_refused(
        call(client, token(iat=int(time.time()) + 600, exp=int(time.time()) + 900)), caplog, "iat in the future"
    )


def test_wrong_audience(client, caplog):
    assert_refused(
        call(client, token(aud=BASE + "/cds-services/another-service")),
        caplog,
        "aud is not this service's URL: expected 'http://localhost/cds-services/lumbar-mri-order-select'",
    )


def test_discovery_audience_is_the_discovery_url(client):
    assert (
        client.get(
            "/cds-services", headers={"Authorization": f"Bearer {token(aud=BASE + '/cds-services')}"}
        ).status_code
        == 200
    )
    refused = client.get("/cds-services", headers={"Authorization": f"Bearer {token()}"})
    assert_refused(refused)


def test_feedback_audience_is_the_feedback_url(client):
    issue_cards(client.application, "c1", issuer=ISS)
    body = {
        "feedback": [
            {
                "card": "c1",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-06-01T12:00:00Z",
                "overrideReason": {"userComment": "n/a"},
            }
        ]
    }
    path = SELECT + "/feedback"
    assert call(client, token(aud=BASE + path), path, body).status_code == 200
    assert_refused(call(client, token(), path, body))


def test_audience_behind_a_proxy_comes_from_the_public_base_url(make_app, issuers_file):
    client = make_app(
        auth="required", trusted_issuers=issuers_file, public_base_url="https://cds.hospital.org/mri"
    ).test_client()
    assert call(client, token(aud="https://cds.hospital.org/mri" + SELECT)).status_code == 200
    assert_refused(call(client, token()))


def test_unknown_issuer(client, caplog):
    assert_refused(call(client, token(iss=OTHER_ISS)), caplog, "unknown issuer")


def test_unknown_kid(client, caplog):
    assert_refused(call(client, token(kid="ec-2")), caplog, "unknown kid")


def test_alg_none(client, caplog):
    unsigned = jwt.encode(
        {"iss": ISS, "aud": BASE + SELECT, "iat": int(time.time()), "exp": int(time.time()) + 300, "jti": "x"},
        None,
        algorithm="none",
        headers={"kid": "ec-1"},
    )
    assert_refused(call(client, unsigned), caplog, "algorithm not allowed")


def test_hs384_signed_with_the_public_key(client, caplog):
    """Algorithm confusion: the public key used as an HMAC secret."""
    public_pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS384", "typ": "JWT", "kid": "ec-1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(
        json.dumps(
            {"iss": ISS, "aud": BASE + SELECT, "iat": int(time.time()), "exp": int(time.time()) + 300, "jti": "x"}
        ).encode()
    ).rstrip(b"=")
    import hashlib
    import hmac

    signature = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + payload, hashlib.sha384).digest()).rstrip(
        b"="
    )
    assert_refused(call(client, (header + b"." + payload + b"." + signature).decode()), caplog, "algorithm not allowed")


def test_rs384_header_with_the_ec_key(client, caplog):
    """Another confusion: the token names the RSA algorithm but the EC key's kid."""
    assert_refused(call(client, token(key=RSA_KEY, alg="RS384", kid="ec-1")), caplog, "key type does not match")


def test_tampered_payload(client, caplog):
    header, payload, signature = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["iss"] = ISS  # unchanged issuer, changed audience-independent claim
    claims["tenant"] = "another-hospital"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert_refused(call(client, f"{header}.{forged}.{signature}"), caplog, "invalid token")


def test_replayed_jti(client, caplog):
    once = token()
    assert call(client, once).status_code == 200
    assert_refused(call(client, once), caplog, "jti replayed")


def test_replayed_jti_across_two_instances_sharing_the_store(make_app, issuers_file):
    first = make_app(auth="required", trusted_issuers=issuers_file).test_client()
    second = make_app(auth="required", trusted_issuers=issuers_file).test_client()
    once = token()
    assert call(first, once).status_code == 200
    assert_refused(call(second, once))


def test_missing_authorization(client, caplog):
    assert_refused(call(client, None), caplog, "no bearer token")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token abc"])
def test_malformed_authorization(client, header):
    assert_refused(client.post(SELECT, json=load_request("acute-lbp-defer"), headers={"Authorization": header}))


@pytest.mark.parametrize("claim", ["exp", "iat", "jti"])
def test_required_claims(client, caplog, claim):
    assert_refused(call(client, token(**{claim: None})), caplog, f"missing claim {claim}")


def test_overlong_token_lifetime(client, caplog):
    assert_refused(call(client, token(exp=int(time.time()) + 7 * 24 * 3600)), caplog, "lifetime too long")


def test_preflight_health_and_openapi_need_no_token(client):
    assert client.options(SELECT, headers={"Origin": "https://sandbox.cds-hooks.org"}).status_code == 204
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_the_token_never_reaches_the_logs(client, caplog):
    secret = token(iss=OTHER_ISS)
    call(client, secret)
    call(client, token(kid="nope"))
    assert secret not in caplog.text and secret.split(".")[2] not in caplog.text


# --- JWK Sets fetched from jku ---------------------------------------------------------------------


def jku_token(**kwargs):
    return token(
        key=JKU_KEY, kid=kwargs.pop("kid", "jku-1"), iss=JKU_ISS, headers={"jku": kwargs.pop("jku", JKU)}, **kwargs
    )


def test_jku_jwk_set_is_fetched_once_and_cached(client):
    with responses.RequestsMock() as mock:
        fetch = mock.get(JKU, json={"keys": [jwk(JKU_KEY, "jku-1", "ES384")]})
        assert call(client, jku_token()).status_code == 200
        assert call(client, jku_token()).status_code == 200
        assert fetch.call_count == 1


def test_jku_not_on_the_issuers_list_is_never_fetched(client, caplog):
    with responses.RequestsMock() as mock:
        assert_refused(call(client, jku_token(jku="https://attacker.example.net/jwks.json")), caplog, "jku not allowed")
        assert len(mock.calls) == 0


def test_unknown_kid_refreshes_the_jwk_set_at_most_once_per_cooldown(client):
    with responses.RequestsMock() as mock:
        fetch = mock.get(JKU, json={"keys": [jwk(JKU_KEY, "jku-1", "ES384")]})
        call(client, jku_token())
        for _ in range(20):
            assert_refused(call(client, jku_token(kid=f"rotated-{uuid.uuid4()}")))
        assert fetch.call_count <= 2  # an unauthenticated caller cannot make us hammer the EHR


def test_jwk_set_redirect_is_not_followed(client):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JKU, status=302, headers={"Location": "http://169.254.169.254/keys"})
        internal = mock.get("http://169.254.169.254/keys", json={"keys": []})
        assert_refused(call(client, jku_token()))
        assert internal.call_count == 0


def test_oversized_jwk_set_is_refused(client):
    with responses.RequestsMock() as mock:
        mock.get(JKU, body=b'{"keys": [' + b" " * 100_000 + b"]}")
        assert_refused(call(client, jku_token()))


# --- configuration ------------------------------------------------------------------------------------


def test_required_auth_without_trusted_issuers_refuses_to_start(database_url):
    with pytest.raises(TrustError, match="CDS_TRUSTED_ISSUERS"):
        create_app({"database_url": database_url, "auth": "required"})


def test_auth_off_warns_at_every_start(database_url, caplog):
    create_app({"database_url": database_url, "auth": "off"})
    assert "CDS_AUTH=off" in caplog.text


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"iss": ISS}, "exactly one"),
        ({"iss": ISS, "jwks": {"keys": []}, "jku": [JKU]}, "exactly one"),
        ({"iss": ISS, "jku": ["http://plain.example.org/jwks.json"]}, "https"),
        ({"jku": [JKU]}, "'iss'"),
    ],
)
def test_bad_issuer_files_are_refused(tmp_path, entry, message):
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [entry]}))
    with pytest.raises(TrustError, match=message):
        load_trusted_issuers(path)


def test_the_sandbox_issuer_file_is_dev_only_and_not_a_default(make_app):
    path = ROOT / "config" / "sandbox-issuer.DEV-ONLY.json"
    issuers = load_trusted_issuers(path)
    assert [k.key_id for k in issuers["https://sandbox.cds-hooks.org"].keys.keys] == [
        "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
    ]
    assert "DEVELOPMENT ONLY" in path.read_text()
    from cds_service.configuration import load_settings

    assert load_settings({}).trusted_issuers is None
