"""The seam between the training machinery and one base architecture.

The loop, caches, held-out loss, validation grids and export call these methods and never ask
which architecture they hold. One subclass per architecture (`sd1`, `sdxl`, `flux1`, `zimage`;
the rectified-flow transformers share `flow.FlowTransformer`) decides:

- loading: the pipeline class, the denoiser's name (`unet` / `transformer`), the training
  noise schedule;
- conditioning: `encode_prompts` (per-token states + pooled vector);
- the objective: `sample_timesteps`, `noisy_and_target`, `predict`, `loss_weight`, and the
  fixed timesteps of the held-out loss;
- the adapter: which modules LoRA/DoRA wrap, and how DoRA is built;
- sampling: `sample` draws one image with the pipeline's own sampler;
- export: the kohya key names (and any fusing of modules) of the file users download, and the
  metadata naming the base.

A new architecture is a new subclass registered in `trainer.architectures`; what a member may
ask of it (methods, resolution steps) is listed torch-free in `trainer.config.ARCHITECTURES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from PIL import Image

    from trainer.base_models import LoadedModel
    from trainer.config import TrainConfig

AdapterLayer = tuple[str, str, dict[str, torch.Tensor]]
"""(component, module path, {"lora_down.weight", "lora_up.weight"[, "dora_scale"]})."""


def kohya_layer(name: str, parts: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """One layer of a downloadable file under the key stem `name`: float32 CPU copies of its
    tensors and a float32 `.alpha` (what kohya, ComfyUI and diffusers read)."""
    out = {f"{name}.{suffix}": t.detach().float().cpu().clone() for suffix, t in parts.items()}
    out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


@dataclass
class TextConditioning:
    """What the denoiser is conditioned on: per-token states and (SDXL, FLUX) a pooled vector."""

    hidden: torch.Tensor  # (batch, tokens, dim)
    pooled: torch.Tensor | None  # (batch, dim)


class Architecture(ABC):
    """One base architecture; subclasses are stateless singletons (see the module docstring)."""

    name: ClassVar[str]
    denoiser_name: ClassVar[str]
    """The pipeline attribute (and diffusers LoRA component name) of the denoiser."""
    base_version: ClassVar[str]
    """kohya's `ss_base_model_version`."""
    spec_architecture: ClassVar[str]
    """`modelspec.architecture` before `/lora` or `/textual-inversion`."""
    spec_implementation: ClassVar[str] = "diffusers"
    prediction_type: ClassVar[str | None] = None
    """What the denoiser predicts when the training scheduler does not say (FLUX.1: `flow`)."""
    quantized_blocks: ClassVar[tuple[str, ...]] = ()
    """The denoiser's block lists whose Linear layers `quantize_base` quantises (none: the
    option is refused, `trainer.config.ARCHITECTURES`)."""

    # ---------------------------------------------------------------- loading

    @abstractmethod
    def pipeline_class(self) -> type:
        """The diffusers pipeline class that loads and samples this architecture."""

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` / `from_single_file`."""
        return {}

    @abstractmethod
    def training_scheduler(self, pipeline: Any) -> Any:
        """The noise schedule the objective uses (separate from the sampling scheduler)."""

    # ---------------------------------------------------------------- conditioning

    @abstractmethod
    def encode_prompts(self, model: LoadedModel, captions: list[str]) -> TextConditioning:
        """Text-encoder outputs as the pipeline computes them (with gradients if enabled)."""

    # ---------------------------------------------------------------- the objective

    @abstractmethod
    def sample_timesteps(
        self, model: LoadedModel, config: TrainConfig, latents: torch.Tensor, generator: Any
    ) -> torch.Tensor:
        """One training timestep per sample, drawn from `generator` (CPU)."""

    @abstractmethod
    def fixed_timesteps(self, model: LoadedModel, count: int) -> list[float]:
        """`count` timesteps spread evenly over the schedule, for the held-out loss."""

    @abstractmethod
    def noisy_and_target(
        self, model: LoadedModel, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the denoiser's input at timesteps `t`, what it should predict)."""

    @abstractmethod
    def predict(
        self, model: LoadedModel, noisy: torch.Tensor, t: torch.Tensor, text: TextConditioning
    ) -> torch.Tensor:
        """The denoiser's prediction, in the latents' (unpacked) shape."""

    def loss_weight(
        self, model: LoadedModel, config: TrainConfig, t: torch.Tensor
    ) -> torch.Tensor | None:
        """Per-sample loss weights (None: uniform)."""
        return None

    # ---------------------------------------------------------------- the adapter

    @abstractmethod
    def target_modules(self, component: str, module: nn.Module, config: TrainConfig) -> list[str]:
        """Full names of the layers LoRA/DoRA wrap in `component`."""

    def inject_dora(
        self, component: str, module: nn.Module, names: list[str], config: TrainConfig
    ) -> list[nn.Parameter]:
        """Wrap `names` in kohya-convention DoRA layers; return their trainable parameters."""
        from trainer.adapters import inject_kohya_dora

        return inject_kohya_dora(module, names, config)

    # ---------------------------------------------------------------- sampling

    def prepare_pipeline(self, model: LoadedModel, config: TrainConfig) -> None:
        """Once per job, before the first validation render."""
        model.pipeline.set_progress_bar_config(disable=True)

    @abstractmethod
    def sample(
        self,
        pipeline: Any,
        *,
        prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        scheduler: str,
        negative_prompt: str,
        width: int,
        height: int,
    ) -> Image.Image:
        """One image as a member's app would draw it (CPU generator seeded by `seed`)."""

    def default_side(self, pipeline: Any) -> int:
        """The pixel size the base model draws by default."""
        denoiser = getattr(pipeline, self.denoiser_name)
        return int(denoiser.config.sample_size) * int(pipeline.vae_scale_factor)

    # ---------------------------------------------------------------- export

    def spec_name(self, model: LoadedModel) -> str:
        """`modelspec.architecture` before `/lora` (kohya's `sai_model_spec` names)."""
        return self.spec_architecture

    def spec_prediction_type(self, model: LoadedModel) -> str | None:
        """`modelspec.prediction_type`, or None where kohya writes none."""
        return model.prediction_type

    @abstractmethod
    def kohya_tensors(
        self, model: LoadedModel, layers: list[AdapterLayer], alpha: float
    ) -> dict[str, torch.Tensor]:
        """The kohya state dict of the file users download (float32, float `.alpha`)."""

    @abstractmethod
    def kohya_to_peft(
        self, model: LoadedModel, tensors: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """kohya keys back to `{component: {<path>.lora_A.weight / lora_B.weight / alpha /
        dora_scale}}`, for applying our own DoRA files."""

    def apply_kohya_dora(
        self, model: LoadedModel, tensors: dict[str, torch.Tensor], weight: float
    ) -> None:
        """Apply a kohya DoRA file to the frozen model at strength `weight`."""
        from trainer.adapters import apply_dora_layers

        apply_dora_layers(model, self.kohya_to_peft(model, tensors), weight)

    def diffusers_lora(
        self, model: LoadedModel, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """A kohya LoRA file as the state dict `load_lora_weights` gets, or None to hand
        diffusers the file itself (its own kohya converter)."""
        return None

    def file_matches(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
        """Whether a downloaded file was trained on this architecture (by metadata or keys)."""
        return metadata.get("ss_base_model_version") == self.base_version
