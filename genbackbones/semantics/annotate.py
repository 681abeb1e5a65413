"""Train a semantic extractor on a few annotated generated images (paper 000 Algorithm 1).

The workflow: `genbackbones generator sample --save-seeds` writes images and
seeds.json; a user draws masks for them (class-index PNG, palette PNG, or colours with
a colour map: the evaluator's formats, read by `data.masks.MaskReader`); this module
regenerates the activations of those seeds (`activations.generate`, bit-for-bit the
same images) and trains the extractor with cross-entropy (pixels of value 255 are
ignored). Few-shot settings follow paper 004 App. D in spirit (Adam, lr 1e-3, a few
hundred steps), with a cosine decay instead of the single step.

Every problem with the input is found before any training, as a one-line UserError
that names the file and the fix: a seed without a mask, a mask of the wrong size, a
class index beyond the named classes, seeds sampled with random noise or from another
generator.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..data.masks import MASK_SUFFIXES, MaskReader
from ..evaluate.metrics import IGNORE_INDEX, confusion_matrix, segmentation_scores
from .activations import Generated, Sampling, check_sampling, generate_all, generator_fingerprint, layer_shapes
from .extractors import Extractor, build_extractor, make_config

SEED_NAME = re.compile(r"^(?:seed)?0*(\d+)$")


@dataclass
class Annotations:
    """User masks for generated images, keyed by seed."""

    seeds: list[int]
    masks: torch.Tensor  # int64 [N, H, W], IGNORE_INDEX = ignore
    classes: tuple[str, ...]
    sampling: Sampling
    files: list[str]


@dataclass
class TrainSettings:
    steps: int = 400
    batch_size: int = 8
    lr: float | None = None  # None: DEFAULT_LR of the extractor kind
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 10


@dataclass
class TrainResult:
    extractor: Extractor
    curve: list[tuple[int, float]]  # (step, mean loss over the logging window)
    scores: dict = field(default_factory=dict)  # on the training annotations
    seconds: float = 0.0


# ----------------------------------------------------------------------------- reading annotations


def read_seed_index(path: Path) -> tuple[list[tuple[int, str]], Sampling, dict]:
    """(seed, image file stem) pairs and the sampling settings of a seeds.json."""
    if not path.is_file():
        raise UserError(f"seeds file {path} does not exist; write one with `genbackbones generator sample "
                        "--save-seeds`")
    try:
        record = json.loads(path.read_text())
        entries = [(int(e["seed"]), Path(str(e.get("file", f"seed{int(e['seed']):04d}.png"))).stem)
                   for e in record["images"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a seeds.json written by `generator sample --save-seeds` ({err})") from None
    return entries, Sampling.from_dict(record), record


def seeds_from_names(masks_dir: Path) -> list[tuple[int, str]]:
    """Without a seeds.json: masks named seed<N>.png (or <N>.png) name their seed."""
    found = []
    for path in sorted(masks_dir.iterdir()):
        match = SEED_NAME.match(path.stem)
        if path.suffix.lower() in MASK_SUFFIXES and match:
            found.append((int(match.group(1)), path.stem))
    if not found:
        raise UserError(f"cannot tell which seed each mask in {masks_dir} belongs to; pass --seeds seeds.json "
                        "(from `genbackbones generator sample --save-seeds`) or name the masks seed<N>.png")
    return found


def find_mask(masks_dir: Path, seed: int, stem: str) -> Path | None:
    for name in (stem, f"seed{seed:04d}", f"seed{seed}", str(seed)):
        for suffix in MASK_SUFFIXES:
            if (masks_dir / f"{name}{suffix}").is_file():
                return masks_dir / f"{name}{suffix}"
    return None


def load_annotations(masks_dir: str | Path, resolution: int, seeds_file: str | Path | None = None,
                     classes: list[str] | None = None, class_colors: str | None = None,
                     generator_sha256: str | None = None) -> Annotations:
    """Every seed's mask, validated (presence, size, class range) before anything is trained."""
    from PIL import Image

    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise UserError(f"--masks {masks_dir}: folder does not exist")
    entries, sampling, record = _seed_entries(masks_dir, seeds_file)
    check_sampling(sampling)
    recorded = record.get("generator_source_sha256")
    if recorded and generator_sha256 and recorded != generator_sha256:
        raise UserError(f"the seeds file was written for another generator (source sha256 {recorded[:12]}, this one "
                        f"is {generator_sha256[:12]}); sample and annotate images of this generator")
    reader = MaskReader(class_colors, classes)
    masks, files = [], []
    for seed, stem in entries:
        path = find_mask(masks_dir, seed, stem)
        if path is None:
            raise UserError(f"no mask for seed {seed} (looked for {masks_dir / stem}.png); draw it, or remove seed "
                            f"{seed} from the seeds file")
        with Image.open(path) as image:
            image.load()
            if image.size != (resolution, resolution):
                raise UserError(f"{path}: mask is {image.size[0]}x{image.size[1]} but the generator makes "
                                f"{resolution}x{resolution} images; draw masks on the images of `generator sample`")
            masks.append(reader(image, str(path)))
        files.append(str(path))
    stacked = torch.from_numpy(np.stack(masks)).long()
    names = _class_names(reader, stacked, files)
    return Annotations([s for s, _ in entries], stacked, names, sampling, files)


