"""Render benchmark: a worker's warm base against loading the base for every request (before
issue 19). Prints one JSON object; not a test.

    python bench/warm_base.py [--renders 3] [--arch sd1 sdxl flux1 zimage]

Per tiny base and LoRA file: `reload` loads the base, applies the file and renders, per request
(the old path); `warm` does the same through one `WarmBase` (first load, then a view per
request). Reported: seconds per request after the first, the view's cost alone, and the
bytes of tensors a view copies (anything that is not a weight or buffer; weights are shared).
On real bases the load is seconds to minutes, so the tiny models understate the gain.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its queue.py would shadow the standard library

PATHS = {"sd1": "builtin:tiny", "sdxl": "builtin:tiny-sdxl", "flux1": "builtin:tiny-flux",
         "zimage": "builtin:tiny-zimage"}  # fmt: skip


def _lora(arch: str, cache: Path, out: Path) -> Path:
    from trainer.adapters import inject_adapter
    from trainer.base_models import load_base_model
    from trainer.config import TrainConfig
    from trainer.export import export_checkpoint

    config = TrainConfig(rank=4, alpha=4.0, steps=2, checkpoint_every=2, trigger="sks")
    model = load_base_model(PATHS[arch], arch, cache_dir=cache)
    inject_adapter(model, config)
    return export_checkpoint(model, config, out, 2, "lora").primary


def _request(base: object, lora: Path, arch: str) -> None:
    from trainer.generate import load_for_generation, render

    pipe = load_for_generation(base, lora, 1.0)
    pipe.set_progress_bar_config(disable=True)
    scheduler = "euler" if arch in ("flux1", "zimage") else "dpm++"
    render(pipe, "sks", seed=1, steps=2, guidance=3.0, scheduler=scheduler, width=32, height=32)


def _copied_bytes(model: object) -> int:
    """Bytes of the tensors a view copies (deepcopy's memo holds every object it copied; the
    weights and buffers are pre-seeded there, so they are not counted)."""
    import copy

    import torch

    from trainer.warm_base import _tensors

    memo: dict[int, object] = {id(t): t for t in _tensors(model)}  # type: ignore[arg-type]
    shared = set(memo)
    copy.deepcopy(model, memo)
    return sum(
        v.numel() * v.element_size()
        for k, v in memo.items()
        if k not in shared and isinstance(v, torch.Tensor)
    )


def bench(arch: str, renders: int, cache: Path, out: Path) -> dict[str, float]:
    from trainer.base_models import load_base_model
    from trainer.warm_base import WarmBase, view

    lora = _lora(arch, cache, out / arch)
    load = lambda: load_base_model(PATHS[arch], arch, cache_dir=cache)  # noqa: E731
    load()  # builds the tiny model into the cache once, outside the timings
    started = time.perf_counter()
    for _ in range(renders):
        _request(load(), lora, arch)
    reload_s = (time.perf_counter() - started) / renders
    warm = WarmBase()
    with warm.checkout(arch, load) as base:
        _request(base, lora, arch)
    started = time.perf_counter()
    for _ in range(renders):
        with warm.checkout(arch, load) as base:
            _request(base, lora, arch)
    warm_s = (time.perf_counter() - started) / renders
    model = load()
    started = time.perf_counter()
    view(model)
    view_s = time.perf_counter() - started
    return {
        "reload_s_per_request": round(reload_s, 3),
        "warm_s_per_request": round(warm_s, 3),
        "view_s": round(view_s, 4),
        "view_copied_bytes": _copied_bytes(model),
        "weight_bytes": sum(t.numel() * t.element_size() for t in _tensors_of(model)),
        "loads": warm.loads,
    }


def _tensors_of(model: object) -> list:
    from trainer.warm_base import _tensors

    return _tensors(model)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--renders", type=int, default=3)
    parser.add_argument("--arch", nargs="+", default=list(PATHS), choices=list(PATHS))
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        result = {a: bench(a, args.renders, cache, Path(tmp)) for a in args.arch}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
