"""Who may talk to the sidecar, as pure code: the caller check on a stream's gRPC metadata, the MAC
on the handed-over request state (every byte matters, keys rotate), the `sidecar` settings and the
secrets they name (every problem reported with its path, never a secret's value), the rule that
plaintext ext_proc listens only on loopback, and the rate-limited refusal log."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.launch import write_private
from gateway_extproc.runtime import build_context
from gateway_extproc.sidecar_auth.caller import METADATA_KEY, CallerCheck, Refusal
from gateway_extproc.sidecar_auth.guard import REFUSAL_LOG_INTERVAL_S, AuthStats
from gateway_extproc.sidecar_auth.seal import StateSeal
from gateway_extproc.sidecar_auth.settings import (
    SecretSource,
    SidecarAuthConfig,
    fresh_secrets,
    load_secrets,
    parse_sidecar_auth,
    plaintext_bind_problem,
)
from tests.sidecar_secrets import CALLER_TOKEN, ENV, STATE_KEY

MOCK = "http://127.0.0.1:9/v1"
TOKEN = CALLER_TOKEN.encode()
OTHER = b"another-deployments-token-0123456789abcdef"

# -- the caller check ----------------------------------------------------------------------------

CALLERS: list[tuple[str, Any, Refusal | None]] = [
    ("Envoy with the token", [(METADATA_KEY, CALLER_TOKEN)], None),
    (
        "the token among other metadata",
        [("traceparent", "00-x"), (METADATA_KEY, CALLER_TOKEN)],
        None,
    ),
    ("the token as bytes", [(METADATA_KEY, TOKEN)], None),
    ("no metadata at all", None, Refusal.MISSING),
    ("empty metadata", [], Refusal.MISSING),
    ("other metadata only", [("authorization", f"Bearer {CALLER_TOKEN}")], Refusal.MISSING),
    ("an empty token", [(METADATA_KEY, "")], Refusal.WRONG),
    ("another deployment's token", [(METADATA_KEY, OTHER.decode())], Refusal.WRONG),
    ("a prefix of the token", [(METADATA_KEY, CALLER_TOKEN[:-1])], Refusal.WRONG),
    ("the token and more", [(METADATA_KEY, CALLER_TOKEN + "x")], Refusal.WRONG),
    ("the token in another case", [(METADATA_KEY, CALLER_TOKEN.upper())], Refusal.WRONG),
    ("the token with spaces", [(METADATA_KEY, f" {CALLER_TOKEN}")], Refusal.WRONG),
    ("a wrong first value", [(METADATA_KEY, "x"), (METADATA_KEY, CALLER_TOKEN)], Refusal.WRONG),
    ("the key in another case", [(METADATA_KEY.upper(), CALLER_TOKEN)], Refusal.MISSING),
]


@pytest.mark.parametrize(
    ("metadata", "expected"), [c[1:] for c in CALLERS], ids=[c[0] for c in CALLERS]
)
def test_the_caller_check(metadata: Any, expected: Refusal | None) -> None:
    assert CallerCheck((TOKEN,)).refusal(metadata) is expected


def test_any_listed_token_is_accepted_for_rotation() -> None:
    check = CallerCheck((OTHER, TOKEN))
    assert check.refusal([(METADATA_KEY, CALLER_TOKEN)]) is None
    assert check.refusal([(METADATA_KEY, OTHER.decode())]) is None
    assert check.refusal([(METADATA_KEY, "x" * 43)]) is Refusal.WRONG


def test_without_tokens_tls_alone_authenticates() -> None:
    assert CallerCheck(()).refusal(None) is None


# -- the state MAC -------------------------------------------------------------------------------

KEY, OLD_KEY = STATE_KEY.encode(), b"a-retired-state-key-0123456789abcdefghij"
STATE = '{"v":1,"rid":"r-1","in":12,"id":{"u":"alice@example.com"},"b":{"c":[["eng","x",5,9]]}}'


def test_a_signed_state_verifies_and_the_mac_is_compact() -> None:
    seal = StateSeal((KEY,))
    mac = seal.sign(STATE)
    assert len(mac) == 43 and "=" not in mac  # 32 bytes, URL-safe base64 without padding
    assert seal.verify(STATE, mac)
    assert StateSeal((KEY,)).sign(STATE) == mac  # deterministic: any worker with the key


@given(position=st.integers(min_value=0, max_value=len(STATE) - 1), char=st.characters())
def test_any_change_to_the_state_fails_its_mac(position: int, char: str) -> None:
    seal = StateSeal((KEY,))
    mac = seal.sign(STATE)
    changed = STATE[:position] + char + STATE[position + 1 :]
    assert seal.verify(changed, mac) is (changed == STATE)


@pytest.mark.parametrize("text", ["\ud800", STATE + "\udfff"])
def test_a_lone_surrogate_in_the_state_or_the_mac_fails_without_raising(text: str) -> None:
    seal = StateSeal((KEY,))
    assert not seal.verify(text, seal.sign(STATE))
    assert not seal.verify(STATE, text)
    assert seal.verify(text, seal.sign(text))  # what the seal signs it verifies, whatever it is


@given(mac=st.text(max_size=60))
def test_no_other_string_is_the_mac(mac: str) -> None:
    seal = StateSeal((KEY,))
    assert seal.verify(STATE, mac) is (mac == seal.sign(STATE))


@pytest.mark.parametrize("mac", [None, "", "=", "!!!!", "é" * 43])
def test_a_missing_or_malformed_mac_fails(mac: str | None) -> None:
    assert not StateSeal((KEY,)).verify(STATE, mac)


def test_keys_rotate() -> None:
    signed_old = StateSeal((OLD_KEY,)).sign(STATE)
    assert StateSeal((KEY, OLD_KEY)).verify(STATE, signed_old)  # new key first, old still listed
    assert not StateSeal((KEY,)).verify(STATE, signed_old)  # old key removed
    assert StateSeal((KEY, OLD_KEY)).sign(STATE) == StateSeal((KEY,)).sign(STATE)
    with pytest.raises(ValueError):
        StateSeal(())


# -- settings ------------------------------------------------------------------------------------


def _auth(sidecar: dict[str, Any]) -> tuple[SidecarAuthConfig, list[str]]:
    problems: list[str] = []
    return parse_sidecar_auth(sidecar, problems), problems


def test_the_defaults_read_the_environment() -> None:
    config, problems = _auth({})
    assert problems == []
    assert config.caller_token == SecretSource(env="GATEWAY_SIDECAR_TOKEN")
    assert config.state_keys == SecretSource(env="GATEWAY_STATE_KEYS")
    assert config.tls is None
    secrets = load_secrets(config, ENV)
    assert secrets.caller_tokens == (TOKEN,) and secrets.state_keys == (KEY,)


SETTINGS_PROBLEMS: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"caller_token": {"env": "A", "file": "/b"}},
        ["sidecar.caller_token: set exactly one of env, file"],
    ),
    (
        {"caller_token": "x"},
        ["sidecar.caller_token: must be {env: NAME} or {file: PATH} (got 'x')"],
    ),
    (
        {"caller_token": {"env": ""}},
        ["sidecar.caller_token.env: must be a non-empty string (got '')"],
    ),
    (
        {"caller_token": {"envv": "A"}},
        [
            "sidecar.caller_token.envv: unknown key",
            "sidecar.caller_token: set exactly one of env, file",
        ],
    ),
    (
        {"caller_token": None},
        [
            "sidecar.caller_token: required unless sidecar.tls authenticates Envoy by its client "
            "certificate"
        ],
    ),
    ({"state_keys": {"file": 3}}, ["sidecar.state_keys.file: must be a non-empty string (got 3)"]),
    ({"tls": "yes"}, ["sidecar.tls: must be a mapping of cert_file, key_file, client_ca_file"]),
    (
        {"tls": {"cert_file": "/c", "key": "/k"}},
        [
            "sidecar.tls.key: unknown key",
            "sidecar.tls.key_file: must be a path (got None)",
            "sidecar.tls.client_ca_file: must be a path (got None)",
        ],
    ),
]


@pytest.mark.parametrize(("sidecar", "expected"), SETTINGS_PROBLEMS)
def test_settings_problems_are_reported_with_their_path(
    sidecar: dict[str, Any], expected: list[str]
) -> None:
    assert _auth(sidecar)[1] == expected


def test_tls_alone_may_authenticate_envoy() -> None:
    tls = {"cert_file": "/c", "key_file": "/k", "client_ca_file": "/ca"}
    config, problems = _auth({"caller_token": None, "tls": tls})
    assert problems == [] and config.caller_token is None


def test_settings_problems_join_the_rest_of_the_config() -> None:
    doc = merge(load_document(None), {"sidecar": {"caller_token": "x"}, "listner": {}})
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    assert "listner: unknown key" in info.value.problems
    assert "sidecar.caller_token: must be {env: NAME} or {file: PATH} (got 'x')" in (
        info.value.problems
    )


SECRET_PROBLEMS: list[tuple[dict[str, str], list[str]]] = [
    (
        {},
        [
            "sidecar.caller_token: environment variable GATEWAY_SIDECAR_TOKEN is not set "
            "(gatewayctl run makes one per run; the Helm chart keeps one in a Secret)",
            "sidecar.state_keys: environment variable GATEWAY_STATE_KEYS is not set (one key per "
            "line, the first signs)",
        ],
    ),
    (
        {"GATEWAY_SIDECAR_TOKEN": " \n", "GATEWAY_STATE_KEYS": STATE_KEY},
        [
            "sidecar.caller_token: environment variable GATEWAY_SIDECAR_TOKEN is not set "
            "(gatewayctl run makes one per run; the Helm chart keeps one in a Secret)"
        ],
    ),
    (
        {"GATEWAY_SIDECAR_TOKEN": "short-secret", "GATEWAY_STATE_KEYS": "tiny-key"},
        [
            "sidecar.caller_token: value 1 of environment variable GATEWAY_SIDECAR_TOKEN must be "
            "32 to 512 characters from A-Z a-z 0-9 . _ ~ + / = - (e.g. `openssl rand -base64 48`)",
            "sidecar.state_keys: key 1 of environment variable GATEWAY_STATE_KEYS is shorter than "
            "32 characters",
        ],
    ),
    (
        # `%` would start one of Envoy's header substitutions in the bootstrap
        {"GATEWAY_SIDECAR_TOKEN": CALLER_TOKEN + "\n%DOWNSTREAM_REMOTE_ADDRESS%-padding-pad"}
        | {"GATEWAY_STATE_KEYS": STATE_KEY},
        [
            "sidecar.caller_token: value 2 of environment variable GATEWAY_SIDECAR_TOKEN must be "
            "32 to 512 characters from A-Z a-z 0-9 . _ ~ + / = - (e.g. `openssl rand -base64 48`)"
        ],
    ),
]


@pytest.mark.parametrize(("environ", "expected"), SECRET_PROBLEMS)
def test_missing_or_weak_secrets_are_named_never_shown(
    environ: dict[str, str], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_secrets(SidecarAuthConfig(), environ)
    assert info.value.problems == expected
    for value in environ.values():
        for line in filter(None, (v.strip() for v in value.splitlines())):
            assert line not in str(info.value)


def test_secrets_from_files_one_per_line(tmp_path: Path) -> None:
    token, keys = tmp_path / "token", tmp_path / "keys"
    token.write_text(f"{CALLER_TOKEN}\n{OTHER.decode()}\n")
    keys.write_text(f"\n{STATE_KEY}\n  {OLD_KEY.decode()}  \n\n")
    config, problems = _auth(
        {"caller_token": {"file": str(token)}, "state_keys": {"file": str(keys)}}
    )
    assert problems == []
    secrets = load_secrets(config, {})
    assert secrets.caller_tokens == (TOKEN, OTHER)
    assert secrets.state_keys == (KEY, OLD_KEY)
    token.write_text("")
    keys.unlink()
    with pytest.raises(ConfigError) as info:
        load_secrets(config, {})
    assert info.value.problems == [
        f"sidecar.caller_token: file {token} is empty (gatewayctl run makes one per run; the Helm "
        "chart keeps one in a Secret)",
        f"sidecar.state_keys: cannot read file {keys}: No such file or directory (one key per "
        "line, the first signs)",
    ]


def test_tls_files_are_read_and_missing_ones_named(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("cert_file", "key_file", "client_ca_file")}
    for name, path in files.items():
        path.write_bytes(name.encode())
    config, problems = _auth({"caller_token": None, "tls": {k: str(v) for k, v in files.items()}})
    assert problems == []
    secrets = load_secrets(config, ENV)
    assert secrets.caller_tokens == ()
    assert secrets.tls is not None
    assert (secrets.tls.cert, secrets.tls.key, secrets.tls.client_ca) == (
        b"cert_file",
        b"key_file",
        b"client_ca_file",
    )
    files["key_file"].unlink()
    with pytest.raises(ConfigError) as info:
        load_secrets(config, ENV)
    assert info.value.problems == [
        f"sidecar.tls.key_file: cannot read {files['key_file']}: No such file or directory"
    ]


def test_the_sidecar_does_not_start_without_its_secrets(tmp_path: Path) -> None:
    """build_context: a missing credential is a start-up error, reported with the providers'."""
    config = tmp_path / "gateway.yaml"
    doc = {"mock_unconfigured_providers": False, "providers": {"openai": {}}}  # openai required
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        build_context(config, {}, None)
    problems = "\n".join(info.value.problems)
    assert "providers.openai.auth: no credential" in problems
    assert "sidecar.caller_token: environment variable GATEWAY_SIDECAR_TOKEN is not set" in problems
    assert "sidecar.state_keys: environment variable GATEWAY_STATE_KEYS is not set" in problems


