"""Stream (image, mask) pairs from a generator and an extractor (paper 000 Algorithm 2, paper 002 UFGS).

Layout of OUT:

    synthesis.json        what made the pairs: generator fingerprint, extractor fingerprint and
                          classes, sampling, first seed, batch size (checked on every resume)
    images/seed0000042.png   the generated image of seed 42 (RGB)
    masks/seed0000042.png    its mask: class-index PNG (mode L, pixel = class index)
    dataset/              with --format datasets: a `datasets` dataset (save_to_disk) with
                          columns image, mask, seed; load with datasets.load_from_disk

`images/` + `masks/` is also the evaluator's folder layout, so `genbackbones evaluate
--data OUT` trains on the synthetic pairs directly.

Why it can be interrupted at any point: every file is written to a temporary sibling
and renamed into place, the image before its mask, so a pair is complete exactly when
its mask exists. A re-run regenerates only the batches with missing pairs. Why the
files are identical either way: seeds are processed in fixed batches aligned to the
first seed (batch i is always seeds first+i*B .. first+i*B+B-1, generated whole even
past N), so every image comes out of the same batched computation in a first run, a
resumed run, or a run with a larger N.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..data.grids import png_bytes
from ..errors import UserError
from .activations import Sampling, check_sampling, generate, generator_fingerprint
from .extractors import Extractor, check_compatible

MANIFEST = "synthesis.json"
FORMATS = ("folder", "datasets")
CHECKED_KEYS = ("generator_fingerprint", "extractor_fingerprint", "sampling", "first_seed", "batch_size")


@dataclass
class SynthesisResult:
    out: Path
    total: int  # pairs in OUT for seeds first..first+n-1
    written: int  # pairs written by this call
    seconds: float
    dataset: Path | None = None


def pair_name(seed: int) -> str:
    return f"seed{seed:07d}.png"


def extractor_fingerprint(extractor: Extractor) -> str:
    """sha256 of the extractor's weights and the config fields that shape its output."""
    digest = hashlib.sha256()
    cfg = extractor.config
    digest.update(json.dumps([cfg.kind, cfg.layers, cfg.channels, cfg.resolutions, cfg.classes, cfg.out_resolution,
                              cfg.hidden, cfg.dropout]).encode())
    for name, tensor in sorted(extractor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_file(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: the file appears whole or not at all.

    (No fsync per file: this guards against interruption, not power loss, and keeps
    tens of thousands of small files fast.)"""
    with atomic.file_path(path) as tmp:
        tmp.write_bytes(data)


def write_pair(out: Path, seed: int, image: np.ndarray, mask: np.ndarray) -> None:
    """Image first, mask second: a mask on disk means the pair is complete."""
    write_file(out / "images" / pair_name(seed), png_bytes(image))
    write_file(out / "masks" / pair_name(seed), png_bytes(mask))


def is_complete(out: Path, seed: int) -> bool:
    return (out / "masks" / pair_name(seed)).is_file() and (out / "images" / pair_name(seed)).is_file()


def manifest_for(G, extractor: Extractor, fingerprint: str, sampling: Sampling, first_seed: int, batch: int) -> dict:
    return {"format": "genbackbones.synthesis/1", "generator_fingerprint": fingerprint,
            "generator_source": extractor.config.generator.get("source"),
            "extractor_fingerprint": extractor_fingerprint(extractor), "extractor_kind": extractor.config.kind,
            "classes": list(extractor.config.classes), "resolution": G.img_resolution,
            "sampling": sampling.as_dict(), "first_seed": first_seed, "batch_size": batch,
            "latents": "z = numpy.random.RandomState(seed).randn(z_dim) (NVIDIA gen_images.py convention)",
            "mask_format": "class-index PNG (mode L): pixel value = index into classes"}


def check_manifest(out: Path, manifest: dict) -> None:
    """A resumed OUT must have been started with the same generator, extractor and settings."""
    path = out / MANIFEST
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); remove OUT or choose another --out") from None
    for key in CHECKED_KEYS:
        if old.get(key) != manifest[key]:
            before, now = (_short(v) for v in (old.get(key), manifest[key]))
            raise UserError(f"{out} was started with a different {key.replace('_', ' ')} ({before}, now {now}); "
                            "resume with the same settings or choose another --out")


def _short(value) -> str:
    """Fingerprints shortened to 12 hex digits in messages."""
    return value[:12] if isinstance(value, str) and len(value) == 64 else repr(value)


def prepare_out(out: Path, manifest: dict) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if (out / MANIFEST).exists():
        check_manifest(out, manifest)
        return
    if out.exists() and any(p.name in ("images", "masks", "dataset") for p in out.iterdir()):
        raise UserError(f"{out} holds images/masks but no {MANIFEST}; choose an empty or new --out")
    atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def synthesize(G, extractor: Extractor, n: int, out: str | Path, fmt: str = "folder", first_seed: int = 0,
               batch: int = 16, sampling: Sampling = Sampling(), device: str = "cpu",
               fingerprint: str | None = None, progress: bool = True, console=None,
               on_batch: Callable[[int], None] | None = None, command: list[str] | None = None) -> SynthesisResult:
    """Write the pairs of seeds first_seed..first_seed+n-1 that OUT lacks; see the module docstring.

    Ctrl-C prints how many pairs are kept and `command` (the CLI arguments, sys.argv[1:]) as the command that
    continues: the same one."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if n < 1 or batch < 1 or first_seed < 0:
        raise UserError("--n and --batch-size must be at least 1 and --first-seed at least 0")
    if extractor.config.num_classes > 255:
        raise UserError(f"the extractor has {extractor.config.num_classes} classes; class-index PNG masks hold 255")
    check_sampling(sampling)
    fingerprint = fingerprint or generator_fingerprint(G)
    check_compatible(extractor, G, fingerprint)
    out = Path(out)
    prepare_out(out, manifest_for(G, extractor, fingerprint, sampling, first_seed, batch))
    extractor = extractor.to(device).eval()
    t0 = time.perf_counter()
    try:
        written = _write_missing(G, extractor, out, first_seed, n, batch, sampling, device, progress, console,
                                 on_batch)
    except KeyboardInterrupt:
        _print_interrupted(console, out, range(first_seed, first_seed + n), command)
        raise
    dataset = build_dataset(out, range(first_seed, first_seed + n), extractor.config.classes) \
        if fmt == "datasets" else None
    return SynthesisResult(out, n, written, time.perf_counter() - t0, dataset)


def _write_missing(G, extractor, out, first_seed, n, batch, sampling, device, progress, console, on_batch) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    last = first_seed + n
    done = sum(is_complete(out, s) for s in range(first_seed, last))
    written = 0
    columns = [TextColumn("synthesize"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("pairs", total=n, completed=done)
        for b, start in enumerate(range(first_seed, last, batch)):
            seeds = list(range(start, start + batch))  # whole batch, even past the end: same numerics always
            missing = [s for s in seeds if s < last and not is_complete(out, s)]
            if not missing:
                continue
            generated = generate(G, seeds, extractor.config.layers, sampling, device)
            masks = extractor.predict({k: v.to(device) for k, v in generated.acts.items()}).to(torch.uint8).cpu()
            for seed in missing:
                i = seeds.index(seed)
                write_pair(out, seed, generated.images[i].numpy(), masks[i].numpy())
                written += 1
                bar.advance(task)
            if on_batch is not None:
                on_batch(b)
    return written


def _print_interrupted(console, out: Path, seeds: range, command: list[str] | None) -> None:
    from rich.console import Console

    from ..interrupt import command_line, print_interrupted

    kept = sum(is_complete(out, s) for s in seeds)
    again = command_line(command) if command is not None else "the same synthesize(...) call"
    print_interrupted(console or Console(stderr=True, soft_wrap=True),
                      f"{kept} of {len(seeds)} pair{'s' if len(seeds) != 1 else ''} kept in {out}", again)


def build_dataset(out: Path, seeds: range, classes: list[str]) -> Path:
    """images/ + masks/ -> OUT/dataset (`datasets` save_to_disk), streamed, written atomically."""
    import tempfile

    import datasets

    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "seed": datasets.Value("int64")})
    root = str(out)

    def rows(seed_list: list[int], folder: str):
        base = Path(folder)
        for seed in seed_list:
            yield {"image": {"bytes": (base / "images" / pair_name(seed)).read_bytes(), "path": None},
                   "mask": {"bytes": (base / "masks" / pair_name(seed)).read_bytes(), "path": None},
                   "seed": seed}

    missing = [s for s in seeds if not is_complete(out, s)]
    if missing:
        raise UserError(f"pairs for seeds {missing[:3]} are missing in {out}; run the command again to finish them")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own bar has already shown the work
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-cache-") as cache:
            ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=cache,
                                                 gen_kwargs={"seed_list": list(seeds), "folder": root})
            ds.info.description = json.dumps({"classes": list(classes), "made_by": "genbackbones synthesize"})
            with atomic.directory(out / "dataset", overwrite=True) as tmp:
                ds.save_to_disk(str(tmp))
            del ds
    finally:
        if bars:
            datasets.enable_progress_bars()
    return out / "dataset"
