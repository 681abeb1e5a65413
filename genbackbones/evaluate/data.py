"""Labelled data for downstream evaluation: one in-memory format for every source.

Why one format: every backbone must see *identical* images, labels and splits, so all
sources are turned into `Labelled` tensors at the evaluation resolution once, before
any training, and every bad row is reported (a `UserError` naming the file) before
anything is written.

Sources (`DataOptions.source`):

- `faces` (default): the bundled procedural domain. Train pool = the first `pool`
  faces of its "train" index range, test = the first `test_size` of its "test" range;
  the ranges are disjoint by construction. Faces are rendered on demand.
- a local folder: `images/` (+ `masks/`, `landmarks.csv`, `labels.csv`), or flat
  images with a file-name pattern, or `<class>/<image>` sub-folders. A folder with
  `train/` and `test/` sub-folders (each laid out as above) keeps that split; any
  other folder is split once with a fixed seed (`split_seed`, `test_fraction`).
- a `datasets` dataset: a folder written by `save_to_disk`, or a Hub id present in
  the local cache. A `test` (else `validation`) split is used as the test set when
  there is one; otherwise the fixed-seed split above.

Geometry: images are centre-cropped to a square and resized to the evaluation
resolution (as `genbackbones.data.images.to_square_rgb` does); masks get the same
crop and a nearest-neighbour resize; landmarks (pixel centres at integer
coordinates, as in the bundled domain) get the same crop and scale.

Masks: class-index PNG (mode L/I: pixel value = class), palette PNG (mode P: palette
index = class), or colour-coded RGB with a colour -> class map (`class_colors`);
anti-aliased edge colours (blends of two class colours) snap to the nearer class.
Pixel value 255 in an index mask means "ignore".
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import IMAGE_SUFFIXES, to_square_rgb
from ..errors import UserError
from .metrics import IGNORE_INDEX

TASKS = ("segmentation", "landmarks", "classification")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
NAME_COLUMNS = ("name", "file", "filename", "file_name", "image", "image_name", "path")
COLOUR_TOLERANCE = 30.0  # RGB distance within which a mask colour belongs to a class colour or a blend of two
MIN_UNMAPPED_PIXELS = 16  # an unmapped colour covering at least this many pixels is an error, not anti-aliasing


@dataclass
class DataOptions:
    """Where the labelled data comes from and how to read it (recorded in the results)."""

    source: str = "faces"
    resolution: int | None = None  # None: the first backbone's pretrained_cfg input size
    target: str | None = None  # classification attribute / label column (faces default: hair_colour)
    image_column: str = "image"
    mask_column: str = "mask"
    landmark_columns: tuple[str, ...] | None = None  # one [K,2] column, or x,y column pairs
    eye_indices: tuple[int, int] = (0, 1)
    classes: tuple[str, ...] | None = None  # segmentation class names for index masks
    class_colors: str | None = None  # colour map file (JSON/YAML) or "name=#rrggbb,..."
    label_pattern: str | None = None  # regex with named groups applied to file names
    pool: int = 2000  # faces: size of the labelled train pool
    test_size: int = 500  # faces: number of test images
    test_fraction: float = 0.2  # folders/datasets without a test split
    split_seed: int = 0  # folders/datasets without a test split
    faces_seed: int = 0  # faces: the domain seed


def apply_data_overrides(options: DataOptions, items: Sequence[str]) -> DataOptions:
    """`data.key=value` settings (pool, test_size, test_fraction, split_seed, faces_seed, resolution)."""
    from dataclasses import replace

    allowed = {"pool": int, "test_size": int, "test_fraction": float, "split_seed": int, "faces_seed": int,
               "resolution": int}
    for item in items:
        key, sep, value = item.strip()[len("data."):].partition("=")
        if not sep or key not in allowed:
            raise UserError(f"--set {item!r}: unknown data setting; valid: {', '.join('data.' + k for k in allowed)}")
        try:
            options = replace(options, **{key: allowed[key](value)})
        except ValueError:
            raise UserError(f"--set {item!r}: expected a {allowed[key].__name__}") from None
    if options.pool < 1 or options.test_size < 1:
        raise UserError("data.pool and data.test_size must be at least 1")
    return options


@dataclass
class Labelled:
    """A set of labelled images at the evaluation resolution (only the labels the task needs)."""

    images: torch.Tensor  # uint8 [N, 3, R, R]
    names: list[str]
    masks: torch.Tensor | None = None  # int64 [N, R, R], IGNORE_INDEX = ignore
    landmarks: torch.Tensor | None = None  # float32 [N, K, 2] pixel (x, y), pixel centres at integers
    labels: torch.Tensor | None = None  # int64 [N]

    def __len__(self) -> int:
        return len(self.names)

    def take(self, positions: Sequence[int]) -> Labelled:
        idx = torch.as_tensor(list(positions), dtype=torch.long)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Labelled(self.images[idx], [self.names[i] for i in idx.tolist()], pick(self.masks),
                        pick(self.landmarks), pick(self.labels))


@dataclass
class Schema:
    """What the labels mean: class names, landmark names, eye points, the left/right mirror."""

    task: str
    resolution: int
    classes: tuple[str, ...] = ()  # segmentation classes, or the target's classes
    landmark_names: tuple[str, ...] = ()
    eye_indices: tuple[int, int] = (0, 1)
    target: str | None = None

    @property
    def mirror(self) -> tuple[int, ...]:
        """Where each class / landmark goes under a horizontal flip (left <-> right names swap)."""
        return mirror_permutation(self.landmark_names if self.task == "landmarks" else self.classes)

    @property
    def mirror_known(self) -> bool:
        """Landmarks need named left/right pairs to be flipped safely; classes are assumed symmetric."""
        if self.task != "landmarks":
            return True
        return any(i != j for i, j in enumerate(self.mirror))


@dataclass
class EvalData:
    train: Labelled | FacePool  # the pool that labelled subsets are drawn from
    test: Labelled
    schema: Schema
    description: dict = field(default_factory=dict)


def load_data(options: DataOptions, task: str) -> EvalData:
    """Every train and test example of `options.source`, validated; see the module docstring."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if options.resolution is None or options.resolution < 16:
        raise UserError(f"evaluation resolution must be at least 16 px, got {options.resolution}")
    if options.source in ("faces", "", None):
        return _faces(options, task)
    path = Path(options.source)
    if path.is_dir():
        data = _hf_dataset(options.source, options, task) if _is_saved_dataset(path) else _folder(path, options, task)
    elif path.exists():
        raise UserError(f"--data {path} is a file; give a folder, a saved `datasets` dataset or a Hub id")
    elif options.source.startswith(("/", "./", "../", "~")):
        raise UserError(f"--data {options.source}: folder does not exist")
    else:
        data = _hf_dataset(options.source, options, task)  # a Hub id, from the local cache when offline
    return _drop_duplicated_test_images(data)


