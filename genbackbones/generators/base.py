"""The small interface the pretraining methods program against.

A method never imports a GAN family's module: it asks a `FrozenGenerator` for
latents, a traced synthesis pass (activations + styles + noise), a resumed pass
from a substituted activation, and synthesis from per-layer styles. StyleGAN2
(`stylegan2.Generator`) implements it; another family only has to do the same.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .stylegan2 import SynthesisTrace, TapSpec


@runtime_checkable
class FrozenGenerator(Protocol):
    z_dim: int
    c_dim: int
    img_resolution: int
    img_channels: int

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor: ...

    def sample_labels(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor | None: ...

    def tap_specs(self) -> dict[str, TapSpec]:
        """Every activation a method may read or substitute: name -> channels, resolution, kind."""
        ...

    def style_dims(self) -> dict[str, int]:
        """Every per-layer style vector: layer name -> length."""
        ...

    def trace(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
              truncation_cutoff: int | None = None, noise_mode: str = "const",
              fused_modconv: bool | None = None) -> SynthesisTrace: ...

    def resume(self, trace: SynthesisTrace, tap: str, value: torch.Tensor) -> torch.Tensor:
        """The image when `value` replaces activation `tap` of `trace` (same styles, same noise)."""
        ...

    def synthesize_from_styles(self, styles: dict[str, torch.Tensor], noise_mode: str = "const") -> torch.Tensor: ...


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients for the parameters: the generator is a fixed function."""
    module.eval()
    module.requires_grad_(False)
    return module
