"""The `fallback:` section: per requested model, the ordered targets Envoy tries when one fails
(docs/fallback.md), and the clusters it derives. Read and validated against the catalog, the
configured providers and the translations the gateway performs by config/fallback_settings.py
(`parse_fallback`), every problem reported with its path. Pure.

A target is written `provider/model`: the catalog model `model` served by `provider` (a catalog
name that itself holds a slash, `azure/gpt-4o`, is written as it is: `azure/gpt-4o`).

A provider with a key pool (`providers.<p>.keys`, more than one key) makes every target of it a
level of keys: each attempt at a target may use another key, so a chain cluster gets
`ChainCluster.per_target` attempts per target, and a model of such a provider without a chain
gets a one-target chain (`with_pools`): its requests go through a chain cluster too.

Policy variants (`with_variants`): Envoy's retries walk a cluster's priorities in order and an
attempt cannot be skipped once begun (docs/fallback.md fact 7), so a caller whose policy forbids a
target in the middle of a chain needs a cluster without it. Only the target lists the
configuration's policies can produce are generated (at most `MAX_VARIANTS` a chain); a list that
is a prefix of another cluster's needs none (Envoy stops early: `x-envoy-max-retries`). A
variant's levels hold one endpoint per key like the chain's, and its attempts per target follow
the pools among the targets its route tries.

Envoy's clusters are fixed when it starts; a reload may want others. `pinned` keeps a reloaded
configuration to the clusters Envoy has (`envoy_clusters` of the configuration it started with,
their key counts included): a request goes to the one holding the longest prefix of what its
caller may use, or unchained, and its attempts are counted with Envoy's pools, not the reload's.

Suffix variants: a chain (or policy variant) [A, B, C] also gets [B, C] and [C], so a request
whose head is cooling (a 429 with `retry-after`, request/chain.py) can start at the next target;
they count in `MAX_VARIANTS` after the policy variants, and are pinned like them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

from gateway_extproc.catalog.models import Catalog
from gateway_extproc.config.outlier import BreakerConfig, OutlierConfig
from gateway_extproc.identity.policy import PolicySet

# Policy variants a chain gets at most (each a cluster and its routes in Envoy's config). A chain
# whose policies give more gets none: a forbidden target cuts the chain before it, as without
# variants, and the sidecar warns at load.
MAX_VARIANTS = 8


class Trigger(enum.StrEnum):
    """What makes Envoy try the next target (before the first byte reached the client)."""

    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"
    SERVER_ERROR = "5xx"
    RATE_LIMITED = "429"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"


DEFAULT_TRIGGERS = frozenset(Trigger)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One entry of a chain: `model` (a catalog name) served by `provider`."""

    provider: str
    model: str

    @property
    def name(self) -> str:
        """`openai/gpt-4o`; a catalog name that already names its provider stays as it is."""
        prefix = self.provider + "/"
        return self.model if self.model.startswith(prefix) else prefix + self.model


@dataclasses.dataclass(frozen=True, slots=True)
class ChainCluster:
    """A chain cluster in Envoy's config: its name, the requested model it serves, the targets
    its route tries (priority order, at most `max_attempts`) and the keys of each (its level's
    endpoints: the provider's pool, 1 without one)."""

    name: str
    model: str
    targets: tuple[Target, ...]
    keys: tuple[int, ...]

    @property
    def per_target(self) -> int:
        """Attempts Envoy makes at each target before the next (the route's previous_priorities
        `update_frequency`): the largest pool among the targets it tries."""
        return max(self.keys, default=1)

    def tries(self, targets: int | None = None) -> int:
        """Envoy's attempts in all for the first `targets` (default: all it tries); the route's
        `num_retries` is `tries() - 1`."""
        return (len(self.targets) if targets is None else targets) * self.per_target


