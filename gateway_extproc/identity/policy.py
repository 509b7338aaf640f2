"""Model access policies: which models each user, service and group may use.

Parsed once from the `policies` section of the config and compiled (one regex per pattern list
of each rule); after that `PolicySet.allows` is pure: no clock, no I/O.

    policies:
      default: {allow: ["*"]}        # an identity no rule names; allow: [] allows nothing
      anonymous: {allow: [gpt-4o-mini]}   # optional; anonymous callers, else `default` applies
      rules:
        - groups: [interns]          # subjects: users / groups / services (exact names)
          allow: [gpt-4o-mini]       # model patterns, shell-style wildcards
        - services: [ci-runner]      # JWT services
          allow: ["gpt-5*"]
          deny: ["gpt-5-pro*"]
        - static_tokens: [docs-bot]  # static tokens: a namespace apart from JWT services
          allow: [gpt-4o-mini]

Precedence:

1. An anonymous caller is decided by `policies.anonymous` if present, else by `policies.default`.
   Rules never apply to anonymous callers.
2. For any other identity exactly one kind of rule decides, the most specific that matches:
   the rules listing the identity's user in `users`; if there are none, the rules listing its
   service in `services`; if none, the rules listing its static token in `static_tokens` (a
   static token is a `service` too only with `identity.static_tokens_share_service_namespace`);
   if none, the rules listing any of its groups in `groups` (every such
   rule, across all of its groups); if none, `policies.default`. A rule naming several kinds of
   subject counts as a rule of each kind: `{users: [alice], groups: [eng]}` is a user rule for
   alice and a group rule for the rest of eng.
3. Within the deciding kind, a model is allowed if at least one matching rule allows it and no
   matching rule denies it: deny wins. A kind whose matching rules only deny allows nothing.
   Less specific rules neither add nor remove anything: a user rule replaces, not extends, the
   rules of the user's service and groups.
4. Patterns are case-sensitive shell-style wildcards (`fnmatch.fnmatchcase`: `*`, `?`, `[seq]`,
   `[!seq]`) matched against the whole name. A request is checked by the catalog's canonical
   model name and by the name the client sent (an alias or a dated snapshot): it is allowed if
   either name is allowed and neither name is denied.
5. Without a `policies` section, or without `policies.default`, an identity no rule names may
   use every model (as if `default: {allow: ["*"]}`).

Validation (policy_rules.py, beside the compiled rules) reports every problem with its path:
unknown keys; a rule must name at least one subject and at least one allow or deny pattern
(`deny: ["*"]` blocks its subjects); `default` and `anonymous` must set `allow`; names and
patterns are non-empty strings without surrounding spaces. A pattern that matches no catalog
model is a warning only (`unmatched_patterns`).

Decisions are memoised per (the identity's deciding subjects, model, requested name) in a
bounded dict, since the same callers ask for the same models over and over.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from gateway_extproc.identity.model import Identity, Kind
from gateway_extproc.identity.policy_rules import (
    ALLOW_ALL,
    ALLOW_NOTHING,
    TOP_KEYS,
    Rule,
    parse_sections,
)

__all__ = ["DEFAULT_MEMO_SIZE", "PolicySet", "parse_policies"]

DEFAULT_MEMO_SIZE = 16_384
_KIND_LABELS = {"static_token": "static token"}
_EXPLAIN_MAX_PATTERNS = 10
# `decisions`: distinct (allowed, denied) pairs of group combinations it tracks at most (each
# pair a subset pair of the models asked about: at most 4**len(models) exist).
_MAX_GROUP_COMBINATIONS = 4096

# ("user" | "service" | "static_token" | "group" | "anonymous", name)
_Subjects = frozenset[tuple[str, str]]
_DEFAULT: _Subjects = frozenset()
_ANONYMOUS: _Subjects = frozenset({("anonymous", "")})


@dataclasses.dataclass(frozen=True, slots=True)
class _Decider:
    """The rules of the deciding kind for one set of subjects, and how to name them."""

    label: str  # "group interns", "groups eng, ml-team", "the default policy"
    plural: bool
    rules: tuple[Rule, ...]

    def allows(self, names: tuple[str, ...]) -> bool:
        rules = self.rules
        if any(rule.deny.matches(name) for rule in rules for name in names):
            return False
        return any(rule.allow.matches(name) for rule in rules for name in names)

    def says(self, singular: str, plural: str) -> str:
        """The label and the verb agreeing with it: "group eng allows", "groups eng, ml allow"."""
        return f"{self.label} {plural if self.plural else singular}"


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Memo(Generic[_K, _V]):
    """A dict bounded to `size` entries; the oldest entry makes room. Size 0 remembers nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[_K, _V] = {}

    def get(self, key: _K) -> _V | None:
        return self.data.get(key)

    def put(self, key: _K, value: _V) -> None:
        if self.size <= 0:
            return
        if len(self.data) >= self.size:
            del self.data[next(iter(self.data))]
        self.data[key] = value


