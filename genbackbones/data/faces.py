"""Stylised faces: a procedural, labelled image domain bundled with the package.

Why it exists: the package needs a domain where a small StyleGAN2 can be trained
on a CPU in minutes (unlabelled images), *and* where backbones can be evaluated
on dense and sparse labels (segmentation masks, landmarks, attributes) without
downloading anything. Every face is a stack of simple shapes (ellipses, boxes)
painted back to front, like a flat illustration.

How it works, in three steps:

1. `_sample_params` draws every random number of one face from a generator
   seeded by `(seed, index)`, so a face never depends on what was rendered
   before it (same seed + index -> same bytes).
2. `_paint_faces` evaluates each shape as an implicit function ("signed distance
   in pixels, negative inside") on the pixel grid, after mapping the pixels back
   into the face's own coordinate frame (inverse affine transform). Shapes are
   painted in z-order: a later part paints over earlier ones in the image *and*
   in the mask, so the mask is exactly "which part is on top at this pixel".
3. `_landmarks` pushes five points of the same geometry through the same
   transform, so landmarks, mask and image always agree.

All per-pixel work is vectorised numpy over a chunk of faces (float32, colour
planes [3,N,H,W]); every per-pixel operation is elementwise (no reductions, no
transcendental functions), so a face renders to the same bytes alone or inside
any batch. Two speed tricks, neither of which changes a byte: the small inner
features are painted only in a window around them, and glasses only on the faces
that wear them (tests/test_faces.py checks the window against the whole image).

Face coordinate frame ("canonical units"): origin at the face centre, x to the
image right, y down (as in images), the face outline is an ellipse of half-width
1 and half-height `face_b` (~1.3). Inner features (eyes, brows, nose, mouth,
glasses) live in a "feature frame" that is squashed and shifted sideways by the
head's yaw, which is what makes a face look turned left or right.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:  # imported lazily at run time: rendering needs neither
    import datasets
    import torch

# ---------------------------------------------------------------------------
# Public constants: class names and the colour palette
# ---------------------------------------------------------------------------

SEG_CLASSES: tuple[str, ...] = ("background", "skin", "hair", "eyes", "brows", "nose", "mouth", "glasses")
"""Segmentation classes; the mask stores the position in this tuple."""

LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth")
"""The five landmarks, in order. "Left" means image-left (smaller x)."""

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair_colour": ("black", "brown", "blonde", "red", "grey"),
    "skin_tone": ("light", "medium", "tan", "dark"),
    "hair_style": ("short", "long", "updo"),
    "head_pose": ("left", "frontal", "right"),
    "smiling": ("no", "yes"),
    "glasses": ("no", "yes"),
}
"""Attribute name -> class names; a label is the position in the tuple."""

PALETTE: np.ndarray = np.array(
    [
        [0, 0, 0],  # background
        [230, 180, 140],  # skin
        [120, 60, 20],  # hair
        [40, 120, 255],  # eyes
        [255, 220, 0],  # brows
        [0, 200, 120],  # nose
        [220, 30, 60],  # mouth
        [200, 0, 255],  # glasses
    ],
    dtype=np.uint8,
)
"""Colour for each segmentation class, [len(SEG_CLASSES), 3] uint8 (see `colorize_mask`)."""

GLASSES_RATE = 0.06
"""Probability that a face wears glasses: rare on purpose, like eyeglasses in CelebA-HQ."""

SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "test": range(1_000_000, 1_100_000),
}
"""Disjoint index ranges: a test face is never a training face (for the same seed)."""

MIN_SIZE, MAX_SIZE = 32, 512

_SKIN, _HAIR, _EYES, _BROWS, _NOSE, _MOUTH, _GLASSES = range(1, 8)

# Base colours in [0, 1] RGB, one row per attribute class; each face jitters them.
_HAIR_RGB = ((0.09, 0.07, 0.06), (0.36, 0.21, 0.11), (0.86, 0.71, 0.42), (0.66, 0.25, 0.09), (0.68, 0.67, 0.66))
_SKIN_RGB = ((0.97, 0.82, 0.72), (0.88, 0.67, 0.51), (0.70, 0.49, 0.33), (0.42, 0.28, 0.19))
_IRIS_RGB = ((0.25, 0.45, 0.75), (0.30, 0.55, 0.30), (0.40, 0.25, 0.12), (0.45, 0.50, 0.55))
_LIP_RGB = (0.75, 0.22, 0.28)

_NOISE_CELLS = 6  # resolution of the low-frequency texture grids (upsampled to the image)


@dataclass
class FaceSample:
    """One rendered face with all of its labels (see module constants for the class names)."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    mask: np.ndarray  # [H, W] uint8, index into SEG_CLASSES
    landmarks: np.ndarray  # [5, 2] float32 pixel (x, y), order LANDMARK_NAMES
    labels: dict[str, int]  # attribute name -> index into ATTRIBUTES[name]


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def render_face(seed: int, index: int, size: int = 64) -> FaceSample:
    """Render face `index` of the domain `seed`; the same arguments always give the same bytes."""
    batch = render_batch(seed, [index], size)
    return FaceSample(
        image=batch["images"][0],
        mask=batch["masks"][0],
        landmarks=batch["landmarks"][0],
        labels={name: int(values[0]) for name, values in batch["labels"].items()},
    )


