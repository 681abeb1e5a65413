"""GH-Feat commands of the `genbackbones` CLI: reconstruct, mix, features.

Parsing and printing only; the work is in `methods/ghfeat/use.py`. Training a
GH-Feat run is `genbackbones pretrain` with a recipe whose `method` is `ghfeat`
(e.g. the bundled `ghfeat/quickstart`).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import console, print_copyable

IMAGES_HELP = "Image folders, image files, or faces:N / faces:A:B (held-out test faces of the bundled domain)."

app = typer.Typer()


@app.command("reconstruct")
def reconstruct_cmd(
    run: Path = typer.Argument(..., help="A GH-Feat run folder."),
    images: list[str] = typer.Argument(..., help=IMAGES_HELP),
    out: Path = typer.Option(Path("reconstruction.png"), "--out", help="Grid of input | reconstruction pairs."),
    baselines: bool = typer.Option(False, "--baselines",
                                   help="Also score the generator's mean image and the untrained encoder."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images encoded and rendered at once."),
):
    """Encode images with a GH-Feat run and re-render them; prints MSE (images in [-1, 1], outputs clipped) and SSIM."""
    from ..methods.ghfeat.use import reconstruct

    result = reconstruct(run, images, out, baselines=baselines, batch_size=batch_size)
    table = Table("reconstruction of", "images", "MSE ([-1,1]) ↓", "SSIM ↑")
    table.add_row("GH-Feat encoder", str(result.images), f"{result.mse:.4f}", f"{result.ssim:.4f}")
    for name, scores in result.baselines.items():
        table.add_row(name, str(result.images), f"{scores['mse']:.4f}", f"{scores['ssim']:.4f}")
    console.print(table)
    print_copyable(f"grid: {result.grid}")


@app.command("mix")
def mix_cmd(
    run: Path = typer.Argument(..., help="A GH-Feat run folder."),
    content: str = typer.Argument(..., help="Content images: a folder, an image file, or faces:N / faces:A:B."),
    style: str = typer.Argument(..., help="Style images: a folder, an image file, or faces:N / faces:A:B."),
    levels: str = typer.Option("0-3", "--levels",
                               help="Levels taken from the style image: W indices (0 = coarsest) such as 0-3, "
                                    "4-, 0,2,5, or coarse / middle / fine."),
    out: Path = typer.Option(Path("mix.png"), "--out", help="Grid: style images on top, one row per content image."),
):
    """Style mixing across levels (GH-Feat paper, Fig. 3)."""
    from ..methods.ghfeat.use import mix

    path = mix(run, [content], [style], levels, out)
    print_copyable(f"grid: {path}")


@app.command("features")
def features_cmd(
    run: Path = typer.Argument(..., help="A GH-Feat run folder."),
    images: list[str] = typer.Argument(..., help=IMAGES_HELP),
    out: Path = typer.Option(Path("features.safetensors"), "--out", help="Output safetensors file."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images encoded at once."),
):
    """GH-Feat vectors per level (level.<i>, and `all`) for linear probes, as safetensors."""
    from ..methods.ghfeat.use import extract_features

    shapes = extract_features(run, images, out, batch_size=batch_size)
    table = Table("tensor", "shape")
    for name, shape in shapes.items():
        table.add_row(name, " x ".join(map(str, shape)))
    console.print(table)
    print_copyable(f"written: {out}")
