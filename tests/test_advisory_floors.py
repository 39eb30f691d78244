"""pyproject's floors stay at or above the first releases that fix known advisories, so no
resolution (the lock, a user's `pip install`) can pick a vulnerable version."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

ADVISORY_FIXED: dict[str, tuple[str, tuple[str, ...]]] = {
    "aiohttp": ("3.14.3", ("GHSA-cq5v-8q36-5273", "GHSA-mfx4-hv73-q22v", "GHSA-mq44-7p77-q5h7")),
    "torch": ("2.10", ("CVE-2026-24747", "CVE-2025-32434")),
    "transformers": ("5.23", ("CVE-2025-3933", "CVE-2025-5197")),
}
"""Package → (first version with every listed fix, the advisories); see commit f0c68ef."""


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        names += extra
    found: dict[str, Requirement] = {}
    for text in names:
        requirement = Requirement(text)
        found.setdefault(canonicalize_name(requirement.name), requirement)
    return found


@pytest.mark.parametrize("package", sorted(ADVISORY_FIXED))
def test_floor_is_at_or_above_the_advisory_fix(package: str) -> None:
    fixed, advisories = ADVISORY_FIXED[package]
    requirement = _requirements().get(package)
    assert requirement is not None, f"{package} is no longer in pyproject.toml"
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", ">", "==")]
    assert floors, f"{package} has no floor; it must be >= {fixed} ({', '.join(advisories)})"
    assert max(floors) >= Version(fixed), (
        f"{package}: floor {max(floors)} admits versions before {fixed} ({', '.join(advisories)})"
    )