def render_batch(seed: int, indices: Sequence[int] | range | np.ndarray, size: int = 64) -> dict:
    """Render many faces at once (the fast path): stacked numpy arrays.

    Returns {"images": [N,H,W,3] uint8, "masks": [N,H,W] uint8,
    "landmarks": [N,5,2] float32, "labels": {attribute: [N] int64}}.
    Face i is identical to `render_face(seed, indices[i], size)`.
    Calls of a few hundred faces are fastest per face (the memory numpy uses stays
    mapped from one chunk to the next).
    """
    _check_size(size)
    indices = [int(i) for i in indices]
    if seed < 0 or any(i < 0 for i in indices):
        raise UserError(f"seed and indices must be >= 0, got seed={seed}, min index={min(indices, default=0)}")
    if not indices:
        return _empty_batch(size)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    parts = [_render_chunk(seed, indices[i : i + chunk], size) for i in range(0, len(indices), chunk)]
    return {
        "images": np.concatenate([p["images"] for p in parts]),
        "masks": np.concatenate([p["masks"] for p in parts]),
        "landmarks": np.concatenate([p["landmarks"] for p in parts]),
        "labels": {k: np.concatenate([p["labels"][k] for p in parts]) for k in ATTRIBUTES},
    }


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N,H,W,3] -> float32 torch tensor [N,3,H,W] in [-1, 1], the range StyleGAN2 uses."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Class-index mask [..., H, W] -> RGB [..., H, W, 3] uint8 using `PALETTE`, for looking at masks."""
    return PALETTE[np.asarray(mask)]


class FaceDomain:
    """The stylised-faces domain for one seed and image size: splits, datasets, folders, batches."""

    def __init__(self, seed: int = 0, size: int = 64):
        _check_size(size)
        if seed < 0:
            raise UserError(f"the faces seed must be >= 0, got {seed}")
        self.seed = seed
        self.size = size

    def split_indices(self, split: str) -> range:
        """Index range of a split; "train" and "test" never overlap."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
        return SPLITS[split]

    def first_indices(self, n: int, split: str = "train") -> range:
        """The first `n` indices of a split (what `as_dataset` and `save_image_folder` use)."""
        indices = self.split_indices(split)
        if not 0 <= n <= len(indices):
            raise UserError(f"n={n} is outside 0..{len(indices)} for split {split!r}")
        return indices[:n]

    def render(self, indices: Sequence[int] | range) -> dict:
        """`render_batch` with this domain's seed and size."""
        return render_batch(self.seed, indices, self.size)

    def image_batches(self, batch_size: int, split: str = "train", start: int = 0) -> Iterator[torch.Tensor]:
        """Yield float tensors [B,3,H,W] in [-1, 1] of consecutive faces of a split, for GAN training.

        Starts at position `start` within the split (resume from where training stopped)
        and ends when the split is exhausted.
        """
        indices = self.split_indices(split)
        block = max(batch_size, 256)  # render in big blocks: faster per face (see render_batch)
        for i in range(start, len(indices), block):
            images = self.render(indices[i : i + block])["images"]
            for j in range(0, len(images), batch_size):
                yield to_tensor(images[j : j + batch_size])

    def as_dataset(self, n: int, split: str = "train") -> datasets.Dataset:
        """The first `n` faces of a split as a Hugging Face `datasets.Dataset`.

        Columns: image (Image), mask (Image, mode "L", pixel = class index),
        landmarks (float32 [5, 2] pixel x, y), one ClassLabel column per attribute, index.
        """
        import datasets
        from PIL import Image

        features = datasets.Features(
            {
                "image": datasets.Image(),
                "mask": datasets.Image(),
                "landmarks": datasets.Array2D(shape=(len(LANDMARK_NAMES), 2), dtype="float32"),
                **{name: datasets.ClassLabel(names=list(names)) for name, names in ATTRIBUTES.items()},
                "index": datasets.Value("int64"),
            }
        )
        rows: dict[str, list] = {name: [] for name in features}
        indices = self.first_indices(n, split)
        for start in range(0, n, 256):
            chunk = indices[start : start + 256]
            batch = self.render(chunk)
            rows["image"] += [Image.fromarray(im) for im in batch["images"]]
            rows["mask"] += [Image.fromarray(m) for m in batch["masks"]]
            rows["landmarks"] += list(batch["landmarks"])
            for name in ATTRIBUTES:
                rows[name] += batch["labels"][name].tolist()
            rows["index"] += list(chunk)
        return datasets.Dataset.from_dict(rows, features=features)

    def save_image_folder(self, path: str | os.PathLike, n: int, split: str = "train", masks: bool = True,
                          overwrite: bool = False) -> Path:
        """Write the first `n` faces of a split as an image folder, atomically.

        Layout: images/{index:07d}.png, masks/{index:07d}.png (class-index PNG, mode "L"),
        classes.txt (the mask classes in index order, SEG_CLASSES: the evaluator swaps left/right
        classes on flips by these names), landmarks.csv (name,left_eye_x,left_eye_y,...) and
        labels.csv (name,<attribute>..., integer class ids, see ATTRIBUTES). `name` is the image
        file name.
        The folder appears complete or not at all.
        """
        from PIL import Image

        from ..atomic import directory

        indices = self.first_indices(n, split)
        landmark_header = ["name"] + [f"{lm}_{axis}" for lm in LANDMARK_NAMES for axis in "xy"]
        landmark_rows = [",".join(landmark_header)]
        label_rows = [",".join(["name", *ATTRIBUTES])]
        with directory(path, overwrite=overwrite) as tmp:
            (tmp / "images").mkdir()
            if masks:
                (tmp / "masks").mkdir()
            for start in range(0, n, 256):
                chunk = indices[start : start + 256]
                batch = self.render(chunk)
                for j, index in enumerate(chunk):
                    name = f"{index:07d}.png"
                    Image.fromarray(batch["images"][j]).save(tmp / "images" / name)
                    if masks:
                        Image.fromarray(batch["masks"][j]).save(tmp / "masks" / name)
                    coords = ",".join(f"{v:.4f}" for v in batch["landmarks"][j].reshape(-1))
                    landmark_rows.append(f"{name},{coords}")
                    labels = ",".join(str(int(batch["labels"][a][j])) for a in ATTRIBUTES)
                    label_rows.append(f"{name},{labels}")
            if masks:
                (tmp / "classes.txt").write_text("\n".join(SEG_CLASSES) + "\n")
            (tmp / "landmarks.csv").write_text("\n".join(landmark_rows) + "\n")
            (tmp / "labels.csv").write_text("\n".join(label_rows) + "\n")
        return Path(path)


