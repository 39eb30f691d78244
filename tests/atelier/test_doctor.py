"""`atelier doctor` names what is wrong and how to fix it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _doctor(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_DATA_DIR"] = str(tmp_path / "data")
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "atelier.cli", "doctor", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )


def test_doctor_reports_missing_model_and_unmigrated_database(tmp_path: Path) -> None:
    (tmp_path / "atelier.toml").write_text('[base_models.sd15]\npath = "/nowhere/sd15"\n')
    result = _doctor(tmp_path, "--json")
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["database"]["status"] == "fail"
    assert "atelier db upgrade" in checks["database"]["fix"]
    assert checks["base model sd15"]["status"] == "fail"
    assert "/nowhere/sd15" in checks["base model sd15"]["detail"]
    assert checks["base model tiny"]["status"] == "ok"


def test_doctor_passes_on_a_migrated_default_setup(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_DATA_DIR"] = str(tmp_path / "data")
    subprocess.run(
        [sys.executable, "-m", "atelier.cli", "db", "upgrade"],
        env=env,
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    result = _doctor(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout


def test_doctor_reports_a_bad_setting(tmp_path: Path) -> None:
    (tmp_path / "atelier.toml").write_text("keep_checkpoints = 0\n")
    result = _doctor(tmp_path)
    assert result.returncode == 1
    assert "keep_checkpoints" in result.stdout


async def test_doctor_names_a_missing_discord_permission() -> None:
    from atelier.doctor import discord_checks
    from discord_emulator import DiscordEmulator

    async with DiscordEmulator() as emu:
        guild = emu.default.guild
        everyone = guild.roles[guild.id]
        emu.set_role_permissions(guild, everyone, everyone.permissions & ~(1 << 15))  # Attach Files
        checks = {check.name: check for check in await discord_checks(emu.token, timeout=20)}
    assert checks["discord login"].status == "ok"
    (guild_check,) = [c for name, c in checks.items() if name.startswith("discord A")]
    assert guild_check.status == "fail"
    assert guild_check.detail == "missing: Attach Files"


def test_readme_invite_integer_matches_the_required_permissions() -> None:
    import discord

    from atelier.doctor import REQUIRED_PERMISSIONS

    value = discord.Permissions(**dict.fromkeys(REQUIRED_PERMISSIONS, True)).value
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"permissions={value}" in readme


def test_doctor_checks_a_flux_folder_and_single_file(tmp_path: Path) -> None:
    """A FLUX.1 folder needs every part; a FLUX.1 single file needs the folder beside it."""
    whole = tmp_path / "flux-dev"
    parts = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    for part in parts:
        (whole / part).mkdir(parents=True)
    index = {"_class_name": "FluxPipeline", **{p: ["x", "y"] for p in parts}}
    (whole / "model_index.json").write_text(json.dumps(index))
    broken = tmp_path / "flux-broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": None}))
    lonely = tmp_path / "flux1-dev.safetensors"
    lonely.write_bytes(b"x")
    sd = tmp_path / "sd15"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    toml = "".join(
        f'[base_models.{name}]\npath = "{path}"\narchitecture = "{arch}"\n'
        for name, path, arch in (
            ("fluxok", whole, "flux1"),
            ("fluxbroken", broken, "flux1"),
            ("fluxfile", lonely, "flux1"),
            ("notflux", sd, "flux1"),
        )
    )
    (tmp_path / "atelier.toml").write_text(toml)
    checks = {c["name"]: c for c in json.loads(_doctor(tmp_path, "--json").stdout)}
    assert checks["base model fluxok"]["status"] == "ok"
    assert checks["base model fluxbroken"]["status"] == "fail"
    assert "text_encoder_2" in checks["base model fluxbroken"]["detail"]
    assert checks["base model fluxfile"]["status"] == "fail"
    assert "text encoders" in checks["base model fluxfile"]["fix"]
    assert "not a flux1 model" in checks["base model notflux"]["detail"]
    (tmp_path / "flux1-dev").symlink_to(whole)  # the config folder beside the file
    checks = {c["name"]: c for c in json.loads(_doctor(tmp_path, "--json").stdout)}
    assert checks["base model fluxfile"]["status"] == "ok"
