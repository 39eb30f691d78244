"""Who a message pings, by Discord's rules for `allowed_mentions`: without it every mention in
the content pings; with it, only the types in `parse` and the ids listed in `users`/`roles`
(and `@everyone`/`@here` only with "everyone" in `parse`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

USER = re.compile(r"<@!?(\d+)>")
ROLE = re.compile(r"<@&(\d+)>")
EVERYONE = re.compile(r"@(everyone|here)\b")


@dataclass
class Pings:
    users: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    everyone: bool = False


def pings(content: str, allowed: dict[str, Any] | None) -> Pings:
    users = [int(u) for u in dict.fromkeys(USER.findall(content))]
    roles = [int(r) for r in dict.fromkeys(ROLE.findall(content))]
    everyone = bool(EVERYONE.search(content))
    if allowed is None:
        return Pings(users, roles, everyone)
    parse = set(allowed.get("parse") or [])
    listed_users = {int(u) for u in allowed.get("users") or []}
    listed_roles = {int(r) for r in allowed.get("roles") or []}
    return Pings(
        [u for u in users if "users" in parse or u in listed_users],
        [r for r in roles if "roles" in parse or r in listed_roles],
        everyone and "everyone" in parse,
    )