def _seed_entries(masks_dir: Path, seeds_file) -> tuple[list[tuple[int, str]], Sampling, dict]:
    if seeds_file is None:
        for candidate in (masks_dir / "seeds.json", masks_dir.parent / "seeds.json"):
            if candidate.is_file():
                seeds_file = candidate
                break
    if seeds_file is None:
        return seeds_from_names(masks_dir), Sampling(), {}
    entries, sampling, record = read_seed_index(Path(seeds_file))
    if len({s for s, _ in entries}) != len(entries):
        raise UserError(f"{seeds_file} lists a seed twice; keep one entry per seed")
    if not entries:
        raise UserError(f"{seeds_file} lists no images")
    return entries, sampling, record


def _class_names(reader: MaskReader, masks: torch.Tensor, files: list[str]) -> tuple[str, ...]:
    valid = masks[masks != IGNORE_INDEX]
    top = int(valid.max()) if valid.numel() else 0
    if reader.classes:
        if top >= len(reader.classes):
            where = files[int(((masks == top).flatten(1).any(1)).nonzero()[0])]
            raise UserError(f"{where}: class index {top} but only {len(reader.classes)} classes are named "
                            f"({', '.join(reader.classes)}); fix the mask or --classes")
        return tuple(reader.classes)
    return tuple(f"class_{i}" for i in range(max(top + 1, 2)))


# ----------------------------------------------------------------------------- training


DEFAULT_LR = {"linear": 1e-2, "nonlinear": 3e-3, "light": 3e-3, "klish": 1e-2, "kmeans": 1e-2}
"""Standardised inputs let one rate serve every generator; the linear map takes a larger step."""

PairSource = Callable[[int, torch.Generator], tuple[dict[str, torch.Tensor], torch.Tensor]]
"""(step, rng) -> (activations, masks) of one batch."""


def stored_pairs(acts: dict[str, torch.Tensor], masks: torch.Tensor, batch_size: int) -> PairSource:
    """Seeded random batches (epochs of permutations) from fixed annotated examples."""
    n = len(masks)
    batch = min(batch_size, n)
    order: list[int] = []

    def source(step: int, rng: torch.Generator):
        nonlocal order
        if len(order) < batch:
            order += torch.randperm(n, generator=rng).tolist()
        idx, order = order[:batch], order[batch:]
        return {k: v[idx] for k, v in acts.items()}, masks[idx]

    return source


