"""Learning benchmark on the toy base model: does a LoRA / DoRA / embedding learn a new concept,
and does it leave prompts without the trigger alone?

    python bench/learn.py [--methods lora dora embedding] [--presets character]
                          [--preservation off on] [--seeds 1 2 3] [--steps N]

The concept `tkxw` (a purple star inside a yellow ring, `trainer.toy.shapes.CONCEPT`) never
appears in the toy model's training data (no purple star either). 20 generated images captioned
"a big tkxw at the top left on a blue background" train it with each preset at its own steps,
learning rate and resolution (the toy model's native 64 px) unless `--steps`/`--lr` override
them; checkpoints every steps/2 (the preset's cadence would only add evaluation time). At every
checkpoint, images for prompts that put the trigger in contexts the 20 images do not have are
scored with `trainer.toy.scoring.concept_score` (0–1) against the base model's images for the
same prompts and seeds; ordinary prompts (no trigger) measure leakage: their colour+shape hit
rate and the mean absolute pixel change (0–255, `trainer.leakage.pixel_change`) vs. the base
model's images. `--leak-prompts` (24) ordinary prompts are scored; the first six of them were
the whole set until the sixth pass and are reported apart (`leak_earlier`) so older files stay
comparable. Training speed is the loop's own steps/s (training steps only). `--preservation
off on` runs each configuration without and with differential output preservation. A summary
averages the final checkpoint over training seeds. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# run as a script, bench/ is first on sys.path and bench/queue.py would shadow the stdlib `queue`
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.toy import scoring, shapes  # noqa: E402

BASE = "builtin:toy"
TRAIN_SEED = 11
FLIPPED = 20.0
"""Mean change (of 255) above which an ordinary image counts as flipped: its shape drawn in
another place or size, not nudged (nudged images change by 1-7, flipped ones by 24-47)."""
LEAK_PROMPTS = 24
"""Ordinary prompts scored by default: 24 draws of the base distribution (every shape, every
colour) weigh any one prompt 1/24. The first six alone (two of them yellow squares, in the
concept's colour; one the base draws right in 5 of 8 images) made one prompt 1/6 of the score."""
EARLIER_LEAK_PROMPTS = 6
"""The ordinary prompts of passes one to six: the first six of `leak_scenes`."""


def make_concept_dataset(folder: Path, count: int = 20, seed: int = TRAIN_SEED) -> list[Any]:
    """`count` concept images + captions in the ingested layout (images/, captions.jsonl)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, scenes = [], []
    for index, (scene, image, text) in enumerate(shapes.make_dataset(count, seed, concept=True)):
        name = f"images/{index:04d}.png"
        image.save(folder / name)
        rows.append({"file": name, "text": text})
        scenes.append(scene)
    lines = "\n".join(json.dumps(row) for row in rows) + "\n"
    (folder / "captions.jsonl").write_text(lines, encoding="utf-8")
    return scenes


def new_context_prompts(train_scenes: list[Any], count: int = 6, seed: int = 5) -> list[str]:
    """Trigger prompts whose (position, background) pair is not in the training images."""
    return [prompt for prompt, _ in new_contexts(train_scenes, count, seed)]


def new_contexts(train_scenes: list[Any], count: int = 6, seed: int = 5) -> list[tuple[str, Any]]:
    """(prompt, scene) of `new_context_prompts`."""
    seen = {(s.position, s.background, s.background2) for s in train_scenes}
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Any]] = []
    while len(out) < count:
        scene = shapes.random_scene(rng, concept=True, two_tone=0.3)
        if (scene.position, scene.background, scene.background2) in seen:
            continue
        prompt = shapes.caption(scene, with_size=bool(rng.random() < 0.5))
        if prompt not in [p for p, _ in out]:
            out.append((prompt, scene))
    return out


def vae_ceiling(model: Any, scenes: list[Any]) -> dict[str, Any]:
    """The concept score of the prompts' own scenes drawn exactly and passed through the base
    model's VAE (encode, decode): the most a model that draws through this VAE can score."""
    from PIL import Image

    images = []
    for scene in scenes:
        pixels = np.asarray(shapes.render(scene).convert("RGB"), np.float32) / 127.5 - 1.0
        with torch.no_grad():
            x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
            y = model.vae.decode(model.vae.encode(x).latent_dist.mean).sample[0]
        out = ((y.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        images.append(Image.fromarray(out))
    parts = [scoring.concept_parts(image) for image in images]
    return {
        "concept": round(float(np.mean([scoring.concept_score(i) for i in images])), 3),
        "concept_parts": {k: round(float(np.mean([p[k] for p in parts])), 3) for k in parts[0]},
    }


def leak_scenes(count: int = LEAK_PROMPTS) -> list[Any]:
    return scoring.eval_scenes(count, seed=123)


def preservation_prompts(
    count: int, seed: int = 999, held_out_count: int = LEAK_PROMPTS
) -> list[str]:
    """`count` ordinary toy captions for `preservation.prompts`: what a team that makes these
    pictures writes besides the concept, drawn apart from the scored ordinary prompts (another
    seed, and any caption equal to one of those left out) so the leak score stays held out."""
    held_out = {shapes.caption(scene) for scene in leak_scenes(held_out_count)}
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        prompt = shapes.caption(shapes.random_scene(rng, two_tone=0.0))
        if prompt not in held_out and prompt not in prompts:
            prompts.append(prompt)
    return prompts


def load_base(cache_dir: Path, base: str = BASE) -> Any:
    from trainer.base_models import load_base_model

    model = load_base_model(base, "sd1", cache_dir=cache_dir)
    model.pipeline.set_progress_bar_config(disable=True)
    return model


def render_all(pipe: Any, prompts: list[str], seeds: list[int], steps: int) -> list[Any]:
    return [scoring.render_prompt(pipe, p, s, steps=steps) for p in prompts for s in seeds]


def evaluate(
    pipe: Any, concept_prompts: list[str], leaks: list[Any], seeds: list[int], steps: int
) -> dict[str, Any]:
    images = render_all(pipe, concept_prompts, seeds, steps)
    leak_prompts = [shapes.caption(s) for s in leaks]
    leak_images = render_all(pipe, leak_prompts, seeds, steps)
    judged = [
        scoring.judge(img, scene.color, scene.shape)
        for img, scene in zip(leak_images, [s for s in leaks for _ in seeds], strict=True)
    ]
    both = [int(j["color_ok"] and j["shape_ok"]) for j in judged]
    return {
        "concept": float(np.mean([scoring.concept_score(img) for img in images])),
        "concept_per_image": [round(scoring.concept_score(img), 3) for img in images],
        "concept_full": float(np.mean([scoring.concept_score(img) == 1.0 for img in images])),
        "concept_parts": {
            part: round(float(np.mean([scoring.concept_parts(img)[part] for img in images])), 3)
            for part in scoring.CONCEPT_PARTS
        },
        "leak_both": float(np.mean(both)),
        "leak_both_per_image": both,
        "leak_concept": float(np.mean([scoring.concept_score(img) for img in leak_images])),
        "_images": images,
        "_leak_images": leak_images,
    }


def first_six(per_image: list[Any], seeds: int) -> list[Any]:
    """The images of the first six ordinary prompts (passes one to six): per-image lists run
    prompt by prompt, `seeds` images each."""
    return per_image[: EARLIER_LEAK_PROMPTS * seeds]


def earlier_leak(both: list[int], change: list[float], seeds: int) -> dict[str, Any]:
    """The leak measures on the first six ordinary prompts alone."""
    return {
        "prompts": EARLIER_LEAK_PROMPTS,
        "both": round(float(np.mean(first_six(both, seeds))), 3),
        "pixel_change": round(float(np.mean(first_six(change, seeds))), 2),
    }


def pixel_change(a: list[Any], b: list[Any]) -> float:
    from trainer.leakage import pixel_change as change

    return change(a, b)


def preset_config(preset: str, method: str, values: dict[str, Any]) -> Any:
    """`apply_preset` with `values`, where a JSON null (`--set min_snr_gamma=null`) takes effect
    too: `apply_preset` reads None as "not set", as the bot's empty Discord options arrive."""
    from trainer.config import TrainConfig
    from trainer.presets import apply_preset

    config = apply_preset(preset, method, **values)
    nulls = {key: None for key, value in values.items() if value is None}
    return TrainConfig(**{**config.model_dump(), **nulls}) if nulls else config


def run_method(
    method: str,
    preset: str,
    preserve: bool,
    seed: int,
    steps: int | None,
    dataset: Path,
    work: Path,
    cache_dir: Path,
    concept_prompts: list[str],
    leaks: list[Any],
    seeds: list[int],
    sample_steps: int,
    base_eval: dict[str, Any],
    overrides: dict[str, Any],
    base_model: str = BASE,
    share: float | None = None,
) -> dict[str, Any] | None:
    from trainer.callbacks import RecordingCallbacks
    from trainer.generate import load_for_generation
    from trainer.loop import train
    from trainer.presets import PRESETS

    steps = steps or int(PRESETS[preset].values(method)["steps"])
    values: dict[str, Any] = {
        "base_model": base_model, "trigger": shapes.TRIGGER, "steps": steps,
        "checkpoint_every": max(1, steps // 2), "seed": seed, "mixed_precision": "no",
        "heldout_fraction": 0.0,  # all 20 images train
        "validation": {"steps": 4, "seeds": [1], "prompts": ["{trigger}"], "scheduler": "euler",
                       "leak_prompts": []},
        **overrides,
    }  # fmt: skip
    if method != "embedding":
        values["preservation"] = {
            **values.get("preservation", {}),
            "enabled": preserve,
            **({"share": share} if share else {}),
        }
    elif preserve:
        return None  # an embedding cannot change prompts without its token: nothing to preserve
    config = preset_config(preset, method, values)
    out = work / f"{preset}-{method}-{int(preserve)}-{seed}"
    started = time.monotonic()
    recorder = RecordingCallbacks()
    result = train(config, dataset, out, recorder, cache_dir=cache_dir, device="cpu", resume=False)
    seconds = time.monotonic() - started
    rows = []
    for info in result.checkpoints:
        base = load_base(cache_dir, base_model)
        pipe = load_for_generation(base, info.file)
        pipe.set_progress_bar_config(disable=True)
        scores = evaluate(pipe, concept_prompts, leaks, seeds, sample_steps)
        per_image = [
            round(pixel_change([a], [b]), 1)
            for a, b in zip(scores["_leak_images"], base_eval["_leak_images"], strict=True)
        ]
        rows.append({
            "step": info.step,
            "concept": round(scores["concept"], 3),
            "concept_full": round(scores["concept_full"], 3),
            "concept_parts": scores["concept_parts"],
            "concept_per_image": scores["concept_per_image"],
            "leak_both": round(scores["leak_both"], 3),
            "leak_both_per_image": scores["leak_both_per_image"],
            "leak_concept": round(scores["leak_concept"], 3),
            "leak_pixel_change": round(
                pixel_change(scores["_leak_images"], base_eval["_leak_images"]), 2
            ),
            "leak_pixel_change_per_image": per_image,
            "leak_pixel_change_median": round(float(np.median(per_image)), 2),
            "leak_flipped": sum(change > FLIPPED for change in per_image),
            "leak_earlier": earlier_leak(scores["leak_both_per_image"], per_image, len(seeds)),
        })  # fmt: skip
    return {
        "method": method,
        "preset": preset,
        "preservation": bool(config.preservation.enabled),
        "preservation_share": config.preservation.share if config.preservation.enabled else None,
        "preservation_weight": config.preservation.weight if config.preservation.enabled else None,
        "preservation_unconditional": (
            config.preservation.unconditional if config.preservation.enabled else None
        ),
        "optimizer": config.optimizer,
        "alpha": config.alpha if method != "embedding" else None,
        "overrides": {k: v for k, v in overrides.items() if k != "learning_rate"},
        "seed": seed,
        "steps": steps,
        "resolution": config.resolution or "native",
        "learning_rate": config.learning_rate,
        "rank": config.rank if method != "embedding" else None,
        "batch_size": config.batch_size,
        "embedding": config.embedding.model_dump() if config.learns_token else None,
        "pivotal": config.pivotal,
        "pivotal_lr": config.pivotal_lr if config.pivotal else None,
        "train_seconds": round(seconds, 1),
        "steps_per_second": round(recorder.progress[-1].steps_per_second, 3),
        "checkpoints": rows,
    }


class StepClock:
    """Training-step durations from progress events, on the process's CPU-time clock (the
    machine is shared: wall time measures the neighbours too) and the wall clock."""

    def __init__(self) -> None:
        from trainer.callbacks import RecordingCallbacks

        self.recorder = RecordingCallbacks()
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.recorder.on_progress = self._tick  # type: ignore[method-assign]

    def _tick(self, progress: Any) -> None:
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())

    def per_step(self, clock: str, second_half: bool = False) -> float:
        """Mean seconds per step between the first and the last progress event (or over the
        second half of the steps: preservation's store is full by then)."""
        ticks = self.cpu if clock == "cpu" else self.wall
        if second_half:
            ticks = ticks[len(ticks) // 2 :]
        return (ticks[-1] - ticks[0]) / (len(ticks) - 1)


def step_cost(
    methods: list[str],
    steps: int,
    rounds: int,
    dataset: Path,
    work: Path,
    cache_dir: Path,
    base_model: str = BASE,
    share: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Seconds per training step without and with preservation, alternated `rounds` times in
    this one process (the machine's load changes; alternating keeps the ratio fair), on the
    CPU-time clock and the wall clock. The mean runs over all `steps`, so the preservation
    store's first fills (one base forward per preserved sample) are included."""
    from trainer.loop import train

    out = []
    for method in [m for m in methods if m != "embedding"]:
        times: dict[tuple[bool, str], list[float]] = {}
        for index in range(rounds):
            for preserve in (False, True):
                values = dict(overrides or {})
                preservation = {**values.pop("preservation", {}), "enabled": preserve}
                if share:
                    preservation["share"] = share
                config = preset_config("character", method, {
                    "base_model": base_model, "trigger": shapes.TRIGGER, "steps": steps,
                    "checkpoint_every": steps, "seed": 1, "mixed_precision": "no",
                    "heldout_fraction": 0.0, "preservation": preservation,
                    "validation": {"steps": 1, "seeds": [1], "prompts": ["{trigger}"],
                                   "scheduler": "euler", "leak_prompts": []},
                    **values,
                })  # fmt: skip
                clock = StepClock()
                folder = work / f"cost-{method}-{int(preserve)}-{index}"
                train(config, dataset, folder, clock.recorder, cache_dir=cache_dir, device="cpu",
                      resume=False)  # fmt: skip
                for name in ("cpu", "wall"):
                    times.setdefault((preserve, name), []).append(clock.per_step(name))
                times.setdefault((preserve, "cpu_second_half"), []).append(
                    clock.per_step("cpu", second_half=True)
                )
        row: dict[str, Any] = {"method": method, "steps": steps, "rounds": rounds,
                               "share": share or "preset"}  # fmt: skip
        for name in ("cpu", "wall", "cpu_second_half"):
            plain = float(np.mean(times[(False, name)]))
            kept = float(np.mean(times[(True, name)]))
            row[f"{name}_ms_per_step_without"] = round(plain * 1000, 1)
            row[f"{name}_ms_per_step_with"] = round(kept * 1000, 1)
            row[f"{name}_step_time_ratio"] = round(kept / plain, 3)
        row["step_time_ratio"] = row["cpu_step_time_ratio"]
        out.append(row)
    return out


def summarise(runs: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean and spread over training seeds of each (preset, method, preservation, pivotal,
    label) final checkpoint: concept gain over the base, ordinary-prompt hit rate change, pixel
    change. A file that gathers several settings' runs labels each (`label`) to keep them apart."""
    groups: dict[tuple[str, str, bool, bool, str | None], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["preset"], run["method"], run["preservation"], bool(run.get("pivotal")),
               run.get("label"))  # fmt: skip
        groups.setdefault(key, []).append(run)
    out = []
    for (preset, method, preserve, pivotal, label), items in groups.items():
        finals = [item["checkpoints"][-1] for item in items]
        gains = [f["concept"] - base["concept"] for f in finals]
        out.append({
            "preset": preset, "method": method, "preservation": preserve, "pivotal": pivotal,
            **({"label": label} if label else {}),
            "seeds": [item["seed"] for item in items],
            "concept_gain_mean": round(float(np.mean(gains)), 3),
            "concept_gain_min": round(float(np.min(gains)), 3),
            "concept_gain_sd": round(float(np.std(gains)), 3),
            "leak_both_mean": round(float(np.mean([f["leak_both"] for f in finals])), 3),
            "leak_both_delta": round(
                float(np.mean([f["leak_both"] for f in finals])) - base["leak_both"], 3
            ),
            "leak_pixel_change_mean": round(
                float(np.mean([f["leak_pixel_change"] for f in finals])), 2
            ),
            "leak_pixel_change_max": round(
                float(np.max([f["leak_pixel_change"] for f in finals])), 2
            ),
            "leak_pixel_change_median_mean": round(
                float(np.mean([f.get("leak_pixel_change_median", np.nan) for f in finals])), 2
            ),
            **earlier_summary(finals, base),
            "leak_flipped_share": round(
                float(np.mean([f.get("leak_flipped", np.nan) / len(f["leak_pixel_change_per_image"])
                               for f in finals])), 3
            ),
            "steps_per_second_mean": round(
                float(np.mean([item["steps_per_second"] for item in items])), 3
            ),
        })  # fmt: skip
    return out


def earlier_summary(finals: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """The summary's leak figures on the first six ordinary prompts (absent from older files)."""
    earlier = [f["leak_earlier"] for f in finals if "leak_earlier" in f]
    if len(earlier) != len(finals) or "leak_both_earlier" not in base:
        return {}
    both = float(np.mean([e["both"] for e in earlier]))
    return {
        "leak_both_earlier_mean": round(both, 3),
        "leak_both_earlier_delta": round(both - base["leak_both_earlier"], 3),
        "leak_pixel_change_earlier_mean": round(
            float(np.mean([e["pixel_change"] for e in earlier])), 2
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "dora", "embedding"])
    parser.add_argument("--presets", nargs="+", default=["character"])
    parser.add_argument("--preservation", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="training seeds")
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's own")
    parser.add_argument(
        "--cost-steps", type=int, default=0,
        help="also time N training steps without / with preservation, alternated 3 times",
    )  # fmt: skip
    parser.add_argument("--share", type=float, default=None, help="preservation share override")
    parser.add_argument(
        "--preservation-prompts", type=int, default=0, metavar="N",
        help="preserve on N ordinary toy prompts (preservation.prompts; held apart from the "
        "scored ones) instead of the training captions",
    )  # fmt: skip
    parser.add_argument(
        "--leak-prompts", type=int, default=LEAK_PROMPTS, metavar="N",
        help=f"ordinary prompts scored (at least {EARLIER_LEAK_PROMPTS}: the first six are also "
        "reported apart, as in earlier passes)",
    )  # fmt: skip
    parser.add_argument("--no-runs", action="store_true", help="only the step cost (--cost-steps)")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=JSON",
        help="override a config value with JSON, e.g. preservation='{\"weight\": 2}'",
    )  # fmt: skip
    parser.add_argument("--eval-seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base", default=BASE, help="builtin:toy or a diffusers folder")
    args = parser.parse_args(argv)
    if args.leak_prompts < EARLIER_LEAK_PROMPTS:
        parser.error(f"--leak-prompts must be at least {EARLIER_LEAK_PROMPTS}")
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {}
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.preservation_prompts:
        overrides["preservation"] = {
            **overrides.get("preservation", {}),
            "prompts": preservation_prompts(
                args.preservation_prompts, held_out_count=args.leak_prompts
            ),
        }

    with tempfile.TemporaryDirectory(prefix="atelier-learn-") as tmp:
        work = Path(tmp)
        train_scenes = make_concept_dataset(work / "dataset")
        concept_prompts = new_context_prompts(train_scenes)
        leaks = leak_scenes(args.leak_prompts)
        base = load_base(args.cache_dir, args.base)
        seeds = [] if args.no_runs else args.eval_seeds  # the step cost needs no images
        base_eval = evaluate(base.pipeline, concept_prompts, leaks, seeds, args.sample_steps)
        contexts = new_contexts(train_scenes)
        report: dict[str, Any] = {
            "base_model": args.base,
            "concept": f"{shapes.TRIGGER} = {shapes.CONCEPT}",
            "train_images": 20,
            "steps": args.steps,
            "eval_seeds": args.eval_seeds,
            "concept_prompts": concept_prompts,
            "leak_prompts": [shapes.caption(s) for s in leaks],
            "preservation_prompts": overrides.get("preservation", {}).get("prompts", []),
            "base": {
                "concept": round(base_eval["concept"], 3),
                "concept_full": round(base_eval["concept_full"], 3),
                "concept_parts": base_eval["concept_parts"],
                "concept_vae_ceiling": vae_ceiling(base, [scene for _, scene in contexts]),
                "leak_both": round(base_eval["leak_both"], 3),
                "leak_both_earlier": round(
                    float(np.mean(first_six(base_eval["leak_both_per_image"], len(seeds)))), 3
                ),
                "leak_concept": round(base_eval["leak_concept"], 3),
                "concept_per_image": base_eval["concept_per_image"],
                "leak_both_per_image": base_eval["leak_both_per_image"],
            },
            "runs": [],
        }
        for preset in [] if args.no_runs else args.presets:
            for method in args.methods:
                for preserve in [p == "on" for p in args.preservation]:
                    for seed in args.seeds:
                        run = run_method(
                            method, preset, preserve, seed, args.steps, work / "dataset", work,
                            args.cache_dir, concept_prompts, leaks, args.eval_seeds,
                            args.sample_steps, base_eval, overrides, args.base, args.share,
                        )  # fmt: skip
                        if run is not None:
                            report["runs"].append(run)
                            print(json.dumps(run), file=sys.stderr, flush=True)
        report["summary"] = summarise(report["runs"], report["base"])
        if args.cost_steps:
            report["preservation_cost"] = step_cost(
                args.methods,
                args.cost_steps,
                3,
                work / "dataset",
                work,
                args.cache_dir,
                args.base,
                args.share,
                overrides,
            )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
