"""discord_emulator."""
