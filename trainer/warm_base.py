"""One base model kept loaded per worker for renders, handed to each request clean.

Applying a member's file changes a base pipeline in place: diffusers' `load_lora_weights` wraps
layers in peft LoRA layers, our kohya DoRA wraps layers in `KohyaDora`/`DoraSlice` modules (and
attaches a `FusedDora` group to FLUX.1 blocks), `load_textual_inversion` adds tokens to the
tokenizer and swaps the text encoder's embedding data for a larger matrix (transformers keeps the
module, replaces `weight.data` and `num_embeddings`), and sampling swaps the scheduler.

So before the first request the cache records the exact base state: every module's attributes
with its child, parameter and buffer tables, each parameter's data tensor (a reference, not a
copy: nothing we apply writes into base weights, it replaces or wraps them), each component's
config, the pipeline's and `LoadedModel`'s attributes. A request gets private copies of the
tokenizers (they are changed in place). Afterwards LoRA adapters are unloaded the documented way
(`unload_lora_weights`), then everything recorded is put back and checked; any failure drops the
entry, so the next request loads afresh and a dirty base is never served.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the first base, not with the worker module
    import torch
    from torch import nn

    from trainer.base_models import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class _ModuleState:
    module: nn.Module
    attributes: dict[str, Any]
    children: dict[str, nn.Module | None]
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]
    data: dict[str, torch.Tensor]
    versions: dict[str, int]


class BaseSnapshot:
    """The exact state of a freshly loaded base, restorable after a request changed it."""

    def __init__(self, model: LoadedModel) -> None:
        from torch import nn

        self.model = model
        pipe = model.pipeline
        self.modules = [_record(m) for m in _all_modules(pipe)]
        self.configs = {
            name: copy.deepcopy(c.config)
            for name, c in pipe.components.items()
            if isinstance(c, nn.Module) and hasattr(c, "config")
        }
        self.pipeline_attributes = dict(pipe.__dict__)
        self.model_attributes = dict(model.__dict__)
        self.tokenizers = {
            name: value for name, value in pipe.components.items() if _is_tokenizer(value)
        }

    def prepare(self) -> None:
        """Give the request its own tokenizers (adding tokens changes them in place)."""
        pipe = self.model.pipeline
        copies = {name: copy.deepcopy(tok) for name, tok in self.tokenizers.items()}
        for name, tok in copies.items():
            setattr(pipe, name, tok)
        self.model.tokenizers = [
            copies.get(_name_of(tok, self.tokenizers), tok) for tok in self.model.tokenizers
        ]

    def restore(self) -> None:
        """Back to the recorded state; raises when that could not be done exactly."""
        pipe = self.model.pipeline
        if getattr(pipe, "unload_lora_weights", None) is not None:
            pipe.unload_lora_weights()
        for state in self.modules:
            _put_back(state)
        for name, config in self.configs.items():
            component = self.pipeline_attributes.get(name)
            if component is not None:
                _set_config(component, copy.deepcopy(config))
        pipe.__dict__.clear()
        pipe.__dict__.update(self.pipeline_attributes)
        self.model.__dict__.clear()
        self.model.__dict__.update(self.model_attributes)
        self.verify()

    def verify(self) -> None:
        """Raise unless the module tree and every weight are the recorded ones."""
        recorded = {id(state.module) for state in self.modules}
        current = _all_modules(self.model.pipeline)
        if {id(m) for m in current} != recorded or len(current) != len(self.modules):
            raise RuntimeError("the base's module tree differs from the recorded one")
        for state in self.modules:
            for name, param in state.module._parameters.items():
                if param is None:
                    continue
                data = state.data[name]
                if not _same(param, data):
                    raise RuntimeError(f"weight {name} of {type(state.module).__name__} changed")
                if param._version != state.versions[name]:
                    raise RuntimeError(f"weight {name} of {type(state.module).__name__} written")


class WarmBase:
    """A worker's one warm base (LRU of one), keyed by resolved base model, device and dtype.

    `loads` counts base loads, so a caller (and a test) can see reuse."""

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._snapshot: BaseSnapshot | None = None
        self.loads = 0

    @contextmanager
    def checkout(self, key: Hashable, load: Callable[[], LoadedModel]) -> Iterator[LoadedModel]:
        """The base for `key` (loaded by `load` when not warm); restored when the block ends."""
        snapshot = self._get(key, load)
        try:
            snapshot.prepare()
            yield snapshot.model
        finally:
            self._give_back(snapshot)

    def drop(self) -> None:
        """Forget the warm base (its memory is freed once no request holds it)."""
        self._key, self._snapshot = None, None

    def _get(self, key: Hashable, load: Callable[[], LoadedModel]) -> BaseSnapshot:
        if self._snapshot is not None and self._key == key:
            snapshot, self._snapshot = self._snapshot, None  # not shared while in use
            return snapshot
        self.drop()
        model = load()
        self.loads += 1
        self._key = key
        return BaseSnapshot(model)

    def _give_back(self, snapshot: BaseSnapshot) -> None:
        try:
            snapshot.restore()
        except Exception:
            log.warning("could not restore the warm base; the next render reloads", exc_info=True)
            self.drop()
        else:
            self._snapshot = snapshot


def _all_modules(pipe: Any) -> list[nn.Module]:
    from torch import nn

    seen: dict[int, nn.Module] = {}
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            for module in component.modules():
                seen.setdefault(id(module), module)
    return list(seen.values())


def _record(module: nn.Module) -> _ModuleState:
    params = {k: p for k, p in module._parameters.items() if p is not None}
    return _ModuleState(
        module=module,
        attributes=dict(module.__dict__),
        children=dict(module._modules),
        parameters=dict(module._parameters),
        buffers=dict(module._buffers),
        data={k: p.data for k, p in params.items()},
        versions={k: p._version for k, p in params.items()},
    )


def _put_back(state: _ModuleState) -> None:
    module = state.module
    module.__dict__.clear()
    module.__dict__.update(state.attributes)
    tables = (module._modules, module._parameters, module._buffers)
    for table, saved in zip(tables, (state.children, state.parameters, state.buffers), strict=True):
        table.clear()
        table.update(saved)
    for name, param in state.parameters.items():
        data = state.data.get(name)
        if param is not None and data is not None and not _same(param, data):
            param.data = data


def _same(param: torch.Tensor, data: torch.Tensor) -> bool:
    return param.data_ptr() == data.data_ptr() and param.shape == data.shape


def _set_config(component: nn.Module, config: Any) -> None:
    """diffusers models keep their config in `_internal_dict`; transformers in `config`."""
    if "_internal_dict" in component.__dict__:
        component.__dict__["_internal_dict"] = config
    else:
        component.__dict__["config"] = config


def _is_tokenizer(value: Any) -> bool:
    return (
        value is not None
        and hasattr(value, "add_tokens")
        and hasattr(value, "convert_ids_to_tokens")
    )


def _name_of(tokenizer: Any, originals: dict[str, Any]) -> str:
    return next((name for name, tok in originals.items() if tok is tokenizer), "")
