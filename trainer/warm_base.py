"""One base model kept loaded per worker for renders; each request works on its own view of it.

Applying a member's file changes a pipeline in place: diffusers' `load_lora_weights` wraps layers
in peft LoRA layers, our kohya DoRA replaces layers with `KohyaDora` (FLUX.1: attaches a
`FusedDora` group), `load_textual_inversion` adds tokens to the tokenizer and gives the text
encoder a larger embedding matrix, and sampling may swap the scheduler. Undoing each of those
exactly is fragile, so the warm base is never handed out: a request gets a *view* — a deep copy of
the pipeline's Python objects (modules, configs, scheduler, tokenizers) in which every weight and
buffer is a new tensor object over the same memory. Wrapping, replacing or resizing in the view
leaves the warm base as it was, and the weights themselves are not copied. Functions are shared
as deepcopy shares them: the one we install, the VAE's fp32 `decode` (`trainer.base_models`),
calls the warm VAE, which no render changes.

Only an in-place write into a base weight could reach the warm base; none of the loaders does
that, and each write bumps the tensor's version counter (shared with the view's tensor), so after
every request the counters are checked and a base that was written to is dropped, never served.
"""

from __future__ import annotations

import copy
import gc
import logging
import sys
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the first base, not with the worker module
    import torch

    from trainer.base_models import LoadedModel

log = logging.getLogger(__name__)


class WarmBase:
    """A worker's one warm base (an LRU of one), keyed by resolved base model and device.

    `loads` counts base loads, so a caller (and a test) can see the reuse."""

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._model: LoadedModel | None = None
        self._versions: dict[int, int] = {}
        self.loads = 0

    @contextmanager
    def checkout(self, key: Hashable, load: Callable[[], LoadedModel]) -> Iterator[LoadedModel]:
        """A view of the base for `key` (loaded by `load` unless warm) for the block's length."""
        if self._model is None or self._key != key:
            self.drop()  # one base at a time: the old one's memory goes before the new loads
            self._model = load()
            self.loads += 1
            self._key = key
            self._versions = _versions(self._model)
        model = self._model
        try:
            yield view(model)
        finally:
            if self._model is model and _versions(model) != self._versions:
                log.warning("a render wrote into the warm base's weights; the next one reloads")
                self.drop()

    @property
    def warm(self) -> bool:
        """Whether a base is loaded."""
        return self._model is not None

    def drop(self) -> None:
        """Forget the warm base and free its memory (before training, or for another base)."""
        if self._model is None:
            return
        self._key, self._model, self._versions = None, None, {}
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def view(model: LoadedModel) -> LoadedModel:
    """`model`'s Python objects copied, its weights and buffers shared (new tensor objects over
    the same memory, so a copy's `weight.data = …` or module swap never reaches `model`)."""
    from torch import nn

    memo: dict[int, Any] = {}
    for tensor in _tensors(model):
        if type(tensor) is nn.Parameter:
            memo[id(tensor)] = nn.Parameter(tensor.detach(), requires_grad=tensor.requires_grad)
        elif isinstance(tensor, nn.Parameter):  # a quantised weight class: shared as it is
            memo[id(tensor)] = tensor
        else:
            memo[id(tensor)] = tensor.detach()
    return copy.deepcopy(model, memo)


def _tensors(model: LoadedModel) -> list[torch.Tensor]:
    """Every parameter and buffer of every module the pipeline holds, once each."""
    from torch import nn

    seen: dict[int, torch.Tensor] = {}
    for component in model.pipeline.components.values():
        if isinstance(component, nn.Module):
            for module in component.modules():
                for table in (module._parameters, module._buffers):
                    for tensor in table.values():
                        if tensor is not None:
                            seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _versions(model: LoadedModel) -> dict[int, int]:
    return {id(t): t._version for t in _tensors(model)}
