"""Differential output preservation: trigger-free captions keep the base model's predictions."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.train_helpers import _one_thread, make_dataset, model_cache, tiny_config
from trainer import adapters, loop
from trainer.caches import encode_prompts
from trainer.config import TrainConfig
from trainer.preservation import (
    Draw,
    Preserver,
    concat,
    empty_copies,
    preserved_caption,
    take,
)

__all__ = ["_one_thread", "model_cache"]


@pytest.mark.parametrize(
    ("caption", "class_word", "expected"),
    [
        ("ohwx, a photo of a cat, red", "", "a photo of a cat, red"),
        ("a photo of ohwx outdoors", "", "a photo of outdoors"),
        ("a big ohwx at the top left", "", "a big at the top left"),
        ("a photo of ohwx, outdoors", "person", "a photo of person, outdoors"),
        ("ohwxman stays, ohwx goes", "", "ohwxman stays, goes"),
        ("ohwx", "", ""),
    ],
)
def test_preserved_caption_replaces_or_removes_the_trigger(caption, class_word, expected):
    assert preserved_caption(caption, ["ohwx"], class_word) == expected


def test_longer_triggers_go_first_and_concepts_count():
    config = tiny_config(trigger="sks", preservation={"enabled": True})
    preserver = Preserver.from_config(config, concepts=["sks dog", "zzq"])
    assert preserver is not None
    assert preserver.triggers == ("sks dog", "sks", "zzq")  # longest first, then a-z
    assert preserver.caption("a sks dog and zzq") == "a and"


def test_share_rounds_and_keeps_at_least_one():
    preserver = Preserver(("ohwx",), "", 1.0, 0.5)
    assert [preserver.count(n) for n in (1, 2, 3, 4, 8)] == [1, 1, 2, 2, 4]


def test_off_no_trigger_and_embedding_are_explained():
    assert Preserver.from_config(tiny_config()) is None
    with pytest.raises(ValueError, match="no trigger"):
        Preserver.from_config(tiny_config(trigger="", preservation={"enabled": True}))
    with pytest.raises(ValueError, match="preservation is for LoRA/DoRA"):
        TrainConfig(method="embedding", trigger="ohwx", preservation={"enabled": True})


def test_batches_take_and_concat_every_tensor_field(tmp_path, model_cache):
    config = tiny_config(preservation={"enabled": True})
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    text = encode_prompts(model, ["ohwx a", "ohwx b", "ohwx c", "ohwx d"])
    batch = loop.Batch(torch.randn(4, 4, 8, 8), text)
    preserver = Preserver(("ohwx",), "", 1.0, 0.5)
    captions = ["ohwx a", "ohwx b", "ohwx c", "ohwx d"]
    kept, base = preserver.batches(
        model, batch, [0, 1, 2, 3], captions, lambda c: encode_prompts(model, c), False
    )
    assert base is None and kept.latents.shape[0] == 2
    assert torch.equal(kept.latents, batch.latents[:2])
    expected = encode_prompts(model, ["a", "b"]).hidden
    assert torch.allclose(kept.text.hidden, expected)
    both = concat(batch, kept)
    assert both.latents.shape[0] == 6 and both.text.hidden.shape[0] == 6
    assert torch.equal(take(both, 4).latents, batch.latents)


def test_the_empty_prompt_joins_the_keep_prompts_for_its_share():
    """With keep prompts, enough empty prompts join them for `unconditional` of the visits."""
    assert empty_copies(64, 0.1) == 7 and empty_copies(9, 0.1) == 1 and empty_copies(2, 0.1) == 1
    assert empty_copies(0, 0.1) == 0 and empty_copies(64, 0.0) == 0
    prompts = [f"a dog {i}" for i in range(9)]
    config = tiny_config(preservation={"enabled": True, "prompts": prompts})
    preserver = Preserver.from_config(config)
    assert preserver is not None and preserver.prompts == (*prompts, "")
    visits = [preserver.prompts[i] for i in preserver.items([0], 20)]
    assert visits.count("") == 2  # once per round of ten
    off = Preserver.from_config(
        tiny_config(preservation={"enabled": True, "prompts": prompts, "unconditional": 0})
    )
    assert off is not None and off.prompts == tuple(prompts)


@pytest.mark.parametrize("cached", [False, True])
def test_without_keep_prompts_every_nth_preserved_image_is_held_on_the_empty_prompt(
    cached, tmp_path, model_cache
):
    """Every 1/`unconditional`-th preserved training image is preserved on the empty prompt
    (its own item, so its stored draws stay apart); the rest on the caption without the
    trigger. The same with the preserved captions encoded once (cached text) or each step."""
    from trainer.data import Example

    config = tiny_config(preservation={"enabled": True, "unconditional": 0.25})
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    captions = ["ohwx, a", "ohwx, b"]
    examples = [
        Example(i, tmp_path / f"{i}.png", c, 64, 64, (64, 64)) for i, c in enumerate(captions)
    ]
    text_file = tmp_path / "text.pt" if cached else None
    preserver = Preserver.for_job(model, config, [], examples, text_file)
    assert preserver is not None and preserver.examples == 2
    batch = loop.Batch(torch.randn(2, 4, 8, 8), encode_prompts(model, captions))
    encode = partial(encode_prompts, model)
    seen = []
    for step in range(8):  # one preserved sample per micro-batch of 2
        index = step % 2
        order = [index, 1 - index]
        kept, _ = preserver.batches(
            model, batch, order, [captions[i] for i in order], encode, False
        )
        seen.extend(preserver.current)
        text = "" if preserver.current[0] >= 2 else ["a", "b"][index]
        assert torch.allclose(kept.text.hidden, encode_prompts(model, [text]).hidden, atol=1e-6)
    assert seen == [0, 1, 0, 3, 0, 1, 0, 3]


def test_holding_the_empty_prompt_keeps_the_unconditional_prediction_at_the_base(
    tmp_path, model_cache
):
    """The same preserved training moves the empty prompt's prediction (what guidance
    subtracts from every image) less when a share of the preserved samples holds it."""
    dataset = make_dataset(tmp_path / "data", count=4, size=64)
    drift = {}
    for share in (0.0, 0.5):
        config = tiny_config(
            steps=30, checkpoint_every=30, learning_rate=2e-2, batch_size=2,
            heldout_fraction=0.0, caption_dropout=0.0,
            preservation={"enabled": True, "unconditional": share},
            validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"],
                        "scheduler": "euler", "leak_prompts": []},
        )  # fmt: skip
        model = _trained(config, dataset, tmp_path / f"out-{share}", model_cache)
        drift[share] = _drift(model, config, ["", ""])
    assert drift[0.5] < 0.7 * drift[0.0], drift


def _drift(model, config: TrainConfig, captions: list[str]) -> float:
    """Mean |adapted − base| UNet prediction on trigger-free captions, fixed noisy latents."""
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn((len(captions), 4, 8, 8), generator=generator)
    timesteps = torch.full((len(captions),), 500)
    with torch.no_grad():
        text = encode_prompts(model, captions)
        adapted = model.unet(latents, timesteps, text.hidden).sample
        with adapters.adapter_disabled(model):
            base = model.unet(latents, timesteps, text.hidden).sample
    return float((adapted - base).abs().mean())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_preservation_keeps_trigger_free_captions_at_the_base(method, tmp_path, model_cache):
    """The same training with preservation moves trigger-free predictions far less."""
    dataset = make_dataset(tmp_path / "data", count=4, size=64)
    drift = {}
    for enabled in (False, True):
        config = tiny_config(
            method=method, steps=30, checkpoint_every=30, learning_rate=2e-2, batch_size=2,
            heldout_fraction=0.0, preservation={"enabled": enabled},
            validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"],
                        "scheduler": "euler", "leak_prompts": []},
        )  # fmt: skip
        model = _trained(config, dataset, tmp_path / f"out-{enabled}", model_cache)
        captions = [f"a photo of a cat, red, square {i}" for i in range(4)]
        drift[enabled] = _drift(model, config, captions)
    assert drift[False] > 0.0
    assert drift[True] < 0.5 * drift[False], drift


def test_preservation_prompts_keep_those_prompts_at_the_base(tmp_path, model_cache):
    """Preserving on the team's own prompts (rendered by the base model) holds the adapter to
    the base on them: the same training moves their predictions far less."""
    dataset = make_dataset(tmp_path / "data", count=4, size=64)
    prompts = [f"a photo of a dog, blue, circle {i}" for i in range(3)]
    drift = {}
    for enabled in (False, True):
        config = tiny_config(
            steps=30, checkpoint_every=30, learning_rate=2e-2, batch_size=2,
            heldout_fraction=0.0, preservation={"enabled": enabled, "prompts": prompts},
            validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"],
                        "scheduler": "euler", "leak_prompts": []},
        )  # fmt: skip
        model = _trained(config, dataset, tmp_path / f"out-{enabled}", model_cache)
        drift[enabled] = _drift(model, config, prompts)
    assert drift[False] > 0.0
    assert drift[True] < 0.5 * drift[False], drift


def test_preservation_prompts_are_rendered_per_bucket_and_visited_in_turn(tmp_path, model_cache):
    """Every prompt is rendered once per bucket size (seed: the job's + its index); preserved
    samples take the prompts in a seeded order that visits each once per round, with the
    prompt's own text and its render noised in place of the training latent."""
    from trainer.data import Example
    from trainer.validation import render

    prompts = ["a cat", "a dog", "a red square"]
    config = tiny_config(
        preservation={"enabled": True, "prompts": prompts, "unconditional": 0}, seed=5
    )
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    examples = [
        Example(0, tmp_path / "0.png", "ohwx, one", 64, 64, (64, 64)),
        Example(1, tmp_path / "1.png", "ohwx, two", 128, 64, (128, 64)),
    ]
    preserver = Preserver.for_job(model, config, [], examples, None)
    assert preserver is not None and preserver.priors is not None
    shapes = {key[1] for key in preserver.priors}
    assert len(preserver.priors) == 6 and len(shapes) == 2
    settings = config.model_copy(
        update={"validation": config.validation.model_copy(update={"steps": 20})}
    )
    pixels = torch.from_numpy(np.asarray(render(model, settings, "a dog", 5 + 1, 128, 64),
                                         dtype=np.float32))  # fmt: skip
    expected = loop.encode_images(model.vae, (pixels.permute(2, 0, 1) / 127.5 - 1.0)[None])[0]
    assert torch.allclose(preserver.priors[(1, tuple(expected.shape[-2:]))], expected, atol=1e-4)

    adapters.inject_adapter(model, config)
    captions = ["ohwx a", "ohwx b"]
    batch = loop.Batch(torch.randn(2, *expected.shape), encode_prompts(model, captions))
    encode = partial(encode_prompts, model)
    seen = []
    for _ in range(6):  # one preserved sample per micro-batch of 2 (share 0.5)
        kept, _ = preserver.batches(model, batch, [1, 0], captions, encode, False)
        seen.extend(preserver.current)
        expected_text = encode_prompts(model, [prompts[i] for i in preserver.current]).hidden
        assert torch.allclose(kept.text.hidden, expected_text)
    assert sorted(seen[:3]) == [0, 1, 2] and sorted(seen[3:]) == [0, 1, 2]
    assert preserver.current == seen[-1:]
    item = preserver.current[0]
    prior = preserver.priors[(item, tuple(expected.shape[-2:]))]
    noisy = torch.randn(1, *expected.shape) * 3
    got, _, _ = preserver.targets(model, lambda b, x, t: x * 0, kept, noisy, torch.tensor([0]))
    assert float((got[0] - prior).abs().mean()) < 0.1


def test_a_preservation_prompt_with_the_trigger_is_refused():
    with pytest.raises(ValueError, match="contains the trigger"):
        tiny_config(preservation={"enabled": True, "prompts": ["a photo of OHWX"]})


def _trained(config: TrainConfig, dataset: Path, out: Path, cache: Path):
    """Train, then load the final checkpoint's adapter state into a fresh model."""
    result = loop.train(config, dataset, out, cache_dir=cache, device="cpu")
    assert result.status == "completed"
    model = loop.load_model(config, cache, torch.device("cpu"), torch.float32, None)
    adapters.inject_adapter(model, config)
    state_path = result.checkpoints[-1].state_path
    tensors = torch.load(state_path / "adapter.pt", map_location="cpu", weights_only=True)
    adapters.load_adapter_state(model, config, tensors)
    return model


@pytest.mark.parametrize("cache_text", [True, False])
def test_preservation_runs_on_sdxl_with_pooled_text_and_time_ids(cache_text, tmp_path, model_cache):
    """The same module serves SDXL's batch (pooled text, time ids), cached text or not."""
    dataset = make_dataset(tmp_path / "data", count=4, size=64)
    config = tiny_config(
        base_model="tiny-sdxl", steps=2, checkpoint_every=2, heldout_fraction=0.0,
        cache_text=cache_text, preservation={"enabled": True, "class_word": "cat", "share": 1.0},
        validation={"steps": 1, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler",
                    "leak_prompts": []},
    )  # fmt: skip
    result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert result.status == "completed" and result.final is not None


def test_base_predictions_are_stored_and_reused(tmp_path, model_cache):
    """After `pool` draws of an example, its preservation target comes from the store: the base
    model is not run again, and the stored noisy latent, timestep and prediction come back."""
    config = tiny_config(preservation={"enabled": True})
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    adapters.inject_adapter(model, config)
    captions = ["ohwx a", "ohwx b"]
    batch = loop.Batch(torch.randn(2, 4, 8, 8), encode_prompts(model, captions))
    preserver = Preserver(("ohwx",), "", 1.0, 0.5, pool=2)
    base_calls: list[torch.Tensor] = []

    def predict(inputs, x, t):
        if not torch.is_grad_enabled():
            base_calls.append(t.clone())
        return model.arch.predict(model, x, t, inputs.text)

    def step(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        noisy = torch.randn((2, 4, 8, 8), generator=generator)
        timesteps = torch.randint(0, 1000, (2,), generator=generator)
        kept, _ = preserver.batches(
            model, batch, [5, 6], captions, lambda c: encode_prompts(model, c), False
        )
        return preserver.targets(model, predict, kept, noisy[:1], timesteps[:1])

    first, second = step(1), step(2)
    assert len(base_calls) == 2 and preserver.fresh() == []
    third, fourth = step(3), step(4)
    assert len(base_calls) == 2  # the base model ran only for the stored draws
    for stored, reused in ((first, third), (second, fourth)):
        assert all(torch.equal(a, b) for a, b in zip(stored, reused, strict=True))
    with torch.no_grad(), adapters.adapter_disabled(model):
        text = encode_prompts(model, ["a"])  # the preserved caption of "ohwx a"
        expected = model.arch.predict(model, first[0], first[1], text)
    assert torch.allclose(first[2], expected, atol=1e-6)


def test_a_full_store_keeps_no_more_draws_and_runs_the_base_model_instead():
    """Past `max_store_bytes` nothing more is stored: the example stays fresh (the base model
    predicts it each step) rather than the store growing with the dataset."""
    preserver = Preserver(("ohwx",), "", 1.0, 0.5, pool=2)
    draw = Draw(torch.zeros(4, 8, 8), torch.tensor(7), torch.zeros(4, 8, 8))
    preserver.max_store_bytes = 2 * 2 * 4 * 8 * 8 * 4 + 2 * 8  # room for two draws
    preserver.store(1, draw)
    preserver.store(1, draw)
    preserver.store(2, draw)
    assert len(preserver.draws[1]) == 2 and 2 not in preserver.draws
    preserver.current = [1, 2]
    assert preserver.fresh() == [1]


def test_without_a_pool_the_base_model_predicts_every_step(tmp_path, model_cache):
    config = tiny_config(preservation={"enabled": True, "pool": 0})
    preserver = Preserver.from_config(config)
    assert preserver is not None and preserver.pool == 0
    preserver.current = [3]
    assert preserver.fresh() == [0]
    preserver.draws[3] = []
    assert preserver.fresh() == [0]


def test_prior_renders_replace_the_training_latents_in_preservation(tmp_path, model_cache):
    """With `prior`, each example gets the base model's render of its preserved caption (at its
    bucket size), and the preserved samples are that render noised, not the training image."""
    from trainer.data import Example
    from trainer.validation import render

    config = tiny_config(preservation={"enabled": True, "prior": True, "unconditional": 0}, seed=3)
    model = loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)
    examples = [
        Example(i, tmp_path / f"{i}.png", f"ohwx, a cat {i}", 64, 64, (64, 64)) for i in range(2)
    ]
    preserver = Preserver.for_job(model, config, [], examples, None)
    assert preserver is not None and preserver.priors is not None
    settings = config.model_copy(
        update={"validation": config.validation.model_copy(update={"steps": 20})}
    )
    image = render(model, settings, "a cat 1", 3 + 1, 64, 64)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
    expected = loop.encode_images(model.vae, (pixels.permute(2, 0, 1) / 127.5 - 1.0)[None])[0]
    size = tuple(expected.shape[-2:])
    assert sorted(preserver.priors) == [(0, size), (1, size)]  # one per example, its bucket
    assert torch.allclose(preserver.priors[(1, size)], expected, atol=1e-4)
    shape = (2, *expected.shape)

    adapters.inject_adapter(model, config)
    captions = ["ohwx a", "ohwx b"]
    batch = loop.Batch(torch.randn(shape), encode_prompts(model, captions))
    encode = partial(encode_prompts, model)
    kept, _ = preserver.batches(model, batch, [1, 0], captions, encode, False)
    noisy = torch.randn(shape[1:])[None] * 3
    got, _, _ = preserver.targets(model, lambda b, x, t: x * 0, kept, noisy, torch.tensor([0]))
    # at t = 0 the noised prior is almost the prior itself, far from the training sample
    assert float((got[0] - preserver.priors[(1, size)]).abs().mean()) < 0.1
    assert float((noisy[0] - preserver.priors[(1, size)]).abs().mean()) > 1.0


@pytest.mark.slow
def test_atelier_train_with_preservation_prior_and_pool(tmp_path, model_cache, capsys, monkeypatch):
    """`atelier train`'s command (in process, to read its stderr) with every preservation option a
    job file can set: the prior renders happen once before training, and the job reaches its
    checkpoints and exports."""
    import json
    import logging

    import yaml

    from atelier.settings import load_settings
    from trainer.train_cli import train_cli

    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "home"))
    dataset = make_dataset(tmp_path / "data", count=4, size=32)
    config = tiny_config(
        steps=4, checkpoint_every=2, resolution=32, batch_size=2, dataset=str(dataset),
        heldout_fraction=0.0,
        preservation={"enabled": True, "prior": True, "pool": 1, "share": 0.5, "weight": 2.0,
                      "unconditional": 0.25},
        validation={"steps": 2, "seeds": [1], "prompts": ["{trigger}"]},
    )  # fmt: skip
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"output_dir"})))
    argv = [str(config_file), "--out", str(tmp_path / "out"), "--cache-dir", str(model_cache),
            "--device", "cpu", "--json"]  # fmt: skip
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert train_cli(argv, load_settings) == 0
    finally:  # `atelier train` set up the process's logging: take it down again
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
        root.setLevel(level)
    captured = capsys.readouterr()
    # the operator sees the loop's lines on stderr, formatted like every entry point's
    expected = "weight 2, pool 1, empty prompt 0.25, 8 prior renders"  # each image on "" too
    assert "INFO trainer.loop: " in captured.err and expected in captured.err, captured.err
    summary = json.loads(captured.out)
    assert summary["status"] == "completed"
    assert [c["step"] for c in summary["checkpoints"]] == [2, 4]
    assert all(Path(c["file"]).is_file() for c in summary["checkpoints"])


@pytest.mark.parametrize(("arch", "method"), [("flux1", "lora"), ("zimage", "dora")])
def test_preservation_prompts_train_on_the_flow_transformers(
    arch, method, tmp_path, model_cache, caplog
):
    """The same preservation (prompts rendered by the base, then kept) runs on FLUX.1 and
    Z-Image: their prior renders match their training latents, and the job completes."""
    import logging

    from tests.trainer.transformer_helpers import config as flow_config

    dataset = make_dataset(tmp_path / "data", count=4, size=32)
    config = flow_config(
        arch, method=method, steps=4, checkpoint_every=4, batch_size=2, heldout_fraction=0.0,
        preservation={"enabled": True, "prompts": ["a red square", "a blue circle"], "pool": 1},
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="trainer.loop"):
        result = loop.train(config, dataset, tmp_path / "out", cache_dir=model_cache, device="cpu")
    assert result.status == "completed" and result.final is not None
    assert "pool 1, empty prompt 0.10, 3 prior renders" in caplog.text
