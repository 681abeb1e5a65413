"""`genbackbones annotate | cluster | synthesize`: the generator as a labelled-data factory.

Parsing and printing only; the work is in `genbackbones/semantics/`.
"""

from __future__ import annotations

import sys
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import UserError
from ..outputs import claim, hold
from .common import GENERATOR_SOURCE_HELP as GENERATOR_HELP, console, err_console, print_copyable



app = typer.Typer()


def open_for_semantics(source: str, network: Optional[str], device: str):
    """(G on `device`, its weight fingerprint, the sha256 that `generator sample --save-seeds` records)."""
    from ..generators.open import open_generator
    from ..semantics.activations import generator_fingerprint

    handle = open_generator(source, network=network)  # None: whatever the source holds
    G = handle.G.to(device)
    return G, generator_fingerprint(G), handle.sha256


def _sampling(truncation: float, class_idx: Optional[int]):
    from ..semantics.activations import Sampling

    return Sampling(truncation_psi=truncation, noise_mode="const", class_idx=class_idx)


# ----------------------------------------------------------------------------- annotate


@app.command("annotate")
def annotate_cmd(
    generator: str = typer.Argument(..., help=GENERATOR_HELP),
    masks: Path = typer.Option(..., "--masks", help="Folder of masks, one per seed (seed0003.png for the image "
                               "seed0003.png of `generator sample --save-seeds`)."),
    out: Path = typer.Option(..., "--out", help="Extractor folder to write (extractor.json + .safetensors)."),
    seeds: Optional[Path] = typer.Option(None, "--seeds", help="seeds.json from `generator sample --save-seeds` "
                                         "(default: MASKS/seeds.json or its parent's; else seeds from file names)."),
    extractor: str = typer.Option("linear", "--extractor", help="linear (paper 004 LSE), nonlinear (NSE-1) or "
                                  "light (paper 000 light decoder)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names in index order, comma separated."),
    class_colors: Optional[str] = typer.Option(None, "--class-colors", help="Colour-coded masks: a JSON/YAML map or "
                                               "name=#rrggbb,..."),
    layers: str = typer.Option("auto", "--layers", help="'auto' (every conv layer) or comma-separated tap names "
                               "(see `generator info`)."),
    steps: int = typer.Option(400, "--steps", min=1, help="Training steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Generated images per training step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: 1e-2 linear, 3e-3 "
                                       "nonlinear / light)."),
    hidden: int = typer.Option(32, "--hidden", min=1, help="Width of the nonlinear / light extractors."),
    seed: int = typer.Option(0, "--seed", min=0, help="Training seed."),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
):
    """Train a semantic extractor on your masks of generated images (paper 000 Algorithm 1, paper 004)."""
    from ..semantics.activations import parse_layers
    from ..semantics.annotate import TrainSettings, annotate
    from ..semantics.extractors import TRAINABLE_KINDS

    if extractor not in TRAINABLE_KINDS:
        raise UserError(f"unknown extractor {extractor!r}; choose one of {', '.join(TRAINABLE_KINDS)}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    G, fingerprint, sha256 = open_for_semantics(generator, network, device)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    chosen = parse_layers(G, layers)
    settings = TrainSettings(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    # one writer per output, and --overwrite never replaces a run, the masks read or a folder holding them
    with claim(out, overwrite=overwrite, inputs=[masks, *_local(generator)]):
        result, _ = annotate(G, masks, out, extractor, chosen, settings, seeds, names, class_colors, device,
                             source=generator, generator_sha256=sha256, hidden=hidden,
                             fingerprint=fingerprint, overwrite=overwrite)
    cfg = result.extractor.config
    table = Table("extractor", "images", "classes", "loss first → last", "train mIoU (%)", "pixel acc. (%)",
                  title=f"{extractor} extractor, {len(cfg.layers)} layers, {settings.steps} steps")
    table.add_row(extractor, str(len(cfg.training["seeds"])), str(cfg.num_classes),
                  f"{result.curve[0][1]:.3f} → {result.curve[-1][1]:.3f}", f"{result.scores['miou']:.1f}",
                  f"{result.scores['pixel_accuracy']:.1f}")
    console.print(table)
    print_copyable(f"wrote {out}  (use it: genbackbones synthesize {shlex.quote(str(generator))} --extractor {shlex.quote(str(out))} "
                   "--n 10000 --out DATASET)")


def _local(source: str) -> list[Path]:
    """A generator source that is a path on this machine (a folder or checkpoint file): an input to protect."""
    return [Path(source)] if Path(source).exists() else []


# ----------------------------------------------------------------------------- cluster


@app.command("cluster")
def cluster_cmd(
    generator: str = typer.Argument(..., help=GENERATOR_HELP),
    k: int = typer.Option(..., "--k", min=2, help="Number of clusters of the written extractor."),
    out: Path = typer.Option(..., "--out", help="Folder: extractor/, merge_tree.png, clusters.json."),
    n: int = typer.Option(32, "--n", min=1, help="Generated images to cluster (seeds FIRST..FIRST+N-1)."),
    init_k: int = typer.Option(50, "--init-k", min=2, help="Initial k-means clusters (paper 002: 100)."),
    layers: str = typer.Option("auto", "--layers", help="'auto' (paper 002: last conv per resolution, finest "
                               "first, up to 1000 channels), 'all', or comma-separated tap names."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Clustering resolution (default: the "
                                             "generator's, at most 64)."),
    max_pixels: int = typer.Option(40_000, "--max-pixels", min=100, help="Pixels sampled for k-means and SVMs."),
    no_filter: bool = typer.Option(False, "--no-filter", help="Skip the filtering of non-separable initial "
                                   "clusters."),
    samples: int = typer.Option(6, "--samples", min=1, help="Images shown in merge_tree.png."),
    first_seed: int = typer.Option(0, "--first-seed", min=0, help="Images use seeds FIRST..FIRST+N-1."),
    seed: int = typer.Option(0, "--seed", min=0, help="k-means / pixel sampling seed."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi (1 = none)."),
    class_idx: Optional[int] = typer.Option(None, "--class-idx", help="Class label (conditional generators)."),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
):
    """Unsupervised semantic clusters with KLiSH (paper 002); writes a KLiSH extractor for `synthesize`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..semantics.activations import parse_layers
    from ..semantics.klish import KlishSettings, cluster_generator

    if init_k < k:
        raise UserError(f"--init-k {init_k} must be at least --k {k}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    G, fingerprint, _ = open_for_semantics(generator, network, device)
    chosen = parse_layers(G, layers, default="per-resolution")
    settings = KlishSettings(init_k=init_k, resolution=resolution, max_pixels=max_pixels, filter=not no_filter,
                             seed=seed)
    with claim(out, overwrite=overwrite, inputs=_local(generator)), Progress(TextColumn("KLiSH merges"), BarColumn(), MofNCompleteColumn(),
                             console=err_console) as bar:
        task = bar.add_task("merge", total=None)

        def on_merge(current: int) -> None:
            if bar.tasks[task].total is None:
                bar.update(task, total=current - 1)
            bar.advance(task)

        run = cluster_generator(G, k, n, out, chosen, settings, _sampling(truncation, class_idx), first_seed,
                                samples, device, source=generator, overwrite=overwrite, on_merge=on_merge)
    result = run.result
    table = Table("K", "mean SVM IoU", "last merge (absorbed -> into)", title="KLiSH merge levels")
    from ..semantics.klish import levels_summary

    for level, iou, merge in levels_summary(result):
        if level <= max(k + 6, 10) or level == result.kept_k:
            table.add_row(f"{level}{' *' if level == k else ''}", f"{iou:.3f}", merge)
    console.print(table)
    console.print(f"k-means {result.initial_k} -> {result.kept_k} after filtering -> {k} clusters, "
                  f"{run.seconds:.0f}s; fingerprint {fingerprint[:12]}", highlight=False)
    print_copyable(f"wrote {out}/merge_tree.png, clusters.json, extractor/  (use it: genbackbones synthesize "
                   f"{shlex.quote(str(generator))} --extractor {shlex.quote(str(out / 'extractor'))} --n 10000 "
                   "--out DATASET)")


# ----------------------------------------------------------------------------- synthesize


@app.command("synthesize")
def synthesize_cmd(
    generator: str = typer.Argument(..., help=GENERATOR_HELP),
    extractor: Path = typer.Option(..., "--extractor", help="Extractor folder from `annotate` or `cluster` "
                                   "(for cluster: OUT/extractor)."),
    out: Path = typer.Option(..., "--out", help="Output folder (images/, masks/, synthesis.json[, dataset/])."),
    n: int = typer.Option(10_000, "--n", min=1, help="Number of (image, mask) pairs."),
    fmt: str = typer.Option("folder", "--format", help="folder (images/ + masks/) or datasets (also OUT/dataset, "
                            "a `datasets` dataset)."),
    first_seed: int = typer.Option(0, "--first-seed", min=0, help="Pairs use seeds FIRST..FIRST+N-1."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images generated and labelled at once."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation psi (1 = none)."),
    class_idx: Optional[int] = typer.Option(None, "--class-idx", help="Class label (conditional generators)."),
    network: Optional[str] = typer.Option(None, "--network", help="For checkpoints: G_ema (default) or G."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cuda."),
):
    """Write N (image, mask) pairs; resumable: run it again to continue where it stopped."""
    from ..semantics.extractors import load_extractor
    from ..semantics.synthesize import FORMATS, synthesize

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ext = _load_extractor_arg(extractor, load_extractor)
    G, fingerprint, _ = open_for_semantics(generator, network, device)
    with hold(out):  # one writer per output (outputs.py): two resumed syntheses would write the same pairs
        result = synthesize(G, ext, n, out, fmt, first_seed, batch_size, _sampling(truncation, class_idx), device,
                            fingerprint=fingerprint, console=err_console, command=sys.argv[1:])
    skipped = result.total - result.written
    console.print(f"[green]done[/] {result.total} pairs in {out} ({result.written} written now, {skipped} already "
                  f"there), {result.seconds:.0f}s; classes: {', '.join(ext.config.classes)}", soft_wrap=True)
    if result.dataset is not None:
        print_copyable(f"datasets.load_from_disk('{result.dataset}')")


def _load_extractor_arg(path: Path, load):
    """Accept the cluster output folder too (its extractor/ sub-folder)."""
    if not path.exists():
        raise UserError(f"--extractor {path} does not exist; train one with `genbackbones annotate` or "
                        "`genbackbones cluster`")
    if (path / "extractor" / "extractor.json").exists() and not (path / "extractor.json").exists():
        path = path / "extractor"
    return load(path)
