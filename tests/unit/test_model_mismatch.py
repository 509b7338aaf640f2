"""The provider reports another model than the gateway priced: charged by the dearer, reported."""

from __future__ import annotations

import pytest

from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.catalog.pricing import cost_micros
from gateway_extproc.response.model_mismatch import (
    Mismatch,
    MismatchKind,
    in_provider,
    price_reported,
)
from gateway_extproc.tokens import Usage

CATALOG = Catalog.load([])
USAGE = Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=200)


def entry(name: str) -> ModelEntry:
    found = CATALOG.lookup(name)
    assert found is not None
    return found


def cost(name: str, usage: Usage = USAGE) -> int:
    return cost_micros(usage, entry(name).price)


def test_no_report_or_the_same_model_is_no_mismatch() -> None:
    mini = entry("gpt-4o-mini")
    assert price_reported(USAGE, mini, None, CATALOG.lookup) == (cost("gpt-4o-mini"), None)
    assert price_reported(USAGE, mini, "gpt-4o-mini", CATALOG.lookup) == (cost("gpt-4o-mini"), None)
    # a dated snapshot of the same model, as providers report it
    dated = price_reported(USAGE, mini, "gpt-4o-mini-2024-07-18", CATALOG.lookup)
    assert dated == (cost("gpt-4o-mini"), None)


def test_a_dearer_reported_model_is_charged_at_its_price() -> None:
    charged, mismatch = price_reported(USAGE, entry("gpt-4o-mini"), "gpt-4o", CATALOG.lookup)
    assert cost("gpt-4o") > cost("gpt-4o-mini")
    assert charged == cost("gpt-4o")
    assert mismatch == Mismatch(MismatchKind.DEARER_REPORTED, "gpt-4o-mini", "gpt-4o", "gpt-4o")
    assert mismatch.describe() == (
        "provider reported model 'gpt-4o' but the gateway priced 'gpt-4o-mini' "
        "(dearer_reported); charged at 'gpt-4o'"
    )


def test_a_cheaper_reported_model_does_not_lower_the_price() -> None:
    charged, mismatch = price_reported(
        USAGE, entry("gpt-4o"), "gpt-4o-mini-2024-07-18", CATALOG.lookup
    )
    assert charged == cost("gpt-4o")
    assert mismatch == Mismatch(
        MismatchKind.CHEAPER_REPORTED, "gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4o"
    )


def test_an_unknown_reported_model_keeps_the_priced_cost_and_is_reported_bounded() -> None:
    charged, mismatch = price_reported(USAGE, entry("gpt-4o"), "x" * 500, CATALOG.lookup)
    assert charged == cost("gpt-4o")
    assert mismatch is not None and mismatch.kind is MismatchKind.UNKNOWN_REPORTED
    assert mismatch.charged == "gpt-4o"
    assert len(mismatch.describe()) < 250


@pytest.mark.parametrize(
    "usage",
    [
        Usage(),
        Usage(input_tokens=10),
        Usage(output_tokens=10),
        Usage(input_tokens=5000, cached_input_tokens=4000, output_tokens=1),
        Usage(input_tokens=1, output_tokens=100, reasoning_tokens=90),
    ],
)
@pytest.mark.parametrize(
    ("priced", "reported"),
    [("gpt-4o-mini", "gpt-4o"), ("gpt-4o", "gpt-4o-mini"), ("claude-haiku-4-5", "claude-opus-4-8")],
)
def test_the_charge_is_always_the_dearer_of_the_two(
    usage: Usage, priced: str, reported: str
) -> None:
    charged, _ = price_reported(usage, entry(priced), reported, CATALOG.lookup)
    assert charged == max(cost(priced, usage), cost(reported, usage))


# --- a provider that names models in its own namespace (Azure OpenAI) ---

NO_OPENAI = CATALOG.without_shipped_models_of(["openai"])  # an Azure-only gateway


@pytest.mark.parametrize("catalog", [CATALOG, NO_OPENAI], ids=["with-openai", "azure-only"])
@pytest.mark.parametrize("reported", ["gpt-4o", "gpt-4o-2024-11-20", "prod-4o"])
def test_azures_faithful_report_is_no_mismatch(catalog: Catalog, reported: str) -> None:
    """Azure answers `azure/gpt-4o` with its deployment's model (dated) or the deployment's name:
    the same model, not `cheaper_reported` against OpenAI's `gpt-4o` nor `unknown_reported`."""
    priced = entry("azure/gpt-4o")
    lookup = in_provider(priced, catalog.lookup, deployment="prod-4o")
    assert price_reported(USAGE, priced, reported, lookup) == (cost("azure/gpt-4o"), None)


@pytest.mark.parametrize("catalog", [CATALOG, NO_OPENAI], ids=["with-openai", "azure-only"])
def test_azure_reporting_another_of_its_models_is_still_a_mismatch(catalog: Catalog) -> None:
    mini = entry("azure/gpt-4o-mini")
    lookup = in_provider(mini, catalog.lookup, deployment="gpt-4o-mini")
    charged, mismatch = price_reported(USAGE, mini, "gpt-4o-2024-11-20", lookup)
    assert charged == cost("azure/gpt-4o") > cost("azure/gpt-4o-mini")
    assert mismatch == Mismatch(
        MismatchKind.DEARER_REPORTED, "azure/gpt-4o-mini", "gpt-4o-2024-11-20", "azure/gpt-4o"
    )
    big = entry("azure/gpt-4o")
    lookup = in_provider(big, catalog.lookup, deployment="gpt-4o")
    charged, mismatch = price_reported(USAGE, big, "gpt-4o-mini", lookup)
    assert charged == cost("azure/gpt-4o")
    assert mismatch is not None and mismatch.kind is MismatchKind.CHEAPER_REPORTED
    assert mismatch.charged == "azure/gpt-4o"
    # another deployment's name is not the priced model: unknown, the priced cost stands
    charged, mismatch = price_reported(USAGE, big, "prod-other", lookup)
    assert charged == cost("azure/gpt-4o")
    assert mismatch is not None and mismatch.kind is MismatchKind.UNKNOWN_REPORTED


def test_the_prefix_is_read_only_among_the_same_providers_models() -> None:
    """A prefixed name of another provider is not taken for the priced provider's model."""
    priced = entry("azure/gpt-4o")
    other = ModelEntry("azure/gpt-4o-mini", "elsewhere", priced.schema, 1, entry("gpt-4o").price)
    names = {"azure/gpt-4o-mini": other, "gpt-4o-mini": entry("gpt-4o-mini")}
    lookup = in_provider(priced, names.get)
    assert lookup("gpt-4o-mini") == entry("gpt-4o-mini")
    # an unprefixed model resolves as before
    assert in_provider(entry("gpt-4o"), CATALOG.lookup, "gpt-4o")("gpt-4o-mini") == entry(
        "gpt-4o-mini"
    )
