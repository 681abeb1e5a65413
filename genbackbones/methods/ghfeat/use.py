"""What one does with a trained GH-Feat run: reconstruct, mix, extract features.

The full encoder (trunk + res6 + FPN + SAM + heads, and the style statistics it is
centred on) stays in the run's checkpoints (`model.safetensors`); these load it
from there:

    reconstruct(run, images)          inputs next to G(E(x)); MSE and SSIM
    mix(run, content, style, levels)  the content's styles with some levels taken from the style image
    extract_features(run, images)     GH-Feat vectors per level, for linear probes

Images are given as folders, image files, or `faces:N` / `faces:A:B` (held-out
test faces of the bundled procedural domain).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F

from ... import atomic
from ...data.grids import save_grid
from ...data.images import IMAGE_SUFFIXES, load_folder, open_images, to_square_rgb
from ...engine.checkpoints import checkpoint_step, latest_checkpoint
from ...errors import UserError, first_line
from ...generators.open import open_generator
from ...generators.stylegan2 import Generator
from ...recipes import Recipe, load_recipe
from . import GROUPS, build_encoder
from .model import GHFeatEncoder, style_levels


# ----------------------------------------------------------------------------- using a trained run


@dataclass
class GHFeatRun:
    """A trained encoder with its generator, loaded from a run folder (eval mode)."""

    run_dir: Path
    recipe: Recipe
    encoder: GHFeatEncoder
    generator: Generator
    step: int

    @property
    def noise_mode(self) -> str:
        return self.recipe.method_cfg.noise_mode

    @torch.no_grad()
    def styles(self, images: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
        parts = [self.encoder(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    @torch.no_grad()
    def render(self, styles: dict[str, torch.Tensor], batch_size: int = 16) -> torch.Tensor:
        n = next(iter(styles.values())).shape[0]
        return torch.cat([self.generator.synthesize_from_styles({k: v[i:i + batch_size] for k, v in styles.items()},
                                                                noise_mode=self.noise_mode,
                                                                fused_modconv=self.recipe.generator.fused_modconv)
                          for i in range(0, n, batch_size)])


def load_run(run_dir: str | Path) -> GHFeatRun:
    """The full encoder from a run's latest checkpoint, and the run's generator (both on CPU, eval)."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise UserError(f"{run_dir} is not a genbackbones run (no recipe.yaml); pass a run folder from `pretrain`")
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.method != "ghfeat":
        raise UserError(f"{run_dir} is a {recipe.method} run; this command needs a GH-Feat run (method: ghfeat)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise UserError(f"{run_dir} has no complete checkpoint yet; train it first "
                        f"(genbackbones pretrain --resume {shlex.quote(str(run_dir))})")
    G = open_generator(recipe.generator.source, recipe.generator.network, seed=recipe.seed).G
    encoder = build_encoder(recipe, G, None, init="random")
    path = checkpoint / "model.safetensors"
    try:
        encoder.load_state_dict(safetensors.torch.load_file(str(path)))
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{path} does not hold this run's encoder ({first_line(err, 150)}); "
                        "was the recipe or the generator changed after training?") from None
    step = checkpoint_step(checkpoint)
    return GHFeatRun(run_dir, recipe, encoder.eval(), G, step)


# ----------------------------------------------------------------------------- images in


