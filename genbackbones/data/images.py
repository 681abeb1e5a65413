"""Unlabelled image sources for training on real images (the GAN trainer, GH-Feat).

A source answers `batch(indices) -> float tensor [N, 3, R, R] in [-1, 1]` for
indices in `range(len(source))`. Batches are chosen by the training loop as a pure
function of the step (`epoch_indices`), which is what makes resume bit-identical
without any data-loader state.

Sources: `faces` (the bundled procedural domain, rendered on demand), a local
image folder (any size and mode; resized with a centre crop), or a Hugging Face
`datasets` dataset (Hub id or local path) with an image column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, first_line

GENERATOR_SOURCE = "generator"  # data.source keyword: images drawn from the frozen generator (method ssl)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class ImageSource:
    resolution: int

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: list[int]) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class FaceImages(ImageSource):
    """The first `count` faces of a split of the procedural domain."""

    count: int
    resolution: int = 64
    seed: int = 0
    split: str = "train"

    def __post_init__(self):
        from .faces import FaceDomain

        self.domain = FaceDomain(self.seed, self.resolution)
        self.indices = self.domain.first_indices(self.count, self.split)

    def __len__(self) -> int:
        return self.count

    def batch(self, indices: list[int]) -> torch.Tensor:
        from .faces import to_tensor

        return to_tensor(self.domain.render([self.indices[i] for i in indices])["images"])


class TensorImages(ImageSource):
    """Images held in memory as uint8 [N, 3, R, R] (folders and datasets are loaded once)."""

    def __init__(self, images: torch.Tensor, names: list[str]):
        self.images, self.names = images, names
        self.resolution = images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: list[int]) -> torch.Tensor:
        return self.images[indices].float() / 127.5 - 1.0


def to_square_rgb(image, resolution: int, name: str = "image") -> np.ndarray:
    """Any PIL image (RGBA, greyscale, any size) -> centre-cropped, resized RGB uint8 [R, R, 3]."""
    from PIL import Image

    try:
        image = image.convert("RGB")
    except Exception as err:
        raise UserError(f"{name}: cannot read image ({err}); remove or replace the file") from None
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.BICUBIC)
    # a copy: np.asarray of a PIL image is read-only, and torch.from_numpy warns about every such array
    return np.array(image, dtype=np.uint8)


def load_folder(path: Path, resolution: int, limit: int = 0) -> TensorImages:
    """Every image file under `path` (sorted, recursive)."""
    from PIL import Image

    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit:
        files = files[:limit]
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(to_square_rgb(im, resolution, str(f)))
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"{f}: cannot read image ({type(err).__name__}); remove or replace the file") from None
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return TensorImages(images, [str(f.relative_to(path)) for f in files])


def load_hf_dataset(name: str, resolution: int, split: str = "train", column: str = "image",
                    limit: int = 0) -> TensorImages:
    """An image column of a `datasets` dataset (local path or Hub id; offline works from the cache)."""
    import datasets

    from ..offline import hub_reachable

    local = Path(name).exists()
    offline = not local and not datasets.config.HF_HUB_OFFLINE and not hub_reachable()
    if offline:  # the cache alone, at once: without a network `datasets` retries each request for a minute
        datasets.config.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_from_disk(name) if Path(name).is_dir() and (Path(name) / "dataset_info.json").exists() \
            else datasets.load_dataset(name, split=split)
    except Exception as err:
        what = f"cannot load dataset {name!r}" if local else f"data.source {name}: no such folder, and no Hub " \
            f"dataset {name!r} {'in the cache (the Hub cannot be reached)' if offline else 'could be loaded'}"
        raise UserError(f"{what} ({type(err).__name__}: {first_line(err, 120)}); give a folder of images, a "
                        "dataset saved with save_to_disk, or a Hub dataset id present in the cache") from None
    finally:
        if offline:
            datasets.config.HF_HUB_OFFLINE = False
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"dataset {name!r} has no split {split!r}; it has {', '.join(ds)}")
        ds = ds[split]
    if column not in ds.column_names:
        raise UserError(f"dataset {name!r} has no column {column!r}; columns: {', '.join(ds.column_names)}")
    n = len(ds) if not limit else min(limit, len(ds))
    arrays = [to_square_rgb(ds[i][column], resolution, f"{name}[{i}]") for i in range(n)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return TensorImages(images, [f"{name}[{i}]" for i in range(n)])


def open_images(source: str, resolution: int, count: int = 0, seed: int = 0, split: str = "train",
                column: str = "image") -> ImageSource:
    """`faces` | a folder of images | a `datasets` dataset (path or Hub id)."""
    if source == GENERATOR_SOURCE:
        raise UserError("data.source 'generator' (images drawn from the recipe's generator) is read by method ssl "
                        "only; this method trains on real images: give faces, an image folder or a dataset")
    if source == "faces":
        return FaceImages(count or 50_000, resolution, seed, split)
    if Path(source).is_dir() and not (Path(source) / "dataset_info.json").exists() \
            and not (Path(source) / "dataset_dict.json").exists():
        return load_folder(Path(source), resolution, count)
    if Path(source).exists() and not Path(source).is_dir():
        raise UserError(f"data source {source} is a file; give a folder of images or a dataset")
    if not Path(source).exists() and not _hub_id(source):  # a path, not a Hub id: nothing to ask the Hub
        raise UserError(f"data.source {source}: no such folder; give a folder of images, a dataset saved with "
                        "save_to_disk, a Hub dataset id (org/name) or faces")
    return load_hf_dataset(source, resolution, split, column, count)


def _hub_id(text: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def epoch_indices(n: int, step: int, batch: int, process: int, num_processes: int, seed: int) -> list[int]:
    """The images of (step, process): consecutive slices of a per-epoch permutation.

    A pure function of its arguments, so a resumed run sees exactly the same data.
    """
    per_step = batch * num_processes
    start = step * per_step + process * batch
    out = []
    for pos in range(start, start + batch):
        epoch, offset = divmod(pos, n)
        perm = _permutation(n, seed, epoch)
        out.append(int(perm[offset]))
    return out


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERM_CACHE[key]
