"""Every relative link in the documentation resolves: README.md and docs/*.md link to files that
exist and to headings those pages have, by GitHub's anchor rules. The README stays the front door:
the two commands, a page short enough to read (the reference lives in docs/), and a "How a request
flows" that names every package and module of the sidecar where it lives."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.paths import REPO, doc_pages

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = ("http://", "https://", "mailto:")
README_MAX_LINES = 350
PACKAGE = REPO / "gateway_extproc"


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): the rendered text lower-cased, punctuation
    dropped (letters, digits, `-`, `_` and spaces stay), each space a hyphen."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link renders as its text
    text = text.replace("*", "").lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in prose_lines(page.read_text()):
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """The relative link targets on a page (code spans and fenced blocks are not links)."""
    found = []
    for number, line in prose_lines(page.read_text()):
        for link in LINK.finditer(CODE_SPAN.sub("", line)):
            if not link.group(1).startswith(EXTERNAL):
                found.append((number, link.group(1)))
    return found


def broken(page: Path, root: Path = REPO) -> list[str]:
    """Each link on `page` whose file is missing, or whose page has no such heading."""
    problems = []
    for number, target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with that anchor in {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Two commands", "two-commands"),
        (
            "Request bodies: size, structure and the event loop",
            "request-bodies-size-structure-and-the-event-loop",
        ),
        ("Several workers: one /metrics per worker", "several-workers-one-metrics-per-worker"),
        ("Where the numbers come from: the rollups", "where-the-numbers-come-from-the-rollups"),
        ("The `budget_store` keys", "the-budget_store-keys"),
        ("Spend reports and the admin API", "spend-reports-and-the-admin-api"),
        ("Budgets: decisions and measurements", "budgets-decisions-and-measurements"),
        ("Envoy settings — and why", "envoy-settings--and-why"),
    ],
)
def test_anchors_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# A\n\n## Limits\n\n```\n## Limits\n```\n\n## Limits\n")
    assert anchors(page) == {"a", "limits", "limits-1"}


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    (tmp_path / "q.md").write_text("# Q\n\n## Here\n")
    page.write_text(
        "# P\n\n[ok](q.md#here) [self](#p) `[code](nowhere.md)` [web](https://example.com/#x)\n"
        "[gone](missing.md) [moved](q.md#there) [lost](#nothing)\n"
    )
    assert [p.split(": ", 1)[1] for p in broken(page, tmp_path)] == [
        "missing.md: no such file",
        "q.md#there: no heading with that anchor in q.md",
        "#nothing: no heading with that anchor in p.md",
    ]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken(page) == []


def test_the_readme_is_the_front_door() -> None:
    readme = (REPO / "README.md").read_text()
    two = re.search(r"^## Two commands\n\n```sh\n(.*?)```", readme, re.S | re.M)
    assert two is not None, "the README's first section is the two commands"
    commands = [line.split("#", 1)[0].strip() for line in two.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    lines = readme.count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines: keep it the front door (at most {README_MAX_LINES}) "
        "and put reference material in docs/"
    )


def test_how_a_request_flows_names_every_package_and_module() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## How a request flows\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w./]+)`", section))
    code = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    code |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert sorted(code - named) == [], "name these in the README's code map (How a request flows)"
