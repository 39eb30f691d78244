"""Local Discord emulator (REST + gateway + CDN) for the real discord.py client."""

from .errors import DiscordError
from .interactions import InteractionHandle
from .scripting import DefaultWorld
from .server import DiscordEmulator, Fault
from .state import MIB, Attachment, Channel, Guild, Member, Message, P, Role, User

__all__ = [
    "MIB",
    "Attachment",
    "Channel",
    "DefaultWorld",
    "DiscordEmulator",
    "DiscordError",
    "Fault",
    "Guild",
    "InteractionHandle",
    "Member",
    "Message",
    "P",
    "Role",
    "User",
]