# Faces painted together: 16 at 64x64. Small enough that the per-pixel arrays stay in the
# CPU cache, large enough that numpy's per-call overhead is shared by many pixels.
_CHUNK_PIXELS = 16 * 64 * 64


def _empty_batch(size: int) -> dict:
    return {
        "images": np.zeros((0, size, size, 3), np.uint8),
        "masks": np.zeros((0, size, size), np.uint8),
        "landmarks": np.zeros((0, len(LANDMARK_NAMES), 2), np.float32),
        "labels": {k: np.zeros((0,), np.int64) for k in ATTRIBUTES},
    }


def _check_size(size: int) -> None:
    if not (isinstance(size, (int, np.integer)) and MIN_SIZE <= size <= MAX_SIZE):
        raise UserError(f"face image size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")


# ---------------------------------------------------------------------------
# Step 1: random parameters of one face (all randomness lives here)
# ---------------------------------------------------------------------------

_CLUTTER = 3  # background shapes per image: ellipse, box, ellipse
_MAX_SCALE = 0.25  # largest face half-width, as a fraction of the image size


def _sample_params(seed: int, index: int, size: int) -> dict[str, float | np.ndarray]:
    """Every random choice of face `index`: labels, geometry (canonical units), colours, noise.

    The generator is seeded by (seed, index) only, so faces are independent of each other.
    Angles are turned into cos/sin here, per face, so the pixel code needs no trigonometry.
    """
    rng = np.random.default_rng([seed, index])
    draws = _Draws(rng)
    u = draws.uniform
    p: dict[str, float | np.ndarray] = {}

    # Labels first: the rest of the face is drawn given them.
    p["hair_colour"] = draws.integer(len(ATTRIBUTES["hair_colour"]))
    p["skin_tone"] = draws.integer(len(ATTRIBUTES["skin_tone"]))
    p["hair_style"] = draws.integer(len(ATTRIBUTES["hair_style"]))
    p["smiling"] = draws.chance(0.5)
    p["glasses"] = draws.chance(GLASSES_RATE)
    yaw = u(-0.6, 0.6)  # < 0: the face turns towards image-left
    p["head_pose"] = 0 if yaw < -0.2 else (2 if yaw > 0.2 else 1)
    style = ATTRIBUTES["hair_style"][p["hair_style"]]

    # Where the face sits: pixel = centre + scale * rotate(angle) @ canonical.
    p["scale"] = size * u(0.18, _MAX_SCALE)  # pixels per canonical unit (= face half-width)
    p["centre_x"] = size * (0.5 + u(-0.08, 0.08))
    p["centre_y"] = size * (0.5 + u(-0.04, 0.08))
    p["cos"], p["sin"] = _cos_sin(u(-0.4, 0.4))  # in-plane rotation
    p["squash"] = 1.0 - 0.3 * abs(yaw)  # with yaw, inner features get narrower ...
    p["shift"] = 0.3 * yaw  # ... and move sideways,
    p["nose_shift"] = 0.15 * yaw  # the nose (it sticks out) a bit further.

    # Head: outline, back hair (+ bun), neck, ears, fringe, hair strands.
    p["face_b"] = u(1.18, 1.4)
    if style == "long":
        p["hair_y"], p["hair_a"], p["hair_b"] = u(0.3, 0.5), u(1.25, 1.45), u(1.6, 1.9)
    else:
        p["hair_y"], p["hair_a"], p["hair_b"] = u(-0.35, -0.25), u(1.06, 1.16), u(1.0, 1.12)
    p["bun"] = int(style == "updo")
    p["bun_x"], p["bun_r"] = u(-0.25, 0.25), u(0.35, 0.5)
    p["ears"] = int(style != "long")  # long hair covers the ears
    p["ear_y"] = u(-0.05, 0.1)
    p["neck_w"] = u(0.38, 0.5)
    high = style == "updo"
    p["hairline_y"] = u(-1.0, -0.8) if high else u(-0.85, -0.5)
    p["hairline_k"] = u(0.1, 0.3) if high else u(0.2, 0.8)  # how far the hair comes down the sides
    p["hairline_part"] = u(-0.3, 0.3)
    p["strand_freq"] = u(4.0, 9.0)  # strands per canonical unit
    p["strand_tilt"] = u(-0.6, 0.6)
    p["strand_strength"] = u(0.1, 0.35)
    p["strand_phase"] = u(0.0, 1.0)

    # Inner features, in the feature frame.
    p["eye_x"], p["eye_y"], p["eye_a"] = u(0.32, 0.42), u(-0.15, 0.02), u(0.13, 0.18)
    p["eye_b"] = p["eye_a"] * u(0.55, 0.75)
    p["iris_r"] = p["eye_b"] * u(0.75, 0.95)
    p["gaze"] = u(-0.04, 0.04)
    p["brow_dy"], p["brow_b"], p["brow_a"] = u(0.16, 0.24), u(0.035, 0.06), p["eye_a"] * u(1.1, 1.4)
    p["brow_cos"], p["brow_sin"] = _cos_sin(u(-0.3, 0.3))
    p["nose_y"], p["nose_b"], p["nose_a"], p["nose_r"] = u(0.0, 0.1), u(0.16, 0.24), u(0.05, 0.08), u(0.08, 0.12)
    p["mouth_y"], p["mouth_a"] = u(0.58, 0.75), u(0.26, 0.36)
    p["mouth_b"] = u(0.12, 0.2) if p["smiling"] else u(0.08, 0.11)
    p["lens_a"] = p["eye_a"] + u(0.06, 0.1)
    p["lens_b"] = max(p["eye_b"] + 0.06, p["lens_a"] * u(0.7, 0.9))
    p["frame_t"] = u(0.03, 0.05)
    p["tint_opacity"] = u(0.15, 0.75)

    # Colours: RGB tuples, about [0, 1] (the finished image is clipped to [0, 1]).
    p["hair_rgb"] = draws.jitter(_HAIR_RGB[p["hair_colour"]], u(0.85, 1.15), 0.05)
    p["skin_rgb"] = draws.jitter(_SKIN_RGB[p["skin_tone"]], u(0.92, 1.08), 0.03)
    p["iris_rgb"] = draws.jitter(_IRIS_RGB[draws.integer(len(_IRIS_RGB))], 1.0, 0.08)
    redness = u(0.35, 0.55)
    p["lip_rgb"] = tuple(0.5 * skin + redness * lip for skin, lip in zip(p["skin_rgb"], _LIP_RGB))
    p["sclera_rgb"] = (u(0.8, 0.97),) * 3
    p["frame_rgb"] = draws.colour(0.0, 0.5)
    p["tint_rgb"] = draws.colour(0.0, 0.3)

    # Background: gradient between two colours, then clutter (pixel units).
    p["bg_rgb0"], p["bg_rgb1"] = draws.colour(0, 1), draws.colour(0, 1)
    p["bg_cos"], p["bg_sin"] = _cos_sin(u(0, 2 * math.pi))
    for k in range(_CLUTTER):
        p[f"clutter{k}_x"], p[f"clutter{k}_y"] = size * u(0, 1), size * u(0, 1)
        p[f"clutter{k}_a"], p[f"clutter{k}_b"] = size * u(0.05, 0.3), size * u(0.05, 0.3)
        p[f"clutter{k}_cos"], p[f"clutter{k}_sin"] = _cos_sin(u(0, math.pi))
        p[f"clutter{k}_rgb"] = draws.colour(0, 1)

    # Lighting gradient (brightness change per pixel along a direction) and noise.
    light_cos, light_sin = _cos_sin(u(0, 2 * math.pi))
    strength = u(0.0, 0.35) / (size / 2)
    p["light_x"], p["light_y"] = strength * light_cos, strength * light_sin
    p["noise_sigma"] = u(0.0, 0.06)
    p["texture"] = 2 * rng.random((3, _NOISE_CELLS, _NOISE_CELLS), dtype=np.float32) - 1  # bg, skin, hair
    p["pixel_noise"] = rng.random((size, size), dtype=np.float32)  # grain, uniform in [0, 1)
    return p


