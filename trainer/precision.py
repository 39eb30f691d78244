"""Mixed precision for one training job: device, weight dtype, autocast and fp16 loss scaling.

This replaces accelerate's `Accelerator` in the loop. accelerate keeps its state
(`AcceleratorState`) as a per-process singleton, so a long-lived worker that ran a bf16 job and
then an fp32 or fp16 job raised "AcceleratorState has already been initialized". A `Precision`
is a plain object made per job: nothing survives between jobs.

- `no`: fp32 weights, no autocast.
- `bf16`: frozen UNet and text encoders in bf16, autocast to bf16, trainable weights fp32.
- `fp16`: the same in fp16, plus a `torch.amp.GradScaler`: the loss is scaled before backward,
  gradients are unscaled before clipping, a step with non-finite gradients is skipped and the
  scale backs off (`backoff_factor`), and it grows again after `growth_interval` good steps.
  The scaler's state travels with the optimizer's state (resume keeps the scale).

`auto` picks bf16 on a CUDA GPU that supports it, fp16 on an older CUDA GPU, and on CPU what
`CPU_AUTO` says (measured: see docs/benchmarks.md). bf16 runs on any CPU torch supports it on
(fast with AVX512-BF16 / AMX); fp16 on CPU runs wherever torch's CPU autocast has fp16.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from trainer.callbacks import TrainingFailed

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
CPU_AUTO = "no"
"""What `auto` means on CPU. Measured (docs/benchmarks.md, AVX512-BF16 CPU): bf16 is 1.08-1.32×
faster on the mid benchmark model but 11-16 % slower on the tiny/toy models CPU jobs use by
default, so fp32; a bigger model on such a CPU should ask for bf16."""


def pick_device(device: str | torch.device | None) -> torch.device:
    """`None`/`auto` → cuda when visible, else cpu; refuses cuda without a GPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingFailed("device 'cuda' was requested but no CUDA GPU is available")
    return device


def auto_precision(device: torch.device) -> str:
    """bf16 on GPUs that have it, fp16 on older GPUs, `CPU_AUTO` on CPU."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return CPU_AUTO
    return "no"


def check_supported(precision: str, device: torch.device) -> None:
    """One clear line when `precision` cannot run on `device`."""
    if precision == "no" or device.type == "cuda":
        return
    if device.type != "cpu" or not torch.amp.is_autocast_available(device.type):
        raise TrainingFailed(f"mixed_precision '{precision}' is not available on {device.type}")
    try:  # CPU autocast warns and disables itself for a dtype it does not support
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with torch.autocast("cpu", dtype=DTYPES[precision]):
                torch.ones(2, 2) @ torch.ones(2, 2)
    except (RuntimeError, AssertionError, UserWarning) as error:
        raise TrainingFailed(
            f"mixed_precision '{precision}' is not supported on this CPU by torch "
            f"{torch.__version__} ({error}); use 'no'"
        ) from None


class ScaledOptimizer:
    """An optimizer whose state dict also carries the GradScaler's (scale, growth tracker)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def state_dict(self) -> dict[str, Any]:
        return {**self.optimizer.state_dict(), "grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        scaler_state = state.pop("grad_scaler", None)
        self.optimizer.load_state_dict(state)
        if scaler_state:
            self.scaler.load_state_dict(scaler_state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


class Precision:
    """Device, mixed precision and (fp16) loss scaling of one job. Made per job, never shared."""

    def __init__(self, device: torch.device, mixed_precision: str) -> None:
        self.device = device
        self.mixed_precision = mixed_precision
        self.dtype = DTYPES[mixed_precision]
        self.scaler = torch.amp.GradScaler(device.type) if mixed_precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the job's dtype (a fresh context each call); a no-op in fp32."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, optimizer: torch.optim.Optimizer) -> Any:
        """The optimizer the loop uses (with the scaler's state in its state dict under fp16)."""
        return ScaledOptimizer(optimizer, self.scaler) if self.scaler is not None else optimizer

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(
        self,
        optimizer: Any,
        params: Iterable[torch.nn.Parameter],
        max_grad_norm: float,
        finite: bool,
    ) -> bool:
        """Clip and step; skip the step when the loss (`finite` False) or the gradients are not
        finite. Under fp16 the scaler is updated on every call, stepped or skipped (so the next
        step can unscale again) and backs off after a skipped one. Returns whether it stepped."""
        inner = getattr(optimizer, "optimizer", optimizer)
        unscaled = False
        if finite:
            if self.scaler is not None:
                self.scaler.unscale_(inner)
                unscaled = True
            norm = torch.nn.utils.clip_grad_norm_(list(params), max_grad_norm)
            finite = bool(torch.isfinite(norm))
        if self.scaler is None:
            if finite:
                inner.step()
            return finite
        if finite:
            self.scaler.step(inner)  # gradients are finite: it steps
            self.scaler.update()
        elif unscaled:
            self.scaler.update()  # found_inf was recorded by unscale_: backs off
        else:  # the loss itself was not finite: no gradients to inspect; back off by hand
            self.scaler.scale(torch.zeros((), device=self.device))  # initialises a fresh scaler
            self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
        return finite

    @property
    def loss_scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler is not None else None


def keep_trainables_fp32(model: Any, method: str, params: list[torch.nn.Parameter]) -> None:
    """Trainable weights in fp32 even when the frozen base is bf16/fp16.

    An embedding trains the text encoders' input embedding matrix: a lone fp32 matrix inside a
    bf16 encoder makes its layer norms see mixed dtypes, so the (small) text encoders stay
    fp32 as a whole, as in diffusers' textual-inversion example. Elsewhere only the adapter
    weights are upcast (PEFT and `KohyaDora` cast their inputs and outputs).
    """
    if method == "embedding":
        for encoder in model.text_encoders:
            if next(encoder.parameters()).dtype != torch.float32:
                encoder.float()
    for param in params:
        param.data = param.data.float()


def make_precision(requested: str, device: str | torch.device | None) -> Precision:
    """The job's `Precision`: `requested` is the config's `mixed_precision`."""
    target = pick_device(device)
    precision = auto_precision(target) if requested == "auto" else requested
    check_supported(precision, target)
    if target.type == "cuda" and target.index is not None:
        torch.cuda.set_device(target)
    return Precision(target, precision)
