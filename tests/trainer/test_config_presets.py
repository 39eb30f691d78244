"""Presets validate for every method; impossible combinations and bad CLI input: one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from atelier.settings import load_settings
from tests.trainer.train_helpers import make_dataset
from trainer.callbacks import TrainingFailed
from trainer.config import TrainConfig
from trainer.loop import check_runtime
from trainer.presets import PRESETS, PresetError, apply_preset, preset_choices
from trainer.train_cli import train_cli


@pytest.mark.parametrize("method", ["lora", "dora", "embedding"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name, method):
    config = apply_preset(name, method, trigger="ohwx")
    assert config.method == method
    assert config.checkpoint_steps[-1] == config.steps


def test_presets_cover_the_named_use_cases():
    assert {"character", "style", "object", "quick-test"} <= set(PRESETS)
    assert all(description for _, description in preset_choices())


@pytest.mark.parametrize("method", ["lora", "embedding"])
def test_quick_test_fits_the_tiny_model_on_cpu(method):
    config = apply_preset("quick-test", method, trigger="ohwx")
    assert config.base_model == "tiny" and config.resolution == 64 and config.batch_size == 2
    assert config.steps <= 100 and config.checkpoint_every == 20 and config.validation.steps == 4


def test_overrides_merge_and_steps_shrink_the_cadence():
    config = apply_preset("character", "lora", trigger="ohwx", steps=100, validation_prompts=["x"])
    assert config.steps == 100 and config.checkpoint_every == 25
    assert config.validation.prompts == ["x"] and config.validation.seeds == [1, 2]
    embedding = apply_preset("character", "embedding", trigger="ohwx", steps=100)
    assert embedding.warmup_steps < 100


def test_keep_prompts_turn_preservation_on_those_prompts():
    config = apply_preset("style", "lora", trigger="ohwx", keep_prompts=["a red car", "a house"])
    assert config.preservation.enabled and config.preservation.prompts == ["a red car", "a house"]
    assert not apply_preset("style", "lora", trigger="ohwx").preservation.enabled


def test_keep_weight_sets_how_hard_preservation_holds_or_turns_it_off():
    held = apply_preset("character", "lora", trigger="ohwx", keep_weight=8)
    assert held.preservation.enabled and held.preservation.weight == 8.0
    assert apply_preset("character", "lora", trigger="ohwx").preservation.weight == 4.0
    style = apply_preset("style", "lora", trigger="ohwx", keep_weight=2, keep_prompts=["a car"])
    assert style.preservation.enabled and style.preservation.weight == 2.0
    assert style.preservation.prompts == ["a car"]
    off = apply_preset("character", "dora", trigger="ohwx", keep_weight=0)
    assert not off.preservation.enabled


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("nope", {}, "unknown preset 'nope' (choose from: character"),
        ("character", {"steps": 100, "checkpoint_every": 500}, "checkpoint_every (500) is larger"),
        ("character", {"optimizer": "prodigy"}, "Prodigy expects learning_rate"),
        ("character", {"rank": 0}, "rank: Input should be greater than or equal to 1"),
        ("character", {"keep_prompts": ["OHWX at the beach"]}, "contains the trigger"),
        ("character", {"keep_prompts": ["a car"], "keep_weight": 0}, "keep_weight 0 turns off"),
    ],
)
def test_impossible_presets_are_refused_in_one_line(name, overrides, message):
    with pytest.raises(PresetError) as refusal:
        apply_preset(name, "lora", trigger="ohwx", **overrides)
    assert message in str(refusal.value) and "\n" not in str(refusal.value)


def test_embedding_without_trigger_is_refused():
    with pytest.raises(PresetError, match="an embedding needs a trigger"):
        apply_preset("style", "embedding")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="installed")
def test_8bit_adamw_needs_bitsandbytes():
    with pytest.raises(TrainingFailed, match="needs the bitsandbytes package"):
        check_runtime(TrainConfig(optimizer="adamw8bit"))


@pytest.mark.skipif(importlib.util.find_spec("prodigyopt") is not None, reason="installed")
def test_prodigy_needs_prodigyopt():
    with pytest.raises(TrainingFailed, match="needs the prodigyopt package"):
        check_runtime(TrainConfig(optimizer="prodigy", learning_rate=1.0))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "error: give a CONFIG.yaml or --dataset"),
        (["--dataset", "/nonexistent/x", "--trigger", "t"], "is neither a folder nor a .zip"),
        (["--dataset", "{data}", "--preset", "nope"], "error: unknown preset 'nope'"),
        (["--dataset", "{data}", "--method", "embedding"], "an embedding needs a trigger"),
        (["{yaml}"], "is not valid YAML"),
        (["--dataset", "{data}", "--trigger", "t", "--steps", "0"], "steps: Input should be"),
        (
            ["--dataset", "{data}", "--trigger", "t", "--method", "embedding", "--base-model", "x"],
            "FLUX.1 models cannot train embeddings",
        ),
    ],
)
def test_cli_refusals_exit_2_with_one_error_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data-dir"))
    data = make_dataset(tmp_path / "ds", count=1, size=32)
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    argv = [a.format(data=data, yaml=bad) for a in argv]
    argv = ["tiny-flux" if a == "x" else a for a in argv]
    assert train_cli(argv, load_settings) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "Traceback" not in "".join(err)


def test_cli_unknown_base_model_is_a_refusal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data-dir"))
    data = make_dataset(tmp_path / "ds", count=1, size=32)
    config = tmp_path / "job.yaml"
    config.write_text(
        f"dataset: {data}\ntrigger: t\nbase_model: nowhere\nsteps: 2\ncheckpoint_every: 2\n"
    )
    assert (
        train_cli(
            [str(config), "--out", str(tmp_path / "out"), "--cache-dir", str(Path(tmp_path))],
            load_settings,
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown base model 'nowhere'")


def test_presets_follow_the_architecture() -> None:
    """FLUX.1: rank 16, lr 1e-4, 1024 px, 1500 steps, every 250, flow-matching settings; the
    preset's own character (no flips, shuffled tags) is kept; SD presets are unchanged."""
    flux = apply_preset("character", "lora", "flux1", trigger="ohwx")
    assert (flux.rank, flux.alpha, flux.learning_rate, flux.resolution) == (16, 16.0, 1e-4, 1024)
    assert (flux.steps, flux.checkpoint_every, flux.batch_size) == (1500, 250, 1)
    assert flux.min_snr_gamma is None and flux.validation.scheduler == "euler"
    assert flux.validation.guidance == 3.5 and not flux.flip
    style = apply_preset("style", "dora", "flux1", trigger="ohwx")
    assert style.shuffle_captions and style.rank == 16 and style.method == "dora"
    quick = apply_preset("quick-test", "lora", "flux1", trigger="ohwx", base_model="tiny-flux")
    assert quick.resolution == 64 and quick.steps == 60 and quick.min_snr_gamma is None
    sd = apply_preset("character", "lora", "sd1", trigger="ohwx")
    assert sd.min_snr_gamma == 5.0 and sd.validation.scheduler == "dpm++" and sd.steps == 2000
    with pytest.raises(PresetError, match="steps of 16 px"):
        apply_preset("character", "lora", "flux1", trigger="ohwx", resolution=1000)
    with pytest.raises(PresetError, match="cannot train embeddings"):
        apply_preset("character", "embedding", "flux1", trigger="ohwx")