class _Draws:
    """Uniform numbers drawn from the generator in one call and handed out in order.

    One numpy call per face instead of one per parameter: sampling is ~10x faster.
    """

    def __init__(self, rng: np.random.Generator, count: int = 160):
        self._values = rng.random(count).tolist()
        self._next = 0

    def uniform(self, low: float, high: float) -> float:
        """A float in [low, high). (IndexError when all are used: raise `count`.)"""
        value = self._values[self._next]
        self._next += 1
        return low + (high - low) * value

    def colour(self, low: float, high: float) -> tuple[float, float, float]:
        """An RGB triple with channels in [low, high)."""
        return self.uniform(low, high), self.uniform(low, high), self.uniform(low, high)

    def jitter(self, rgb: tuple, brightness: float, spread: float) -> tuple[float, float, float]:
        """`rgb` times `brightness`, plus up to +-`spread` per channel."""
        return tuple(c * brightness + self.uniform(-spread, spread) for c in rgb)

    def integer(self, n: int) -> int:
        """An int in 0..n-1."""
        return int(self.uniform(0, n))

    def chance(self, probability: float) -> int:
        """1 with this probability, else 0."""
        return int(self.uniform(0, 1) < probability)


def _cos_sin(angle: float) -> tuple[float, float]:
    return math.cos(angle), math.sin(angle)