def test_fresh_secrets_per_run_under_the_configured_names() -> None:
    first, second = fresh_secrets(SidecarAuthConfig()), fresh_secrets(SidecarAuthConfig())
    assert set(first) == {"GATEWAY_SIDECAR_TOKEN", "GATEWAY_STATE_KEYS"}
    assert first != second
    load_secrets(SidecarAuthConfig(), first)  # strong enough for the sidecar
    files = SidecarAuthConfig(
        caller_token=SecretSource(file="/t"), state_keys=SecretSource(file="/k")
    )
    assert fresh_secrets(files) == {}  # an operator's files are used as they are


def test_private_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "token inside")
    assert path.read_text() == "token inside"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- where plaintext ext_proc may listen ---------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "127.0.0.1:0",
        "127.9.9.9:1",
        "[::1]:50051",
        "localhost:50051",
        "unix:/run/x.sock",
    ],
)
def test_plaintext_listens_on_loopback_or_a_unix_socket(address: str) -> None:
    assert plaintext_bind_problem(address) is None


@pytest.mark.parametrize(
    "address", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "gateway.svc:50051", ":50051"]
)
def test_plaintext_never_listens_where_the_pod_network_reaches(address: str) -> None:
    problem = plaintext_bind_problem(address)
    assert problem is not None and address in problem and "sidecar.tls" in problem


# -- the refusal log -----------------------------------------------------------------------------


def test_refusals_are_all_counted_and_logged_at_most_once_a_minute() -> None:
    stats = AuthStats()
    logged = [stats.refused_stream(Refusal.MISSING, t) for t in (100.0, 100.5, 101.0)]
    assert logged == [1, 0, 0]
    assert stats.refused_stream(Refusal.WRONG, 100.0 + REFUSAL_LOG_INTERVAL_S) == 3
    assert stats.refused == {"missing": 3, "wrong": 1}
