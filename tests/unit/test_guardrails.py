"""Guardrails: each detector's rules, the scan's overlap handling and redaction, the engine's
per-guardrail decisions, and the configuration's validation. The API shapes: test_guardrails_texts;
precision and recall: test_guardrails_corpus."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import yaml

from gateway_extproc.apis import Api
from gateway_extproc.budgets.model import Match
from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.guardrails import Category, GuardAction, GuardrailConfig, Guardrails, pii
from gateway_extproc.guardrails import secret_patterns as sp
from gateway_extproc.guardrails.prepared import Prepared
from gateway_extproc.guardrails.scan import Finding, redact, scan
from gateway_extproc.guardrails.settings import parse_guardrails
from gateway_extproc.identity.model import ANONYMOUS, AuthMethod, Identity, Kind
from gateway_extproc.providers.inbound import ParsedRequest, parse_request
from tests.paths import doc_example

C = Category
A = GuardAction
CATALOG = Catalog.load([])


def entry(name: str = "gpt-4o-mini") -> ModelEntry:
    found = CATALOG.lookup(name)
    assert found is not None
    return found


def user(name: str, *groups: str) -> Identity:
    return Identity(
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user=name,
        service=None,
        groups=frozenset(groups),
        issuer="corp",
        attributes={},
        expires_at=None,
    )


def found(text: str, *categories: Category) -> list[tuple[str, str]]:
    return [(f.category.value, text[f.start : f.end]) for f in scan(text, categories or set(C))]


def chat(*contents: Any) -> ParsedRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": c} for c in contents]}
    return parse_request(Api.OPENAI_CHAT, orjson.dumps(body))


# -- detectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("4111111111111111", True),
        ("4111 1111 1111 1112", False),  # fails Luhn
        ("4111-1111 1111-1111", False),  # mixed separators
        ("1234567890123452", False),  # Luhn-valid, no issuer starts with 1
        ("0000000000000000", False),
        ("378282246310005", True),  # Amex, 15 digits
        ("2223003122003222", True),  # Mastercard 2-series
    ],
)
def test_payment_cards_are_luhn_and_issuer_checked(number: str, valid: bool) -> None:
    assert pii.card_valid(number) is valid
    assert found(f"card {number}.", C.PAYMENT_CARD) == ([("payment_card", number)] if valid else [])


@pytest.mark.parametrize(
    ("ssn", "valid"),
    [
        ("536-22-1234", True),
        ("536 22 1234", True),
        ("000-22-1234", False),
        ("666-22-1234", False),
        ("900-22-1234", False),
        ("999-22-1234", False),
        ("536-00-1234", False),
        ("536-22-0000", False),
        ("078-05-1120", False),  # the Woolworth wallet card number, never valid
        ("536-22 1234", False),  # one separator kind
    ],
)
def test_ssns_follow_the_ssa_rules(ssn: str, valid: bool) -> None:
    assert found(f"ssn {ssn} ok", C.US_SSN) == ([("us_ssn", ssn)] if valid else [])


def test_ibans_need_the_right_length_and_mod_97() -> None:
    assert found("DE89 3704 0044 0532 0130 00", C.IBAN) == [("iban", "DE89 3704 0044 0532 0130 00")]
    assert found("DE88 3704 0044 0532 0130 00", C.IBAN) == []  # checksum
    assert found("DE89 3704 0044 0532 0130", C.IBAN) == []  # German IBANs have 22 characters
    assert found("XDE89370400440532013000", C.IBAN) == []  # inside a word


def test_phone_numbers_are_validated_by_phonenumbers() -> None:
    assert found("call +1 415 555 2671 now", C.PHONE) == [("phone", "+1 415 555 2671")]
    assert found("call (650) 253-0000.", C.PHONE) == [("phone", "(650) 253-0000")]
    for quiet in ("v1.2.3", "2024-01-15", "10.0.0.1", "192.168.100.200", "555-1234", "415 555 26"):
        assert found(f"see {quiet} here", C.PHONE) == [], quiet


def test_email_allow_list_covers_subdomains_only_of_the_listed_domain() -> None:
    allowed = frozenset({"example.com"})
    assert pii.domain_allowed("example.com", allowed)
    assert pii.domain_allowed("mail.example.com", allowed)
    assert not pii.domain_allowed("badexample.com", allowed)
    assert not pii.domain_allowed("example.com.evil.io", allowed)


def test_email_local_part_bounds() -> None:
    assert found("mail a.b-c+d@x.io", C.EMAIL) == [("email", "a.b-c+d@x.io")]
    long_local = "a" * 65
    assert found(f"{long_local}@x.io", C.EMAIL) == []
    assert found("foo@bar and @handle and a@b", C.EMAIL) == []


def test_secret_prefixes_need_a_token_boundary() -> None:
    key = "sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj"
    assert found(f"key={key}", C.OPENAI_KEY) == [("openai_key", key)]
    assert found(f"task{key}", C.OPENAI_KEY) == []
    assert found("sk-this-is-a-slug-without-any-digits", C.OPENAI_KEY) == []
    ant = "sk-ant-api03-" + "Ab3" * 10
    assert found(ant, C.OPENAI_KEY, C.ANTHROPIC_KEY) == [("anthropic_key", ant)]


def test_aws_keys() -> None:
    assert found("id AKIA6I8J76B2LAJLJ4H9", C.AWS_ACCESS_KEY) == [
        ("aws_access_key", "AKIA6I8J76B2LAJLJ4H9")
    ]
    assert found("AKIAIOSFODNN7EXAMPLE", C.AWS_ACCESS_KEY) == []
    secret = "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"
    assert found(f"AWS secret: {secret}", C.AWS_SECRET_KEY) == [("aws_secret_key", secret)]
    assert found(f"no context here: {secret}", C.AWS_SECRET_KEY) == []
    far = "aws" + " filler" * 40 + " " + secret  # more than 200 characters after "aws"
    assert found(far, C.AWS_SECRET_KEY) == []


def test_jwt_header_must_decode_to_json_with_alg() -> None:
    good = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4MSJ9."
    no_alg = "eyJ0eXAiOiJKV1QiLCJraWQiOiJhYmMifQ.eyJzdWIiOiJub3BlIn0.abcdefgh"
    garbage = "eyJhbGciOi.eyJzdWIiOiJ4.abcdefgh"
    assert found(f"t {good} t", C.JWT) == [("jwt", good)]
    assert found(no_alg, C.JWT) == []
    assert found(garbage, C.JWT) == []


def test_private_key_block_to_its_end_line_or_the_end_of_the_text() -> None:
    block = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"
    assert found(f"a\n{block}\nb", C.PRIVATE_KEY) == [("private_key", block)]
    assert found("x -----BEGIN EC PRIVATE KEY-----\nMHc", C.PRIVATE_KEY) == [
        ("private_key", "-----BEGIN EC PRIVATE KEY-----\nMHc")
    ]
    assert found("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----", C.PRIVATE_KEY) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("password=Zx8!kQ2@pL9#mN4v", "Zx8!kQ2@pL9#mN4v"),
        ('"client_secret": "C6vWCBiJmpflvJfupxqZ"', "C6vWCBiJmpflvJfupxqZ"),
        ("API_KEY: d9041dff02cee737443e210471948d33", "d9041dff02cee737443e210471948d33"),
        ("x-auth-token=etH8LmyqoYMaaItDr9", "etH8LmyqoYMaaItDr9"),
        ("password=changeme", None),  # short and low entropy
        ("password=correcthorsebatterystaple", None),  # a passphrase of words
        ("token=${TOKEN_FROM_THE_ENVIRONMENT}", None),
        ("api_key=YOUR_API_KEY_HERE_PLEASE", None),
        ("monkey=Zx8kQ2pL9mN4vB7c", None),  # `key` ends a word
        ("max_tokens=1024", None),
    ],
)
def test_generic_assignments_need_a_high_entropy_value(text: str, value: str | None) -> None:
    assert found(text, C.GENERIC_SECRET) == ([("generic_secret", value)] if value else [])


def test_shannon_entropy() -> None:
    assert sp.shannon_entropy("aaaa") == 0
    assert sp.shannon_entropy("abcd") == 2
    assert sp.shannon_entropy("changeme") < sp.ENTROPY_THRESHOLD


def test_non_ascii_text_that_changes_length_when_lowered_still_scans() -> None:
    text = "İİİ password=Zx8!kQ2@pL9#mN4v"  # "İ".lower() is two characters
    assert Prepared(text).lower is None
    assert found(text, C.GENERIC_SECRET) == [("generic_secret", "Zx8!kQ2@pL9#mN4v")]


# -- scan and redaction --------------------------------------------------------------------------


def test_the_more_specific_finding_wins_and_spans_never_overlap() -> None:
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4MSJ9.c2lnbmF0dXJlMTIz"
    text = f"token={jwt} iban DE89 3704 0044 0532 0130 00"
    assert found(text) == [("jwt", jwt), ("iban", "DE89 3704 0044 0532 0130 00")]


def test_redact_replaces_each_finding_with_its_marker() -> None:
    text = "mail a@b.io or call +1 415 555 2671."
    assert redact(text, scan(text, set(C))) == "mail [REDACTED:email] or call [REDACTED:phone]."
    assert redact("abc", []) == "abc"
    assert redact("abcdef", [Finding(4, 6, C.EMAIL), Finding(0, 1, C.JWT)]) == (
        "[REDACTED:jwt]bcd[REDACTED:email]"
    )


@pytest.mark.parametrize(
    "unit",
    [
        "a",
        "7",
        "1 ",
        "a@",
        "a@b.",
        "-----BEGIN RSA PRIVATE KEY-----\n",
        "eyJhbGciOi.",
        "token=",
        "sk-",
        "4111 ",
        "AKIA",
        "+1 ",
        "x" * 63 + "@",
    ],
)
def test_adversarial_input_scans_in_linear_time(unit: str) -> None:
    """A quadratic pattern takes minutes on 200 KB; linear ones take well under a second here.
    The bound is 20x what this machine needs, on this thread's CPU time (a busy machine's other
    processes do not count against it)."""
    text = (unit * (200_000 // len(unit) + 1))[:200_000]
    started = time.thread_time()
    scan(text, set(C))
    assert time.thread_time() - started < 4.0


# -- engine -------------------------------------------------------------------------------------


def rule(name: str, match: Match | None = None, **actions: str) -> GuardrailConfig:
    return GuardrailConfig(name, match or Match(), {C(k): A[v.upper()] for k, v in actions.items()})


SECRET_TEXT = "key sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj mail a@b.io and c@d.io"


def test_no_applicable_guardrail_is_none() -> None:
    rules = Guardrails((rule("eng", Match(groups=frozenset({"eng"})), email="block"),))
    assert rules.check(user("u", "sales"), entry(), chat(SECRET_TEXT)) is None
    assert Guardrails().check(ANONYMOUS, entry(), chat(SECRET_TEXT)) is None


def test_block_names_categories_never_values() -> None:
    rules = Guardrails((rule("no-keys", openai_key="block", email="redact"),))
    result = rules.check(ANONYMOUS, entry(), chat(SECRET_TEXT))
    assert result is not None
    assert result.blocked == (C.OPENAI_KEY,)
    assert result.body is None  # nothing is redacted for a request that is refused
    message = result.block_message()
    assert "openai_key" in message and "no-keys" in message
    assert "sk-" not in message and "a@b.io" not in message
    assert result.audit_fields() == {
        "rules": ["no-keys"],
        "action": "block",
        "categories": {
            "email": {"count": 2, "action": "redact"},
            "openai_key": {"count": 1, "action": "block"},
        },
    }
    assert "sk-" not in orjson.dumps(result.audit_fields()).decode()


def test_redact_rewrites_a_copy_and_monitor_only_counts() -> None:
    request = chat(SECRET_TEXT)
    rules = Guardrails((rule("r", openai_key="redact", email="monitor"),))
    result = rules.check(ANONYMOUS, entry(), request)
    assert result is not None and result.body is not None
    assert result.body["messages"][0]["content"] == (
        "key [REDACTED:openai_key] mail a@b.io and c@d.io"
    )
    assert request.body["messages"][0]["content"] == SECRET_TEXT  # the client's body untouched
    assert result.audit_fields()["action"] == "redact"
    assert result.audit_fields()["categories"]["email"] == {"count": 2, "action": "monitor"}


def test_monitor_only_leaves_the_body_alone() -> None:
    rules = Guardrails((rule("m", email="monitor"),))
    result = rules.check(ANONYMOUS, entry(), chat(SECRET_TEXT))
    assert result is not None and result.body is None and not result.blocked
    assert result.audit_fields()["categories"] == {"email": {"count": 2, "action": "monitor"}}


def test_nothing_found_is_audited_as_scanned() -> None:
    result = Guardrails((rule("m", email="block"),)).check(ANONYMOUS, entry(), chat("hello"))
    assert result is not None
    assert result.audit_fields() == {"rules": ["m"], "action": None, "categories": {}}


def test_the_strictest_applicable_guardrail_wins_and_allow_lists_are_per_guardrail() -> None:
    lenient = GuardrailConfig(
        "lenient", Match(), {C.EMAIL: A.BLOCK}, allow_email_domains=frozenset({"b.io", "d.io"})
    )
    eng = GuardrailConfig("eng", Match(groups=frozenset({"eng"})), {C.EMAIL: A.REDACT})
    rules = Guardrails((lenient, eng))
    # Outside eng only `lenient` applies, and it allows both addresses.
    outside = rules.check(user("s", "sales"), entry(), chat(SECRET_TEXT))
    assert outside is not None and outside.audit_fields()["categories"] == {}
    # In eng, `eng` redacts what `lenient` allows.
    inside = rules.check(user("e", "eng"), entry(), chat(SECRET_TEXT))
    assert inside is not None and inside.rules == ("lenient", "eng")
    assert inside.actions == {C.EMAIL: A.REDACT}
    # A value allow-list.
    exact = GuardrailConfig(
        "exact", Match(), {C.EMAIL: A.BLOCK}, allow_values=frozenset({"a@b.io", "c@d.io"})
    )
    assert Guardrails((exact,)).check(ANONYMOUS, entry(), chat(SECRET_TEXT)).actions == {}  # type: ignore[union-attr]


def test_match_by_model_and_provider() -> None:
    rules = Guardrails((rule("mini", Match(models=("gpt-4o-mini",)), email="block"),))
    assert rules.check(ANONYMOUS, entry("gpt-4o-mini"), chat(SECRET_TEXT)) is not None
    assert rules.check(ANONYMOUS, entry("gpt-4o"), chat(SECRET_TEXT)) is None


# -- configuration -------------------------------------------------------------------------------


def test_config_parses_shorthands_and_named_categories_win() -> None:
    problems: list[str] = []
    (parsed,) = parse_guardrails(
        [
            {
                "name": "no-secrets",
                "match": {"groups": ["eng"]},
                "categories": {
                    "jwt": "monitor",
                    "secrets": "block",
                    "pii": "redact",
                    "phone": "monitor",
                },
                "allow": {"email_domains": ["Example.COM"], "values": ["4111 1111 1111 1111"]},
            }
        ],
        problems,
    )
    assert problems == []
    assert parsed.match == Match(groups=frozenset({"eng"}))
    assert parsed.actions[C.JWT] is A.MONITOR  # named on its own: wins over `secrets`
    assert parsed.actions[C.OPENAI_KEY] is A.BLOCK
    assert parsed.actions[C.PHONE] is A.MONITOR
    assert parsed.actions[C.IBAN] is A.REDACT
    assert parsed.allow_email_domains == frozenset({"example.com"})
    assert "4111" not in repr(parsed)  # allow-listed values stay out of reprs and logs


def test_config_reports_every_problem_with_its_path() -> None:
    problems: list[str] = []
    parse_guardrails(
        [
            {"name": "a", "categories": {"secrets": "drop", "bogus": "block"}, "extra": 1},
            {"name": "a", "match": {"groups": "eng"}, "categories": {}},
            {
                "name": "Bad Name",
                "categories": {"email": "monitor"},
                "allow": {"email_domains": ["not a domain"], "ips": []},
            },
            "not a mapping",
        ],
        problems,
    )
    assert problems == [
        "guardrails[0].extra: unknown key (known: allow, categories, match, name)",
        "guardrails[0].categories.secrets: must be one of block, redact, monitor (got 'drop')",
        "guardrails[0].categories.bogus: unknown category (known: anthropic_key, aws_access_key, "
        "aws_secret_key, email, generic_secret, github_token, gitlab_token, iban, jwt, "
        "openai_key, payment_card, phone, pii, private_key, secrets, slack_token, us_ssn)",
        "guardrails[1].name: 'a' is used by an earlier guardrail",
        "guardrails[1].match.groups: must be a non-empty list of non-empty strings",
        "guardrails[1].categories: must be a non-empty mapping of category to block, redact or "
        "monitor",
        "guardrails[2].name: must match [a-z0-9][a-z0-9_-]{0,63} (got 'Bad Name')",
        "guardrails[2].allow.ips: unknown key (known: email_domains, values)",
        "guardrails[2].allow.email_domains: 'not a domain' is not a domain name",
        "guardrails[3]: must be a mapping with name and categories",
    ]
    problems = []
    assert parse_guardrails({"name": "x"}, problems) == ()
    assert problems == ["guardrails: must be a list"]


def test_gateway_config_loads_guardrails_and_defaults_to_none() -> None:
    assert parse_config(load_document(None), {}).guardrails == Guardrails()
    doc = load_document(None) | {"guardrails": [{"name": "g", "categories": {"secrets": "block"}}]}
    assert parse_config(doc, {}).guardrails.rules[0].name == "g"
    with pytest.raises(ConfigError) as err:
        parse_config(load_document(None) | {"guardrails": [{"name": "g"}]}, {})
    assert err.value.problems == [
        "guardrails[0].categories: must be a non-empty mapping of category to block, redact or "
        "monitor"
    ]


def test_the_readme_example_loads() -> None:
    block = doc_example("guardrails-example")
    config = parse_config(merge(load_document(None), yaml.safe_load(block)), {})
    names = [g.name for g in config.guardrails.rules]
    assert names == ["no-secrets", "eng-pii", "support-watch"]
    support = config.guardrails.rules[2]
    assert support.actions[C.OPENAI_KEY] is A.BLOCK and support.actions[C.JWT] is A.MONITOR
