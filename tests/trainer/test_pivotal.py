"""Pivotal tuning: a LoRA/DoRA and the trigger's embedding trained together, delivered as two
files that load (in diffusers, and through `load_for_generation`) to the model that was trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storage.model_files import EMBEDDING_KEY, model_files
from tests.trainer.test_adapters_export import assert_close, config, fresh, te_out, unet_out
from tests.trainer.train_helpers import make_dataset, model_cache, perturb, tiny_config
from trainer import loop
from trainer.adapters import (
    adapter_state,
    embedding_rows,
    inject_adapter,
    load_adapter_state,
    placeholder_tokens,
)
from trainer.base_models import LoadedModel
from trainer.checkpointing import config_hash
from trainer.config import ArchitectureMismatch, TrainConfig, check_architecture
from trainer.export import export_checkpoint, read_safetensors
from trainer.generate import load_for_generation
from trainer.optimizers import make_optimizer
from trainer.presets import PresetError, apply_preset

__all__ = ["model_cache"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


def pivotal(**kw: object) -> TrainConfig:
    return config(pivotal=True, embedding={"num_vectors": 2, "initializer_token": "cat"}, **kw)


def trained_pivotal(cache: Path, arch: str, cfg: TrainConfig) -> LoadedModel:
    """Adapter and token rows moved off their init (LoRA B is zero, the rows a word's copy)."""
    model = fresh(cache, arch)
    params = inject_adapter(model, cfg)
    tables = {id(encoder.get_input_embeddings().weight) for encoder in model.text_encoders}
    perturb([p for p in params if id(p) not in tables], 0.2)
    with torch.no_grad():
        for encoder, info in zip(model.text_encoders, embedding_rows(model), strict=True):
            weight = encoder.get_input_embeddings().weight
            weight[info.token_ids] += torch.randn_like(weight[info.token_ids])
    return model


@pytest.mark.parametrize(("arch", "method"), [("sd1", "lora"), ("sdxl", "lora"), ("sd1", "dora")])
def test_pivotal_checkpoint_is_two_files_that_load_as_trained(
    cache: Path, tmp_path: Path, arch: str, method: str
) -> None:
    cfg = pivotal(method=method)
    model = trained_pivotal(cache, arch, cfg)
    prompt = "a photo of " + " ".join(placeholder_tokens(cfg))
    want_unet, want_te = unet_out(model), te_out(model, prompt)
    plain_te = te_out(model)

    files = export_checkpoint(model, cfg, tmp_path, 5, "my char")
    folder = tmp_path / "my_char-step00000005"
    assert files.primary == folder / "my_char-step00000005.safetensors"
    assert model_files(files.primary) == [files.primary, folder / "sks.safetensors"]
    assert files.size_bytes == sum(p.stat().st_size for p in model_files(files.primary))
    lora, meta = read_safetensors(files.primary)
    assert meta[EMBEDDING_KEY] == "sks.safetensors" and meta["modelspec.trigger_phrase"] == "sks"
    assert not any(key in lora for key in ("emb_params", "clip_l", "clip_g"))  # a plain LoRA
    embedding, emb_meta = read_safetensors(folder / "sks.safetensors")
    keys = {"clip_l", "clip_g"} if arch == "sdxl" else {"emb_params"}
    assert set(embedding) == keys and all(t.shape[0] == 2 for t in embedding.values())
    assert emb_meta["modelspec.architecture"].endswith("/textual-inversion")

    loaded = fresh(cache, arch)
    pipe = load_for_generation(loaded, files.primary)
    converted = pipe.maybe_convert_prompt("a photo of sks", pipe.tokenizer)
    assert converted == "a photo of sks sks_1"
    assert_close(unet_out(loaded), want_unet)
    for got, expected in zip(te_out(loaded, converted), want_te, strict=True):
        assert_close(got, expected)
    for got, expected in zip(te_out(loaded), plain_te, strict=True):
        assert_close(got, expected)  # prompts without the trigger read as before


def test_diffusers_copy_holds_the_lora_and_the_embedding(cache: Path, tmp_path: Path) -> None:
    cfg = pivotal()
    model = trained_pivotal(cache, "sd1", cfg)
    want_unet = unet_out(model)
    want_te = te_out(model, "a photo of " + " ".join(placeholder_tokens(cfg)))
    files = export_checkpoint(model, cfg, tmp_path, 5, "c")
    assert files.diffusers is not None
    other = fresh(cache)
    other.pipeline.load_lora_weights(str(files.diffusers))
    other.pipeline.load_textual_inversion(str(files.diffusers / "learned_embeds.safetensors"))
    assert_close(unet_out(other), want_unet)
    prompt = other.pipeline.maybe_convert_prompt("a photo of sks", other.tokenizers[0])
    assert_close(te_out(other, prompt)[0], want_te[0])


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_resume_state_holds_adapter_and_token_rows(cache: Path, method: str) -> None:
    cfg = pivotal(method=method)
    model = trained_pivotal(cache, "sd1", cfg)
    state = adapter_state(model, cfg)
    assert "text_encoder.embedding" in state and any(k.startswith("unet.") for k in state)
    other = fresh(cache)
    inject_adapter(other, cfg)
    load_adapter_state(other, cfg, state)
    assert_close(unet_out(other), unet_out(model))
    prompt = "a photo of " + " ".join(placeholder_tokens(cfg))
    assert_close(te_out(other, prompt)[0], te_out(model, prompt)[0])


def test_token_rows_train_at_their_own_rate_without_decay(cache: Path) -> None:
    cfg = pivotal(learning_rate=1e-4, pivotal_lr=3e-3, weight_decay=0.1)
    model = fresh(cache)
    params = inject_adapter(model, cfg)
    groups = make_optimizer(cfg, params, model).param_groups
    table = model.text_encoders[0].get_input_embeddings().weight
    (token_group,) = [g for g in groups if any(p is table for p in g["params"])]
    assert token_group["lr"] == 3e-3 and token_group["weight_decay"] == 0.0
    (unet_group,) = [g for g in groups if g is not token_group]
    assert unet_group["lr"] == 1e-4 and unet_group["weight_decay"] == 0.1
    assert len(unet_group["params"]) + 1 == len(params)


def test_pivotal_options_are_checked() -> None:
    with pytest.raises(ValueError, match="pivotal is for LoRA/DoRA"):
        config(method="embedding", pivotal=True)
    with pytest.raises(ValueError, match="needs a trigger"):
        TrainConfig(pivotal=True, trigger="")
    with pytest.raises(ArchitectureMismatch, match="no embeddings to learn the trigger"):
        check_architecture(pivotal(min_snr_gamma=None), "flux1")
    assert pivotal().learns_token and not pivotal().uses_text_cache


def test_a_member_turns_pivotal_on_and_gets_the_token_settings() -> None:
    assert not apply_preset("character", "lora", "sd1", trigger="ohwx").pivotal  # opt-in
    for name in ("character", "style", "object"):
        on = apply_preset(name, "lora", "sdxl", trigger="ohwx", pivotal=True)
        assert on.pivotal and on.embedding.initializer_token == "auto"
        assert on.pivotal_lr == 1e-3 and on.learns_token
    off = apply_preset("character", "dora", "sd1", trigger="ohwx", pivotal=False)
    assert "embedding" not in off.model_dump(exclude_defaults=True)
    assert (off.learning_rate, off.preservation.weight) == (1e-4, 4.0)
    with pytest.raises(PresetError, match=r"pivotal is for SD 1\.x and SDXL"):
        apply_preset("character", "lora", "flux1", trigger="ohwx", pivotal=True)
    with pytest.raises(PresetError, match="needs a trigger"):
        apply_preset("character", "lora", "sd1", trigger="", pivotal=True)


def test_pivotal_brings_the_concept_presets_their_measured_settings() -> None:
    """Character and object: the LoRA slower and held harder (docs/toy-model, passes five to
    eight); what the member sets still wins, and the other presets keep their own."""
    for name, method in (("character", "lora"), ("object", "dora")):
        on = apply_preset(name, method, "sd1", trigger="ohwx", pivotal=True)
        assert (on.learning_rate, on.preservation.weight) == (5e-5, 8.0)
        assert on.preservation.enabled and on.embedding.num_vectors == 4
        assert on.embedding.initializer_token == "auto"
    own = apply_preset(
        "character", "lora", "sdxl", trigger="ohwx", pivotal=True, learning_rate=2e-4,
        keep_weight=2, embedding={"num_vectors": 3},
    )  # fmt: skip
    assert (own.learning_rate, own.preservation.weight, own.embedding.num_vectors) == (2e-4, 2, 3)
    unkept = apply_preset("character", "lora", "sd1", trigger="ohwx", pivotal=True, keep_weight=0)
    assert not unkept.preservation.enabled and unkept.learning_rate == 5e-5
    for name in ("style", "quick-test"):
        plain = apply_preset(name, "lora", "sd1", trigger="ohwx")
        on = apply_preset(name, "lora", "sd1", trigger="ohwx", pivotal=True)
        assert on.learning_rate == plain.learning_rate
        assert on.preservation == plain.preservation


def test_runs_saved_before_pivotal_existed_still_resume() -> None:
    """The new fields stay out of the settings hash while pivotal is off."""
    plain = TrainConfig(trigger="ohwx")
    assert config_hash(plain) == config_hash(plain.model_copy(update={"pivotal_lr": 5e-3}))
    assert config_hash(plain) != config_hash(plain.model_copy(update={"pivotal": True}))


def test_training_writes_both_files_and_a_fair_base_column(tmp_path: Path, model_cache) -> None:
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    cfg = tiny_config(
        pivotal=True, pivotal_lr=5e-2, steps=4, checkpoint_every=2, resolution=32,
        embedding={"num_vectors": 2, "initializer_token": "auto"},
        validation={"steps": 1, "seeds": [1], "prompts": ["{trigger} at sea"]},
    )  # fmt: skip
    seen: dict = {}
    make_plan = loop.make_plan

    def spy(*args, **kwargs):
        seen["plan"] = make_plan(*args, **kwargs)
        return seen["plan"]

    loop.make_plan = spy
    try:
        result = loop.train(cfg, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    finally:
        loop.make_plan = make_plan
    assert [c.step for c in result.checkpoints] == [2, 4]
    for info in result.checkpoints:
        assert [p.name for p in model_files(info.file)] == [
            f"ohwx-step{info.step:08d}.safetensors",
            "ohwx.safetensors",
        ]
    first, last = (
        read_safetensors(c.file.parent / "ohwx.safetensors")[0] for c in result.checkpoints
    )
    assert not torch.equal(first["emb_params"], last["emb_params"])  # the rows trained
    plan = seen["plan"]
    assert plan.prompts == ["ohwx at sea"]
    word = plan.base_prompts[0].removesuffix(" at sea")
    assert word != "ohwx" and word.isalpha()  # the base column draws the chosen initializer


def test_the_trigger_vectors_stop_after_pivotal_until(tmp_path: Path, model_cache) -> None:
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    cfg = tiny_config(
        pivotal=True, pivotal_lr=5e-2, pivotal_until=0.5, steps=4, checkpoint_every=2,
        resolution=32, embedding={"num_vectors": 2, "initializer_token": "cat"},
        validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"]},
    )  # fmt: skip
    result = loop.train(cfg, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    half, end = result.checkpoints
    rows = [read_safetensors(c.file.parent / "ohwx.safetensors")[0] for c in (half, end)]
    assert torch.equal(rows[0]["emb_params"], rows[1]["emb_params"])  # fixed after step 2
    loras = [read_safetensors(c.file)[0] for c in (half, end)]
    assert any(not torch.equal(loras[0][k], loras[1][k]) for k in loras[0])  # the LoRA goes on


def test_pivotal_captions_read_as_the_lora_reads_them() -> None:
    import random

    from trainer.data import embedding_caption

    cfg = pivotal(caption_dropout=0.5)
    token = " ".join(placeholder_tokens(cfg))
    seen = {embedding_caption("sks, a red car", cfg, token, random.Random(i)) for i in range(40)}
    assert seen == {"", f"{token}, a red car"}  # dropout keeps the empty prompt, as a LoRA
    plain = pivotal()
    assert embedding_caption("a red car", plain, token, random.Random(0)) == "a red car"
    embedding = config(method="embedding", embedding={"templates": "captions"})
    assert embedding_caption("a red car", embedding, "sks", random.Random(0)) == "sks, a red car"


def test_atelier_train_and_generate_with_a_pivotal_job_file(
    tmp_path: Path, model_cache, capsys, monkeypatch
) -> None:
    """A job file with pivotal's settings through `atelier train`, then `atelier generate` with
    the LoRA file alone: it renders, and it needs the embedding named beside it."""
    import json
    import logging

    import yaml

    from atelier.settings import load_settings
    from trainer.generate import generate_cli
    from trainer.train_cli import train_cli

    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "home"))
    dataset = make_dataset(tmp_path / "data", count=2, size=32)
    cfg = tiny_config(
        pivotal=True, pivotal_lr=5e-2, pivotal_until=0.5, steps=4, checkpoint_every=2,
        resolution=32, dataset=str(dataset), heldout_fraction=0.0,
        embedding={"num_vectors": 2, "initializer_token": "cat"},
        validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"]},
    )  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"output_dir"})))
    argv = [str(job), "--out", str(tmp_path / "out"), "--cache-dir", str(model_cache),
            "--device", "cpu", "--json"]  # fmt: skip
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert train_cli(argv, load_settings) == 0
    finally:  # `atelier train` set up the process's logging: take it down again
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
        root.setLevel(level)
    summary = json.loads(capsys.readouterr().out)
    half, end = (Path(c["file"]) for c in summary["checkpoints"])
    rows = [read_safetensors(f.parent / "ohwx.safetensors")[0]["emb_params"] for f in (half, end)]
    assert torch.equal(rows[0], rows[1])  # pivotal_until 0.5 of 4 steps: fixed after step 2

    out = tmp_path / "img.png"
    generate = ["--model", str(end), "--steps", "2", "--seed", "1", "--scheduler", "euler",
                "--cache-dir", str(model_cache), "--width", "32", "--height", "32"]  # fmt: skip
    assert generate_cli([*generate, "--prompt", "ohwx", "--out", str(out)]) == 0
    assert out.is_file()
    (end.parent / "ohwx.safetensors").unlink()  # the pair is broken: said, not half-loaded
    with pytest.raises(FileNotFoundError):
        generate_cli([*generate, "--prompt", "ohwx", "--out", str(out)])
