"""The README's commands table names every option of `/generate` (the command members reach for
to reproduce and compare renders)."""

from __future__ import annotations

from pathlib import Path

from bot.exts.models import Models

README = Path(__file__).resolve().parents[2] / "README.md"


def test_generate_row_names_every_option() -> None:
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `/generate"))
    names = [parameter.display_name for parameter in Models.generate.parameters]
    assert {"seed", "weights"} <= set(names)
    missing = [name for name in names if name not in row]
    assert missing == [], f"README's /generate row lacks {missing}"
