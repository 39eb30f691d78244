"""Exported files reload in diffusers (and our DoRA reader) to the adapter they were saved from.

rank 4 / alpha 1 everywhere: a file that writes alpha = rank, or a loader that ignores alpha,
is 4× off and fails these comparisons. LoRA B starts at zero (gaussian init), so every test
perturbs the adapter first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.trainer.train_helpers import perturb
from trainer.adapters import (
    adapter_state,
    inject_adapter,
    load_adapter_state,
    placeholder_tokens,
    restore_frozen_embedding_rows,
)
from trainer.base_models import LoadedModel, load_base_model
from trainer.config import TrainConfig
from trainer.export import export_checkpoint, kohya_to_peft, read_safetensors
from trainer.formats.kohya import KEY_PATTERN
from trainer.generate import apply_kohya_dora

PATHS = {"sd1": "builtin:tiny", "sdxl": "builtin:tiny-sdxl"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


def fresh(cache: Path, arch: str = "sd1") -> LoadedModel:
    model = load_base_model(PATHS[arch], arch, cache_dir=cache)
    model.pipeline.set_progress_bar_config(disable=True)
    return model


def config(**kw: object) -> TrainConfig:
    base = {"rank": 4, "alpha": 1.0, "steps": 10, "checkpoint_every": 5, "trigger": "sks"}
    return TrainConfig(**(base | kw))


def trained(cache: Path, arch: str, cfg: TrainConfig) -> LoadedModel:
    """A model with the adapter injected and moved away from its (identity) init."""
    model = fresh(cache, arch)
    params = inject_adapter(model, cfg)
    perturb([] if cfg.method == "embedding" else params, 0.2)  # seeds the embedding rows too
    if cfg.method == "embedding":
        with torch.no_grad():
            for encoder in model.text_encoders:
                weight = encoder.get_input_embeddings().weight
                weight[-cfg.embedding.num_vectors :] += torch.randn_like(
                    weight[-cfg.embedding.num_vectors :]
                )
    return model


@torch.no_grad()
def unet_out(model: LoadedModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    context = 64 if model.is_sdxl else 32
    sample = torch.randn(1, 4, 8, 8, generator=g)
    states = torch.randn(1, 77, context, generator=g)
    extra = {}
    if model.is_sdxl:
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 32, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    return model.unet(sample, 500, states, **extra).sample


@torch.no_grad()
def te_out(model: LoadedModel, prompt: str = "a photo of a cat") -> list[torch.Tensor]:
    outs = []
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
        ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        outs.append(encoder(ids)[0])
    return outs


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_lora_kohya_and_diffusers_files_reload_to_same_output(cache: Path, tmp_path: Path) -> None:
    cfg = config(targets="attention_conv", train_text_encoder=True)
    model = trained(cache, "sd1", cfg)
    want_unet, want_te = unet_out(model), te_out(model)
    files = export_checkpoint(model, cfg, tmp_path, 50, "my char")
    assert files.primary.name == "my_char-step00000050.safetensors"
    assert files.size_bytes == files.primary.stat().st_size

    for source in (files.primary, files.diffusers):
        other = fresh(cache)
        base_unet = unet_out(other)
        other.pipeline.load_lora_weights(str(source))
        assert_close(unet_out(other), want_unet)
        assert_close(te_out(other)[0], want_te[0])
        other.pipeline.unload_lora_weights()
        assert torch.equal(unet_out(other), base_unet)


def test_kohya_keys_alpha_and_metadata(cache: Path, tmp_path: Path) -> None:
    cfg = config(targets="attention_conv", train_text_encoder=True)
    model = trained(cache, "sd1", cfg)
    tensors, meta = read_safetensors(export_checkpoint(model, cfg, tmp_path, 5, "x").primary)
    assert [k for k in tensors if not KEY_PATTERN.match(k)] == []
    assert all(t.dtype == torch.float32 for t in tensors.values())
    downs = [k for k in tensors if k.endswith(".lora_down.weight")]
    for down in downs:
        name = down.removesuffix(".lora_down.weight")
        assert f"{name}.lora_up.weight" in tensors
        assert tensors[f"{name}.alpha"].item() == 1.0
    assert len(tensors) == 3 * len(downs)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in tensors
    te_q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert any(k.startswith(te_q) for k in tensors)
    conv = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
    assert conv.shape == (4, 32, 3, 3)
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (32, 4, 1, 1)
    assert meta["ss_network_alpha"] == "1.0" and meta["ss_network_dim"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.trigger_phrase"] == "sks"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sshs_model_hash"])
    assert re.fullmatch(r"[0-9a-f]{8}", meta["sshs_legacy_hash"])
    assert not any("dataset" in k or "tag_frequency" in k for k in meta)


def test_dora_kohya_file_round_trips(cache: Path, tmp_path: Path) -> None:
    cfg = config(method="dora", targets="attention_conv", train_text_encoder=True)
    model = trained(cache, "sd1", cfg)
    want_unet, want_te = unet_out(model), te_out(model)
    files = export_checkpoint(model, cfg, tmp_path, 10, "d")
    assert files.diffusers is None
    tensors, meta = read_safetensors(files.primary)
    assert meta["ss_network_module"] == "lycoris.kohya"
    attn = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    scale = tensors[f"{attn}.dora_scale"]
    assert scale.shape == (1, 32)  # (1, in): LyCORIS / kohya convention
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.dora_scale"].shape == (1, 32, 1, 1)
    peft = kohya_to_peft(tensors, fresh(cache))
    assert set(peft) == {"unet", "text_encoder"}
    assert any(k.endswith("to_q.lora_A.weight") for k in peft["unet"])

    other = fresh(cache)
    base_unet = unet_out(other)
    apply_kohya_dora(other, tensors, 1.0)
    assert_close(unet_out(other), want_unet)
    assert_close(te_out(other)[0], want_te[0])
    assert not torch.allclose(base_unet, want_unet)


def test_sdxl_lora_uses_original_names_and_reloads(cache: Path, tmp_path: Path) -> None:
    cfg = config(targets="attention_conv", train_text_encoder=True)
    model = trained(cache, "sdxl", cfg)
    want_unet, want_te = unet_out(model), te_out(model)
    tensors, meta = read_safetensors(export_checkpoint(model, cfg, tmp_path, 5, "xl").primary)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha" not in tensors
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.alpha" in tensors
    assert "lora_unet_input_blocks_2_0_op.lora_down.weight" in tensors
    assert "lora_unet_output_blocks_1_2_conv.lora_down.weight" in tensors
    assert "lora_unet_middle_block_2_in_layers_2.lora_down.weight" in tensors
    assert not any("down_blocks" in k for k in tensors)
    assert any(k.startswith("lora_te1_text_model_") for k in tensors)
    assert any(k.startswith("lora_te2_text_model_") for k in tensors)
    other = fresh(cache, "sdxl")
    other.pipeline.load_lora_weights(str(tmp_path / "xl-step00000005.safetensors"))
    assert_close(unet_out(other), want_unet)
    for got, want in zip(te_out(other), want_te, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_embedding_files_reload_to_same_text_encoding(
    cache: Path, tmp_path: Path, arch: str
) -> None:
    cfg = config(method="embedding", embedding={"num_vectors": 2, "initializer_token": "cat"})
    model = trained(cache, arch, cfg)
    want = te_out(model, "a photo of " + " ".join(placeholder_tokens(cfg)))
    files = export_checkpoint(model, cfg, tmp_path, 5, "emb")
    assert files.primary.name == "sks.safetensors"
    tensors, _ = read_safetensors(files.primary)
    if arch == "sdxl":
        assert tensors["clip_l"].shape == tensors["clip_g"].shape == (2, 32)
    else:
        assert tensors["emb_params"].shape == (2, 32)
    assert all(t.dtype == torch.float32 for t in tensors.values())

    kohya_loaded, diffusers_loaded = fresh(cache, arch), fresh(cache, arch)
    from trainer.generate import _load_embedding

    meta = {"modelspec.trigger_phrase": "sks"}
    _load_embedding(kohya_loaded.pipeline, kohya_loaded, files.primary, meta)
    pipe = diffusers_loaded.pipeline
    pairs = [(pipe.text_encoder, pipe.tokenizer, "learned_embeds.safetensors")]
    if arch == "sdxl":
        pairs.append((pipe.text_encoder_2, pipe.tokenizer_2, "learned_embeds_2.safetensors"))
    for encoder, tokenizer, name in pairs:
        pipe.load_textual_inversion(
            str(files.diffusers / name), text_encoder=encoder, tokenizer=tokenizer
        )
    for loaded in (kohya_loaded, diffusers_loaded):
        prompt = loaded.pipeline.maybe_convert_prompt("a photo of sks", loaded.tokenizers[0])
        assert prompt == "a photo of sks sks_1"
        for got, expected in zip(te_out(loaded, prompt), want, strict=True):
            assert_close(got, expected)


def test_only_adapter_params_train_and_resume_state(cache: Path) -> None:
    for cfg in (config(train_text_encoder=True), config(method="dora")):
        model = fresh(cache)
        params = inject_adapter(model, cfg)
        ids = {id(p) for p in params}
        for module in (model.unet, model.vae, *model.text_encoders):
            for name, param in module.named_parameters():
                assert param.requires_grad == (id(param) in ids), name
        torch.manual_seed(0)
        with torch.no_grad():
            for param in params:
                param.add_(torch.randn_like(param))
        state, want = adapter_state(model, cfg), unet_out(model)
        other = fresh(cache)
        inject_adapter(other, cfg)
        load_adapter_state(other, cfg, state)
        assert_close(unet_out(other), want)


def test_embedding_rows_restore_and_resume(cache: Path) -> None:
    cfg = config(method="embedding", embedding={"num_vectors": 3})
    model = fresh(cache)
    before = model.text_encoders[0].get_input_embeddings().weight.detach().clone()
    (weight,) = inject_adapter(model, cfg)
    assert weight.shape[0] == before.shape[0] + 3
    with torch.no_grad():
        weight.add_(1.0)
    restore_frozen_embedding_rows(model)
    assert torch.equal(weight[: before.shape[0]], before)
    assert torch.equal(weight[-3:], weight[-3:])
    state = adapter_state(model, cfg)
    other = fresh(cache)
    inject_adapter(other, cfg)
    load_adapter_state(other, cfg, state)
    assert torch.equal(other.text_encoders[0].get_input_embeddings().weight, weight.detach())
