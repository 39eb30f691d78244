"""One module per base architecture behind `Architecture` (see `base.py`); this is the registry.

`get_architecture("sdxl")` returns the singleton for a name; `for_pipeline(pipe)` finds it from a
loaded pipeline. To add an architecture: a subclass in its own module, an entry in `_MODULES`,
its capabilities in `trainer.config.ARCHITECTURES` (torch-free, read by the bot), its built-in
tiny model in `trainer.base_models.BUILTINS`.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from trainer.architectures.base import Architecture, TextConditioning

__all__ = ["Architecture", "TextConditioning", "for_pipeline", "get_architecture", "names"]

_MODULES = {
    "sd1": ("trainer.architectures.sd1", "SD1"),
    "sdxl": ("trainer.architectures.sdxl", "SDXL"),
    "flux1": ("trainer.architectures.flux1", "Flux1"),
    "zimage": ("trainer.architectures.zimage", "ZImage"),
}


def names() -> list[str]:
    return list(_MODULES)


@cache
def get_architecture(name: str) -> Architecture:
    """The architecture called `name`; ValueError with the known names otherwise."""
    if name not in _MODULES:
        raise ValueError(f"unknown architecture {name!r} (use one of: {', '.join(_MODULES)})")
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)()


def for_pipeline(pipeline: Any) -> Architecture:
    """The architecture whose pipeline class `pipeline` is (most specific first)."""
    for name in reversed(_MODULES):
        arch = get_architecture(name)
        if type(pipeline) is arch.pipeline_class():
            return arch
    raise ValueError(f"no architecture for pipeline {type(pipeline).__name__}")