def test_character_and_object_presets_preserve_and_pick_embedding_settings_from_data():
    for name in ("character", "object"):
        lora = apply_preset(name, "lora", trigger="ohwx")
        assert lora.preservation.enabled and lora.resolution is None  # the model's native size
        embedding = apply_preset(name, "embedding", trigger="ohwx")
        assert not embedding.preservation.enabled
        assert embedding.embedding.initializer_token == "auto"
        assert embedding.embedding.templates == "auto"
    assert not apply_preset("style", "lora", trigger="ohwx").preservation.enabled
    off = apply_preset("character", "dora", trigger="ohwx", preservation={"enabled": False})
    assert not off.preservation.enabled
    assert apply_preset("character", "lora", resolution=768).resolution == 768


def test_resolution_defaults_to_native_and_side_is_nominal_until_resolved():
    config = TrainConfig()
    assert config.resolution is None and config.side == 512
    assert config.with_native_resolution(64).resolution == 64
    assert TrainConfig(resolution=256).with_native_resolution(64).resolution == 256


def test_log_lines_print_above_the_progress_bar():
    """On a terminal `atelier train`'s log lines go through `tqdm.write`: the bar is redrawn
    below them instead of being cut in two."""
    import io

    from tqdm import tqdm

    from trainer.train_cli import AboveBar

    stream = io.StringIO()
    bar = tqdm(total=10, file=stream)
    bar.update(3)
    writer = AboveBar(stream)
    writer.write("2026-12-01 INFO trainer.loop: 2 of 20 images held out\n")
    writer.write("\n")  # a bare newline writes nothing
    bar.close()
    text = stream.getvalue()
    assert text.count("images held out") == 1
    start = text.index("2026-12-01")
    assert text[start - 1] == "\r"  # the bar's line cleared before the log line
    assert "3/10" in text[start:]  # and the bar drawn again below it
