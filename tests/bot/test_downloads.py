"""The dataset-link guard, against a local aiohttp server."""

import pytest
from aiohttp import web
from yarl import URL

from bot import downloads
from bot.errors import BadInput, LimitReached


def test_public_addresses_only() -> None:
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "0.0.0.0",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ):
        assert not downloads.is_public(address), address
    assert downloads.is_public("93.184.216.34") and downloads.is_public("2606:4700::1")


def test_https_only() -> None:
    downloads.check_url(URL("https://example.com/a.zip"), allow_insecure=False)
    with pytest.raises(BadInput, match="https"):
        downloads.check_url(URL("http://example.com/a.zip"), allow_insecure=False)
    with pytest.raises(BadInput):
        downloads.check_url(URL("ftp://example.com/a.zip"), allow_insecure=True)
    with pytest.raises(BadInput):  # the exception is only for loopback
        downloads.check_url(URL("http://example.com/a.zip"), allow_insecure=True)
    downloads.check_url(URL("http://127.0.0.1:5/a.zip"), allow_insecure=True)


@pytest.fixture
async def site():
    async def small(_r):
        return web.Response(body=b"PK" + b"x" * 100)

    async def big(_r):
        resp = web.StreamResponse()  # no Content-Length: the cap must act while streaming
        resp.enable_chunked_encoding()
        await resp.prepare(_r)
        for _ in range(50):
            await resp.write(b"y" * 1000)
        return resp

    async def hop(_r):
        raise web.HTTPFound("/small")

    async def metadata(_r):
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    app.router.add_get("/hop", hop)
    app.router.add_get("/meta", metadata)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_loopback_refused_without_test_setting(site, tmp_path) -> None:
    with pytest.raises(BadInput):
        await downloads.download_url(f"{site}/small", tmp_path / "a", 10_000)
    with pytest.raises(BadInput, match=r"couldn.t download"):
        await downloads.download_url("https://127.0.0.1/a.zip", tmp_path / "a", 10_000)


async def test_download_redirect_and_cap(site, tmp_path) -> None:
    dest = tmp_path / "a.zip"
    assert await downloads.download_url(f"{site}/hop", dest, 10_000, allow_insecure=True) == 102
    assert dest.read_bytes().startswith(b"PK")
    with pytest.raises(LimitReached):
        await downloads.download_url(f"{site}/big", tmp_path / "b", 10_000, allow_insecure=True)
    assert not (tmp_path / "b").exists()


async def test_redirect_to_private_address_refused(site, tmp_path) -> None:
    with pytest.raises(BadInput):
        await downloads.download_url(f"{site}/meta", tmp_path / "c", 10_000, allow_insecure=True)
