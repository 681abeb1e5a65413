"""`genbackbones generator ...`: convert, inspect and sample StyleGAN2 generators.

Thin: parse the arguments, call `generators.checkpoints`, render with rich. User
errors print one red line on stderr and exit with code 2.

Sampling follows NVIDIA's `gen_images.py` convention: the image for seed s uses
z = np.random.RandomState(s).randn(1, z_dim), noise_mode='const', and
uint8 = clamp(img * 127.5 + 128). So seed s here shows the same image as seed s
there, and a grid is reproducible image by image (image i uses seed + i).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import atomic
from .cli_utils import console, user_errors
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert, inspect and sample StyleGAN2 generators.")
# ----------------------------------------------------------------------------- convert


@app.command()
@user_errors
def convert(
    src: str = typer.Argument(..., help="NVIDIA .pkl, rosinality .pt, a generator folder, or hf-hub:org/name."),
    dst: Path = typer.Argument(..., help="Folder to write (generator.json + safetensors)."),
    network: str = typer.Option("G_ema", "--network", help="Which generator of the checkpoint: G_ema or G. "
                                "The discriminator D is stored too when the checkpoint has one."),
    license_: Optional[str] = typer.Option(None, "--license", help="Licence of the weights, recorded in "
                                           "generator.json (e.g. 'Nvidia Source Code License-NC')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
):
    """Import a checkpoint safely (no code from it runs) into our safetensors folder format."""
    from .generators.checkpoints import convert as convert_checkpoint, read_meta

    folder = convert_checkpoint(src, dst, network=network, license=license_, overwrite=overwrite)
    meta = read_meta(folder)
    has_d = "with D" if meta["D_init_kwargs"] is not None else "no D"
    console.print(f"[green]converted[/] {src} ({meta['network']}, {has_d}) -> {folder}")
    console.print(f"source sha256 {meta['source_sha256']}", highlight=False)
    if not meta["license"]:
        console.print("[yellow]note:[/] no licence recorded; pass --license (NVIDIA's FFHQ/AFHQ/MetFaces models "
                      "are non-commercial)", soft_wrap=True)


# ----------------------------------------------------------------------------- info


@app.command()
@user_errors
def info(
    path: str = typer.Argument(..., help="Generator folder, checkpoint file, hf-hub:org/name, bundled or random:<preset>."),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON instead of tables."),
):
    """Architecture, sizes, taps and provenance of a generator."""
    from .generators.sources import open_generator

    loaded = open_generator(path, network=network)  # also `bundled` and `random:<preset>`
    facts = generator_facts(loaded)
    if as_json:
        console.print_json(json.dumps(facts))
        return
    summary = Table(show_header=False, title=f"generator {path}")
    summary.add_column("fact")
    summary.add_column("value", overflow="fold")
    for key, value in facts.items():
        if key not in ("taps", "style_dims", "source_sha256"):
            summary.add_row(key, "-" if value is None else str(value))
    console.print(summary)
    # on its own line so that the hash can be copied whole
    console.print(f"source sha256: {facts['source_sha256'] or '-'}", soft_wrap=True, highlight=False)
    taps = Table("tap", "kind", "shape [C, H, W]", title="feature taps (G.tap_specs())")
    for tap in facts["taps"]:
        taps.add_row(tap["name"], tap["kind"], f"[{tap['channels']}, {tap['resolution']}, {tap['resolution']}]")
    console.print(taps)
    styles = Table("layer", "style dim", title="per-layer style codes (G.style_dims())")
    for layer, dim in facts["style_dims"].items():
        styles.add_row(layer, str(dim))
    console.print(styles)


def generator_facts(loaded) -> dict:
    """What `info` shows, as plain data."""
    G, D, meta = loaded.G, loaded.D, loaded.meta
    synthesis_kwargs = G.init_kwargs.get("synthesis_kwargs", {})
    return {
        "architecture": f"StyleGAN2 ({synthesis_kwargs.get('architecture', 'skip')} G)",
        "network": meta.get("network"),
        "resolution": G.img_resolution,
        "img_channels": G.img_channels,
        "z_dim": G.z_dim,
        "c_dim": G.c_dim,
        "w_dim": G.w_dim,
        "num_ws": G.num_ws,
        "mapping_params": _count_params(G.mapping),
        "synthesis_params": _count_params(G.synthesis),
        "discriminator": f"yes ({_count_params(D):,} params)" if D is not None else "no",
        "w_avg": meta.get("w_avg"),
        "license": meta.get("license"),
        "source": meta.get("source"),
        "source_sha256": meta.get("source_sha256"),
        "taps": [{"name": t.name, "kind": t.kind, "channels": t.channels, "resolution": t.resolution}
                 for t in G.tap_specs().values()],
        "style_dims": dict(G.style_dims()),
    }


def _count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- sample


@app.command()
@user_errors
def sample(
    path: str = typer.Argument(..., help="Generator folder, checkpoint file, hf-hub:org/name, bundled or random:<preset>."),
    n: int = typer.Option(16, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", min=0, help="Image i uses seed + i."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi (1 = none)."),
    out: Path = typer.Option(Path("grid.png"), "--out", help="PNG grid to write."),
    save_seeds: bool = typer.Option(False, "--save-seeds", help="Also write seeds.json next to the grid and one "
                                    "PNG per image into <out stem>_images/."),
    class_idx: Optional[int] = typer.Option(None, "--class-idx", help="Class label (conditional generators)."),
    noise_mode: str = typer.Option("const", "--noise-mode", help="const, random or none."),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cuda."),
):
    """Write a reproducible grid of samples (NVIDIA gen_images.py seeds)."""
    from .generators.sources import open_generator

    if noise_mode not in ("const", "random", "none"):
        raise UserError(f"--noise-mode must be const, random or none, got {noise_mode!r}")
    loaded = open_generator(path, network=network)  # also `bundled` and `random:<preset>`
    loaded.G.to(device)
    seeds = [seed + i for i in range(n)]
    images = generate_images(loaded.G, seeds, truncation, class_idx, noise_mode, device)
    cols = math.ceil(math.sqrt(n))
    atomic.write_bytes(out, png_bytes(image_grid(images, cols)))
    console.print(f"[green]wrote[/] {out} ({n} images, seeds {seeds[0]}..{seeds[-1]}, psi={truncation})")
    if save_seeds:
        folder, index = write_seed_files(out, images, seeds, cols, dict(
            generator=str(path), network=loaded.meta.get("network"),
            generator_source_sha256=loaded.sha256, truncation_psi=truncation,
            noise_mode=noise_mode, class_idx=class_idx))
        console.print(f"[green]wrote[/] {index} and {n} images in {folder}")


def seeded_latents(z_dim: int, seeds: list[int]):
    """z for each seed, exactly as NVIDIA's gen_images.py: RandomState(seed).randn(1, z_dim)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def generate_images(G, seeds: list[int], truncation: float = 1.0, class_idx: int | None = None,
                    noise_mode: str = "const", device="cpu", batch: int = 8):
    """uint8 images [N, H, W, C] for `seeds` (NVIDIA's gen_images.py conversion)."""
    import torch

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
    import torch

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
    import torch

    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def image_grid(images, cols: int):
    """[N, H, W, C] uint8 -> one [rows*H, cols*W, C] uint8 array (row-major, blank cells black)."""
    import numpy as np

    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, img in enumerate(images.numpy()):
        r, col = divmod(i, cols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    return grid


def png_bytes(array) -> bytes:
    """An [H, W], [H, W, 1] or [H, W, 3] uint8 array as PNG bytes (one channel: mode L)."""
    from PIL import Image

    arr = array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


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