@dataclasses.dataclass(frozen=True)
class FallbackConfig:
    chains: Mapping[str, tuple[Target, ...]] = dataclasses.field(default_factory=dict)
    on: frozenset[Trigger] = DEFAULT_TRIGGERS
    first_byte_timeout_s: float = 20.0
    max_attempts: int = 3
    # Envoy's outlier detection on every chain cluster (None: off) and its circuit breakers.
    outlier: OutlierConfig | None = dataclasses.field(default_factory=OutlierConfig)
    breakers: BreakerConfig = dataclasses.field(default_factory=BreakerConfig)
    # Per requested model, the target lists its cluster variants hold (with_variants).
    variants: Mapping[str, tuple[tuple[Target, ...], ...]] = dataclasses.field(default_factory=dict)
    # The chains whose policies give more than MAX_VARIANTS lists: they get no variant.
    too_many_variants: tuple[str, ...] = ()
    # Providers with a key pool of more than one key -> how many keys.
    pools: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # The chain clusters Envoy has when they are not this configuration's own (a reload: pinned).
    envoy: tuple[ChainCluster, ...] | None = None

    def chain_for(self, model: str) -> tuple[Target, ...] | None:
        """The chain of a requested catalog model (its canonical name), or None."""
        return self.chains.get(model)

    def attempts(self, chain: tuple[Target, ...]) -> int:
        """How many targets of `chain` Envoy tries at most."""
        return min(self.max_attempts, len(chain))

    def clusters(self) -> Iterator[tuple[str, tuple[Target, ...]]]:
        """Every chain cluster: (its name, its targets in priority order); a chain's own first."""
        for model, chain in self.chains.items():
            yield cluster_name(model), chain
            for targets in self.variants.get(model, ()):
                yield variant_name(model, chain, targets), targets

    def envoy_clusters(self, providers: Collection[str]) -> tuple[ChainCluster, ...]:
        """The chain clusters Envoy's config generated from this one holds (envoy/bootstrap.py:
        none for a chain naming a provider left out), each with the targets its route tries."""
        return tuple(
            cluster
            for model, chain in self.chains.items()
            if all(t.provider in providers for t in chain)
            for cluster in self._own(model, chain)
        )

    def envoy_cluster(self, name: str, model: str, targets: tuple[Target, ...]) -> ChainCluster:
        """The cluster `name` (of the chain of `model`, or a variant's) as Envoy's config
        generated from this one holds it: the targets its route tries and their pools."""
        tried = targets[: self.attempts(targets)]
        return ChainCluster(name, model, tried, tuple(self.pools.get(t.provider, 1) for t in tried))

    def _own(self, model: str, chain: tuple[Target, ...]) -> Iterator[ChainCluster]:
        """The chain's cluster, then its variants'."""
        yield self.envoy_cluster(cluster_name(model), model, chain)
        for targets in self.variants.get(model, ()):
            yield self.envoy_cluster(variant_name(model, chain, targets), model, targets)

    def pinned(self, envoy: tuple[ChainCluster, ...]) -> FallbackConfig:
        """This configuration routing only to `envoy`, the clusters Envoy has."""
        return dataclasses.replace(self, envoy=envoy)

    def missing(self, providers: Collection[str]) -> tuple[str, ...]:
        """The clusters this configuration wants that Envoy lacks (none unless pinned)."""
        have = set(self.envoy) if self.envoy is not None else None
        wanted = self.envoy_clusters(providers)
        return () if have is None else tuple(c.name for c in wanted if c not in have)

    def cluster_for(
        self, model: str, admitted: Sequence[Target]
    ) -> tuple[str, tuple[Target, ...], int]:
        """`chosen` as (its name, the targets its route tries, the prefix's length); ("", (), 0)
        when Envoy has no cluster for `model`."""
        cluster, n = self.chosen(model, admitted)
        return ("", (), 0) if cluster is None else (cluster.name, cluster.targets, n)

    def chosen(self, model: str, admitted: Sequence[Target]) -> tuple[ChainCluster | None, int]:
        """The cluster for a request to `model` whose caller may use `admitted` (in chain order,
        the head first): the one whose targets start with the longest prefix of it, and that
        prefix's length (the targets Envoy is to try: fewer than the route's are stopped by
        `x-envoy-max-retries`, counted with the cluster's pools: `ChainCluster.tries`). Without
        a variant, the chain's own cluster: cut before the first target not admitted. Pinned to
        Envoy's clusters (after a reload), only those, with Envoy's pools: (None, 0) when Envoy
        has none for `model`."""
        candidates: Iterable[ChainCluster] = self.envoy or ()
        if self.envoy is None and model in self.chains:
            candidates = self._own(model, self.chains[model])
        best: tuple[ChainCluster | None, int] = (None, 0)
        for cluster in candidates:
            if cluster.model != model:
                continue
            n = _common(cluster.targets, admitted)
            if n > best[1] or best[0] is None:
                best = (cluster, n)
        return best


def _common(targets: Sequence[Target], admitted: Sequence[Target]) -> int:
    n = 0
    while n < min(len(targets), len(admitted)) and targets[n] == admitted[n]:
        n += 1
    return n


