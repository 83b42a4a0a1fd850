"""docs/security.md's threat model stays honest: every "no" names tests that exist, every "yes" says why it is
accepted and who approves it, and only actors a production reviewer let run hold a "yes"."""

from __future__ import annotations

import re

from tests.workflows.model import ROOT

SECURITY = ROOT / "docs" / "security.md"
COLUMNS = [
    "actor",
    "production's server",
    "production's state",
    "production's secrets",
    "production's GitHub environment",
    "the images production deploys",
]
ACTORS = [
    "a PR author from a fork",
    "a PR author with write access",
    "someone who can comment",
    "a holder of staging's secrets",
    "a holder of `staging-preview`'s secrets",
    "a holder of `production-preview`'s secrets",
    "a holder of `production-drift`'s secrets",
]
TEST_REFERENCE = re.compile(r"`(?P<path>tests/[\w/]+\.py)::(?P<name>test_\w+)`")


def table(text: str) -> list[list[str]]:
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [
        [cell.strip() for cell in row.strip().strip("|").split(" | ")] for row in rows if not row.startswith("| ---")
    ]


def cell_problems(text: str) -> list[str]:
    rows = table(text)
    problems = [] if rows[0] == COLUMNS else [f"columns {rows[0]}; expected {COLUMNS}"]
    actors = [row[0] for row in rows[1:]]
    problems += [f"no row for {actor!r}" for actor in ACTORS if not any(a.startswith(actor) for a in actors)]
    for row in rows[1:]:
        actor = row[0]
        if len(row) != len(COLUMNS):
            problems.append(f"{actor}: {len(row)} cells")
            continue
        for column, cell in zip(COLUMNS[1:], row[1:], strict=True):
            where = f"{actor} / {column}"
            if cell.startswith("**no**"):
                references = list(TEST_REFERENCE.finditer(cell))
                if not references:
                    problems.append(f"{where}: a no names no test")
                for reference in references:
                    path = ROOT / reference["path"]
                    if not path.is_file() or not re.search(rf"(?m)^def {reference['name']}\(", path.read_text()):
                        problems.append(f"{where}: {reference['path']}::{reference['name']} does not exist")
            elif cell.startswith("**yes**"):
                if "Accepted" not in cell or not re.search(r"[Aa]pproved (by|as)", cell):
                    problems.append(f"{where}: a yes says why it is accepted and who approves it")
                if "production-" not in actor:
                    problems.append(f"{where}: a yes for an actor no production reviewer lets run")
            else:
                problems.append(f"{where}: starts with neither **no** nor **yes**")
    return problems


def test_every_no_names_existing_tests_and_every_yes_its_acceptance_and_approver() -> None:
    problems = cell_problems(SECURITY.read_text())
    assert not problems, "\n".join(problems)


def test_a_no_without_a_real_test_or_a_yes_nobody_approved_is_refused() -> None:
    text = SECURITY.read_text()
    renamed = text.replace("test_staging_secrets_cannot_reach_production_state`", "test_gone`", 1)
    assert any("test_gone does not exist" in p for p in cell_problems(renamed))
    unapproved = text.replace("| **no**: staging's roles name no production bucket", "| **yes**: it can", 1)
    assert any("a yes for an actor no production reviewer lets run" in p for p in cell_problems(unapproved))


def test_the_readme_links_the_threat_model() -> None:
    assert "(docs/security.md)" in (ROOT / "README.md").read_text()
