"""A self-contained HTML page of a channel: messages, images inline, embeds, reactions, threads."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from .state import Channel, Message

if TYPE_CHECKING:
    from .server import DiscordEmulator

CSS = """
.mention{background:#e3e6ff;color:#3b47c4;border-radius:3px;padding:0 2px}
code{background:#eceef1;border-radius:3px;padding:0 3px;font-size:90%}
body{font:15px/1.45 system-ui,sans-serif;background:#f5f6f8;color:#1e1f22;margin:0}
main{max-width:860px;margin:0 auto;padding:24px}
h1{font-size:20px;margin:0 0 16px}
.msg{background:#fff;border-radius:8px;padding:10px 14px;margin:8px 0;
  box-shadow:0 1px 2px #0001}
.head{font-size:13px;color:#5c5e66}.author{font-weight:600;color:#1e1f22;margin-right:6px}
.bot{background:#5865f2;color:#fff;font-size:10px;border-radius:3px;padding:1px 4px;
  margin-right:6px}
.content{white-space:pre-wrap;margin-top:4px}
.embed{border-left:4px solid #5865f2;background:#f2f3f5;border-radius:4px;padding:8px 12px;
  margin-top:6px}
.embed .title{font-weight:600}.field{margin-top:4px}.field b{display:block;font-size:13px}
img{max-width:100%;border-radius:4px;margin-top:6px;display:block}
.file{font-size:13px;margin-top:6px;color:#5c5e66}
.reactions span{display:inline-block;background:#eef0ff;border:1px solid #c9cdfb;
  border-radius:10px;padding:0 8px;margin:6px 4px 0 0;font-size:13px}
.thread{margin:6px 0 0 24px;border-left:3px solid #d0d3da;padding-left:12px}
.thread>.name{font-weight:600;font-size:13px;color:#5c5e66}
"""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _embed(emu: DiscordEmulator, e: dict[str, Any]) -> str:
    color = f"#{int(e['color']):06x}" if e.get("color") is not None else "#5865f2"
    parts = [f'<div class="embed" style="border-left-color:{color}">']
    if e.get("title"):
        parts.append(f'<div class="title">{escape(str(e["title"]))}</div>')
    if e.get("description"):
        parts.append(f'<div class="content">{_markdown(emu, str(e["description"]))}</div>')
    for f in e.get("fields") or []:
        parts.append(
            f'<div class="field"><b>{escape(str(f.get("name", "")))}</b>'
            f"{_markdown(emu, str(f.get('value', '')))}</div>"
        )
    for key in ("image", "thumbnail"):
        url = (e.get(key) or {}).get("url")
        if url and not str(url).startswith("attachment://"):
            parts.append(f'<div class="file">{key}: {escape(str(url))}</div>')
    if (e.get("footer") or {}).get("text"):
        parts.append(f'<div class="head">{escape(e["footer"]["text"])}</div>')
    parts.append("</div>")
    return "".join(parts)


def _markdown(emu: DiscordEmulator, text: str) -> str:
    """Discord's common markup as a person sees it: **bold**, `code`, mentions, timestamps."""
    html = escape(text)
    html = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html)
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)

    def user(match: re.Match[str]) -> str:
        found = emu.world.users.get(int(match.group(1)))
        return f'<span class="mention">@{escape(found.display_name if found else "unknown")}</span>'

    def channel(match: re.Match[str]) -> str:
        try:
            _guild, found = emu.world.channel(int(match.group(1)))
        except Exception:  # a deleted or unknown channel shows as Discord shows it
            return '<span class="mention">#unknown</span>'
        return f'<span class="mention">#{escape(found.name)}</span>'

    def when(match: re.Match[str]) -> str:
        return f"<time>{_when(float(match.group(1)))}</time>"

    html = re.sub(r"&lt;@!?(\d+)&gt;", user, html)
    html = re.sub(r"&lt;#(\d+)&gt;", channel, html)
    return re.sub(r"&lt;t:(\d+)(?::[a-zA-Z])?&gt;", when, html)


def _message(emu: DiscordEmulator, msg: Message) -> str:
    author = msg.author
    guild = emu.world.guilds.get(msg.guild_id or 0)
    member = guild.members.get(author.id) if guild else None
    name = (member.nick if member and member.nick else None) or author.display_name
    out = [
        f'<div class="msg" id="m{msg.id}"><div class="head">'
        f'<span class="author">{escape(name)}</span>'
        + ('<span class="bot">APP</span>' if author.bot else "")
        + f"<time>{_when(msg.created_at)}</time>"
        + (" (edited)" if msg.edited_at else "")
        + "</div>"
    ]
    if msg.content:
        out.append(f'<div class="content">{_markdown(emu, msg.content)}</div>')
    images = {}
    for att in msg.attachments:
        ctype = att.content_type or ""
        if ctype.startswith("image/"):
            uri = f"data:{ctype};base64,{base64.b64encode(att.data).decode()}"
            images[att.filename] = uri
            out.append(f'<img alt="{escape(att.filename)}" src="{uri}">')
        else:
            out.append(f'<div class="file">📎 {escape(att.filename)} ({att.size} bytes)</div>')
    for e in msg.embeds:
        html = _embed(emu, e)
        ref = (e.get("image") or {}).get("url", "")
        if str(ref).startswith("attachment://") and ref[13:] in images:
            html = html.replace("</div>", f'<img src="{images[ref[13:]]}"></div>', 1)
        out.append(html)
    if msg.reactions:
        out.append(
            '<div class="reactions">'
            + "".join(
                f'<span title="{len(v)} reactions">{escape(k.split(":")[0])} {len(v)}</span>'
                for k, v in msg.reactions.items()
                if v
            )
            + "</div>"
        )
    if msg.thread_id:
        out.append(_thread(emu, emu.world.channel(msg.thread_id)[1]))
    out.append("</div>")
    return "".join(out)


def _thread(emu: DiscordEmulator, thread: Channel) -> str:
    body = "".join(_message(emu, m) for m in emu.timeline(thread.id))
    return f'<div class="thread"><div class="name">🧵 {escape(thread.name)}</div>{body}</div>'


def render(emu: DiscordEmulator, channel: Channel) -> str:
    parts = [_message(emu, m) for m in emu.timeline(channel.id)]
    starters = {m.thread_id for m in emu.timeline(channel.id) if m.thread_id}
    for thread in emu.threads_of(channel.id):
        if thread.id not in starters:  # threads without a starter message at the end
            parts.append(_thread(emu, thread))
    guild = emu.world.guilds[channel.guild_id]
    title = f"{guild.name} — #{channel.name}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{escape(title)}</h1>{''.join(parts)}</main></body></html>"
    )
