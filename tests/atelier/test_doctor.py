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