def train_extractor(extractor: Extractor, source: PairSource, settings: TrainSettings,
                    on_step: Callable[[int], None] | None = None) -> list[tuple[int, float]]:
    """Cross-entropy training (Adam, cosine decay); returns the loss curve."""
    import time

    torch.manual_seed(settings.seed)
    rng = torch.Generator().manual_seed(settings.seed)
    lr = settings.lr or DEFAULT_LR[extractor.config.kind]
    opt = torch.optim.Adam(extractor.parameters(), lr=lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / settings.steps)))
    extractor.train()
    curve, window = [], []
    t0 = time.perf_counter()
    for step in range(settings.steps):
        acts, masks = source(step, rng)
        loss = F.cross_entropy(extractor(acts), masks, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            curve.append((step + 1, sum(window) / len(window)))
            window = []
        if on_step is not None:
            on_step(step)
    extractor.eval()
    extractor.config.training["seconds"] = round(time.perf_counter() - t0, 2)
    return curve


@torch.no_grad()
def score(extractor: Extractor, acts: dict[str, torch.Tensor], masks: torch.Tensor, batch: int = 32) -> dict:
    """mIoU / pixel accuracy of the extractor's masks against `masks` (evaluate.metrics definitions)."""
    k = extractor.config.num_classes
    cm = torch.zeros(k, k, dtype=torch.long)
    for i in range(0, len(masks), batch):
        pred = extractor.predict({n: a[i:i + batch] for n, a in acts.items()})
        cm += confusion_matrix(pred, masks[i:i + batch], k)
    return segmentation_scores(cm, extractor.config.classes)


def new_extractor(kind: str, G, layers: list[str], classes, generated: Generated, sampling: Sampling,
                  fingerprint: str | None = None, source: str | None = None, **extra) -> Extractor:
    """An untrained extractor for `G`'s `layers`, with input statistics of `generated`."""
    generator = {"fingerprint": fingerprint or generator_fingerprint(G), "source": source,
                 "resolution": G.img_resolution}
    config = make_config(kind, layer_shapes(G, layers), classes, G.img_resolution, generator=generator,
                         sampling=sampling.as_dict(), **extra)
    extractor = build_extractor(config)
    extractor.fit_input_stats(generated.acts)
    return extractor


def train_on_annotations(G, annotations: Annotations, kind: str, layers: list[str], settings: TrainSettings,
                         device: str = "cpu", source: str | None = None, hidden: int = 32,
                         fingerprint: str | None = None, on_step: Callable[[int], None] | None = None
                         ) -> TrainResult:
    """Algorithm 1 of paper 000: regenerate the annotated seeds' activations, train, score."""
    generated = generate_all(G, annotations.seeds, layers, annotations.sampling, device)
    extractor = new_extractor(kind, G, layers, annotations.classes, generated, annotations.sampling,
                              fingerprint=fingerprint, source=source, hidden=hidden)
    curve = train_extractor(extractor, stored_pairs(generated.acts, annotations.masks, settings.batch_size),
                            settings, on_step)
    scores = score(extractor, generated.acts, annotations.masks)
    extractor.config.training.update({"settings": asdict(settings), "seeds": annotations.seeds,
                                      "mask_files": annotations.files, "curve": curve,
                                      "train_scores": {k: scores[k] for k in ("miou", "pixel_accuracy")}})
    return TrainResult(extractor, curve, scores, extractor.config.training["seconds"])


def annotate(G, masks_dir: str | Path, out: str | Path, kind: str = "linear", layers: list[str] | None = None,
             settings: TrainSettings | None = None, seeds_file: str | Path | None = None,
             classes: list[str] | None = None, class_colors: str | None = None, device: str = "cpu",
             source: str | None = None, generator_sha256: str | None = None, hidden: int = 32,
             fingerprint: str | None = None, overwrite: bool = False, console=None) -> tuple[TrainResult, Path]:
    """The whole `genbackbones annotate`: read and check the masks, train, save the extractor to `out`.

    The training steps show on `console` (default: stderr) as a bar on a terminal, else as a plain line
    every few seconds (progress.py)."""
    from rich.console import Console

    from ..progress import piece_progress
    from .activations import default_layers
    from .extractors import TRAINABLE_KINDS, save_extractor

    if kind not in TRAINABLE_KINDS:
        raise UserError(f"unknown extractor {kind!r}; choose one of {', '.join(TRAINABLE_KINDS)}")
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    annotations = load_annotations(masks_dir, G.img_resolution, seeds_file, classes, class_colors, generator_sha256)
    settings = settings or TrainSettings()
    with piece_progress(console or Console(stderr=True, soft_wrap=True), f"annotate: {kind} extractor") as update:
        result = train_on_annotations(G, annotations, kind, layers or default_layers(G), settings, device, source,
                                      hidden, fingerprint, on_step=lambda step: update(step + 1, settings.steps,
                                                                                      "steps"))
    return result, save_extractor(result.extractor.cpu(), out, overwrite=overwrite)
