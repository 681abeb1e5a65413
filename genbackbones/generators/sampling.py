"""Seeded sampling, as NVIDIA's `gen_images.py` does it, so seed s here is the image of seed s there.

The image for seed s uses z = np.random.RandomState(s).randn(1, z_dim), and
uint8 = clamp(img * 127.5 + 128). A grid is reproducible image by image (image i
uses seed + i). Used by `genbackbones generator sample` and the data factory
(semantics/), which must draw exactly the images a user annotated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..data.grids import png_bytes
from ..errors import UserError


def seeded_latents(z_dim: int, seeds: list[int]):
    """z for each seed, exactly as NVIDIA's gen_images.py: RandomState(seed).randn(1, z_dim)."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def generate_images(G, seeds: list[int], truncation: float = 1.0, class_idx: int | None = None,
                    noise_mode: str = "const", device="cpu", batch: int = 8):
    """uint8 images [N, H, W, C] for `seeds` (NVIDIA's gen_images.py conversion)."""
    class_labels(G, 0, class_idx, device)  # check the class before any work
    z_all = seeded_latents(G.z_dim, seeds)
    out = []
    with torch.no_grad():
        for start in range(0, len(seeds), batch):
            z = z_all[start:start + batch].to(device)
            img = G(z, class_labels(G, len(z), class_idx, device), truncation_psi=truncation, noise_mode=noise_mode)
            out.append(nvidia_uint8(img).cpu())
    return torch.cat(out)


def class_labels(G, n: int, class_idx: int | None, device="cpu"):
    """One-hot labels of `class_idx` for a conditional generator (None for an unconditional one)."""
    if class_idx is not None and not 0 <= class_idx < G.c_dim:
        raise UserError(f"--class-idx {class_idx} does not fit this generator (c_dim={G.c_dim})")
    if G.c_dim == 0:
        return None
    if class_idx is None:
        raise UserError(f"this generator is conditional ({G.c_dim} classes); pass --class-idx 0..{G.c_dim - 1}")
    c = torch.zeros([n, G.c_dim], device=device)
    c[:, class_idx] = 1
    return c


def nvidia_uint8(img):
    """[N, C, H, W] generator output -> uint8 [N, H, W, C], as NVIDIA's gen_images.py converts it."""
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def write_seed_files(out: Path, images, seeds: list[int], cols: int, settings: dict) -> tuple[Path, Path]:
    """seeds.json next to the grid + one PNG per image in <stem>_images/ (both written atomically)."""
    folder = out.with_name(f"{out.stem}_images")
    entries = []
    with atomic.directory(folder, overwrite=True) as tmp:
        for i, (seed_value, img) in enumerate(zip(seeds, images.numpy())):
            name = f"seed{seed_value:04d}.png"
            (tmp / name).write_bytes(png_bytes(img))
            row, col = divmod(i, cols)
            entries.append({"seed": seed_value, "file": f"{folder.name}/{name}", "row": row, "col": col})
    index = out.with_name("seeds.json")
    record = {"grid": out.name, "grid_columns": cols, **settings,
              "latents": "z = numpy.random.RandomState(seed).randn(1, z_dim) (NVIDIA gen_images.py convention)",
              "images": entries}
    atomic.write_text(index, json.dumps(record, indent=2) + "\n")
    return folder, index
