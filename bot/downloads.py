"""Dataset downloads: streamed to disk, size-capped while streaming, and guarded against
requests into the bot's own network (private, loopback, link-local addresses are refused after
DNS resolution, and again for every redirect; the connection uses only vetted addresses).

IPv6 forms that carry an IPv4 address (NAT64, 6to4, IPv4-compatible, IPv4-mapped, SIIT) are
judged by that IPv4 address: on an IPv6-only host with DNS64 they reach it. Prefixes whose
embedding is operator-defined (local-use NAT64 `64:ff9b:1::/48`) and deprecated site-local
`fec0::/10` are refused outright.

Every refused or failed fetch gets the same sentence: which step failed (no such host, a
private address, a closed port, a TLS error, an HTTP status) would let a member map the bot's
network. The operator's log says which.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bot.errors import BadInput, LimitReached

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CHUNK = 256 * 1024
RunIO = Callable[..., Awaitable[Any]]
"""Runs a blocking file call off the loop (default: `asyncio.to_thread`)."""
TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=15, sock_read=60)


NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
REFUSED_V6 = (ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10"))
GENERIC_FAILURE = (
    "I couldn't download the dataset link. Give a public https:// link that serves the zip "
    "itself (not a web page)."
)


class Refused(Exception):
    """A fetch step refused or failed; the member only ever sees `GENERIC_FAILURE`."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, where the prefix defines one."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in NAT64_WELL_KNOWN or ip in SIIT:
        return low32
    if ip in IPV4_COMPATIBLE and int(ip) > 0xFFFF:  # not ::, ::1 or the other tiny ones
        return low32
    return None


def is_public(address: str) -> bool:
    """Only globally routable unicast addresses may be fetched."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in REFUSED_V6):
            return False
        inner = embedded_ipv4(ip)
        if inner is not None:
            return inner.is_global and not inner.is_multicast
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
            raise OSError("the host resolves only to private or reserved addresses")
        return results

    async def close(self) -> None:
        return None


async def check_host(url: URL, allow_loopback: bool) -> None:
    """Refuse a host whose addresses include a private, loopback or link-local one."""
    assert url.host is not None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port or 443)
    except OSError:
        raise Refused("host not found") from None
    for *_rest, sockaddr in infos:
        address = str(sockaddr[0])
        if allow_loopback and ipaddress.ip_address(address).is_loopback:
            continue
        if not is_public(address):
            raise Refused(f"non-public address {address}")


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


def _connector(allow_insecure: bool) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(resolver=GuardedResolver(allow_loopback=allow_insecure))


async def download_url(
    url: str,
    dest: Path,
    max_bytes: int,
    *,
    allow_insecure: bool = False,
    run_io: RunIO | None = None,
) -> int:
    """Fetch a member's dataset link to `dest`, following redirects by hand (each re-checked).
    Any refusal or network failure is one `BadInput(GENERIC_FAILURE)`."""
    check_url(URL(url), allow_insecure)
    try:
        return await _fetch(URL(url), dest, max_bytes, allow_insecure, run_io)
    except (Refused, aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
        log.info("dataset link not fetched: %s: %s", type(error).__name__, error)
        dest.unlink(missing_ok=True)
        raise BadInput(GENERIC_FAILURE) from None


async def _fetch(
    current: URL, dest: Path, max_bytes: int, allow_insecure: bool, run_io: RunIO | None
) -> int:
    async with aiohttp.ClientSession(
        connector=_connector(allow_insecure), timeout=TIMEOUT
    ) as session:
        for _ in range(MAX_REDIRECTS + 1):
            if current.scheme not in ("https", "http"):
                raise Refused(f"redirect to scheme {current.scheme}")
            try:
                check_url(current, allow_insecure)
            except BadInput:
                raise Refused("redirect to a plain-http address") from None
            await check_host(current, allow_insecure)
            async with session.get(current, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location", "")
                    current = URL(urljoin(str(current), location))
                    continue
                if response.status != 200:
                    raise Refused(f"HTTP {response.status}")
                return await stream_to_file(response, dest, max_bytes, run_io)
    raise Refused("too many redirects")


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
