"""`/iterate start|finish`, `/compare`, and `/train lora from:` (the next version of a model).

Voting on candidates: one message per page of up to 10 images (Discord allows 10 attachments
per message), with number reactions 1️⃣…🔟 meaning "keep image n", followed by a second message
for the same page whose number reactions mean "discard image n". A candidate is kept when its
keeps outnumber its discards. Why not one message per image with ✅/❌: 40 images would be 40
messages plus 80 bot reactions, which runs into Discord's per-channel message and reaction
rate limits for minutes; why not 20 reactions (keep + discard) on one message: 20 is Discord's
cap of distinct reactions per message, so there would be no room left for anything else and
the two sets of letters are easy to confuse. Two messages per page stay well inside both caps.

At the deadline (or on `/iterate finish`) the votes are recounted from the messages themselves
(so reactions made while the bot was away count), then `storage.iterations.finish_iteration`
builds the next dataset version.

Where things are: `_iterate_cog` (`/iterate` and the candidate votes), `_compare_cog`
(`/compare` and its 🅰️/🅱️ votes), `_train_from` (`/train lora from:`, called by `/train`).
The messages themselves are posted by the notifier (`bot.render_events`).
"""

from __future__ import annotations

from discord.ext import commands

from bot.exts.iterate._compare_cog import Compare
from bot.exts.iterate._iterate_cog import Iterate
from bot.exts.iterate._train_from import from_choices, train_from

__all__ = ["Compare", "Iterate", "from_choices", "setup", "train_from"]


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Iterate(bot))
    await bot.add_cog(Compare(bot))
