"""Exact resume: a job stopped at any step (SIGKILL included) ends as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import loop
from trainer.callbacks import RecordingCallbacks, TrainingFailed
from trainer.checkpointing import latest_state, list_states

__all__ = ["_one_thread", "model_cache"]
ROOT = Path(__file__).resolve().parents[2]


def _final_adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    state = latest_state(output_dir)
    assert state is not None
    return torch.load(state / "adapter.pt", weights_only=True)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("method", ["lora", "embedding", "pivotal"])
def test_cancel_then_resume_matches_uninterrupted(method, tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=3, size=32)
    pivotal = {"method": "lora", "pivotal": True, "pivotal_lr": 1e-2}  # LoRA + the token's rows
    config = tiny_config(
        **(pivotal if method == "pivotal" else {"method": method}),
        steps=9, checkpoint_every=3, resolution=32, caption_dropout=0.3,
        noise_offset=0.05,
        schedule="cosine", warmup_steps=2, gradient_accumulation=2,
    )  # fmt: skip
    loop.train(config, dataset, tmp_path / "straight", cache_dir=model_cache, device="cpu")

    first = RecordingCallbacks(stop_at=5)  # stops after step 5: newest state is step 3
    stopped = loop.train(
        config, dataset, tmp_path / "resumed", first, cache_dir=model_cache, device="cpu"
    )
    assert stopped.status == "cancelled" and stopped.step == 5
    second = RecordingCallbacks()
    result = loop.train(
        config, dataset, tmp_path / "resumed", second, cache_dir=model_cache, device="cpu"
    )
    assert result.resumed_from == 3 and result.step == 9
    assert [p.step for p in second.progress] == [4, 5, 6, 7, 8, 9]
    assert [c.step for c in result.checkpoints] == [3, 6, 9]
    _assert_same(_final_adapter(tmp_path / "straight"), _final_adapter(tmp_path / "resumed"))


def test_keep_last_prunes_old_states(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    config = tiny_config(steps=6, checkpoint_every=2, resolution=32, keep_last=1)
    loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert [p.name for p in list_states(tmp_path / "out")] == ["step-00000006"]


def test_resume_with_other_settings_is_refused(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    config = tiny_config(steps=4, checkpoint_every=2, resolution=32)
    loop.train(
        config,
        dataset,
        tmp_path / "out",
        RecordingCallbacks(stop_at=2),
        cache_dir=model_cache,
        device="cpu",
    )
    other = config.model_copy(update={"learning_rate": 5e-3})
    with pytest.raises(TrainingFailed, match="different settings"):
        loop.train(other, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")


def _cli(config_file: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "atelier.cli", "train", str(config_file), "--out", str(out),
        "--cache-dir", str(cache), "--device", "cpu", "--json",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_same_weights(tmp_path, model_cache):
    """A real `atelier train` killed with SIGKILL after its first checkpoint."""
    dataset = make_dataset(tmp_path / "data", count=3, size=32)
    config = tiny_config(steps=40, checkpoint_every=4, resolution=32, dataset=str(dataset))
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"output_dir"})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATELIER_DATA_DIR": str(tmp_path / "data-dir")}
    out = tmp_path / "killed"

    process = subprocess.Popen(_cli(config_file, out, model_cache), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while latest_state(out) is None:
        assert process.poll() is None, "the trainer exited before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = int(latest_state(out).name.removeprefix("step-"))
    assert killed_at < 40

    resumed = subprocess.run(_cli(config_file, out, model_cache), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed" and summary["step"] == 40
    assert summary["resumed_from"] == killed_at
    assert [c["step"] for c in summary["checkpoints"]] == list(range(4, 41, 4))
    assert summary["final"]["step"] == 40 and Path(summary["final"]["file"]).is_file()

    torch.set_num_threads(1)
    loop.train(config, dataset, tmp_path / "straight", cache_dir=model_cache, device="cpu")
    _assert_same(_final_adapter(tmp_path / "straight"), _final_adapter(out))