# ---------------------------------------------------------------------------
# Labelled subsets and the train/test guarantee
# ---------------------------------------------------------------------------


def subset_positions(pool_size: int, n: int, seed: int) -> list[int]:
    """The first `n` of a seeded permutation of the train pool: nested in `n` for a fixed seed."""
    if not 1 <= n <= pool_size:
        raise UserError(f"cannot take {n} labelled images from a train pool of {pool_size}")
    perm = np.random.default_rng([seed, 7919]).permutation(pool_size)
    return sorted(int(i) for i in perm[:n])


def check_disjoint(data: EvalData, subsets: dict) -> None:
    """No test image may ever be a training image: compare names of every subset with the test set."""
    test_names = set(data.test.names)
    train_names = data.train.names
    for key, positions in subsets.items():
        overlap = test_names.intersection(train_names[p] for p in positions)
        if overlap:
            raise RuntimeError(f"bug: training subset {key} contains test images {sorted(overlap)[:3]}")


def mirror_permutation(names: Sequence[str]) -> tuple[int, ...]:
    """Index of each name's mirror partner (left_eye <-> right_eye, l_brow <-> r_brow), else itself."""
    swap = {"left": "right", "right": "left", "l": "r", "r": "l"}
    lookup = {n.lower(): i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        parts = re.split(r"([_\-\s.]+)", name.lower())
        mirrored = "".join(swap.get(p, p) for p in parts)
        out.append(lookup.get(mirrored, i) if mirrored != name.lower() else i)
    return tuple(out)


# ---------------------------------------------------------------------------
# The bundled domain
# ---------------------------------------------------------------------------


class FacePool:
    """Train faces rendered on demand (only the labelled subsets are ever drawn)."""

    def __init__(self, domain, indices: range, task: str, target: str | None):
        self.domain, self.indices, self.task, self.target = domain, indices, task, target
        self.names = [f"faces/{i:07d}" for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, positions: Sequence[int]) -> Labelled:
        from ..data.faces import render_batch

        chosen = [self.indices[p] for p in positions]
        batch = render_batch(self.domain.seed, chosen, self.domain.size)
        images = torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).contiguous()
        out = Labelled(images, [self.names[p] for p in positions])
        if self.task == "segmentation":
            out.masks = torch.from_numpy(batch["masks"]).long()
        elif self.task == "landmarks":
            out.landmarks = torch.from_numpy(batch["landmarks"]).float()
        else:
            out.labels = torch.from_numpy(batch["labels"][self.target]).long()
        return out


