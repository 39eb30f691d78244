"""Mixed precision on CPU: bf16 and fp16 jobs end to end, fp16 loss scaling, resume under bf16."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import adapters, loop
from trainer import precision as precision_module
from trainer.base_models import load_base_model
from trainer.callbacks import RecordingCallbacks
from trainer.checkpointing import latest_state
from trainer.config import TrainConfig
from trainer.precision import Precision, cpu_auto, make_precision, settle_auto

__all__ = ["_one_thread", "model_cache"]
ROOT = Path(__file__).resolve().parents[2]


def test_cpu_accepts_bf16_and_fp16_and_auto_is_the_measured_choice():
    for precision in ("bf16", "fp16", "no"):
        made = loop.make_accelerator(TrainConfig(mixed_precision=precision), "cpu")
        assert made.mixed_precision == precision and made.device.type == "cpu"
        assert (made.scaler is not None) == (precision == "fp16")
    auto = loop.make_accelerator(TrainConfig(), "cpu")
    assert auto.mixed_precision == "no" and auto.requested == "auto"  # until the model is known


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_cpu_auto_is_bf16_for_a_big_enough_denoiser_on_a_cpu_with_bf16(fast_bf16, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: fast_bf16)
    big = precision_module.CPU_BF16_MIN_PARAMS
    assert cpu_auto(big) == ("bf16" if fast_bf16 else "no")
    assert cpu_auto(big - 1) == "no"  # the built-in tiny/toy models (about 1 M)
    assert cpu_auto(None) == "no"


def test_cpu_has_fast_bf16_reads_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or platform.machine() != "x86_64":
        pytest.skip("reads x86 flags from Linux's /proc/cpuinfo")
    flags = cpuinfo.read_text().split()
    expected = "avx512_bf16" in flags or "amx_tile" in flags
    assert precision_module.cpu_has_fast_bf16() == expected


def test_settle_auto_moves_a_big_denoiser_to_bf16_and_leaves_the_rest(model_cache, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    model = load_base_model("builtin:tiny", "sd1", cache_dir=model_cache)
    auto = make_precision("auto", "cpu")
    assert settle_auto(auto, model) is auto  # tiny: below the line, stays fp32
    assert next(model.denoiser.parameters()).dtype == torch.float32
    monkeypatch.setattr(precision_module, "CPU_BF16_MIN_PARAMS", 1000)
    explicit = make_precision("no", "cpu")
    assert settle_auto(explicit, model) is explicit  # an explicit fp32 job is never changed
    settled = settle_auto(auto, model)
    assert settled.mixed_precision == "bf16" and settled.dtype == torch.bfloat16
    for module in (model.denoiser, *model.text_encoders):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert next(model.vae.parameters()).dtype == torch.float32


def test_an_auto_cpu_job_trains_in_what_settle_auto_chose(tmp_path, model_cache, monkeypatch):
    """The loop loads, settles and trains in the settled precision (bf16 here: the line is
    lowered under the tiny model), to checkpoints and exports."""
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(precision_module, "CPU_BF16_MIN_PARAMS", 1000)
    chosen: list[str] = []
    real = loop.settle_auto

    def recording(precision, model):
        settled = real(precision, model)
        chosen.append(settled.mixed_precision)
        return settled

    monkeypatch.setattr(loop, "settle_auto", recording)
    config = tiny_config(steps=2, checkpoint_every=2, resolution=32, validation={"steps": 1})
    result = loop.train(
        config, make_dataset(tmp_path / "data", count=2, size=32), tmp_path / "out",
        RecordingCallbacks(), cache_dir=model_cache, device="cpu",
    )  # fmt: skip
    assert chosen == ["bf16"] and result.status == "completed" and result.checkpoints


def _linear_step(precision: Precision, layer, optimizer, poison: bool = False) -> bool:
    """One step of a 2×2 linear layer; `poison` makes its gradient infinite."""
    handle = layer.weight.register_hook(lambda g: g * float("inf")) if poison else None
    with precision.autocast():
        loss = layer(torch.ones(3, 2)).float().pow(2).mean()
    precision.backward(loss)
    if handle:
        handle.remove()
    stepped = precision.step(optimizer, layer.parameters(), 1.0, True)
    optimizer.zero_grad(set_to_none=True)
    return stepped


def test_fp16_scaler_skips_a_non_finite_step_backs_off_and_goes_on():
    """Skipped steps still update the scaler: no "unscale_() has already been called"."""
    precision = make_precision("fp16", "cpu")
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():  # small outputs: at the initial scale (2**16) their fp16 grads are finite
        layer.weight.fill_(0.1)
        layer.bias.zero_()
    optimizer = precision.prepare(torch.optim.AdamW(layer.parameters(), lr=0.1))
    assert _linear_step(precision, layer, optimizer)
    scale, weight = precision.loss_scale, layer.weight.detach().clone()
    adam_steps = optimizer.state[layer.weight]["step"].item()

    assert not _linear_step(precision, layer, optimizer, poison=True)
    assert precision.loss_scale == scale * 0.5, "the scale backs off"
    assert torch.equal(layer.weight, weight), "the weights did not move"
    assert optimizer.state[layer.weight]["step"].item() == adam_steps, "no optimizer step"

    assert _linear_step(precision, layer, optimizer), "the next step runs"
    assert not torch.equal(layer.weight, weight)
    assert optimizer.state[layer.weight]["step"].item() == adam_steps + 1

    # a non-finite loss (no backward at all) also backs off and leaves the scaler usable
    assert not precision.step(optimizer, layer.parameters(), 1.0, False)
    assert precision.loss_scale == scale * 0.25
    assert _linear_step(precision, layer, optimizer)
    assert optimizer.state_dict()["grad_scaler"]["scale"] == scale * 0.25


def _dtypes(path: Path) -> set[torch.dtype]:
    with safe_open(str(path), framework="pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118


def _assert_job_outputs(summary: dict, steps: list[int], method: str) -> None:
    assert summary["status"] == "completed"
    assert [c["step"] for c in summary["checkpoints"]] == steps
    for checkpoint in summary["checkpoints"]:
        assert Path(checkpoint["grid_path"]).is_file()
        assert _dtypes(Path(checkpoint["file"])) == {torch.float32}, "exports stay fp32"
        if method != "dora":
            copies = list(Path(checkpoint["diffusers_dir"]).glob("*.safetensors"))
            assert copies and all(_dtypes(p) == {torch.float32} for p in copies)
    assert Path(summary["comparison_grid"]).is_file()
    held = [loss for _, loss in summary["heldout_losses"]]
    assert len(held) == len(steps) and all(isinstance(v, float) and v == v for v in held)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_atelier_train_in_mixed_precision_on_cpu(precision, tmp_path, model_cache):
    """The headless CLI, as a process: steps, held-out loss, grids, fp32 exports."""
    dataset = make_dataset(tmp_path / "data", count=10, size=32)
    config = tiny_config(
        steps=4, checkpoint_every=2, resolution=32, mixed_precision=precision,
        dataset=str(dataset), validation={"steps": 2, "seeds": [1], "prompts": ["{trigger}"]},
    )  # fmt: skip
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"output_dir"})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATELIER_DATA_DIR": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "train", str(config_file), "--out",
         str(tmp_path / "out"), "--cache-dir", str(model_cache), "--device", "cpu", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_job_outputs(json.loads(done.stdout), [2, 4], "lora")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "architecture"), [("dora", "tiny"), ("embedding", "tiny-sdxl")])
def test_bf16_job_per_method(method, architecture, tmp_path, model_cache, monkeypatch):
    """The frozen base really is bf16; trainable weights, VAE decoding and exports are fp32."""
    seen: dict = {}
    inject = adapters.inject_adapter

    def spy(model, config):
        params = inject(model, config)
        seen.update(unet=next(model.unet.parameters()).dtype, params=params, vae=set())

        def record(module, args):
            seen["vae"].add((args[0].dtype, torch.is_autocast_enabled("cpu")))

        model.vae.decoder.register_forward_pre_hook(record)
        return params

    monkeypatch.setattr(adapters, "inject_adapter", spy)
    dataset = make_dataset(tmp_path / "data", count=10, size=32)
    config = tiny_config(
        method=method, base_model=architecture, steps=2, checkpoint_every=1, resolution=32,
        mixed_precision="bf16",
    )  # fmt: skip
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert seen["unet"] == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in seen["params"])
    assert seen["vae"] == {(torch.float32, False)}, "the VAE decodes in fp32, outside autocast"
    _assert_job_outputs(result.to_json(), [1, 2], method)


@pytest.mark.slow
def test_fp16_job_skips_an_overflowing_step_and_keeps_the_scale_across_resume(
    tmp_path, model_cache, monkeypatch
):
    """An infinite gradient at step 2: skipped, the scale halves, the job completes, and the
    halved scale is in the resume state (a resumed job does not start over at 65536)."""
    calls = {"n": 0}
    inject = adapters.inject_adapter

    def poisoned(model, config):
        params = inject(model, config)

        def hook(grad):
            calls["n"] += 1
            return grad * float("inf") if calls["n"] == 2 else grad

        params[0].register_hook(hook)
        return params

    monkeypatch.setattr(adapters, "inject_adapter", poisoned)
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    config = tiny_config(steps=4, checkpoint_every=2, resolution=32, mixed_precision="fp16")
    first = RecordingCallbacks(stop_at=3)
    loop.train(config, dataset, tmp_path / "out", first, cache_dir=model_cache, device="cpu")
    assert first.nan_skipped == [(2, 1)]
    saved = torch.load(latest_state(tmp_path / "out") / "optimizer.pt", weights_only=True)
    assert saved["grad_scaler"]["scale"] == 65536.0 * 0.5

    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert result.status == "completed" and result.resumed_from == 2 and result.step == 4
    assert calls["n"] == 5, "steps 3 and 4 ran again after the resume"
    saved = torch.load(latest_state(tmp_path / "out") / "optimizer.pt", weights_only=True)
    assert saved["grad_scaler"]["scale"] == 65536.0 * 0.5, "the backed-off scale was restored"


@pytest.mark.slow
def test_bf16_cancel_then_resume_matches_uninterrupted(tmp_path, model_cache):
    dataset = make_dataset(tmp_path / "data", count=3, size=32)
    config = tiny_config(
        steps=6, checkpoint_every=2, resolution=32, mixed_precision="bf16", caption_dropout=0.3
    )
    loop.train(config, dataset, tmp_path / "straight", cache_dir=model_cache, device="cpu")
    stopped = loop.train(
        config, dataset, tmp_path / "resumed", RecordingCallbacks(stop_at=3),
        cache_dir=model_cache, device="cpu",
    )  # fmt: skip
    assert stopped.status == "cancelled"
    result = loop.train(config, dataset, tmp_path / "resumed", cache_dir=model_cache, device="cpu")
    assert result.resumed_from == 2 and result.step == 6
    assert [c.step for c in result.checkpoints] == [2, 4, 6]
    straight = torch.load(latest_state(tmp_path / "straight") / "adapter.pt", weights_only=True)
    resumed = torch.load(latest_state(tmp_path / "resumed") / "adapter.pt", weights_only=True)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=1e-5, atol=1e-6, msg=key)
