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

`auto` picks bf16 on a CUDA GPU that supports it, fp16 on an older CUDA GPU, and on CPU bf16
when the CPU has bf16 instructions (AVX512-BF16 or AMX) and the denoiser has at least
`CPU_BF16_MIN_PARAMS` weights, else fp32 (`cpu_auto`; measured: docs/benchmarks.md). The CPU
choice needs the model, so `make_precision` starts an `auto` CPU job in fp32 and `settle_auto`
moves it to bf16 once the model is loaded. bf16 runs on any CPU torch supports it on (fast with
AVX512-BF16 / AMX); fp16 on CPU runs wherever torch's CPU autocast has fp16.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from trainer.callbacks import TrainingFailed

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
CPU_BF16_MIN_PARAMS = 8_000_000
"""The smallest denoiser `auto` trains in bf16 on a CPU with bf16 instructions. Measured
(docs/benchmarks.md, AVX512-BF16 CPU, explicit-matmul attention): the mid benchmark UNet (16 M)
trains 1.3-1.7× faster in bf16 than fp32. The built-in tiny/toy models (≤ 1 M, what tests and
the demo train) stay fp32 under `auto`: their results stay bit-comparable with earlier runs and
across CPUs with and without bf16; real SD/SDXL/FLUX denoisers are 100× above the line."""


def pick_device(device: str | torch.device | None) -> torch.device:
    """`None`/`auto` → cuda when visible, else cpu; refuses cuda without a GPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingFailed("device 'cuda' was requested but no CUDA GPU is available")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles), as torch sees them."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_auto(denoiser_params: int | None) -> str:
    """`auto` on CPU: bf16 for a denoiser of `CPU_BF16_MIN_PARAMS` or more on a CPU with bf16
    instructions, else fp32 (`None`: the model is not known yet)."""
    if denoiser_params is None or denoiser_params < CPU_BF16_MIN_PARAMS:
        return "no"
    return "bf16" if cpu_has_fast_bf16() else "no"


def auto_precision(device: torch.device, denoiser_params: int | None = None) -> str:
    """bf16 on GPUs that have it, fp16 on older GPUs, `cpu_auto` on CPU."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return cpu_auto(denoiser_params)
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

    def __init__(self, device: torch.device, mixed_precision: str, requested: str = "") -> None:
        self.device = device
        self.mixed_precision = mixed_precision
        self.requested = requested or mixed_precision  # `auto` or the precision itself
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


def keep_trainables_fp32(model: Any, learns_token: bool, params: list[torch.nn.Parameter]) -> None:
    """Trainable weights in fp32 even when the frozen base is bf16/fp16.

    New token vectors (an embedding, or pivotal's trigger) train the text encoders' input
    embedding matrix: a lone fp32 matrix inside a bf16 encoder makes its layer norms see mixed
    dtypes, so the (small) text encoders stay fp32 as a whole, as in diffusers' textual-inversion
    example. Elsewhere only the adapter weights are upcast (PEFT and `KohyaDora` cast their
    inputs and outputs).
    """
    if learns_token:
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
    return Precision(target, precision, requested)


def settle_auto(precision: Precision, model: Any) -> Precision:
    """An `auto` CPU job once its (fp32-loaded) model is known: bf16 where `cpu_auto` says so,
    with the frozen denoiser and text encoders cast to bf16 as `load_base_model` would have.
    Any other job (an explicit precision, CUDA, a quantised base) is returned as it is."""
    if precision.requested != "auto" or precision.device.type != "cpu":
        return precision
    if model.extra.get("quantized"):
        return precision
    chosen = cpu_auto(sum(p.numel() for p in model.denoiser.parameters()))
    if chosen == precision.mixed_precision:
        return precision
    settled = Precision(precision.device, chosen, "auto")
    for module in (model.denoiser, *model.text_encoders):
        module.to(dtype=settled.dtype)
    return settled
