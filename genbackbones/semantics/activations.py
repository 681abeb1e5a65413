"""Generated images and their activations, reproducible from seeds.

Why seeds: a user annotates images written by `genbackbones generator sample
--save-seeds`; the extractor must then be trained on the activations that made
*those* images. Latents therefore follow the same convention as `generator sample`
(NVIDIA's gen_images.py: z = RandomState(seed).randn(z_dim), noise_mode='const', uint8
= clamp(img * 127.5 + 128)), so seed s always reproduces the same image and the same
activations, alone or inside any batch.

Activations are kept at each layer's own resolution: the extractors upsample after
their per-layer maps (cheaper, and for the linear extractor the same thing, paper 004
App. B). `upsample` brings them to one size where a method needs the concatenation
(KLiSH clusters per-pixel feature vectors). A StyleGAN3 layer extends beyond the image
(`TapSpec.margin`); only its image-aligned centre is kept, so that upsampling a map to
the image's size puts each pixel's features over that pixel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..generators.base import crop_margin
from ..generators.sampling import class_labels, nvidia_uint8, seeded_latents
from ..errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How a seed becomes an image; recorded with every extractor and dataset."""

    truncation_psi: float = 1.0
    noise_mode: str = "const"
    class_idx: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sampling:
        return cls(float(data.get("truncation_psi", 1.0)), str(data.get("noise_mode", "const")),
                   data.get("class_idx"))


@dataclass
class Generated:
    """One batch of generated images with the selected layers' activations."""

    seeds: list[int]
    images: torch.Tensor  # uint8 [N, H, W, 3]
    acts: dict[str, torch.Tensor]  # layer -> float32 [N, C, h, w]

    def __len__(self) -> int:
        return len(self.seeds)


def default_layers(G) -> list[str]:
    """Every styled layer's output (paper 004 uses all layers but the image output): the taps of kind 'layer'
    that have a style code of their own, which leaves out StyleGAN2's constant input."""
    styled = G.style_dims()
    return [name for name, spec in G.tap_specs().items() if spec.kind == "layer" and name in styled]


def one_per_resolution(G, max_channels: int = 1000) -> list[str]:
    """Paper 002's selection: the last conv of each resolution, from the finest down, while the total
    channel count stays within `max_channels` (returned coarse to fine)."""
    last: dict[int, tuple[str, int]] = {}
    specs = G.tap_specs()
    for name in default_layers(G):
        last[specs[name].aligned_resolution] = (name, specs[name].channels)
    chosen, total = [], 0
    for res in sorted(last, reverse=True):
        name, channels = last[res]
        if chosen and total + channels > max_channels:
            break
        chosen.append(name)
        total += channels
    return chosen[::-1]


def parse_layers(G, spec: str | Sequence[str] | None, default: str = "all") -> list[str]:
    """'auto' / None -> the default selection; else a comma list of tap names, checked against G."""
    if spec is None or spec in ("auto", "all", "per-resolution"):
        choice = default if spec in (None, "auto") else spec
        return one_per_resolution(G) if choice == "per-resolution" else default_layers(G)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    specs = G.tap_specs()
    unknown = [n for n in names if n not in specs]
    if unknown:
        known = ", ".join(default_layers(G))
        raise UserError(f"unknown layer {unknown[0]!r}; this generator's conv layers are: {known}")
    if not names:
        raise UserError("--layers is empty; give tap names or 'auto'")
    return names


def layer_shapes(G, layers: Sequence[str]) -> dict[str, tuple[int, int]]:
    """layer -> (channels, resolution of its image-aligned part), what an extractor is built for."""
    specs = G.tap_specs()
    return {name: (specs[name].channels, specs[name].aligned_resolution) for name in layers}


def generator_fingerprint(G) -> str:
    """sha256 of the generator's weights: which generator an extractor was trained for.

    Computed from the tensors themselves (not a file hash) so it is the same whether the
    generator came from a .pkl, a converted folder or the Hub."""
    digest = hashlib.sha256()
    for name, tensor in sorted(G.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def check_sampling(sampling: Sampling) -> None:
    if sampling.noise_mode not in ("const", "none"):
        raise UserError(f"noise_mode {sampling.noise_mode!r} cannot be reproduced from a seed; sample the images "
                        "with --noise-mode const (the default of `genbackbones generator sample`)")


@torch.no_grad()
def generate(G, seeds: Sequence[int], layers: Sequence[str], sampling: Sampling = Sampling(),
             device: str | torch.device = "cpu") -> Generated:
    """Images and activations of `seeds` in one batch (callers choose the batching)."""
    check_sampling(sampling)
    seeds = [int(s) for s in seeds]
    z = seeded_latents(G.z_dim, seeds).to(device)
    c = class_labels(G, len(seeds), sampling.class_idx, device)
    trace = G.trace(z, c, truncation_psi=sampling.truncation_psi, noise_mode=sampling.noise_mode)
    specs = G.tap_specs()
    acts = {name: crop_margin(trace.taps[name], specs[name].margin).float().cpu() for name in layers}
    return Generated(seeds, nvidia_uint8(trace.img).cpu(), acts)


def iter_generated(G, seeds: Sequence[int], layers: Sequence[str], sampling: Sampling = Sampling(),
                   device: str | torch.device = "cpu", batch: int = 16) -> Iterator[Generated]:
    """`generate` in consecutive batches of `batch` seeds."""
    seeds = list(seeds)
    for start in range(0, len(seeds), batch):
        yield generate(G, seeds[start:start + batch], layers, sampling, device)


def default_batch(G) -> int:
    """Images per traced pass: 16 up to 256 px, fewer above (a trace keeps every activation)."""
    return max(1, min(16, 16 * (256 // G.img_resolution) ** 2))


def generate_all(G, seeds: Sequence[int], layers: Sequence[str], sampling: Sampling = Sampling(),
                 device: str | torch.device = "cpu", batch: int | None = None,
                 max_resolution: int | None = None) -> Generated:
    """Every seed's images and activations, concatenated (for small sets: annotations, clustering).

    `max_resolution` area-downsamples finer activations as they are collected: what KLiSH
    needs for clustering at a fixed resolution, without holding 1024-px maps in memory."""
    parts = []
    for part in iter_generated(G, seeds, layers, sampling, device, batch or default_batch(G)):
        if max_resolution is not None:
            part.acts = {k: shrink(v, max_resolution) for k, v in part.acts.items()}
        parts.append(part)
    if not parts:
        raise UserError("no seeds to generate")
    return Generated([s for p in parts for s in p.seeds], torch.cat([p.images for p in parts]),
                     {name: torch.cat([p.acts[name] for p in parts]) for name in layers})


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample [N, C, h, w] to size x size when it is larger (identity otherwise)."""
    return F.adaptive_avg_pool2d(x, size) if x.shape[-1] > size else x


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N, C, h, w] to size x size (identity when already there)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def concatenated(acts: dict[str, torch.Tensor], layers: Sequence[str], size: int) -> torch.Tensor:
    """The layers' activations upsampled to size x size and stacked along channels [N, sum C, size, size]:
    the per-pixel feature vectors of paper 004 §3 (memory grows with size^2; prefer per-layer maps)."""
    return torch.cat([upsample(acts[name].float(), size) for name in layers], 1)
