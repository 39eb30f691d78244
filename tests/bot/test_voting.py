from bot.voting import checkpoint_for_reaction, merge_reactions, numbered_checkpoints
from storage.models import Checkpoint


def ck(i: int, step: int) -> Checkpoint:
    return Checkpoint(id=i, job_id=1, step=step, path="p")


def test_reaction_to_checkpoint() -> None:
    numbered = numbered_checkpoints([ck(2, 20), ck(1, 10), ck(3, 30)])
    assert [c.id for c in numbered] == [1, 2, 3]
    assert checkpoint_for_reaction("👍", "grid", 7, numbered) == 7
    assert checkpoint_for_reaction("🎉", "grid", 7, numbered) is None
    assert checkpoint_for_reaction("2️⃣", "comparison", None, numbered) == 2
    assert checkpoint_for_reaction("2\u20e3", "comparison", None, numbered) == 2  # no FE0F
    assert checkpoint_for_reaction("5️⃣", "comparison", None, numbered) is None
    assert checkpoint_for_reaction("👍", "comparison", None, numbered) is None


def test_only_newest_ten_are_numbered() -> None:
    numbered = numbered_checkpoints([ck(i, i * 10) for i in range(1, 13)])
    assert [c.id for c in numbered] == list(range(3, 13))


def test_merge_one_vote_per_member_and_no_bot() -> None:
    merged = merge_reactions({1: {10, 11, 99}}, {1: {10}, 2: {12, 99}}, bot_id=99)
    assert merged == {1: {10, 11}, 2: {12}}
