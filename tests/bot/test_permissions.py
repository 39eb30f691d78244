from types import SimpleNamespace

import pytest

from bot import permissions as p
from bot.errors import NotAllowed
from storage.models import GuildSettings, Job


def member(uid: int, roles: list[int] = (), manage: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        id=uid,
        roles=[SimpleNamespace(id=r) for r in roles],
        guild_permissions=SimpleNamespace(manage_guild=manage),
    )


def test_guild_allow_list() -> None:
    assert p.guild_allowed(1, [])
    assert p.guild_allowed(1, [1, 2]) and not p.guild_allowed(3, [1, 2])
    assert not p.guild_allowed(None, [])


def test_trainer_roles() -> None:
    guild = GuildSettings(guild_id=1, trainer_role_ids=[10])
    p.require_worker_time(member(1, [10]), guild)
    p.require_worker_time(member(1, [], manage=True), guild)
    p.require_worker_time(member(1), None)  # no roles configured: everyone
    with pytest.raises(NotAllowed):
        p.require_worker_time(member(1, [11]), guild)


def test_job_owner_or_manager() -> None:
    job = Job(id=4, owner_id=1, name="n", method="lora", base_model="tiny", dataset_id="d")
    guild = GuildSettings(guild_id=1, manager_role_id=99)
    p.require_job_manager(member(1), job, guild, "cancel")
    p.require_job_manager(member(2, [99]), job, guild, "cancel")
    p.require_job_manager(member(2, manage=True), job, None, "cancel")
    with pytest.raises(NotAllowed, match="owner"):
        p.require_job_manager(member(2), job, guild, "cancel")


def test_settings_need_manage_server_not_the_manager_role() -> None:
    with pytest.raises(NotAllowed):
        p.require_manage_server(member(2))
    with pytest.raises(NotAllowed):  # the manager role cannot edit settings (nor widen itself)
        p.require_manage_server(member(2, [5]))
    p.require_manage_server(member(2, manage=True))
