"""Signed, expiring download links served by the bot's own small aiohttp server.

A link is `{public_url}/dl/{relative path}?exp=UNIX&sig=HEX`, where `sig` is an HMAC-SHA256 over
the path and the expiry. The path is relative to the data folder and never leaves it. A bad
signature or an expired link gets 403. Every answer says `Cache-Control: private, no-store`: a
shared proxy or the browser's disk cache must not keep a member's model.

The key is `link_secret` when set, else one made on first start and kept in
`data_dir/link_secret` (mode 600), so links survive a restart and every bot on the same data
folder signs alike.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from storage.fsutil import fsync_dir

log = logging.getLogger(__name__)

SECRET_FILE = "link_secret"
NO_STORE = {
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def stored_link_secret(data_dir: Path) -> bytes:
    """The link key kept in `data_dir/link_secret`, made (mode 600) on first use."""
    path = Path(data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others (mode %o); now 600", path, mode)
        value = path.read_bytes().strip()
        if len(value) < 32:
            raise RuntimeError(f"{path} holds a key shorter than 32 bytes; delete it") from None
        return value
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_urlsafe(48).encode())
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(path.parent)
    log.info("made a new download-link key in %s", path)
    return path.read_bytes().strip()


class LinkSigner:
    """Makes and checks signed links for files under `root`."""

    def __init__(self, secret: bytes | None, root: Path, public_url: str, ttl_seconds: float):
        self.secret = secret or secrets.token_bytes(32)
        self.root = root.resolve()
        self.public_url = public_url.rstrip("/")
        self.ttl = ttl_seconds

    def signature(self, relative: str, expires: int) -> str:
        message = f"{relative}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def link(self, path: Path, now: float | None = None) -> tuple[str, datetime]:
        """A URL for `path` (which must lie under the root) and when it expires."""
        relative = Path(path).resolve().relative_to(self.root).as_posix()
        expires = int((now if now is not None else time.time()) + self.ttl)
        sig = self.signature(relative, expires)
        url = f"{self.public_url}/dl/{quote(relative)}?exp={expires}&sig={sig}"
        return url, datetime.fromtimestamp(expires, UTC)

    def check(self, relative: str, expires: str, sig: str, now: float | None = None) -> Path:
        """The file a request may read; `PermissionError` for a bad or expired link."""
        try:
            when = int(expires)
        except ValueError:
            raise PermissionError("bad expiry") from None
        if not hmac.compare_digest(self.signature(relative, when), sig):
            raise PermissionError("bad signature")
        if when < (now if now is not None else time.time()):
            raise PermissionError("link expired")
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise PermissionError("outside the data folder")
        return path


def make_app(signer: LinkSigner) -> web.Application:
    async def download(request: web.Request) -> web.StreamResponse:
        try:
            path = signer.check(
                request.match_info["path"],
                request.query.get("exp", ""),
                request.query.get("sig", ""),
            )
        except PermissionError as error:
            return web.Response(status=403, text=f"forbidden: {error}", headers=NO_STORE)
        if not path.is_file():
            return web.Response(status=404, text="gone", headers=NO_STORE)
        return web.FileResponse(
            path,
            headers={"Content-Disposition": f'attachment; filename="{path.name}"', **NO_STORE},
        )

    app = web.Application()
    app.router.add_get("/dl/{path:.+}", download)
    return app


class LinkServer:
    """Runs the link app on host:port (port 0 picks a free one; see `port`)."""

    def __init__(self, signer: LinkSigner, host: str, port: int) -> None:
        self.signer, self.host, self.port = signer, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(make_app(self.signer), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
