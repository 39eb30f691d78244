"""The install is the lock: what is installed here is what requirements/lock.txt pins, every lock
file is hashed and agrees with the others, and pyproject's ranges admit exactly the locked
versions. A drifted environment (or a lock nobody refreshed) fails here, not on a user's machine."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.lockfile import read_lock

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
LOCK_FILES = ["lock.txt", "worker.txt", "bot.txt", "torch-cpu.txt"]


def _pyproject_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(name) for name in names]


@pytest.mark.parametrize("name", LOCK_FILES)
def test_every_lock_file_pins_with_hashes(name: str) -> None:
    pins = read_lock(REQUIREMENTS / name)
    assert pins
    unhashed = [pkg for pkg, pin in pins.items() if not pin.hashes]
    assert not unhashed, f"{name}: no --hash for {unhashed}"


def test_installed_versions_are_the_locked_ones() -> None:
    """Fails when this environment differs from the lock: run ./scripts/setup.sh again."""
    wrong = {}
    for name, pin in read_lock(REQUIREMENTS / "lock.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed == "missing" or Version(installed) != Version(pin.version):
            wrong[name] = f"installed {installed}, locked {pin.version}"
    assert not wrong, wrong


def test_installed_torch_is_one_pyproject_admits() -> None:
    """torch may be a host's own CUDA build (kept by setup.sh), but only within our range."""
    torch_req = next(r for r in _pyproject_requirements() if r.name == "torch")
    installed = Version(metadata.version("torch"))
    assert torch_req.specifier.contains(installed.base_version), (str(installed), str(torch_req))


def test_pyproject_ranges_admit_the_locked_versions() -> None:
    pins = read_lock(REQUIREMENTS / "lock.txt") | read_lock(REQUIREMENTS / "torch-cpu.txt")
    for req in _pyproject_requirements("postgres", "dev"):
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is in pyproject but not in the lock: ./scripts/lock.sh"
        assert req.specifier.contains(Version(pin.version).base_version), (str(req), pin.version)


@pytest.mark.parametrize("name", ["worker.txt", "bot.txt", "torch-cpu.txt"])
def test_image_locks_agree_with_the_main_lock(name: str) -> None:
    main = read_lock(REQUIREMENTS / "lock.txt") | read_lock(REQUIREMENTS / "torch-cpu.txt")
    for pkg, pin in read_lock(REQUIREMENTS / name).items():
        assert main[pkg].version == pin.version, (name, pkg, pin.version, main[pkg].version)


def test_bot_lock_is_torch_free_and_inside_the_worker_lock() -> None:
    bot, worker = read_lock(REQUIREMENTS / "bot.txt"), read_lock(REQUIREMENTS / "worker.txt")
    assert "torch" not in bot and "diffusers" not in bot
    assert set(bot) <= set(worker), sorted(set(bot) - set(worker))


def test_setup_installs_only_from_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if '"${pip[@]}"' in line]
    assert installs
    for line in installs:
        assert "--no-deps" in line, line
        assert "-r requirements/" in line or "-e ." in line, line
