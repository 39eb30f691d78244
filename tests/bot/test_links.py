import aiohttp
import pytest

from bot.links import LinkServer, LinkSigner


def test_sign_and_check(tmp_path) -> None:
    (tmp_path / "m").mkdir()
    model = tmp_path / "m" / "a.safetensors"
    model.write_bytes(b"abc")
    signer = LinkSigner(b"k", tmp_path, "http://h:1", ttl_seconds=60)
    url, _ = signer.link(model, now=1000)
    rel = "m/a.safetensors"
    sig = url.split("sig=")[1]
    assert signer.check(rel, "1060", sig, now=1001) == model.resolve()
    with pytest.raises(PermissionError, match="expired"):
        signer.check(rel, "1060", sig, now=2000)
    with pytest.raises(PermissionError, match="signature"):
        signer.check(rel, "1061", sig, now=1001)  # expiry changed
    with pytest.raises(PermissionError, match="signature"):
        signer.check("m/b.safetensors", "1060", sig, now=1001)
    with pytest.raises(PermissionError):
        LinkSigner(b"other", tmp_path, "http://h:1", 60).check(rel, "1060", sig, now=1001)


async def test_server_serves_exact_bytes_and_refuses(tmp_path) -> None:
    data = bytes(range(256)) * 4000
    model = tmp_path / "big.safetensors"
    model.write_bytes(data)
    signer = LinkSigner(None, tmp_path, "http://127.0.0.1:0", ttl_seconds=60)
    server = LinkServer(signer, "127.0.0.1", 0)
    await server.start()
    signer.public_url = f"http://127.0.0.1:{server.port}"
    try:
        url, _ = signer.link(model)
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == data
            async with http.get(url.replace("sig=", "sig=0")) as resp:
                assert resp.status == 403
            signer.ttl = -1
            expired, _ = signer.link(model)
            async with http.get(expired) as resp:
                assert resp.status == 403
            async with http.get(url.replace("big", "../etc")) as resp:
                assert resp.status in (403, 404)
    finally:
        await server.stop()
