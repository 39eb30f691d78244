"""`atelier doctor` checks for the signed-link server: can members reach it, and does it travel
over TLS (a link is a bearer token for a member's model)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from atelier.checks import Check
from atelier.settings import AtelierSettings

COMPOSE_FILE = Path("docker") / "compose.yaml"
ALL_INTERFACES = ("", "0.0.0.0", "::", "[::]")
TLS_FIX = (
    "put a TLS proxy in front (e.g. `caddy reverse-proxy --from atelier.example.org "
    "--to 127.0.0.1:8765`) and set discord.public_url to its https:// address"
)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_public_url(settings: AtelierSettings) -> Check:
    """Members open links in their own browser: a loopback or plain-HTTP URL is a problem."""
    url = settings.discord.public_url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _is_loopback(host):
        return Check(
            "link address",
            "warn",
            f"discord.public_url is {url}: members' browsers cannot reach a loopback address",
            TLS_FIX,
        )
    if parts.scheme != "https":
        return Check(
            "link address",
            "warn",
            f"discord.public_url is {url}: links (bearer tokens for models) travel unencrypted",
            TLS_FIX,
        )
    return Check("link address", "ok", url)


def published_plain_ports(compose: dict[str, Any], port: int) -> list[str]:
    """`ports:` entries in a compose file that publish `port` on every host interface."""
    found = []
    for name, service in (compose.get("services") or {}).items():
        for entry in service.get("ports") or []:
            if isinstance(entry, dict):
                host_ip = str(entry.get("host_ip", ""))
                target = int(entry.get("target", 0))
                spec = f"{entry.get('published')}:{target}"
            else:
                spec = str(entry)
                pieces = spec.split(":")
                target = int(pieces[-1].split("/")[0])
                host_ip = ":".join(pieces[:-2]) if len(pieces) > 2 else ""
            if target == port and host_ip in ALL_INTERFACES:
                found.append(f"{name}: {spec}")
    return found


def check_compose(settings: AtelierSettings, path: Path = COMPOSE_FILE) -> Check | None:
    """Warn when the compose file publishes the link port over plain HTTP on every interface."""
    if not path.is_file():
        return None
    import yaml

    try:
        compose = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        exposed = published_plain_ports(compose, settings.discord.link_port or 8765)
    except (yaml.YAMLError, ValueError, AttributeError) as error:
        return Check("compose ports", "warn", f"cannot read {path}: {type(error).__name__}")
    if exposed:
        return Check(
            "compose ports",
            "warn",
            f"{path} publishes the link port over plain HTTP on every interface "
            f"({'; '.join(exposed)})",
            'publish it as "127.0.0.1:8765:8765" and ' + TLS_FIX,
        )
    return Check("compose ports", "ok", f"{path} keeps the link port off public interfaces")


def link_checks(settings: AtelierSettings) -> list[Check]:
    """The download links' address and, when a compose file is here, its published ports."""
    compose = check_compose(settings)
    return [check_public_url(settings), *([compose] if compose else [])]