def _faces(options: DataOptions, task: str) -> EvalData:
    from ..data.faces import ATTRIBUTES, LANDMARK_NAMES, SEG_CLASSES, FaceDomain

    target = options.target or "hair_colour"
    if task == "classification" and target not in ATTRIBUTES:
        raise UserError(f"the faces domain has no attribute {target!r}; use --target with one of "
                        f"{', '.join(ATTRIBUTES)}")
    domain = FaceDomain(options.faces_seed, options.resolution)
    train = FacePool(domain, domain.first_indices(options.pool, "train"), task, target)
    test_indices = domain.first_indices(options.test_size, "test")
    test = FacePool(domain, test_indices, task, target).take(range(len(test_indices)))
    schema = Schema(task, options.resolution, classes=SEG_CLASSES if task == "segmentation" else
                    (ATTRIBUTES[target] if task == "classification" else ()),
                    landmark_names=LANDMARK_NAMES if task == "landmarks" else (),
                    eye_indices=(0, 1), target=target if task == "classification" else None)
    description = {
        "source": "faces", "name": "genbackbones/faces",
        "summary": f"bundled stylised faces, seed {options.faces_seed}, {options.resolution} px",
        "train_pool": f"train indices {train.indices.start}..{train.indices.stop - 1} ({len(train)} images)",
        "test": f"test indices {test_indices.start}..{test_indices.stop - 1} ({len(test)} images)",
        "split": "disjoint index ranges of the domain (FaceDomain 'train' / 'test')",
    }
    return EvalData(train, test, schema, description)


# ---------------------------------------------------------------------------
# Geometry shared by every source: centre crop to a square, resize
# ---------------------------------------------------------------------------


def _crop_box(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the centred square crop; the same box `to_square_rgb` uses."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def _square_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    from PIL import Image

    h, w = mask.shape
    left, top, side = _crop_box(w, h)
    crop = mask[top:top + side, left:left + side].astype(np.uint8)
    if side != resolution:
        crop = np.asarray(Image.fromarray(crop, mode="L").resize((resolution, resolution), Image.NEAREST))
    return crop.astype(np.int64)


def _square_points(points: np.ndarray, width: int, height: int, resolution: int) -> np.ndarray:
    """Pixel-centre coordinates through the crop and resize: x' = (x - left + 0.5) * s - 0.5."""
    left, top, side = _crop_box(width, height)
    scale = resolution / side
    offset = np.array([left, top], dtype=np.float64)
    return ((points - offset + 0.5) * scale - 0.5).astype(np.float32)


# ---------------------------------------------------------------------------
# Masks: class index, palette, or colour-coded with a colour map
# ---------------------------------------------------------------------------


class MaskReader:
    """Turns a mask image into class indices [H, W]; knows the class names."""

    def __init__(self, class_colors: str | None, classes: Sequence[str] | None):
        self.palette = None
        self.classes: tuple[str, ...] | None = tuple(classes) if classes else None
        if class_colors:
            names, self.palette = parse_class_colors(class_colors)
            if self.classes and tuple(self.classes) != tuple(names):
                raise UserError("--classes and --class-colors name different classes; give only --class-colors")
            self.classes = tuple(names)

    def __call__(self, image, name: str) -> np.ndarray:
        if self.palette is not None:
            return snap_colours(np.asarray(image.convert("RGB")), self.palette, name)
        if image.mode == "P":
            return np.asarray(image).astype(np.int64)  # the palette index is the class
        if image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "1"):
            return np.asarray(image).astype(np.int64)
        if image.mode == "LA":
            return np.asarray(image.convert("L")).astype(np.int64)
        rgb = np.asarray(image.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].astype(np.int64)  # a class-index mask saved as RGB
        raise UserError(f"{name}: colour-coded mask but no colour map; give --class-colors (a JSON/YAML file or "
                        "name=#rrggbb,...) or save masks as class-index / palette PNGs")