def _stack_params(params: list[dict]) -> dict[str, np.ndarray]:
    """Per-face dicts -> one dict of float32 arrays with the face as the first axis.

    Numbers become [N,1,1] so they broadcast over a [N,H,W] pixel grid; colour tuples
    become [N,3]; arrays (noise) are stacked. Numbers and colours go through one table,
    one numpy call for the whole chunk.
    """
    n, first = len(params), params[0]
    arrays = [name for name, value in first.items() if isinstance(value, np.ndarray)]
    numbers = [name for name in first if name not in arrays]
    rows = []
    for p in params:
        row: list[float] = []
        for name in numbers:
            value = p[name]
            row.extend(value) if isinstance(value, tuple) else row.append(value)
        rows.append(row)
    table = np.array(rows, dtype=np.float32)
    stacked, column = {}, 0
    for name in numbers:
        if isinstance(first[name], tuple):
            stacked[name] = table[:, column : column + 3]
            column += 3
        else:
            stacked[name] = table[:, column].reshape(n, 1, 1)
            column += 1
    for name in arrays:
        stacked[name] = np.stack([p[name] for p in params])
    return stacked


# ---------------------------------------------------------------------------
# Step 2: painting shapes on the pixel grid
# ---------------------------------------------------------------------------


_MIN_RADIUS_PX = 0.75  # > half a pixel diagonal (0.707): the nearest pixel centre is always inside


def _ellipse(x, y, cx, cy, a, b, px):
    """Signed distance in pixels (< 0 inside) to an axis-aligned ellipse with semi-axes a, b.

    Approximate away from the outline (only the anti-aliasing uses that), exact on it.
    `px` is pixels per unit of x and y. Semi-axes are at least `_MIN_RADIUS_PX`, so that
    small features at small image sizes still cover the pixel nearest their centre.
    """
    a = np.maximum(a, _MIN_RADIUS_PX / px)
    b = np.maximum(b, _MIN_RADIUS_PX / px)
    # (sqrt(((x - cx) / a)**2 + ((y - cy) / b)**2) - 1) * min(a, b) * px, computed in place
    # (this runs on every pixel for every shape; fewer temporaries = fewer cache misses)
    d = x - cx
    d /= a
    d *= d
    dy = y - cy
    dy /= b
    dy *= dy
    d += dy
    np.sqrt(d, out=d)
    d -= 1.0
    d *= np.minimum(a, b) * px
    return d


def _box(x, y, cx, cy, half_w, half_h, px):
    """Signed distance in pixels (< 0 inside) to an axis-aligned box, approximately."""
    return np.maximum(np.abs(x - cx) - half_w, np.abs(y - cy) - half_h) * px


def _rotate(x, y, cx, cy, cos, sin):
    """(x, y) relative to (cx, cy), in a frame rotated by the angle with this cos/sin."""
    dx, dy = x - cx, y - cy
    return dx * cos + dy * sin, dy * cos - dx * sin


class _Canvas:
    """A batch of float images and uint8 masks, painted back to front.

    The image is stored as colour planes [3,N,H,W]: numpy is several times faster
    when the innermost axis is a long pixel row rather than 3 channels.
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray):
        self.image = image  # [3,N,H,W] float32
        self.mask = mask  # [N,H,W] uint8
        self._buffer: np.ndarray | None = None

    def _scratch(self) -> np.ndarray:
        """A buffer shaped like the image, reused by every `paint`."""
        if self._buffer is None:
            self._buffer = np.empty_like(self.image)
        return self._buffer

    @classmethod
    def blank(cls, n: int, size: int) -> _Canvas:
        return cls(np.zeros((3, n, size, size), np.float32), np.zeros((n, size, size), np.uint8))

    def paint(self, distance, rgb, cls: int, shade=None, opacity=None, present=None) -> None:
        """Paint one part over everything painted so far, in the image and in the mask.

        distance: [N,H,W] signed distance in pixels (< 0 inside). Edges are anti-aliased
        over one pixel; a pixel takes the class when it is at least half covered.
        rgb: [N,3] colour. shade: optional [N,H,W] brightness texture. opacity: [N,1,1],
        see-through parts (image only). present: [N,1,1] 0/1, for parts some faces lack.
        """
        cover = 0.5 - distance
        np.clip(cover, 0.0, 1.0, out=cover)
        if present is not None:
            cover = cover * present
        alpha = cover if opacity is None else cover * opacity
        # image += alpha * (colour * shade - image), in a reused buffer (no big temporaries)
        change = self._scratch()
        if shade is None:
            np.subtract(_planes(rgb), self.image, out=change)
        else:
            np.multiply(_planes(rgb), shade, out=change)
            change -= self.image
        change *= alpha
        self.image += change
        inside = cover >= 0.5
        self.mask *= ~inside  # clear the covered pixels, then write the class (faster than np.where)
        self.mask += inside * np.uint8(cls)

    def crop(self, faces: np.ndarray, x0: np.ndarray, y0: np.ndarray, k: int) -> _Canvas:
        """A new canvas holding a copy of the k x k windows at (x0, y0) of some faces."""
        part = _Canvas.blank(len(faces), k)
        for i, (face, x, y) in enumerate(zip(faces, x0, y0)):
            part.image[:, i] = self.image[:, face, y : y + k, x : x + k]
            part.mask[i] = self.mask[face, y : y + k, x : x + k]
        return part

    def paste(self, part: _Canvas, faces: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> None:
        """Write a canvas made by `crop` back where it came from."""
        k = part.mask.shape[-1]
        for i, (face, x, y) in enumerate(zip(faces, x0, y0)):
            self.image[:, face, y : y + k, x : x + k] = part.image[:, i]
            self.mask[face, y : y + k, x : x + k] = part.mask[i]


def _planes(rgb: np.ndarray) -> np.ndarray:
    """Colours [N,3] -> [3,N,1,1], to broadcast against colour planes [3,N,H,W]."""
    return rgb.T[:, :, None, None]


def _upsample(cells: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of random cells [N,C,G,G] to smooth texture fields [N,C,size,size]."""
    g = cells.shape[-1]
    pos = (np.arange(size, dtype=np.float32) + 0.5) * np.float32((g - 1) / size)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, g - 1)
    w = pos - np.floor(pos)  # float32, like everything per-pixel
    cols = np.take(cells, i0, axis=-1) * (1 - w) + np.take(cells, i1, axis=-1) * w
    return np.take(cols, i0, axis=-2) * (1 - w)[:, None] + np.take(cols, i1, axis=-2) * w[:, None]