def cluster_name(model: str) -> str:
    """The Envoy cluster of a requested model's chain (a name Envoy accepts)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return f"chain_{safe}"


def variant_name(model: str, chain: Sequence[Target], targets: Sequence[Target]) -> str:
    """A variant's cluster: the chain's, with the places of the targets it keeps
    (`chain_gpt-4o.t0_2`)."""
    kept = "_".join(str(chain.index(t)) for t in targets)
    return f"{cluster_name(model)}.t{kept}"


def with_variants(fallback: FallbackConfig, policies: PolicySet) -> FallbackConfig:
    """`fallback` with the cluster variants its chains need for `policies`: for every set of
    targets some identity may use, the chain without the others (the head always stays: a
    caller it is forbidden to is refused before any chain). A list that is a prefix of the
    chain's or of another list is left out (Envoy stops early there). Pure."""
    variants: dict[str, tuple[tuple[Target, ...], ...]] = {}
    too_many = []
    for model, chain in fallback.chains.items():
        rest = [t.model for t in chain[1:]]
        decisions = policies.decisions(rest, limit=4 * MAX_VARIANTS)
        lists: dict[tuple[Target, ...], None] = {}
        for allowed in decisions or ():
            kept = [t for t in chain[1:] if t.model in allowed][: fallback.max_attempts - 1]
            lists[(chain[0], *kept)] = None
        full = chain[: fallback.attempts(chain)]
        needed = [
            targets
            for targets in lists
            if len(targets) > 1
            and not _is_prefix(targets, full)
            and not any(other != targets and _is_prefix(targets, other) for other in lists)
        ]
        if decisions is None or len(needed) > MAX_VARIANTS:
            too_many.append(model)
        elif needed:
            variants[model] = tuple(needed)
    return dataclasses.replace(fallback, variants=variants, too_many_variants=tuple(too_many))


def with_suffixes(fallback: FallbackConfig) -> FallbackConfig:
    """`fallback` (its policy variants and pools known) with the suffix variants of its chains:
    each chain and policy variant without its first targets, so a request whose head is cooling
    (request/chain.py) starts at the next one. Only targets of one-key providers are cut (a
    pool cools per key: its head is not skipped); within MAX_VARIANTS a chain, after its policy
    variants; none for a chain with too many of those. Pure."""
    variants = dict(fallback.variants)
    for model, chain in fallback.chains.items():
        if model in fallback.too_many_variants:
            continue
        have = list(variants.get(model, ()))
        lists = [chain[: fallback.attempts(chain)], *have]
        added = _suffixes(lists, MAX_VARIANTS - len(have), set(fallback.pools))
        if added:
            variants[model] = (*have, *added)
    return dataclasses.replace(fallback, variants=variants)


def _suffixes(
    lists: Sequence[Sequence[Target]], room: int, pooled: Collection[str]
) -> list[tuple[Target, ...]]:
    """Every proper suffix of each list whose cut targets are all of one-key providers,
    shortest cut first, none that is a prefix of another, at most `room` of them."""
    found: dict[tuple[Target, ...], None] = {}
    for cut in range(1, max((len(t) for t in lists), default=0)):
        for targets in lists:
            if cut < len(targets) and not any(t.provider in pooled for t in targets[:cut]):
                found[tuple(targets[cut:])] = None
    kept = [t for t in found if not any(o != t and _is_prefix(t, o) for o in found)]
    return kept[:room]


def _is_prefix(short: Sequence[Target], long: Sequence[Target]) -> bool:
    return len(short) <= len(long) and tuple(long[: len(short)]) == tuple(short)


def with_pools(
    fallback: FallbackConfig, pools: Mapping[str, int], catalog: Catalog | None
) -> FallbackConfig:
    """`fallback` knowing the key pools (provider -> keys, for pools of 2 or more); every chat
    model of a pooled provider that heads no chain gets a one-target chain (its own cluster of
    keys, docs/fallback.md)."""
    if not pools:
        return fallback
    chains = dict(fallback.chains)
    for entry in catalog.models() if catalog is not None else ():
        priced = entry.free or entry.price.input > 0 or entry.price.output > 0
        if entry.provider in pools and not entry.embedding and priced:
            chains.setdefault(entry.name, (Target(entry.provider, entry.name),))
    return dataclasses.replace(fallback, chains=chains, pools=dict(pools))
