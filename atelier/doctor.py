"""`atelier doctor`: checks what Atelier needs and prints a table with a fix for each failure.

The exit code is 0 when every check passed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from atelier.checks import Check
from atelier.doctor_links import link_checks
from atelier.settings import AtelierSettings, load_settings
from storage.settings import BaseModelEntry, SettingsError, mask_url

MIN_FREE_DISK_BYTES = 10 * 1024**3
DISCORD_TIMEOUT_SECONDS = 30.0

REQUIRED_PERMISSIONS = (
    "view_channel",
    "send_messages",
    "create_public_threads",
    "send_messages_in_threads",
    "attach_files",
    "embed_links",
    "add_reactions",
    "read_message_history",
)
"""What the bot needs in the channels it works in (the README's invite integer is their sum)."""


def check_token(settings: AtelierSettings) -> Check:
    if settings.discord_token is None:
        return Check(
            "discord token",
            "warn",
            "DISCORD_TOKEN is not set (fine for `atelier demo` and workers)",
            "set DISCORD_TOKEN in the environment to run the bot",
        )
    return Check("discord token", "ok", "DISCORD_TOKEN is set")


def check_database(settings: AtelierSettings) -> Check:
    from storage.db import make_engine
    from storage.migrate import current_revision, head_revision

    try:
        engine = make_engine(settings.db_url)
        current = current_revision(engine)
    except Exception as error:  # any driver error is a failed check, said in one line
        return Check(
            "database",
            "fail",
            mask_url(f"cannot open it: {type(error).__name__}: {error}".splitlines()[0]),
            "check ATELIER_DATABASE_URL and that the server is running",
        )
    head = head_revision()
    url = engine.url.render_as_string(hide_password=True)
    if current == head:
        return Check("database", "ok", f"{url} at schema {head}")
    if current is None:
        return Check("database", "fail", f"{url} has no Atelier schema", "run `atelier db upgrade`")
    return Check(
        "database",
        "fail",
        f"{url} is at schema {current}, code expects {head}",
        "run `atelier db upgrade`",
    )


def check_base_model(name: str, entry: BaseModelEntry) -> Check:
    """The same resolver and file rules as the worker's loader (`storage.base_models`)."""
    from storage.base_models import ResolvedModel, problem

    label = f"base model {name}"
    model = ResolvedModel(name, entry.path, entry.architecture)
    if model.is_builtin:
        return Check(label, "ok", f"built-in ({entry.path}), built on first use")
    why = problem(model)
    if why is not None:
        return Check(
            label,
            "fail",
            why,
            f"fix base_models.{name}.path in atelier.toml: a diffusers folder, or a "
            ".safetensors/.ckpt file with its config folder beside it"
            + (
                " (for FLUX.1 and Z-Image the transformer file, and the model's diffusers folder "
                "with the VAE and text encoders)"
                if entry.architecture in ("flux1", "zimage")
                else ""
            ),
        )
    path = Path(entry.path).expanduser()
    incomplete = model_folder_problem(path, entry.architecture)
    if incomplete is not None:
        return Check(label, "fail", *incomplete)
    return Check(label, "ok", f"{path} ({entry.architecture})")


MODEL_PARTS = {
    "sd1": ("unet", "vae", "text_encoder", "tokenizer"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    "flux1": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    "zimage": ("transformer", "vae", "text_encoder", "tokenizer"),
}
"""The component folders a diffusers pipeline of each architecture has (model_index.json)."""
PIPELINE_PREFIXES = {"flux1": "Flux", "zimage": "ZImage"}
"""How the pipeline class named in model_index.json starts, for architectures that say so."""


def model_folder_problem(path: Path, architecture: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a local model, or None. A single file is checked
    through the config folder beside it (`<stem>/` or `<stem>.config/`), which offline loading
    needs; for FLUX.1 and Z-Image it also holds the VAE and text encoder(s) with their weights."""
    folder = path
    if path.is_file():
        candidates = [path.with_suffix(""), path.with_suffix(".config")]
        found = [c for c in candidates if (c / "model_index.json").is_file()]
        if not found:
            return (
                f"{path.name} has no diffusers config folder beside it ({candidates[0].name}/)",
                "put the model's diffusers folder (configs, tokenizers"
                + (", VAE and text encoders" if architecture in ("flux1", "zimage") else "")
                + f") at {candidates[0]}",
            )
        folder = found[0]
    import json

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    declared = str(index.get("_class_name", ""))
    held = next((a for a, p in PIPELINE_PREFIXES.items() if declared.startswith(p)), None)
    if held != (architecture if architecture in PIPELINE_PREFIXES else None):
        return (
            f"{folder} holds a {declared or 'pipeline'}, not a {architecture} model",
            "set its architecture in atelier.toml to what the folder holds",
        )
    parts = MODEL_PARTS.get(architecture, ())
    missing = [
        p for p in parts if index.get(p) in (None, [None, None]) or not (folder / p).is_dir()
    ]
    if missing:
        return (f"{folder} lacks {', '.join(missing)}", "copy the complete diffusers folder")
    return None


def check_gpu() -> Check:
    try:
        import torch
    except ImportError:
        return Check("gpu", "warn", "torch is not installed (bot-only host)", "")
    if not torch.cuda.is_available():
        return Check(
            "gpu",
            "warn",
            "no CUDA GPU visible; training runs on the CPU (slow)",
            "install a CUDA build of torch and the NVIDIA driver for real training",
        )
    parts = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        parts.append(f"{props.name} {props.total_memory / 1024**3:.0f} GiB")
    return Check("gpu", "ok", "; ".join(parts))


def check_disk(settings: AtelierSettings) -> Check:
    folder = settings.data_dir
    probe = folder if folder.exists() else Path(".")
    free = shutil.disk_usage(probe).free
    detail = f"{free / 1024**3:.1f} GiB free in {folder.resolve()}"
    if free < MIN_FREE_DISK_BYTES:
        return Check("disk", "warn", detail, "free space: each job keeps checkpoints and caches")
    return Check("disk", "ok", detail)


def _permission_label(name: str) -> str:
    return name.replace("_", " ").title()


def guild_permission_check(guild: object) -> Check:
    """The bot's server-wide permissions in one guild, against `REQUIRED_PERMISSIONS`."""
    permissions = guild.me.guild_permissions  # type: ignore[attr-defined]
    missing = [_permission_label(p) for p in REQUIRED_PERMISSIONS if not getattr(permissions, p)]
    label = f"discord {guild.name}"  # type: ignore[attr-defined]
    if not missing:
        return Check(label, "ok", "the bot has every permission it needs")
    return Check(
        label,
        "fail",
        "missing: " + ", ".join(missing),
        "Server Settings → Roles → the bot's role: allow " + ", ".join(missing),
    )


async def discord_checks(token: str, timeout: float = DISCORD_TIMEOUT_SECONDS) -> list[Check]:
    """Log in, read the bot's permissions in every guild it is in, log out."""
    import discord

    client = discord.Client(intents=discord.Intents(guilds=True))
    checks: list[Check] = []

    @client.event
    async def on_ready() -> None:
        checks.extend(guild_permission_check(guild) for guild in client.guilds)
        if not client.guilds:
            checks.append(
                Check(
                    "discord guilds",
                    "warn",
                    "the bot is in no server yet",
                    "invite it with the URL in the README",
                )
            )
        await client.close()

    try:
        await asyncio.wait_for(client.start(token), timeout)
    except discord.LoginFailure:
        return [
            Check(
                "discord login",
                "fail",
                "Discord refused the token",
                "reset the token in the developer portal and set DISCORD_TOKEN",
            )
        ]
    except (TimeoutError, OSError) as error:
        await client.close()
        return [
            Check(
                "discord login",
                "fail",
                f"could not connect ({type(error).__name__})",
                "check the network, or skip with --offline",
            )
        ]
    return [Check("discord login", "ok", f"logged in as {client.user}"), *checks]


def run_checks(settings: AtelierSettings) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        lambda: check_token(settings),
        lambda: check_database(settings),
        *[
            (lambda n=name, e=entry: check_base_model(n, e))
            for name, entry in settings.base_models.items()
        ],
        check_gpu,
        lambda: check_disk(settings),
    ]
    return [check() for check in checks] + link_checks(settings)


def render_table(checks: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{marks[check.status]}  {check.name.ljust(width)}  {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"{'':4}  {'':{width}}  fix: {check.fix}")
    return "\n".join(lines)


def doctor_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="atelier doctor", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--offline", action="store_true", help="do not connect to Discord")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        checks = [Check("settings", "fail", str(error), "fix the setting named above")]
    else:
        checks = [Check("settings", "ok", "valid"), *run_checks(settings)]
        if settings.discord_token is not None and not args.offline:
            checks += asyncio.run(discord_checks(settings.discord_token.get_secret_value()))
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render_table(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(doctor_cli(sys.argv[1:]))