def read_images(specs: list[str], resolution: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Folders, image files and `faces:N` / `faces:A:B` (test faces) -> [N, 3, R, R] in [-1, 1] and names."""
    if not specs:
        raise UserError("no images given; pass a folder, image files, or faces:N")
    batches, names = [], []
    for spec in specs:
        if spec.startswith("faces:"):
            start, stop = _face_range(spec)
            batches.append(open_images("faces", resolution, stop, seed, "test").batch(list(range(start, stop))))
            names += [f"faces:test[{i}]" for i in range(start, stop)]
        elif Path(spec).is_dir():
            folder = load_folder(Path(spec), resolution)
            batches.append(folder.batch(list(range(len(folder)))))
            names += [str(Path(spec) / n) for n in folder.names]
        elif Path(spec).is_file() and Path(spec).suffix.lower() in IMAGE_SUFFIXES:
            batches.append(_read_file(Path(spec), resolution))
            names.append(spec)
        else:
            raise UserError(f"{spec}: not a folder, an image file ({', '.join(sorted(IMAGE_SUFFIXES))}) or faces:N")
    return torch.cat(batches), names


def _face_range(spec: str) -> tuple[int, int]:
    parts = spec.split(":")[1:]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1 and numbers[0] > 0:
        return 0, numbers[0]
    if len(numbers) == 2 and 0 <= numbers[0] < numbers[1]:
        return numbers[0], numbers[1]
    raise UserError(f"{spec}: expected faces:N (the first N test faces) or faces:A:B (test faces A..B-1)")


def _read_file(path: Path, resolution: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = to_square_rgb(im, resolution, str(path))
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: cannot read image ({type(err).__name__})") from None
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- metrics


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error of images in [-1, 1] (the training loss's scale; x4 that of [0, 1] images)."""
    return (a - b).square().flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) on [-1, 1] images.

    Computed on [0, 1] intensities per channel over whole windows only and averaged,
    as scikit-image does (torchmetrics also averages reflect-padded border windows,
    which reads slightly differently); smaller images use a smaller window.
    """
    x, y = (a.float() + 1) / 2, (b.float() + 1) / 2
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


# ----------------------------------------------------------------------------- commands


@dataclass
class Reconstruction:
    """Mean MSE / SSIM of reconstructions (and of the baselines, when asked for)."""

    images: int
    mse: float
    ssim: float
    grid: Path | None
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)


def reconstruct(run_dir: str | Path, images: list[str], out: str | Path | None = None, baselines: bool = False,
                batch_size: int = 16) -> Reconstruction:
    """Encode and re-render `images`; grid of input | reconstruction pairs; MSE and SSIM.

    With `baselines`, also the generator's mean image (the mean styles) and the
    untrained encoder the run started from (rebuilt from the recipe's seed).
    """
    run = load_run(run_dir)
    x, _ = read_images(images, run.generator.img_resolution, run.recipe.seed)
    rec = run.render(run.styles(x, batch_size), batch_size)
    result = Reconstruction(len(x), **_scores(rec, x), grid=None)
    if baselines:
        mean_img = run.render(run.encoder.mean_styles(len(x)), batch_size)
        untrained = build_encoder(run.recipe, run.generator, None).eval()
        untrained.style_mean.copy_(run.encoder.style_mean)
        untrained.style_std.copy_(run.encoder.style_std)
        start = run.render(GHFeatRun(run.run_dir, run.recipe, untrained, run.generator, 0).styles(x, batch_size),
                           batch_size)
        result.baselines = {"mean image": _scores(mean_img, x), "untrained encoder": _scores(start, x)}
    if out is not None:
        result.grid = save_grid(_pairs(x, rec), out, scale=2)
    return result


def _scores(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean MSE and SSIM of the image one sees: generator outputs clipped to [-1, 1] (as when saved)."""
    output = output.clamp(-1, 1)
    return {"mse": mse(output, target).mean().item(), "ssim": ssim(output, target).mean().item()}


def _pairs(inputs: torch.Tensor, outputs: torch.Tensor, per_row: int = 4) -> dict[str, torch.Tensor]:
    """Rows of input | reconstruction pairs, side by side."""
    rows = {}
    for start in range(0, len(inputs), per_row):
        a, b = inputs[start:start + per_row], outputs[start:start + per_row]
        rows[f"{start}-{start + len(a) - 1}"] = torch.stack([a, b], dim=1).flatten(0, 1)
    return rows


def parse_levels(spec: str, levels: list[list[str]], groups: dict[str, list[str]] | None = None) -> list[int]:
    """'0-3', '4-', '0,2,5' (W indices, 0 = coarsest) or an encoder group 'coarse' / 'middle' / 'fine'.

    `levels` are the style layers of each W index (`style_levels`), `groups` the encoder's head groups.
    """
    spec, num_levels = spec.strip(), len(levels)
    if groups and spec in groups:
        return [i for i, layers in enumerate(levels) if set(layers) & set(groups[spec])]
    chosen: set[int] = set()
    try:
        for part in spec.split(","):
            lo, sep, hi = part.partition("-")
            first = int(lo)
            last = (int(hi) if hi else num_levels - 1) if sep else first
            chosen.update(range(first, last + 1))
    except ValueError:
        chosen = set()
    if not chosen or min(chosen) < 0 or max(chosen) >= num_levels:
        raise UserError(f"--levels {spec!r}: give levels in 0..{num_levels - 1} as '0-3', '4-' or '0,2,5', "
                        f"or one of {', '.join(GROUPS)}")
    return sorted(chosen)


def mix(run_dir: str | Path, content: list[str], style: list[str], levels: str, out: str | Path,
        batch_size: int = 16) -> Path:
    """Style mixing (paper Fig. 3): each content image rendered with the chosen levels taken from each style image.

    The grid's first row shows the style images; each further row a content image and its mixes.
    """
    run = load_run(run_dir)
    res = run.generator.img_resolution
    all_levels = style_levels(run.generator)
    chosen = parse_levels(levels, all_levels, run.encoder.groups)
    swap = {name for i in chosen for name in all_levels[i]}
    xc, _ = read_images(content, res, run.recipe.seed)
    xs, _ = read_images(style, res, run.recipe.seed)
    sc, ss = run.styles(xc, batch_size), run.styles(xs, batch_size)
    blank = torch.ones(1, 3, res, res)
    rows = {"style": torch.cat([blank, xs])}
    for i in range(len(xc)):
        mixed = {k: (ss[k] if k in swap else sc[k][i:i + 1].expand_as(ss[k])) for k in sc}
        rows[f"content {i}"] = torch.cat([xc[i:i + 1], run.render(mixed, batch_size)])
    return save_grid(rows, out, scale=2)


def extract_features(run_dir: str | Path, images: list[str], out: str | Path, batch_size: int = 16) -> dict:
    """GH-Feat per level (`level.<i>`, W index 0 = coarsest: its layers' styles concatenated) and `all`.

    Written as safetensors; the metadata lists each level's layers and the image names.
    """
    run = load_run(run_dir)
    x, names = read_images(images, run.generator.img_resolution, run.recipe.seed)
    styles = run.styles(x, batch_size)
    levels = style_levels(run.generator)
    tensors = {f"level.{i}": torch.cat([styles[n] for n in layers], dim=1).contiguous()
               for i, layers in enumerate(levels)}
    tensors["all"] = torch.cat([styles[n] for n in styles], dim=1).contiguous()
    metadata = {"levels": json.dumps({str(i): layers for i, layers in enumerate(levels)}),
                "images": json.dumps(names), "run": str(run.run_dir), "step": str(run.step)}
    with atomic.file_path(out) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
    return {k: tuple(v.shape) for k, v in tensors.items()}