def _stripes(t):
    """Triangle wave with period 1 and values in [0, 1]: the hair-strand texture."""
    return np.abs(2.0 * (t - np.floor(t)) - 1.0)


def _paint_faces(q: dict[str, np.ndarray], size: int) -> _Canvas:
    """Paint a batch of faces from stacked parameters `q` (see `_sample_params`), back to front."""
    n = len(q["scale"])
    canvas = _Canvas.blank(n, size)
    X, Y = _pixel_grid(np.zeros(1, np.int64), np.zeros(1, np.int64), size)
    texture = _upsample(q["texture"], size)  # [N,3,H,W]: background, skin, hair
    _paint_background(canvas, q, X, Y, texture[:, 0], size)
    u, v = _canonical(q, X, Y)
    _paint_head(canvas, q, u, v, texture)

    # The small inner features are painted in a window around them only (~3x fewer pixels).
    # Pixels outside the window are untouched either way, so this changes no byte.
    x0, y0, k = _feature_window(q, size)
    everyone = np.arange(n)
    window = canvas.crop(everyone, x0, y0, k)
    _paint_features(window, q, *_canonical(q, *_pixel_grid(x0, y0, k)))
    canvas.paste(window, everyone, x0, y0)

    # Glasses are rare: paint them on the faces that have them only.
    wearers = np.flatnonzero(q["glasses"].reshape(-1))
    if wearers.size:
        qg = {name: values[wearers] for name, values in q.items()}
        window = canvas.crop(wearers, x0[wearers], y0[wearers], k)
        _paint_glasses(window, qg, *_canonical(qg, *_pixel_grid(x0[wearers], y0[wearers], k)))
        canvas.paste(window, wearers, x0[wearers], y0[wearers])
    return canvas


