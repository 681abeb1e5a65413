"""The small interface the pretraining methods program against.

A method never imports a GAN family's module: it asks a `FrozenGenerator` for
latents, a traced synthesis pass (activations + styles + noise), a resumed pass
from a substituted activation, and synthesis from per-layer styles. StyleGAN2
(`stylegan2.Generator`) and StyleGAN3 (`stylegan3.Generator`) implement it; another
family only has to do the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .stylegan2 import Discriminator, Generator, SynthesisTrace, TapSpec


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

    def synthesize_from_styles(self, styles: dict[str, torch.Tensor], noise_mode: str = "const",
                               fused_modconv: bool | None = None) -> torch.Tensor: ...


def crop_margin(x: torch.Tensor, margin: int) -> torch.Tensor:
    """The image-aligned centre of an activation [..., H, W] whose tap has `margin` (TapSpec.margin) px each side
    beyond the image: what the image shows, so what a backbone or an extractor can be asked to predict."""
    return x[..., margin:x.shape[-2] - margin, margin:x.shape[-1] - margin] if margin else x


def paste_centre(centre: torch.Tensor, into: torch.Tensor, margin: int) -> torch.Tensor:
    """A full activation for `resume`: `into` (the traced one) with its image-aligned centre replaced by `centre`.

    The margin keeps the generator's own values (the image does not show them, so nothing can predict them),
    and the generator continues from the full-size activation its filters expect. Differentiable in `centre`;
    `into` is not modified. With margin 0 this is `centre` itself."""
    if not margin:
        return centre
    full = into.detach().to(centre.dtype).clone()
    full[..., margin:full.shape[-2] - margin, margin:full.shape[-1] - margin] = centre
    return full


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients for the parameters: the generator is a fixed function."""
    module.eval()
    module.requires_grad_(False)
    return module


@dataclass
class GeneratorHandle:
    """A frozen generator (eval mode, no gradients), its discriminator if the source has one, and provenance.

    `meta` is `generator.json`-style: source, source_sha256 / sha256, network, license, w_avg, ...
    Every source kind (`generators.open.open_generator`) returns this one type.
    """

    G: Generator  # or a stylegan3.Generator: both are FrozenGenerators
    D: Discriminator | None = None
    meta: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        """The original checkpoint's sha256 when imported, else that of the weights themselves."""
        return self.meta.get("source_sha256") or self.meta.get("sha256")

    @property
    def license(self) -> str | None:
        return self.meta.get("license")

    def describe(self) -> dict:
        """Provenance as run.json and model cards record it."""
        trained = self.meta.get("trained", True)
        source = self.meta.get("source")
        desc = self.meta.get("description") or (
            f"randomly initialised {_family_name(self.G)} ({source}, untrained)" if not trained else source)
        return {"source": source, "sha256": self.sha256, "license": self.license, "trained": trained,
                "description": desc, "resolution": self.G.img_resolution, "network": self.meta.get("network")}


def _family_name(G: torch.nn.Module) -> str:
    return "StyleGAN3" if getattr(G, "family", None) == "stylegan3" else "StyleGAN2"