def parse_class_colors(spec: str) -> tuple[list[str], np.ndarray]:
    """A colour -> class map: JSON/YAML file (mapping name -> colour, or a list) or inline "name=#rrggbb,..."."""
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"class colour map {path} does not exist")
        import yaml

        try:
            raw = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except Exception as err:
            raise UserError(f"{path}: cannot parse the class colour map ({type(err).__name__}: {err})") from None
        if isinstance(raw, dict):
            items = list(raw.items())
        elif isinstance(raw, list):
            items = [(r["name"], r["color"]) if isinstance(r, dict) else tuple(r) for r in raw]
        else:
            raise UserError(f"{path}: the class colour map must be a mapping name -> colour or a list")
    else:
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part and ":" not in part:
                raise UserError(f"--class-colors entry {part!r} is not name=#rrggbb")
            items.append(tuple(s.strip() for s in re.split(r"[=:]", part, maxsplit=1)))
    if not items:
        raise UserError(f"class colour map {spec!r} is empty")
    names = [str(n) for n, _ in items]
    colours = np.array([_parse_colour(c, spec) for _, c in items], dtype=np.float64)
    return names, colours


def _parse_colour(value, where: str) -> tuple[int, int, int]:
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()):
        h = value.strip().lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if isinstance(value, (list, tuple)) and len(value) == 3 \
            and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return tuple(value)
    raise UserError(f"{where}: colour {value!r} is not #rrggbb or [r, g, b] with values 0..255")


def snap_colours(rgb: np.ndarray, palette: np.ndarray, name: str,
                 tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
    """Class index of each pixel of a colour-coded mask.

    A colour within `tolerance` of a class colour is that class. Anti-aliased edges are
    blends of two class colours: a colour within `tolerance` of the segment between two
    class colours goes to the nearer end. Anything else is tolerated only in a few pixels
    (corners where three parts meet) and snapped to the nearest class colour; an
    unmapped colour covering `MIN_UNMAPPED_PIXELS` or more is an error naming the file.
    """
    h, w, _ = rgb.shape
    flat = rgb.reshape(-1, 3).astype(np.int64)
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    unique, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    colours = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1).astype(np.float64)
    dist = np.linalg.norm(colours[:, None] - palette[None], axis=-1)
    cls = dist.argmin(1)
    unexplained = dist.min(1) > tolerance
    if unexplained.any() and len(palette) > 1:
        cls_far, explained = _snap_blends(colours[unexplained], palette, tolerance)
        cls[unexplained] = np.where(explained, cls_far, cls[unexplained])
        unexplained[unexplained] = ~explained
    bad = np.flatnonzero(unexplained & (counts >= MIN_UNMAPPED_PIXELS))
    if bad.size:
        worst = bad[counts[bad].argmax()]
        hexcode = "#" + "".join(f"{int(v):02x}" for v in colours[worst])
        raise UserError(f"{name}: colour {hexcode} ({counts[worst]} pixels) is not near any class colour of the "
                        "colour map; add its class to --class-colors")
    return cls[inverse].reshape(h, w).astype(np.int64)


