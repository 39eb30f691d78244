"""Static checks of the container files: docker/compose.yaml, the Dockerfiles and the pinned
requirement files. No Docker engine is needed: the files are parsed, not built."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from atelier.settings import AtelierSettings
from tests.lockfile import read_lock

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
REQUIREMENTS = ROOT / "requirements"
DOCKERFILES = ["bot.Dockerfile", "worker.Dockerfile"]
ALLOWED_OTHER = re.compile(r"^(DISCORD_TOKEN|POSTGRES_[A-Z_]+)$")
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _settings_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    """Every environment variable name the settings read: ATELIER_ prefix, nested with `__`."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
            continue
        env = f"{prefix}{name}".upper()
        names.add(env)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _settings_env_names(annotation, env + "__")
    return names


SETTINGS_ENV = _settings_env_names(AtelierSettings, "ATELIER_")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _named_volume_mounts(service: dict[str, Any], named: set[str]) -> dict[str, str]:
    """Named-volume mounts of a service as {target: volume}."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry.get("source", ""), entry["target"]
        if source in named:
            mounts[target] = source
    return mounts


def test_settings_walk_sees_nested_fields() -> None:
    assert {"ATELIER_DATA_DIR", "ATELIER_DISCORD__LINK_PORT", "DISCORD_TOKEN"} <= SETTINGS_ENV
    assert "ATELIER_WORKER__DEVICE" in SETTINGS_ENV


def test_bot_and_worker_share_the_data_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    named = set(compose.get("volumes") or {})
    volumes = []
    for name in ("bot", "worker"):
        assert name in services, name
        data_dir = _environment(services[name]).get("ATELIER_DATA_DIR")
        assert data_dir, f"{name} sets no ATELIER_DATA_DIR"
        mounts = _named_volume_mounts(services[name], named)
        assert data_dir in mounts, f"{name} mounts no named volume at {data_dir}"
        volumes.append((data_dir, mounts[data_dir]))
    assert volumes[0] == volumes[1]


def test_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    used = set(VAR_REF.findall(text))
    for service in compose["services"].values():
        used |= set(_environment(service))
    for example in DOCKER.glob(".env*"):
        for line in example.read_text().splitlines():
            match = re.match(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", line)
            if match:
                used.add(match.group(1))
    unknown = {name for name in used if name not in SETTINGS_ENV and not ALLOWED_OTHER.match(name)}
    assert not unknown, f"not fields of atelier.settings.AtelierSettings: {sorted(unknown)}"


def test_postgres_only_under_its_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "postgres" in services
    assert services["postgres"].get("profiles") == ["postgres"]
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    for name in ("bot", "worker"):
        assert not services[name].get("profiles"), f"{name} must run without a profile"
        needs = services[name].get("depends_on") or {}
        if "postgres" in needs:
            assert needs["postgres"].get("required") is False


def test_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_services_restart_and_check_health(compose: dict[str, Any]) -> None:
    for name in ("bot", "worker", "postgres"):
        service = compose["services"][name]
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        assert service.get("healthcheck", {}).get("test"), name


def test_bot_image_installs_no_torch() -> None:
    dockerfile = (DOCKER / "bot.Dockerfile").read_text()
    instructions = "\n".join(
        line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")
    )
    assert not re.search(r"\btorch\b", instructions, re.I)
    assert "requirements/bot.txt" in dockerfile
    assert "--no-deps" in dockerfile
    assert "--require-hashes" in dockerfile
    names = set(read_lock(REQUIREMENTS / "bot.txt"))
    assert not names & {"torch", "torchvision", "diffusers", "transformers", "peft", "accelerate"}


def test_worker_image_pins_torch_from_a_cuda_index() -> None:
    dockerfile = (DOCKER / "worker.Dockerfile").read_text()
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", dockerfile)
    assert re.search(r"TORCH_VERSION=\d+\.\d+\.\d+", dockerfile)
    assert "--require-hashes" in dockerfile
    assert "torch" not in read_lock(REQUIREMENTS / "worker.txt")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_non_root_with_healthcheck(name: str) -> None:
    lines = [line.strip() for line in (DOCKER / name).read_text().splitlines()]
    users = [line.split(None, 1)[1] for line in lines if line.startswith("USER ")]
    assert users, f"{name} sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert re.search(r"^FROM \S+:\S+", "\n".join(lines), re.M), "base image tag must be pinned"
    assert 'ENTRYPOINT ["atelier"]' in lines
