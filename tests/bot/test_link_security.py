"""Download links: a key that survives restarts (kept with mode 600), answers that no cache
keeps, and doctor warnings for links members cannot reach or that travel unencrypted."""

from __future__ import annotations

import stat
from pathlib import Path

import aiohttp
import yaml

from atelier.doctor_links import check_compose, check_public_url, published_plain_ports
from atelier.settings import load_settings
from bot.links import LinkServer, LinkSigner, stored_link_secret

ROOT = Path(__file__).resolve().parents[2]


def test_the_link_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = stored_link_secret(tmp_path)
    assert len(first) >= 32
    path = tmp_path / "link_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_link_secret(tmp_path) == first  # a restart signs alike: old links still work
    path.chmod(0o644)
    assert stored_link_secret(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_link_from_before_a_restart_still_works(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    before = LinkSigner(stored_link_secret(tmp_path), tmp_path, "https://h", 60)
    url, _ = before.link(model, now=1000)
    after = LinkSigner(stored_link_secret(tmp_path), tmp_path, "https://h", 60)
    assert after.check("m.safetensors", "1060", url.split("sig=")[1], now=1001) == model.resolve()


async def test_every_answer_forbids_caching(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    signer = LinkSigner(b"k" * 32, tmp_path, "http://127.0.0.1:0", ttl_seconds=60)
    server = LinkServer(signer, "127.0.0.1", 0)
    await server.start()
    signer.public_url = f"http://127.0.0.1:{server.port}"
    try:
        url, _ = signer.link(model)
        async with aiohttp.ClientSession() as http:
            for target in (url, url.replace("sig=", "sig=0")):
                async with http.get(target) as response:
                    assert response.headers["Cache-Control"] == "private, no-store"
    finally:
        await server.stop()


def test_doctor_warns_about_a_loopback_or_plain_http_public_url() -> None:
    default = check_public_url(load_settings())
    assert default.status == "warn" and "loopback" in default.detail
    assert "https" in default.fix
    plain = check_public_url(load_settings(discord={"public_url": "http://atelier.example.org"}))
    assert plain.status == "warn" and "unencrypted" in plain.detail
    good = check_public_url(load_settings(discord={"public_url": "https://atelier.example.org"}))
    assert good.status == "ok"


def test_doctor_warns_when_compose_publishes_the_link_port_on_every_interface(
    tmp_path: Path,
) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(yaml.safe_dump({"services": {"bot": {"ports": ["8765:8765"]}}}))
    check = check_compose(load_settings(), compose)
    assert check is not None and check.status == "warn" and "127.0.0.1:8765:8765" in check.fix
    assert published_plain_ports({"services": {"bot": {"ports": ["0.0.0.0:8765:8765"]}}}, 8765)
    assert not published_plain_ports({"services": {"bot": {"ports": ["9000:9000"]}}}, 8765)


def test_the_shipped_compose_file_keeps_the_link_port_on_loopback() -> None:
    check = check_compose(load_settings(), ROOT / "docker" / "compose.yaml")
    assert check is not None and check.status == "ok", check
