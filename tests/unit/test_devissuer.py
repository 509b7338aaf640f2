"""The local development issuer: key pair created once, JWKS and kid, minted tokens that verify
with PyJWT, and `gatewayctl token`."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway_extproc.identity import devissuer
from gateway_extproc.identity.devissuer import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    JWKS_FILE,
    KEY_FILE,
    DevIssuer,
    DevIssuerError,
    add_token_command,
    cmd_token,
    ensure_dev_issuer,
)
from gateway_extproc.identity.model import ClaimMapping, IssuerConfig

NOW = 1_760_000_000.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify(issuer_dir: Path, token: str, **options: Any) -> dict[str, Any]:
    """Verify `token` with PyJWT against the issuer's jwks.json only."""
    jwks = jwt.PyJWKSet.from_dict(json.loads((issuer_dir / JWKS_FILE).read_text()))
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [k for k in jwks.keys if k.key_id == kid]
    required: Any = {"require": ["exp", "iat", "nbf", "iss", "aud", "sub"], **options}
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=DEV_AUDIENCE,
        issuer=DEV_ISSUER,
        options=required,
    )
    return claims


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return ensure_dev_issuer(tmp_path / "dev-issuer")


# --- the key pair ------------------------------------------------------------------------------


def test_first_run_creates_a_private_key_0600_and_a_jwks(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "dev-issuer"
    issuer = ensure_dev_issuer(directory)
    assert sorted(p.name for p in directory.iterdir()) == [KEY_FILE, JWKS_FILE]  # no temp files
    assert mode(directory / KEY_FILE) == 0o600
    assert mode(directory) == 0o700
    key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert issuer.jwks_path == directory / JWKS_FILE
    assert issuer.key_path == directory / KEY_FILE
    assert "key=" not in repr(issuer) and "PRIVATE" not in repr(issuer)


def test_key_is_created_once_and_reused(tmp_path: Path) -> None:
    first = ensure_dev_issuer(tmp_path)
    pem, jwks = (tmp_path / KEY_FILE).read_bytes(), (tmp_path / JWKS_FILE).read_bytes()
    jwks_mtime = (tmp_path / JWKS_FILE).stat().st_mtime_ns
    second = ensure_dev_issuer(tmp_path)
    assert second.kid == first.kid
    assert (tmp_path / KEY_FILE).read_bytes() == pem
    assert (tmp_path / JWKS_FILE).read_bytes() == jwks
    assert (tmp_path / JWKS_FILE).stat().st_mtime_ns == jwks_mtime  # not rewritten
    token = first.mint("alice@example.com", [], None, 60, {}, time.time())
    assert verify(tmp_path, token)["sub"] == "alice@example.com"  # the old key verifies


def test_missing_jwks_is_rewritten_from_the_key(tmp_path: Path) -> None:
    first = ensure_dev_issuer(tmp_path)
    original = (tmp_path / JWKS_FILE).read_text()
    (tmp_path / JWKS_FILE).unlink()
    assert ensure_dev_issuer(tmp_path).kid == first.kid
    assert (tmp_path / JWKS_FILE).read_text() == original
    (tmp_path / JWKS_FILE).write_text('{"keys": []}')
    ensure_dev_issuer(tmp_path)
    assert (tmp_path / JWKS_FILE).read_text() == original


def test_loose_key_permissions_are_tightened(tmp_path: Path) -> None:
    ensure_dev_issuer(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    ensure_dev_issuer(tmp_path)
    assert mode(tmp_path / KEY_FILE) == 0o600


def test_losing_the_creation_race_loads_the_winner(tmp_path: Path) -> None:
    winner = ensure_dev_issuer(tmp_path)
    key = devissuer._create_key(tmp_path / KEY_FILE)  # as if another process created it first
    assert key.private_numbers() == winner.key.private_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE, JWKS_FILE]


@pytest.mark.parametrize("kind", ["garbage", "rsa", "p384"])
def test_unusable_key_file(tmp_path: Path, kind: str) -> None:
    if kind == "garbage":
        pem = b"not a key"
    else:
        other = (
            rsa.generate_private_key(65537, 2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP384R1())
        )
        pem = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    (tmp_path / KEY_FILE).write_bytes(pem)
    with pytest.raises(DevIssuerError, match=KEY_FILE):
        ensure_dev_issuer(tmp_path)


def test_jwks_and_kid_is_the_rfc7638_thumbprint(issuer: DevIssuer) -> None:
    (jwk,) = json.loads(issuer.jwks_path.read_text())["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert "d" not in jwk  # public only
    # RFC 7638 section 3: required members in lexicographic order, no whitespace, SHA-256
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (jwk["x"], jwk["y"])  # noqa: UP031
    digest = hashlib.sha256(canonical.encode()).digest()
    assert jwk["kid"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == issuer.kid
    numbers = issuer.key.public_key().public_numbers()
    padded = jwk["x"] + "=" * (-len(jwk["x"]) % 4)
    assert int.from_bytes(base64.urlsafe_b64decode(padded), "big") == numbers.x
    assert len(base64.urlsafe_b64decode(padded)) == 32


def test_issuer_config(issuer: DevIssuer) -> None:
    assert issuer.issuer_config() == IssuerConfig(
        name="dev",
        issuer="http://gateway.local/dev-issuer",
        audiences=("llm-gateway",),
        algorithms=("ES256",),
        jwks_file=str(issuer.jwks_path),
    )
    config = issuer.issuer_config(["cost_center"])
    assert config.claims == ClaimMapping(attributes={"cost_center": "cost_center"})


# --- minting -----------------------------------------------------------------------------------


def test_user_token_verifies_and_carries_the_claims(issuer: DevIssuer) -> None:
    now = time.time()
    token = issuer.mint(
        user="alice@example.com",
        groups=["eng", "ml-team"],
        service=None,
        ttl_s=3600,
        attributes={"cost_center": "42"},
        now=now,
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": issuer.kid, "typ": "JWT"}
    claims = verify(issuer.directory, token)
    assert claims == {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": "alice@example.com",
        "email": "alice@example.com",
        "email_verified": True,  # the issuer vouches for the address it was given
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 3600,
        "groups": ["eng", "ml-team"],
        "cost_center": "42",
    }


def test_service_token_has_client_id_and_no_email(issuer: DevIssuer) -> None:
    token = issuer.mint(None, [], "ci-runner", 60, {}, time.time())
    claims = verify(issuer.directory, token)
    assert claims["client_id"] == claims["sub"] == "ci-runner"
    assert "email" not in claims
    assert claims["groups"] == []


def test_expiry_follows_now_and_ttl(issuer: DevIssuer) -> None:
    token = issuer.mint("a@x", [], None, 5, {}, NOW + 0.9)
    claims = verify(issuer.directory, token, verify_exp=False, verify_iat=False)
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (int(NOW), int(NOW), int(NOW) + 5)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(issuer.directory, token)


def test_a_token_from_another_key_does_not_verify(tmp_path: Path, issuer: DevIssuer) -> None:
    other = ensure_dev_issuer(tmp_path / "other")
    token = other.mint("a@x", [], None, 60, {}, time.time())
    with pytest.raises(ValueError):  # no key with that kid in this issuer's JWKS
        verify(issuer.directory, token)


@pytest.mark.parametrize(
    ("user", "service", "ttl", "groups", "attributes", "message"),
    [
        ("a@x", "ci", 60, [], {}, "exactly one of a user or a service"),
        (None, None, 60, [], {}, "exactly one of a user or a service"),
        ("", None, 60, [], {}, "non-empty name"),
        (None, " ci", 60, [], {}, "non-empty name"),
        ("a@x", None, 0, [], {}, "positive number of seconds"),
        ("a@x", None, 60, ["eng", ""], {}, "groups must be non-empty names"),
        ("a@x", None, 60, [], {"iss": "evil", "exp": "1"}, "standard claims: exp, iss"),
        (None, "ci", 60, [], {"email": "root@x"}, "standard claims: email"),
    ],
)
def test_mint_rejects(
    issuer: DevIssuer,
    user: str | None,
    service: str | None,
    ttl: int,
    groups: list[str],
    attributes: dict[str, str],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        issuer.mint(user, groups, service, ttl, attributes, NOW)


# --- gatewayctl token --------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gatewayctl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_token_command(sub)
    return parser.parse_args(["token", *argv])


def test_cmd_token_prints_just_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(
        [
            *("--user", "alice@example.com", "--group", "eng", "--group", "ml-team"),
            *("--ttl", "120", "--attr", "cost_center=42", "--attr", "note=a=b"),
            *("--dir", str(tmp_path)),
        ]
    )
    assert args.func is cmd_token
    assert cmd_token(args) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1
    claims = verify(tmp_path, out.strip())
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["eng", "ml-team"]
    assert (claims["cost_center"], claims["note"]) == ("42", "a=b")
    assert claims["exp"] - claims["iat"] == 120


def test_cmd_token_for_a_service_with_the_default_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_token(parse(["--service", "ci-runner", "--dir", str(tmp_path)])) == 0
    claims = verify(tmp_path, capsys.readouterr().out.strip())
    assert (claims["client_id"], claims["groups"]) == ("ci-runner", [])
    assert "email" not in claims
    assert claims["exp"] - claims["iat"] == 3600


def test_cmd_token_default_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_RUN_DIR", raising=False)
    assert cmd_token(parse(["--user", "a@x"])) == 0
    verify(tmp_path / ".run" / "dev-issuer", capsys.readouterr().out.strip())
    monkeypatch.setenv("GATEWAY_RUN_DIR", str(tmp_path / "elsewhere"))
    assert cmd_token(parse(["--user", "a@x"])) == 0
    verify(tmp_path / "elsewhere" / "dev-issuer", capsys.readouterr().out.strip())


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "one of the arguments --user --service is required"),
        (["--user", "a@x", "--service", "ci"], "not allowed with argument"),
        (["--user", "a@x", "--ttl", "0"], "argument --ttl: must be a positive number"),
        (["--user", "a@x", "--ttl", "soon"], "argument --ttl: must be a positive number"),
        (["--user", "a@x", "--attr", "cost_center"], "argument --attr: must be NAME=VALUE"),
        (["--user", "a@x", "--attr", "=42"], "argument --attr: must be NAME=VALUE"),
        (["--user", "a@x", "--attr", "exp=1"], "exp is a standard claim"),
    ],
)
def test_invalid_arguments_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_invalid_values_reported_by_cmd_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_token(parse(["--user", "a@x", "--group", "", "--dir", str(tmp_path)])) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gatewayctl token: groups must be non-empty names")


def test_unusable_directory_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cmd_token(parse(["--user", "a@x", "--dir", str(blocker / "dev-issuer")])) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gatewayctl token: ")
