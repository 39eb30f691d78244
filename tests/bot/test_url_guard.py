"""The dataset URL guard: IPv6 forms that embed a private or loopback IPv4 are refused, and
every refused or failed download reads the same. Name resolution and the connector are
patched; nothing connects anywhere but 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from bot import downloads
from bot.errors import BadInput

EMBEDDING_PRIVATE = [
    "64:ff9b::7f00:1",  # NAT64 well-known prefix → 127.0.0.1
    "64:ff9b::a00:1",  # → 10.0.0.1
    "64:ff9b:1::a00:1",  # local-use NAT64 (operator-defined embedding): refused outright
    "2002:7f00:1::1",  # 6to4 → 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 → 192.168.1.1
    "::7f00:1",  # IPv4-compatible → 127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible → 169.254.169.254 (cloud metadata)
    "::ffff:0:7f00:1",  # SIIT → 127.0.0.1
    "::ffff:0:a00:1",  # SIIT → 10.0.0.1
    "fec0::a00:1",  # site-local
    "::ffff:127.0.0.1",  # IPv4-mapped (already refused before)
]


@pytest.mark.parametrize("address", EMBEDDING_PRIVATE)
def test_ipv6_forms_of_private_ipv4_are_not_public(address: str) -> None:
    assert not downloads.is_public(address)


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "8.8.8.8"])
def test_the_same_forms_of_a_public_ipv4_stay_public(address: str) -> None:
    assert downloads.is_public(address)


def _resolving_to(address: str | None) -> Any:
    async def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if address is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port or 443))]

    return getaddrinfo


class _ToLocal(AbstractResolver):
    """Whatever the host, connect to 127.0.0.1:`port` (what a patched connector reaches)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=self.port, family=socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
        ]  # fmt: skip

    async def close(self) -> None:
        return None


async def _plain_http_server() -> tuple[asyncio.Server, int]:
    """Answers every connection with a plain-HTTP 404 (so a TLS handshake fails on it)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _message(url: str, dest: Path) -> str:
    with pytest.raises(BadInput) as caught:
        await downloads.download_url(url, dest, 10_000)
    assert not dest.exists()
    return str(caught.value)


async def test_every_refused_or_failed_download_reads_the_same(tmp_path, monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    server, http_port = await _plain_http_server()
    messages = []
    try:
        monkeypatch.setattr(loop, "getaddrinfo", _resolving_to(None))  # no such host
        messages.append(await _message("https://nowhere.example/a.zip", tmp_path / "a"))
        for private in ("10.0.0.5", "64:ff9b::7f00:1"):  # private, directly or embedded
            monkeypatch.setattr(loop, "getaddrinfo", _resolving_to(private))
            messages.append(await _message("https://internal.example/a.zip", tmp_path / "b"))
        monkeypatch.setattr(loop, "getaddrinfo", _resolving_to("93.184.216.34"))  # public
        for port in (_closed_port(), http_port):  # a closed port; a port that speaks no TLS
            monkeypatch.setattr(
                downloads, "_connector", lambda _insecure, p=port: aiohttp.TCPConnector(
                    resolver=_ToLocal(p))
            )  # fmt: skip
            messages.append(await _message("https://public.example/a.zip", tmp_path / "c"))
    finally:
        server.close()
        await server.wait_closed()
    assert len(messages) == 5
    assert set(messages) == {downloads.GENERIC_FAILURE}, messages