def _snap_blends(colours: np.ndarray, palette: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For colours far from every class colour: (class of the nearer end of the nearest blend segment, found?)."""
    i, j = np.triu_indices(len(palette), 1)
    a, ab = palette[i], palette[j] - palette[i]
    t = ((colours[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9)
    t = t.clip(0.0, 1.0)
    dist = np.linalg.norm(colours[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1)
    best = dist.argmin(1)
    rows = np.arange(len(colours))
    cls = np.where(t[rows, best] < 0.5, i[best], j[best])
    return cls, dist[rows, best] <= tolerance


# ---------------------------------------------------------------------------
# Rows: what every non-bundled source produces before images are decoded
# ---------------------------------------------------------------------------


@dataclass
class _Row:
    name: str
    image: object  # a path, or something `_open` understands (PIL image, bytes dict, array)
    mask: object = None
    points: np.ndarray | None = None  # [K, 2] in original pixels
    label: object = None  # raw value, mapped to a class index later


def _open(obj, name: str):
    """A loaded PIL image from a path, PIL image, {'bytes'/'path'} dict or array; UserError naming the row."""
    import io

    from PIL import Image

    try:
        if isinstance(obj, Image.Image):
            image = obj
        elif isinstance(obj, dict) and obj.get("bytes"):
            image = Image.open(io.BytesIO(obj["bytes"]))
        elif isinstance(obj, dict) and obj.get("path"):
            image = Image.open(obj["path"])
        elif isinstance(obj, (str, Path)):
            image = Image.open(obj)
        elif isinstance(obj, np.ndarray):
            image = Image.fromarray(obj)
        else:
            raise TypeError(f"unsupported value of type {type(obj).__name__}")
        image.load()
        return image
    except Exception as err:
        raise UserError(f"{name}: cannot read image ({type(err).__name__}: {str(err)[:80]}); "
                        "remove or replace it") from None


def _materialise(rows: list[_Row], task: str, resolution: int, masks: MaskReader | None,
                 label_map: dict | None) -> Labelled:
    """Decode, validate and resize every row."""
    images, mask_list, point_list, labels = [], [], [], []
    for row in rows:
        image = _open(row.image, row.name)
        width, height = image.size
        images.append(to_square_rgb(image, resolution, row.name).transpose(2, 0, 1))
        if task == "segmentation":
            mask_list.append(_read_mask(row, width, height, resolution, masks))
        elif task == "landmarks":
            point_list.append(_square_points(row.points, width, height, resolution))
        else:
            labels.append(label_map[row.label])
    out = Labelled(torch.from_numpy(np.stack(images)) if images else torch.zeros(0, 3, resolution, resolution,
                                                                                   dtype=torch.uint8),
                   [r.name for r in rows])
    if task == "segmentation":
        out.masks = torch.from_numpy(np.stack(mask_list))
    elif task == "landmarks":
        out.landmarks = torch.from_numpy(np.stack(point_list))
    else:
        out.labels = torch.tensor(labels, dtype=torch.long)
    return out


def _read_mask(row: _Row, width: int, height: int, resolution: int, reader: MaskReader) -> np.ndarray:
    mask_name = str(row.mask) if isinstance(row.mask, (str, Path)) else f"{row.name} (mask)"
    image = _open(row.mask, mask_name)
    if image.size != (width, height):
        raise UserError(f"{mask_name}: mask is {image.size[0]}x{image.size[1]} but its image {row.name} is "
                        f"{width}x{height}; masks must have the image's size")
    classes = reader(image, mask_name)
    num = len(reader.classes) if reader.classes else None
    valid = classes[classes != IGNORE_INDEX]
    if num is not None and valid.size and int(valid.max()) >= num:
        raise UserError(f"{mask_name}: class index {int(valid.max())} but only {num} classes are named "
                        f"({', '.join(reader.classes)}); fix the mask or --classes")
    return _square_mask(classes, resolution)


def _label_map(values: Sequence, names: Sequence[str] | None = None) -> tuple[dict, tuple[str, ...]]:
    """Raw label values -> class indices. Given names (ClassLabel) keep their order; else sorted values."""
    if names is not None:
        return {i: i for i in range(len(names))}, tuple(names)
    unique = sorted(set(values), key=lambda v: (0, int(v), "") if _is_int(v) else (1, 0, str(v)))
    return {v: i for i, v in enumerate(unique)}, tuple(str(v) for v in unique)


def _is_int(value) -> bool:
    try:
        int(str(value))
        return True
    except ValueError:
        return False


def _mask_classes(reader: MaskReader, parts: list[Labelled]) -> tuple[str, ...]:
    if reader.classes:
        return reader.classes
    observed = [int(p.masks[p.masks != IGNORE_INDEX].max()) for p in parts if p.masks is not None and
                (p.masks != IGNORE_INDEX).any()]
    return tuple(f"class_{i}" for i in range(max(observed, default=0) + 1))


def _check_points(rows: list[_Row], eye_indices: tuple[int, int]) -> int:
    counts = {r.points.shape[0] for r in rows}
    if len(counts) > 1:
        raise UserError(f"landmark rows have different numbers of points: {sorted(counts)}")
    k = counts.pop() if counts else 0
    if k < 2 or max(eye_indices) >= k or eye_indices[0] == eye_indices[1]:
        raise UserError(f"--eye-indices {eye_indices[0]},{eye_indices[1]} do not name two of the {k} landmarks")
    return k


def _split(rows: list[_Row], options: DataOptions) -> tuple[list[_Row], list[_Row]]:
    """A fixed-seed split into train pool and test set (independent of the evaluation seeds)."""
    if len(rows) < 2:
        raise UserError(f"{options.source}: need at least 2 labelled images to split into train and test, "
                        f"found {len(rows)}")
    if not 0 < options.test_fraction < 1:
        raise UserError(f"test_fraction must be between 0 and 1, got {options.test_fraction}")
    perm = np.random.default_rng([options.split_seed, 104729]).permutation(len(rows))
    n_test = min(len(rows) - 1, max(1, round(len(rows) * options.test_fraction)))
    test = set(perm[:n_test].tolist())
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def _assemble(train_rows: list[_Row], test_rows: list[_Row], options: DataOptions, task: str,
              label_names: Sequence[str] | None, landmark_names: Sequence[str] | None, description: dict) -> EvalData:
    """Rows of both splits -> validated tensors and the schema."""
    if not train_rows or not test_rows:
        raise UserError(f"{options.source}: the train and the test split each need at least one labelled image "
                        f"(found {len(train_rows)} and {len(test_rows)})")
    reader = MaskReader(options.class_colors, options.classes) if task == "segmentation" else None
    label_map, classes = (None, ())
    if task == "classification":
        label_map, classes = _label_map([r.label for r in train_rows + test_rows], label_names)
    if task == "landmarks":
        k = _check_points(train_rows + test_rows, options.eye_indices)
        landmark_names = tuple(landmark_names or (f"p{i}" for i in range(k)))
    train = _materialise(train_rows, task, options.resolution, reader, label_map)
    test = _materialise(test_rows, task, options.resolution, reader, label_map)
    if task == "segmentation":
        classes = _mask_classes(reader, [train, test])
    schema = Schema(task, options.resolution, classes=tuple(classes), landmark_names=tuple(landmark_names or ()),
                    eye_indices=tuple(options.eye_indices), target=options.target if task == "classification" else None)
    description = {**description, "train_pool": f"{len(train)} images", "test": f"{len(test)} images"}
    return EvalData(train, test, schema, description)


def _drop_duplicated_test_images(data: EvalData) -> EvalData:
    """A test image whose pixels equal a training image's is dropped (and counted) so no score is on seen data."""
    digest = lambda t: hashlib.sha1(t.numpy().tobytes()).hexdigest()  # noqa: E731
    seen = {digest(img) for img in data.train.images}
    keep = [i for i, img in enumerate(data.test.images) if digest(img) not in seen]
    dropped = len(data.test) - len(keep)
    if dropped:
        if not keep:
            raise UserError(f"{data.description.get('name')}: every test image also appears in the train pool")
        data.test = data.test.take(keep)
        data.description["test"] = f"{len(data.test)} images"
    data.description["test_duplicates_dropped"] = dropped
    return data


# ---------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------


def _folder(root: Path, options: DataOptions, task: str) -> EvalData:
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, landmark_names, how = _folder_rows(root / "train", options, task)
        test, _, _ = _folder_rows(root / "test", options, task)
        for prefix, rows in (("train", train), ("test", test)):  # names stay unique across the two folders
            for row in rows:
                row.name = f"{prefix}/{row.name}"
        split = "the folder's train/ and test/ sub-folders"
    else:
        rows, landmark_names, how = _folder_rows(root, options, task)
        train, test = _split(rows, options)
        split = f"fixed-seed split (split_seed={options.split_seed}, test_fraction={options.test_fraction})"
    description = {"source": str(root), "name": root.resolve().name, "summary": f"folder {root} ({how})",
                   "split": split}
    return _assemble(train, test, options, task, None, landmark_names, description)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_rows(folder: Path, options: DataOptions, task: str) -> tuple[list[_Row], tuple | None, str]:
    """(rows, landmark names, how the labels were found) for one split folder."""
    images_dir = folder / "images"
    class_dirs = task == "classification" and not images_dir.is_dir() and not options.label_pattern \
        and not (folder / "labels.csv").exists() and not _image_files(folder, recursive=False)
    if class_dirs:
        files = _image_files(folder, recursive=True)
        base = folder
    else:
        base = images_dir if images_dir.is_dir() else folder
        files = _image_files(base, recursive=images_dir.is_dir())
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {base}")
    rows = [_Row(name=str(f.relative_to(base)), image=f) for f in files]
    landmark_names, how = None, "images"
    if task == "segmentation":
        _attach_masks(rows, folder / "masks", base)
        how = "images + masks/"
    elif task == "landmarks":
        landmark_names = _attach_csv_landmarks(rows, folder / "landmarks.csv", options)
        how = "images + landmarks.csv"
    elif class_dirs:
        for row in rows:
            row.label = Path(row.name).parts[0] if len(Path(row.name).parts) > 1 else None
            if row.label is None:
                raise UserError(f"{base / row.name}: image outside a class folder (layout: <root>/<class>/<image>)")
        options.target = options.target or "class"
        how = "classes from folder names"
    elif options.label_pattern:
        _attach_pattern_labels(rows, options, base)
        how = f"labels from file names matching {options.label_pattern!r}"
    else:
        _attach_csv_labels(rows, folder / "labels.csv", options)
        how = "images + labels.csv"
    return rows, landmark_names, how


def _attach_masks(rows: list[_Row], mask_dir: Path, image_dir: Path) -> None:
    if not mask_dir.is_dir():
        raise UserError(f"segmentation needs masks: {mask_dir} does not exist (one mask per image, same file stem)")
    for row in rows:
        stem = Path(row.name).with_suffix("")
        candidates = [mask_dir / f"{stem}{s}" for s in MASK_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UserError(f"{image_dir / row.name}: no mask (looked for {mask_dir / stem}.png)")
        row.mask = found


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    with open(path, newline="") as f:
        table = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if len(table) < 2:
        raise UserError(f"{path}: needs a header row and at least one data row")
    return [h.strip() for h in table[0]], table[1:]


def _name_column(header: list[str]) -> int:
    lowered = [h.lower() for h in header]
    return next((lowered.index(n) for n in NAME_COLUMNS if n in lowered), 0)


def _csv_index(header: list[str], body: list[list[str]]) -> dict[str, list[str]]:
    """Rows keyed by the name column (full relative name, base name and stem all match)."""
    col = _name_column(header)
    index: dict[str, list[str]] = {}
    for r in body:
        name = r[col].strip()
        for key in (name, Path(name).name, Path(name).stem):
            index.setdefault(key, r)
    return index


def _lookup(index: dict, row: _Row) -> list[str] | None:
    for key in (row.name, Path(row.name).name, Path(row.name).stem):
        if key in index:
            return index[key]
    return None


def _attach_csv_landmarks(rows: list[_Row], path: Path, options: DataOptions) -> tuple[str, ...]:
    """landmarks.csv: a name column, then x,y column pairs (or the pairs named by --landmark-columns)."""
    header, body = _read_csv(path)
    name_col = _name_column(header)
    if options.landmark_columns:
        missing = [c for c in options.landmark_columns if c not in header]
        if missing:
            raise UserError(f"{path}: no column(s) {', '.join(missing)}; columns: {', '.join(header)}")
        columns = [header.index(c) for c in options.landmark_columns]
    else:
        columns = [i for i in range(len(header)) if i != name_col]
    if len(columns) < 4 or len(columns) % 2:
        raise UserError(f"{path}: landmarks need x,y column pairs for at least 2 points, got {len(columns)} columns")
    names = _pair_names([header[c] for c in columns])
    index = _csv_index(header, body)
    for row in rows:
        values = _lookup(index, row)
        if values is None:
            raise UserError(f"{row.name}: no row in {path}")
        try:
            coords = np.array([float(values[c]) for c in columns], dtype=np.float64)
        except (ValueError, IndexError):
            coords = np.array([np.nan])
        if not np.isfinite(coords).all():
            raise UserError(f"{row.name}: missing or non-numeric landmark coordinates in {path}")
        row.points = coords.reshape(-1, 2)
    return names


def _pair_names(columns: list[str]) -> tuple[str, ...]:
    """left_eye_x,left_eye_y,... -> left_eye,...; unnamed pairs -> p0, p1, ..."""
    names = []
    for i in range(0, len(columns), 2):
        x, y = columns[i], columns[i + 1]
        stem_x, stem_y = re.sub(r"[_\-\s]?x$", "", x, flags=re.I), re.sub(r"[_\-\s]?y$", "", y, flags=re.I)
        names.append(stem_x if stem_x == stem_y and stem_x else f"p{i // 2}")
    return tuple(names)


def _attach_csv_labels(rows: list[_Row], path: Path, options: DataOptions) -> None:
    if not path.exists():
        raise UserError(f"classification needs labels: give {path} (name + label columns), <class>/ sub-folders "
                        "or --label-pattern")
    header, body = _read_csv(path)
    name_col = _name_column(header)
    label_columns = [h for i, h in enumerate(header) if i != name_col]
    target = options.target or (label_columns[0] if label_columns else None)
    if target not in label_columns:
        raise UserError(f"{path}: no label column {target!r}; columns: {', '.join(label_columns)} "
                        "(choose with --target)")
    options.target = target
    col = header.index(target)
    index = _csv_index(header, body)
    for row in rows:
        values = _lookup(index, row)
        if values is None or col >= len(values) or not values[col].strip():
            raise UserError(f"{row.name}: no {target!r} label in {path}")
        row.label = values[col].strip()


def _attach_pattern_labels(rows: list[_Row], options: DataOptions, base: Path) -> None:
    try:
        pattern = re.compile(options.label_pattern)
    except re.error as err:
        raise UserError(f"--label-pattern {options.label_pattern!r} is not a valid regex ({err})") from None
    groups = list(pattern.groupindex)
    if not groups:
        raise UserError(f"--label-pattern {options.label_pattern!r} needs a named group, e.g. (?P<gender>\\d)")
    target = options.target or groups[0]
    if target not in groups:
        raise UserError(f"--label-pattern has no group {target!r}; its groups: {', '.join(groups)}")
    options.target = target
    for row in rows:
        match = pattern.search(Path(row.name).name)
        if match is None or match.group(target) is None:
            raise UserError(f"{base / row.name}: file name does not match --label-pattern {options.label_pattern!r}")
        row.label = match.group(target)


# ---------------------------------------------------------------------------
# `datasets` datasets
# ---------------------------------------------------------------------------


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
        or (path / "state.json").exists()


def _hf_dataset(source: str, options: DataOptions, task: str) -> EvalData:
    import datasets

    try:
        if Path(source).is_dir():
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(source)
    except Exception as err:
        raise UserError(f"cannot load dataset {source!r} ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                        "give a folder, a dataset saved with save_to_disk, or a Hub id present in the cache") from None
    if isinstance(loaded, datasets.DatasetDict):
        test_split = next((s for s in ("test", "validation") if s in loaded), None)
        train_split = "train" if "train" in loaded else next(s for s in loaded if s != test_split)
        train_ds = loaded[train_split]
        test_ds = loaded[test_split] if test_split else None
    else:
        train_ds, test_ds, train_split, test_split = loaded, None, "(single split)", None
    label_names, landmark_names = _hf_columns(train_ds, options, task, source)
    train_rows = _hf_rows(train_ds, options, task, source, train_split)
    if test_ds is not None:
        test_rows = _hf_rows(test_ds, options, task, source, test_split)
        split = f"the dataset's {train_split!r} and {test_split!r} splits"
    else:
        train_rows, test_rows = _split(train_rows, options)
        split = f"fixed-seed split (split_seed={options.split_seed}, test_fraction={options.test_fraction})"
    description = {"source": source, "name": Path(source).name if Path(source).is_dir() else source,
                   "summary": f"`datasets` dataset {source}", "split": split}
    return _assemble(train_rows, test_rows, options, task, label_names, landmark_names, description)


def _hf_columns(ds, options: DataOptions, task: str, source: str) -> tuple[list[str] | None, tuple[str, ...] | None]:
    """Check the needed columns exist; (ClassLabel names of the target, landmark names)."""
    import datasets

    columns = ds.column_names

    def need(col: str, option: str) -> None:
        if col not in columns:
            raise UserError(f"dataset {source!r} has no column {col!r} ({option}); columns: {', '.join(columns)}")

    need(options.image_column, "--image-column")
    if task == "segmentation":
        need(options.mask_column, "--mask-column")
    if task == "landmarks":
        cols = options.landmark_columns or ("landmarks",)
        for c in cols:
            need(c, "--landmark-columns")
        options.landmark_columns = tuple(cols)
        return None, (_pair_names(list(cols)) if len(cols) > 1 else None)
    if task == "classification":
        if options.target is None:
            class_labels = [c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
            options.target = "label" if "label" in columns else (class_labels[0] if class_labels else None)
        if options.target is None:
            raise UserError(f"dataset {source!r}: choose the label column with --target "
                            f"(columns: {', '.join(columns)})")
        need(options.target, "--target / --label-column")
        feature = ds.features[options.target]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names), None
    return None, None


def _hf_rows(ds, options: DataOptions, task: str, source: str, split: str | None) -> list[_Row]:
    rows = []
    prefix = f"{source}[{split}]" if split and not split.startswith("(") else source
    for i in range(len(ds)):
        item = ds[i]
        name = f"{prefix}[{i}]"
        if item[options.image_column] is None:
            raise UserError(f"{name}: no image in column {options.image_column!r}")
        row = _Row(name=name, image=item[options.image_column])
        if task == "segmentation":
            if item[options.mask_column] is None:
                raise UserError(f"{name}: no mask in column {options.mask_column!r}")
            row.mask = item[options.mask_column]
        elif task == "landmarks":
            row.points = _hf_points(item, options.landmark_columns, name)
        elif task == "classification":
            if item[options.target] is None or item[options.target] == "":
                raise UserError(f"{name}: no label in column {options.target!r}")
            row.label = item[options.target]
        rows.append(row)
    return rows


def _hf_points(item: dict, columns: tuple[str, ...], name: str) -> np.ndarray:
    try:
        if len(columns) == 1:
            points = np.asarray(item[columns[0]], dtype=np.float64).reshape(-1, 2)
        else:
            points = np.asarray([item[c] for c in columns], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise UserError(f"{name}: landmark columns {', '.join(columns)} are missing or not numeric x,y pairs") from None
    if not np.isfinite(points).all() or points.shape[0] < 2:
        raise UserError(f"{name}: missing landmark coordinates in {', '.join(columns)}")
    return points
