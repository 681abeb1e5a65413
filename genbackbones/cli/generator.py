"""`genbackbones generator ...`: convert, inspect and sample StyleGAN2 generators.

Thin: parse the arguments, call `generators.open` / `generators.sampling`, render
with rich. Every command takes any generator source `open_generator` takes.
Sampling follows NVIDIA's `gen_images.py` seeds (see generators/sampling.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import UserError
from .common import GENERATOR_SOURCE_HELP as SOURCE_HELP, console, print_copyable


app = typer.Typer(no_args_is_help=True)
# ----------------------------------------------------------------------------- convert


@app.command()
def convert(
    src: str = typer.Argument(..., help=SOURCE_HELP),
    dst: Path = typer.Argument(..., help="Folder to write (generator.json + safetensors)."),
    network: str = typer.Option("G_ema", "--network", help="Which generator of the checkpoint: G_ema or G. "
                                "The discriminator D is stored too when the checkpoint has one."),
    license_: Optional[str] = typer.Option(None, "--license", help="Licence of the weights, recorded in "
                                           "generator.json (e.g. 'Nvidia Source Code License-NC')."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it is not empty (never a run "
                                   "folder or a folder holding SRC)."),
):
    """Import a checkpoint safely (no code from it runs) into our safetensors folder format."""
    from ..generators.formats.folder import read_meta
    from ..generators.open import convert as convert_checkpoint
    from ..outputs import claim

    inputs = [src] if Path(src).exists() else []
    with claim(dst, overwrite=overwrite, inputs=inputs, flag=""):  # before the (possibly long) load
        # the claim has checked DST: an existing empty folder is taken too
        folder = convert_checkpoint(src, dst, network=network, license=license_, overwrite=dst.exists())
    meta = read_meta(folder)
    has_d = "with D" if meta["D_init_kwargs"] is not None else "no D"
    print_copyable(f"converted {src} ({meta['network']}, {has_d}) -> {folder}")
    print_copyable(f"source sha256 {meta['source_sha256'] or '-'}")
    if not meta["license"]:
        console.print("[yellow]note:[/] no licence recorded; pass --license (NVIDIA's FFHQ/AFHQ/MetFaces models "
                      "are non-commercial)", soft_wrap=True)


# ----------------------------------------------------------------------------- info


@app.command()
def info(
    path: str = typer.Argument(..., help=SOURCE_HELP),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON instead of tables."),
):
    """Architecture, sizes, taps and provenance of a generator."""
    from ..generators.open import open_generator

    facts = generator_facts(open_generator(path, network=network))
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
    print_copyable(f"source sha256: {facts['source_sha256'] or '-'}")
    taps = Table("tap", "kind", "shape [C, H, W]", "image-aligned centre", title="feature taps (G.tap_specs())")
    for tap in facts["taps"]:
        centre = tap["resolution"] - 2 * tap["margin"]
        taps.add_row(tap["name"], tap["kind"], f"[{tap['channels']}, {tap['resolution']}, {tap['resolution']}]",
                     f"{centre} px (margin {tap['margin']})" if tap["margin"] else "all")
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
        "architecture": (f"StyleGAN3 ({G.config})" if getattr(G, "family", None) == "stylegan3"
                         else f"StyleGAN2 ({synthesis_kwargs.get('architecture', 'skip')} G)"),
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
        "taps": [{"name": t.name, "kind": t.kind, "channels": t.channels, "resolution": t.resolution,
                  "margin": t.margin} for t in G.tap_specs().values()],
        "style_dims": dict(G.style_dims()),
    }


def _count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- sample


@app.command()
def sample(
    path: str = typer.Argument(..., help=SOURCE_HELP),
    n: int = typer.Option(16, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", min=0, help="Image i uses seed + i."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi (1 = none; 0.7 is a common choice)."),
    out: Path = typer.Option(Path("grid.png"), "--out", help="PNG grid to write (an existing one only with "
                             "--overwrite)."),
    save_seeds: bool = typer.Option(False, "--save-seeds", help="Also write seeds.json next to the grid and one "
                                    "PNG per image into <out stem>_images/."),
    class_idx: Optional[int] = typer.Option(None, "--class-idx", help="Class label (conditional generators)."),
    noise_mode: str = typer.Option("const", "--noise-mode", help="const, random or none."),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out (and with --save-seeds its "
                                   "seeds.json and <out stem>_images/) if they exist."),
):
    """Write a reproducible grid of samples (NVIDIA gen_images.py seeds)."""
    from ..data.grids import image_grid, png_bytes
    from ..generators.open import open_generator
    from ..generators.sampling import generate_images, write_seed_files
    from .. import atomic
    from ..outputs import hold

    if noise_mode not in ("const", "random", "none"):
        raise UserError(f"--noise-mode must be const, random or none, got {noise_mode!r}")
    if not math.isfinite(truncation):
        raise UserError(f"--truncation must be a finite number, got {truncation}")
    with hold(out):
        _refuse_existing(out, save_seeds, overwrite)
        loaded = open_generator(path, network=network)
        loaded.G.to(device)
        seeds = [seed + i for i in range(n)]
        images = generate_images(loaded.G, seeds, truncation, class_idx, noise_mode, device)
        cols = math.ceil(math.sqrt(n))
        atomic.write_bytes(out, png_bytes(image_grid(images, cols)))
        print_copyable(f"wrote {out} ({n} images, seeds {seeds[0]}..{seeds[-1]}, psi={truncation})")
        if save_seeds:
            folder, index = write_seed_files(out, images, seeds, cols, dict(
                generator=str(path), network=loaded.meta.get("network"),
                generator_source_sha256=loaded.sha256, truncation_psi=truncation,
                noise_mode=noise_mode, class_idx=class_idx))
            print_copyable(f"wrote {index} and {n} images in {folder}")


def _refuse_existing(out: Path, save_seeds: bool, overwrite: bool) -> None:
    """`sample` replaces earlier files only when asked: a grid may be the one a user kept from another seed."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a .png file path")
    written = [out] + ([out.with_name("seeds.json"), out.with_name(f"{out.stem}_images")] if save_seeds else [])
    existing = [p for p in written if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}; "
                        "pass --overwrite to replace, or pick another --out")