class PolicySet:
    """The compiled policies. Immutable apart from its memo; a reload builds a new one."""

    def __init__(
        self,
        default: Rule,
        anonymous: Rule | None,
        rules: Sequence[tuple[Rule, Mapping[str, Sequence[str]]]],
        memo_size: int = DEFAULT_MEMO_SIZE,
    ) -> None:
        """Use `parse_policies` or `PolicySet.allow_all()`; `rules` pairs each compiled rule
        with its subjects by kind (`{"group": ["interns"]}`)."""
        self._default = default
        self._anonymous = anonymous
        self._rules = tuple(rule for rule, _ in rules)
        index: dict[str, dict[str, list[Rule]]] = {
            "user": {},
            "service": {},
            "static_token": {},
            "group": {},
        }
        for rule, subjects in rules:
            for kind, names in subjects.items():
                for name in names:
                    listed = index[kind].setdefault(name, [])
                    if rule not in listed:
                        listed.append(rule)
        self._users = {name: tuple(found) for name, found in index["user"].items()}
        self._services = {name: tuple(found) for name, found in index["service"].items()}
        self._static = {name: tuple(found) for name, found in index["static_token"].items()}
        self._groups = {name: tuple(found) for name, found in index["group"].items()}
        self._deciders: _Memo[_Subjects, _Decider] = _Memo(memo_size)
        self._decisions: _Memo[tuple[_Subjects, str, str | None], bool] = _Memo(memo_size)

    @classmethod
    def allow_all(cls, memo_size: int = DEFAULT_MEMO_SIZE) -> PolicySet:
        """Every identity may use every model: the gateway without a `policies` section."""
        return cls(ALLOW_ALL, None, [], memo_size)

    @classmethod
    def allow_nothing(cls) -> PolicySet:
        return cls(ALLOW_NOTHING, None, [], 0)

    def allows(self, identity: Identity, model: str, requested: str | None = None) -> bool:
        """May `identity` use catalog model `model`, asked for by the name `requested`?"""
        subjects = self._subjects(identity)
        if requested == model:
            requested = None
        key = (subjects, model, requested)
        decision = self._decisions.get(key)
        if decision is None:
            names = (model,) if requested is None else (model, requested)
            decision = self._decider(subjects).allows(names)
            self._decisions.put(key, decision)
        return decision

    def allowed_models(self, identity: Identity, names: Iterable[str]) -> list[str]:
        """The names (in their order) that `identity` may use, for `GET /v1/models`."""
        return [name for name in names if self.allows(identity, name)]

    def explain(self, identity: Identity, model: str, requested: str | None = None) -> str:
        """Which rule decided, for the 403 message: "group interns allows only gpt-4o-mini"."""
        decider = self._decider(self._subjects(identity))
        names = (model,) if requested is None or requested == model else (model, requested)
        for rule in decider.rules:
            for name in names:
                pattern = rule.deny.first_match(name)
                if pattern is not None:
                    return f"{decider.says('denies', 'deny')} {pattern}"
        if decider.allows(names):
            return f"{decider.says('allows', 'allow')} {model}"
        patterns = list(
            dict.fromkeys(pattern for rule in decider.rules for _, pattern in rule.allow.items)
        )
        if not patterns:
            return f"{decider.says('allows', 'allow')} no models"
        shown = ", ".join(patterns[:_EXPLAIN_MAX_PATTERNS])
        more = len(patterns) - _EXPLAIN_MAX_PATTERNS
        if more > 0:
            shown += f" and {more} more"
        return f"{decider.says('allows', 'allow')} only {shown}"

    def decisions(self, models: Sequence[str], limit: int) -> list[frozenset[str]] | None:
        """Every distinct subset of `models` (catalog names) that some identity may use, in a
        stable order; None when there are more than `limit`. One per deciding kind of rules
        (precedence 2): the default, the anonymous policy, each user's, service's and static
        token's rules, and every combination of groups (its rules' allows less their denies).
        For generating what only the configuration's policies can produce (fallback variants)."""

        def split(rules: Iterable[Rule]) -> tuple[frozenset[str], frozenset[str]]:
            rules = tuple(rules)
            allowed = frozenset(m for m in models if any(r.allow.matches(m) for r in rules))
            denied = frozenset(m for m in models if any(r.deny.matches(m) for r in rules))
            return allowed, denied

        found: dict[frozenset[str], None] = {}
        deciders: list[tuple[Rule, ...]] = [(self._default,)]
        if self._anonymous is not None:
            deciders.append((self._anonymous,))
        for index in (self._users, self._services, self._static):
            deciders.extend(index.values())
        for rules in deciders:
            allowed, denied = split(rules)
            found[allowed - denied] = None
        # Groups: any non-empty combination of the groups rules name decides by all their rules.
        combos: set[tuple[frozenset[str], frozenset[str]]] = set()
        for rules in self._groups.values():
            one = split(rules)
            combos |= {one} | {(a | one[0], d | one[1]) for a, d in combos}
            if len(combos) > _MAX_GROUP_COMBINATIONS:
                return None
        for allowed, denied in sorted(combos, key=lambda c: (sorted(c[0]), sorted(c[1]))):
            found[allowed - denied] = None
        return list(found) if len(found) <= limit else None

    def unmatched_patterns(self, catalog_names: Iterable[str]) -> list[str]:
        """The patterns (each once, in config order) that match none of `catalog_names`, for the
        loader to warn about. Pass the catalog's names and aliases. Not an error: a policy may
        name models an operator catalog adds later."""
        names = list(catalog_names)
        rules = [self._default, *([self._anonymous] if self._anonymous else []), *self._rules]
        patterns = dict.fromkeys(
            pattern for rule in rules for _, pattern in (*rule.allow.items, *rule.deny.items)
        )
        return [
            pattern
            for pattern in patterns
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names)
        ]

    # --- internals ---------------------------------------------------------------------------

    def _subjects(self, identity: Identity) -> _Subjects:
        """The subjects of the kind that decides for `identity` (step 2 of the precedence)."""
        if identity.kind is Kind.ANONYMOUS:
            return _ANONYMOUS if self._anonymous is not None else _DEFAULT
        if identity.user is not None and identity.user in self._users:
            return frozenset({("user", identity.user)})
        if identity.service is not None and identity.service in self._services:
            return frozenset({("service", identity.service)})
        if identity.static_token is not None and identity.static_token in self._static:
            return frozenset({("static_token", identity.static_token)})
        groups = self._groups
        return frozenset(("group", group) for group in identity.groups if group in groups)

    def _decider(self, subjects: _Subjects) -> _Decider:
        decider = self._deciders.get(subjects)
        if decider is None:
            decider = self._build_decider(subjects)
            self._deciders.put(subjects, decider)
        return decider

    def _build_decider(self, subjects: _Subjects) -> _Decider:
        if subjects == _DEFAULT:
            return _Decider("the default policy", False, (self._default,))
        if subjects == _ANONYMOUS and self._anonymous is not None:
            return _Decider("the anonymous policy", False, (self._anonymous,))
        kind = next(iter(subjects))[0]
        index = {
            "user": self._users,
            "service": self._services,
            "static_token": self._static,
            "group": self._groups,
        }[kind]
        names = sorted(name for _, name in subjects)
        found = dict.fromkeys(rule for name in names for rule in index[name])
        rules = tuple(sorted(found, key=lambda rule: rule.order))
        noun = _KIND_LABELS.get(kind, kind)
        label = f"{noun}{'s' if len(names) > 1 else ''} {', '.join(names)}"
        return _Decider(label, len(names) > 1, rules)


def parse_policies(
    doc: object,
    problems: list[str],
    *,
    path: str = "policies",
    memo_size: int = DEFAULT_MEMO_SIZE,
) -> PolicySet:
    """Validate and compile the `policies` section (`doc` is its value; None: allow all).

    Every problem is appended to `problems` with its path; if there are any, the returned set
    allows nothing (the caller raises `ConfigError` with them)."""
    if doc is None:
        return PolicySet.allow_all(memo_size)
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping with keys {', '.join(TOP_KEYS)}")
        return PolicySet.allow_nothing()
    parsed = parse_sections(doc, path, problems)
    if parsed is None:
        return PolicySet.allow_nothing()
    default, anonymous, rules = parsed
    return PolicySet(default, anonymous, rules, memo_size)
