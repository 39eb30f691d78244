"""Dataset downloads: streamed to disk, size-capped while streaming, and guarded against
requests into the bot's own network (private, loopback, link-local addresses are refused after
DNS resolution, and again for every redirect; the connection uses only vetted addresses)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bot.errors import BadInput, LimitReached

MAX_REDIRECTS = 5
CHUNK = 256 * 1024
RunIO = Callable[..., Awaitable[Any]]
"""Runs a blocking file call off the loop (default: `asyncio.to_thread`)."""
TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=15, sock_read=60)


def is_public(address: str) -> bool:
    """Only globally routable unicast addresses may be fetched."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: URL, allow_insecure: bool) -> None:
    """https only (plus http://127.0.0.1 when the test/demo setting allows it)."""
    if url.scheme == "https" and url.host:
        return
    if allow_insecure and url.scheme == "http" and url.host in ("127.0.0.1", "localhost"):
        return
    raise BadInput("The dataset link must start with https://.")


class GuardedResolver(AbstractResolver):
    """Resolves like the system, then drops every address that is not public."""

    def __init__(self, allow_loopback: bool = False) -> None:
        self.allow_loopback = allow_loopback

    def _allowed(self, address: str) -> bool:
        loopback = ipaddress.ip_address(address).is_loopback
        return is_public(address) or (self.allow_loopback and loopback)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, family=family
        )
        results: list[ResolveResult] = []
        for fam, _type, proto, _name, sockaddr in infos:
            address = str(sockaddr[0])
            if not self._allowed(address):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(f"{host} resolves only to private or reserved addresses")
        return results

    async def close(self) -> None:
        return None


async def check_host(url: URL, allow_loopback: bool) -> None:
    """Refuse a host whose addresses include a private, loopback or link-local one."""
    assert url.host is not None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port or 443)
    except OSError:
        raise BadInput(f"The dataset link's host `{url.host}` could not be found.") from None
    for *_rest, sockaddr in infos:
        address = str(sockaddr[0])
        if allow_loopback and ipaddress.ip_address(address).is_loopback:
            continue
        if not is_public(address):
            raise BadInput("The dataset link points into a private network; I can't fetch it.")


async def stream_to_file(
    response: aiohttp.ClientResponse, dest: Path, max_bytes: int, run_io: RunIO | None = None
) -> int:
    """Write the body to `dest`; stop (and delete) as soon as it exceeds `max_bytes`."""
    run_io = run_io or asyncio.to_thread
    length = response.content_length
    if length is not None and length > max_bytes:
        raise LimitReached(_too_big(max_bytes))
    written = 0
    with dest.open("wb") as out:
        async for chunk in response.content.iter_chunked(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                break
            await run_io(out.write, chunk)
    if written > max_bytes:
        dest.unlink(missing_ok=True)
        raise LimitReached(_too_big(max_bytes))
    return written


def _too_big(max_bytes: int) -> str:
    return f"The dataset is larger than the {max_bytes / 1024**2:.0f} MB limit."


async def download_url(
    url: str,
    dest: Path,
    max_bytes: int,
    *,
    allow_insecure: bool = False,
    run_io: RunIO | None = None,
) -> int:
    """Fetch a member's dataset link to `dest`, following redirects by hand (each re-checked)."""
    current = URL(url)
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_loopback=allow_insecure))
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(current, allow_insecure)
            await check_host(current, allow_insecure)
            try:
                async with session.get(current, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location", "")
                        current = URL(urljoin(str(current), location))
                        continue
                    if response.status != 200:
                        raise BadInput(f"The dataset link answered HTTP {response.status}.")
                    return await stream_to_file(response, dest, max_bytes, run_io)
            except aiohttp.ClientError as error:
                raise BadInput(f"The dataset link could not be fetched ({_why(error)}).") from None
    raise BadInput("The dataset link redirects too many times.")


async def download_attachment(
    attachment: Any, dest: Path, max_bytes: int, *, run_io: RunIO | None = None
) -> int:
    """Stream a Discord attachment (its CDN URL is Discord's own, so no address guard)."""
    if attachment.size > max_bytes:
        raise LimitReached(_too_big(max_bytes))
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        try:
            async with session.get(attachment.url) as response:
                if response.status != 200:
                    raise BadInput(f"Discord's file server answered HTTP {response.status}.")
                return await stream_to_file(response, dest, max_bytes, run_io)
        except aiohttp.ClientError as error:
            raise BadInput(f"The attachment could not be downloaded ({_why(error)}).") from None


def _why(error: Exception) -> str:
    return type(error).__name__