def _pixel_grid(x0: np.ndarray, y0: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates X [N,1,k], Y [N,k,1] of k x k windows with top-left (x0, y0).

    Pixel centres sit at integer coordinates, so pixel [row, col] is at (x=col, y=row).
    """
    ramp = np.arange(k, dtype=np.float32)
    X = x0.astype(np.float32).reshape(-1, 1, 1) + ramp.reshape(1, 1, k)
    Y = y0.astype(np.float32).reshape(-1, 1, 1) + ramp.reshape(1, k, 1)
    return X, Y


def _canonical(q: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates -> canonical face units (inverse of centre + scale * rotate(angle))."""
    u, v = _rotate(X, Y, q["centre_x"], q["centre_y"], q["cos"], q["sin"])
    return u / q["scale"], v / q["scale"]


# Every inner feature (glasses arms included) lies within this distance, in canonical units,
# of the point (0, _FEATURE_CENTRE_Y); see the ranges in `_sample_params`.
_FEATURE_CENTRE_Y, _FEATURE_RADIUS = 0.22, 1.3


def _feature_window(q: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-left corners (x0, y0) [N] and side k of square windows holding each face's inner features."""
    k = min(size, math.ceil(2 * (_FEATURE_RADIUS * _MAX_SCALE * size + 2)))  # + 2 px: edges, rounding
    s = q["scale"].reshape(-1).astype(np.float64)
    cx = q["centre_x"].reshape(-1) - s * _FEATURE_CENTRE_Y * q["sin"].reshape(-1)
    cy = q["centre_y"].reshape(-1) + s * _FEATURE_CENTRE_Y * q["cos"].reshape(-1)
    x0 = np.clip(np.round(cx - k / 2), 0, size - k).astype(np.int64)
    y0 = np.clip(np.round(cy - k / 2), 0, size - k).astype(np.int64)
    return x0, y0, k


def _paint_background(canvas: _Canvas, q, X, Y, texture, size: int) -> None:
    """A mottled two-colour gradient and clutter (ellipse, box, ellipse), all class 0 (background)."""
    t = ((X - size / 2) * q["bg_cos"] + (Y - size / 2) * q["bg_sin"]) / size + 0.5
    rgb0, rgb1 = _planes(q["bg_rgb0"]), _planes(q["bg_rgb1"])
    canvas.image[:] = (rgb0 + (rgb1 - rgb0) * t) * (1.0 + 0.1 * texture)
    for k in range(_CLUTTER):
        c = f"clutter{k}_"
        x, y = _rotate(X, Y, q[c + "x"], q[c + "y"], q[c + "cos"], q[c + "sin"])
        shape = _box if k % 2 else _ellipse
        canvas.paint(shape(x, y, 0.0, 0.0, q[c + "a"], q[c + "b"], 1.0), q[c + "rgb"], 0)


def _paint_head(canvas: _Canvas, q, u, v, texture) -> None:
    """Back hair (+ bun), neck, ears, face and fringe, in canonical units."""
    s, face_b = q["scale"], q["face_b"]
    hair, skin = q["hair_rgb"], q["skin_rgb"]
    strands = _stripes(q["strand_freq"] * (u + q["strand_tilt"] * v) + q["strand_phase"])
    hair_shade = 1.0 + q["strand_strength"] * (strands - 0.5) + 0.1 * texture[:, 2]
    skin_shade = 1.0 + 0.06 * texture[:, 1]

    back_hair = _ellipse(u, v, -0.15 * q["shift"], q["hair_y"], q["hair_a"], q["hair_b"], s)
    canvas.paint(back_hair, hair, _HAIR, shade=hair_shade)
    bun = _ellipse(u, v, q["bun_x"], -face_b - 0.05, q["bun_r"], q["bun_r"], s)
    canvas.paint(bun, hair, _HAIR, shade=hair_shade, present=q["bun"])
    canvas.paint(_box(u, v, 0.0, 2.5, q["neck_w"], 1.5, s), skin * 0.8, _SKIN, shade=skin_shade)
    for side in (-1.0, 1.0):
        ear = _ellipse(u, v, side * 0.97, q["ear_y"], 0.16, 0.26, s)
        canvas.paint(ear, skin * 0.9, _SKIN, shade=skin_shade, present=q["ears"])
    roundness = 1.0 - 0.12 * (u * u + v * v / (face_b * face_b))  # darker towards the outline
    canvas.paint(_ellipse(u, v, 0.0, 0.0, 1.0, face_b, s), skin, _SKIN, shade=skin_shade * roundness)

    # Fringe: a slightly larger head ellipse, above a parabolic hairline.
    du = u - q["hairline_part"]
    hairline = q["hairline_y"] + q["hairline_k"] * du * du
    fringe = np.maximum(_ellipse(u, v, 0.0, -0.02, 1.04, face_b + 0.04, s), (v - hairline) * s)
    canvas.paint(fringe, hair, _HAIR, shade=hair_shade)


def _feature_frame(q, u):
    """Canonical x -> feature-frame x (squashed and shifted by yaw), and its pixels per unit."""
    return (u - q["shift"]) / q["squash"], q["scale"] * q["squash"]


def _paint_features(canvas: _Canvas, q, u, v) -> None:
    """Brows, eyes, mouth and nose, in the feature frame.

    Painted so that no feature can cover another's landmark, even at 32 px: eyes over
    brows, the nose over the mouth.
    """
    s, squash = q["scale"], q["squash"]
    fu, fs = _feature_frame(q, u)
    ex, ey = q["eye_x"], q["eye_y"]

    for side in (-1.0, 1.0):
        bu, bv = _rotate(fu, v, side * ex, ey - q["brow_dy"], q["brow_cos"], side * q["brow_sin"])
        canvas.paint(_ellipse(bu, bv, 0.0, 0.0, q["brow_a"], q["brow_b"], fs), 0.7 * q["hair_rgb"], _BROWS)
        sclera = _ellipse(fu, v, side * ex, ey, q["eye_a"], q["eye_b"], fs)
        canvas.paint(sclera, q["sclera_rgb"], _EYES)
        iris_x, r = side * ex + q["gaze"], q["iris_r"]
        canvas.paint(np.maximum(sclera, _ellipse(fu, v, iris_x, ey, r, r, fs)), q["iris_rgb"], _EYES)
        pupil = np.maximum(sclera, _ellipse(fu, v, iris_x, ey, 0.45 * r, 0.45 * r, fs))
        canvas.paint(pupil, 0.1 * q["iris_rgb"], _EYES)

    # Mouth: neutral = thin ellipse with a dark line; smiling = open lower half of a taller ellipse.
    my, ma, mb, smile = q["mouth_y"], q["mouth_a"], q["mouth_b"], q["smiling"]
    below_corners = (my - 10.0 * (1.0 - smile) - v) * s  # half-plane; the whole plane when neutral
    lips = np.maximum(_ellipse(fu, v, 0.0, my, ma, mb, fs), below_corners)
    canvas.paint(lips, q["lip_rgb"], _MOUTH)
    inner = np.maximum(_ellipse(fu, v, 0.0, my, 0.85 * ma, (0.25 + 0.5 * smile) * mb, fs), below_corners)
    canvas.paint(inner, 0.35 * q["lip_rgb"], _MOUTH)
    teeth = np.maximum(inner, (v - my - 0.4 * mb) * s)
    canvas.paint(teeth, np.full_like(q["lip_rgb"], 0.95), _MOUTH, present=smile)

    # Nose: a bridge and a round tip; the nose-tip landmark is the tip's centre.
    nu = fu - q["nose_shift"] / squash
    bridge = _ellipse(nu, v, 0.0, q["nose_y"], q["nose_a"], q["nose_b"], fs)
    tip = _ellipse(nu, v, 0.0, q["nose_y"] + 0.75 * q["nose_b"], q["nose_r"], q["nose_r"], fs)
    canvas.paint(np.minimum(bridge, tip), 0.85 * q["skin_rgb"], _NOSE)


def _paint_glasses(canvas: _Canvas, q, u, v) -> None:
    """Tinted lenses, rims, arms and bridge; class 7 covers the lenses too (as in CelebAMask-HQ)."""
    s = q["scale"]
    fu, fs = _feature_frame(q, u)
    ex, ey, la, lb, t = q["eye_x"], q["eye_y"], q["lens_a"], q["lens_b"], q["frame_t"]
    arm_y = ey - 0.3 * lb
    for side in (-1.0, 1.0):
        lens = _ellipse(fu, v, side * ex, ey, la, lb, fs)
        canvas.paint(lens, q["tint_rgb"], _GLASSES, opacity=q["tint_opacity"])
        rim = np.maximum(_ellipse(fu, v, side * ex, ey, la + t, lb + t, fs), -lens)
        canvas.paint(rim, q["frame_rgb"], _GLASSES)
        arm_start = side * (ex + la)
        arm_end = (side - q["shift"]) / q["squash"]  # the face outline, in the feature frame
        arm = _box(fu, v, 0.5 * (arm_start + arm_end), arm_y, 0.5 * np.abs(arm_end - arm_start), 0.5 * t, s)
        canvas.paint(arm, q["frame_rgb"], _GLASSES)
    bridge = _box(fu, v, 0.0, arm_y, ex - la, 0.6 * t, s)
    canvas.paint(bridge, q["frame_rgb"], _GLASSES)


def _finish(canvas: _Canvas, q: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Lighting gradient and pixel noise over the painted image, then quantise to uint8."""
    X = np.arange(size, dtype=np.float32).reshape(1, 1, size) - size / 2
    Y = np.arange(size, dtype=np.float32).reshape(1, size, 1) - size / 2
    light = 1.0 + X * q["light_x"] + Y * q["light_y"]
    grain = q["noise_sigma"] * (2.0 * q["pixel_noise"] - 1.0)  # the same on all channels, like film grain
    image = canvas.image * light + grain
    image = np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return np.ascontiguousarray(image.transpose(1, 2, 3, 0))  # [N,H,W,3]


# ---------------------------------------------------------------------------
# Step 3: landmarks from the same geometry
# ---------------------------------------------------------------------------


def _landmarks(q: dict[str, np.ndarray]) -> np.ndarray:
    """[N,5,2] float32 pixel (x, y) of the five landmarks, through each face's own transform."""
    p = {k: q[k].reshape(-1).astype(np.float64) for k in _LANDMARK_PARAMS}
    corner_x = 0.8 * p["mouth_a"]  # mouth corners: a little inside the outline, on mouth pixels
    corner_y = p["mouth_y"] + 0.3 * p["mouth_b"] * p["smiling"]  # mid-height of a smile's end
    ex = p["eye_x"]
    feature_x = np.stack([-ex, ex, p["nose_shift"] / p["squash"], -corner_x, corner_x], axis=1)
    y = np.stack([p["eye_y"], p["eye_y"], p["nose_y"] + 0.75 * p["nose_b"], corner_y, corner_y], axis=1)
    x = feature_x * p["squash"][:, None] + p["shift"][:, None]  # feature frame -> canonical
    cos, sin, s = p["cos"][:, None], p["sin"][:, None], p["scale"][:, None]
    px = p["centre_x"][:, None] + s * (x * cos - y * sin)  # canonical -> pixels
    py = p["centre_y"][:, None] + s * (x * sin + y * cos)
    return np.stack([px, py], axis=-1).astype(np.float32)


_LANDMARK_PARAMS = ("eye_x", "eye_y", "nose_shift", "nose_y", "nose_b", "mouth_a", "mouth_b", "mouth_y",
                    "smiling", "squash", "shift", "cos", "sin", "scale", "centre_x", "centre_y")


# ---------------------------------------------------------------------------
# Glue
# ---------------------------------------------------------------------------


def _render_chunk(seed: int, indices: list[int], size: int) -> dict:
    """Sample, paint, finish and label a few faces."""
    q = _stack_params([_sample_params(seed, i, size) for i in indices])
    canvas = _paint_faces(q, size)
    return {
        "images": _finish(canvas, q, size),
        "masks": canvas.mask,
        "landmarks": _landmarks(q),
        "labels": {k: q[k].reshape(-1).astype(np.int64) for k in ATTRIBUTES},
    }
