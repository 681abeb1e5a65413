"""Labelled data for downstream evaluation: one in-memory format for every source.

Why one format: every backbone must see *identical* images, labels and splits, so all
sources are turned into `Labelled` tensors at the evaluation resolution once, before
any training, and every bad row is reported (a `UserError` naming the file) before
anything is written.

Sources (`DataOptions.source`, see options.py):

- `faces` (default): the bundled procedural domain. Train pool = the first `pool`
  faces of its "train" index range, test = the first `test_size` of its "test" range;
  the ranges are disjoint by construction. Faces are rendered on demand.
`sources.load_data` picks the source; this module holds the format, the bundled
faces and what every other source shares (geometry, masks, splits):

- a local folder in one of the layouts of `folders.py` (images + masks, landmark CSV or
  per-image `.pts` files, labels CSV, class sub-folders, file-name patterns; optionally
  under `train/` and `test/`). A folder without `train/` + `test/` is split once with a
  fixed seed (`split_seed`, `test_fraction`).
- a `datasets` dataset (`hfdata.py`): a Hub id from the local cache, a `save_to_disk`
  folder, or a builder name with `--data-dir`.

Geometry: images are centre-cropped to a square and resized to the evaluation
resolution (as `genbackbones.data.images.to_square_rgb` does); masks get the same
crop and a nearest-neighbour resize; landmarks (pixel centres at integer coordinates,
as in the bundled domain) get the same crop and scale. Landmarks that fall outside the
crop are counted and reported; more than `max_outside` of them is an error.

Masks: class-index PNG (mode L/I: pixel value = class), palette PNG (mode P: palette
index = class), or colour-coded RGB with a colour -> class map (`class_colors`);
anti-aliased edge colours (blends of two class colours) snap to the nearer class.
Pixel value 255 in an index mask means "ignore".

Horizontal flips (the fine-tuning augmentation) must swap side-specific labels. The
schema says how (`Schema.mirror`) and whether flipping is safe at all (`mirror_known`):
landmarks follow their layout (landmarks.py); mask classes swap by name (`l_eye` <->
`r_eye`), and masks with more than two classes and no names are not flipped (a note
says why), since a class could be one side of the face.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.images import to_square_rgb
from ..data.masks import MaskReader, is_int, parse_class_colors, snap_colours
from ..errors import UserError
from .landmarks import mirror_permutation, resolve_layout
from .metrics import IGNORE_INDEX
from .options import DataOptions, apply_data_overrides

__all__ = ["DataOptions", "apply_data_overrides", "EvalData", "Labelled", "Schema", "MaskReader",
           "subset_positions", "check_disjoint", "mirror_permutation", "parse_class_colors", "snap_colours"]

TASKS = ("segmentation", "landmarks", "classification")
DECODE_CHUNK = 64  # rows decoded at a time: only this many full-size images are ever held at once


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
    """What the labels mean: class names, landmark names, normalising points, the left/right mirror."""

    task: str
    resolution: int
    classes: tuple[str, ...] = ()  # segmentation classes, or the target's classes
    landmark_names: tuple[str, ...] = ()
    eye_indices: tuple[int, int] = (0, 1)  # the two points whose distance normalises NME
    target: str | None = None
    flip_mirror: tuple[int, ...] | None = None  # explicit mirror (a numbered layout's pairs); None: by name
    flip_safe: bool | None = None  # decided by the loader; None: landmarks need named pairs, classes are fine
    normalisation: dict = field(default_factory=dict)  # how eye_indices were chosen (results.json)

    @property
    def mirror(self) -> tuple[int, ...]:
        """Where each class / landmark goes under a horizontal flip (left <-> right swap)."""
        if self.flip_mirror is not None:
            return tuple(self.flip_mirror)
        return mirror_permutation(self.landmark_names if self.task == "landmarks" else self.classes)

    @property
    def mirror_known(self) -> bool:
        """Whether a horizontal flip can be applied with labels swapped correctly."""
        if self.flip_safe is not None:
            return self.flip_safe
        if self.task != "landmarks":
            return True
        return any(i != j for i, j in enumerate(self.mirror))


@dataclass
class EvalData:
    train: Labelled | FacePool  # the pool that labelled subsets are drawn from
    test: Labelled
    schema: Schema
    description: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should know (printed and recorded)


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


def hold_out_validation(data: EvalData, size: int) -> EvalData:
    """`size` images of the train pool (a fixed-seed choice, independent of the evaluation seeds) become the set
    that is scored, and the labelled subsets are drawn from the rest: a validation split for choosing settings
    (a learning rate, a temperature) without ever looking at the test set, which is dropped here."""
    n = len(data.train)
    if not 1 <= size < n:
        raise UserError(f"data.validation={size}: hold out between 1 and {n - 1} images of the {n}-image train pool")
    perm = np.random.default_rng([size, 15485863]).permutation(n)
    held, kept = sorted(int(i) for i in perm[:size]), sorted(int(i) for i in perm[size:])
    pool = data.train
    rest = (FacePool(pool.domain, [pool.indices[i] for i in kept], pool.task, pool.target)
            if isinstance(pool, FacePool) else pool.take(kept))
    was = data.description.get("train_pool")
    description = {**data.description, "train_pool": f"{len(rest)} images of the train pool ({was}) not held out",
                   "test": f"validation: {size} images held out of the train pool (fixed seed); the test set is not "
                           "used", "validation": size}
    return EvalData(rest, pool.take(held), data.schema, description, data.notes)


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
                    target=target if task == "classification" else None)
    if task == "landmarks":
        layout = resolve_layout(LANDMARK_NAMES, options.eye_indices, "faces")
        schema.landmark_names, schema.eye_indices = LANDMARK_NAMES, layout.eye_indices
        schema.flip_mirror, schema.flip_safe, schema.normalisation = layout.mirror, layout.flip, layout.normalisation
    description = {
        "source": "faces", "name": "genbackbones bundled faces (procedural)",
        "summary": f"bundled stylised faces, seed {options.faces_seed}, {options.resolution} px",
        "train_pool": f"train indices {train.indices.start}..{train.indices.stop - 1} ({len(train)} images)",
        "test": f"test indices {test_indices.start}..{test_indices.stop - 1} ({len(test)} images)",
        "split": "disjoint index ranges of the domain (FaceDomain 'train' / 'test')",
        "classes_source": "genbackbones.data.faces.SEG_CLASSES" if task == "segmentation" else None,
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
# Rows: what every non-bundled source produces before images are decoded
# ---------------------------------------------------------------------------


@dataclass
class _Row:
    name: str
    image: object  # a path, or something `_open` understands (PIL image, bytes dict, array); None: fetched later
    mask: object = None
    points: np.ndarray | None = None  # [K, 2] in original pixels
    label: object = None  # raw value, mapped to a class index later
    ref: tuple | None = None  # (dataset, row index) for rows decoded a batch at a time (hfdata.py)


Fetch = Callable[[list[_Row]], list[tuple[object, object]]]  # rows -> (image, mask) objects, decoded on demand


def _paths(rows: list[_Row]) -> list[tuple[object, object]]:
    return [(r.image, r.mask) for r in rows]


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
        elif isinstance(obj, (np.ndarray, list)):  # arrays, or nested lists (a mask column of ClassLabel ids)
            array = np.asarray(obj)
            if array.dtype.kind in "iu" and array.ndim == 2:
                array = array.astype(np.uint8 if array.max(initial=0) < 256 else np.int32)
            image = Image.fromarray(array)
        else:
            raise TypeError(f"unsupported value of type {type(obj).__name__}")
        image.load()
        return image
    except Exception as err:
        raise UserError(f"{name}: cannot read image ({type(err).__name__}: {str(err)[:80]}); "
                        "remove or replace it") from None


def _materialise(rows: list[_Row], task: str, resolution: int, masks: MaskReader | None,
                 label_map: dict | None, fetch: Fetch = _paths) -> Labelled:
    """Decode, validate and resize every row, `DECODE_CHUNK` rows at a time."""
    images, mask_list, point_list, labels = [], [], [], []
    for start in range(0, len(rows), DECODE_CHUNK):
        chunk = rows[start:start + DECODE_CHUNK]
        for row, (image_obj, mask_obj) in zip(chunk, fetch(chunk)):
            if image_obj is None:
                raise UserError(f"{row.name}: no image")
            image = _open(image_obj, row.name)
            width, height = image.size
            images.append(to_square_rgb(image, resolution, row.name).transpose(2, 0, 1))
            if task == "segmentation":
                mask_list.append(_read_mask(row.name, mask_obj, width, height, resolution, masks))
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


def _read_mask(row_name: str, mask_obj, width: int, height: int, resolution: int, reader: MaskReader) -> np.ndarray:
    if mask_obj is None:
        raise UserError(f"{row_name}: no mask")
    mask_name = str(mask_obj) if isinstance(mask_obj, (str, Path)) else f"{row_name} (mask)"
    image = _open(mask_obj, mask_name)
    if image.size != (width, height):
        raise UserError(f"{mask_name}: mask is {image.size[0]}x{image.size[1]} but its image {row_name} is "
                        f"{width}x{height}; masks must have the image's size")
    classes = reader(image, mask_name)
    num = len(reader.classes) if reader.classes else None
    valid = classes[classes != IGNORE_INDEX]
    if num is not None and valid.size and int(valid.max()) >= num:
        raise UserError(f"{mask_name}: class index {int(valid.max())} but only {num} classes are named "
                        f"({', '.join(reader.classes)}); fix the mask or the class names")
    return _square_mask(classes, resolution)


def _label_map(values: Sequence, names: Sequence[str] | None = None) -> tuple[dict, tuple[str, ...]]:
    """Raw label values -> class indices. Given names (ClassLabel) keep their order; else sorted values."""
    if names is not None:
        return {i: i for i in range(len(names))}, tuple(names)
    unique = sorted(set(values), key=lambda v: (0, int(v), "") if is_int(v) else (1, 0, str(v)))
    return {v: i for i, v in enumerate(unique)}, tuple(str(v) for v in unique)


def _mask_classes(reader: MaskReader, parts: list[Labelled]) -> tuple[str, ...]:
    if reader.classes:
        return reader.classes
    observed = [int(p.masks[p.masks != IGNORE_INDEX].max()) for p in parts if p.masks is not None and
                (p.masks != IGNORE_INDEX).any()]
    return tuple(f"class_{i}" for i in range(max(observed, default=0) + 1))


def _point_count(rows: list[_Row]) -> int:
    counts = {r.points.shape[0] for r in rows}
    if len(counts) > 1:
        raise UserError(f"landmark rows have different numbers of points: {sorted(counts)}")
    k = counts.pop() if counts else 0
    if k < 2:
        raise UserError(f"landmarks need at least 2 points per image, got {k}")
    return k


def split_rows(rows: list, options: DataOptions) -> tuple[list, list]:
    """A fixed-seed split into train pool and test set (independent of the evaluation seeds)."""
    if len(rows) < 2:
        raise UserError(f"{options.source}: need at least 2 labelled images to split into train and test, "
                        f"found {len(rows)}")
    perm = np.random.default_rng([options.split_seed, 104729]).permutation(len(rows))
    n_test = min(len(rows) - 1, max(1, round(len(rows) * options.test_fraction)))
    test = set(perm[:n_test].tolist())
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def fixed_split_description(options: DataOptions) -> str:
    return f"fixed-seed split (split_seed={options.split_seed}, test_fraction={options.test_fraction})"


@dataclass
class Found:
    """What a source found besides the rows: names that give the labels meaning, and where they came from."""

    label_names: Sequence[str] | None = None  # classification: ClassLabel names (their order is the index)
    landmark_names: Sequence[str] | None = None
    class_names: Sequence[str] | None = None  # segmentation: from a class file or the dataset's features
    class_colors: str | None = None  # segmentation: a colour-map file found beside the data
    classes_source: str | None = None
    notes: list[str] = field(default_factory=list)


def _assemble(train_rows: list[_Row], test_rows: list[_Row], options: DataOptions, task: str, found: Found,
              description: dict, fetch: Fetch = _paths) -> EvalData:
    """Rows of both splits -> validated tensors, the schema, and the notes the user should read."""
    if not train_rows or not test_rows:
        raise UserError(f"{options.source}: the train and the test split each need at least one labelled image "
                        f"(found {len(train_rows)} and {len(test_rows)})")
    notes = list(found.notes)
    schema = Schema(task, options.resolution, target=options.target if task == "classification" else None)
    reader, label_map = None, None
    if task == "segmentation":
        reader, description["classes_source"] = _mask_reader(options, found)
    elif task == "classification":
        label_map, classes = _label_map([r.label for r in train_rows + test_rows], found.label_names)
        schema.classes = tuple(classes)
    else:
        k = _point_count(train_rows + test_rows)
        names = tuple(found.landmark_names or (f"p{i}" for i in range(k)))
        layout = resolve_layout(names, options.eye_indices, str(options.source))
        _check_normaliser(train_rows + test_rows, layout.eye_indices)
        schema.landmark_names, schema.eye_indices = names, layout.eye_indices
        schema.flip_mirror, schema.flip_safe, schema.normalisation = layout.mirror, layout.flip, layout.normalisation
        notes += layout.notes
    train = _materialise(train_rows, task, options.resolution, reader, label_map, fetch)
    test = _materialise(test_rows, task, options.resolution, reader, label_map, fetch)
    if task == "segmentation":
        schema.classes = _mask_classes(reader, [train, test])
        schema.flip_safe = reader.classes is not None or len(schema.classes) <= 2
        if not schema.flip_safe:
            notes.append(f"{options.source}: horizontal flips are off: the masks have {len(schema.classes)} classes "
                         "and no class names, so a class could be one side of the face; name them (classes.txt "
                         "beside masks/, one name per line, or --classes) to flip with left/right classes swapped")
    if task == "landmarks":
        description["landmarks_outside_crop"] = _outside_crop([train, test], options, notes)
    description = {**description, "train_pool": f"{len(train)} images", "test": f"{len(test)} images"}
    return EvalData(train, test, schema, description, notes)


def _mask_reader(options: DataOptions, found: Found) -> tuple[MaskReader, str]:
    """The class names by precedence: --class-colors, --classes, a class file / the dataset's features."""
    if options.class_colors:
        return MaskReader(options.class_colors, options.classes), "--class-colors"
    if options.classes:
        return MaskReader(None, options.classes), "--classes"
    if found.class_colors:
        return MaskReader(found.class_colors, None), found.classes_source
    if found.class_names:
        return MaskReader(None, found.class_names), found.classes_source
    return MaskReader(None, None), "none found: classes numbered class_0, class_1, ..."


def _check_normaliser(rows: list[_Row], eyes: tuple[int, int]) -> None:
    """Every image needs two distinct normalising points, or its NME is a division by zero."""
    for row in rows:
        if np.linalg.norm(row.points[eyes[0]] - row.points[eyes[1]]) <= 0:
            raise UserError(f"{row.name}: normalising points {eyes[0]} and {eyes[1]} coincide; fix the landmarks "
                            "or choose others with --eye-indices")


def _outside_crop(parts: list[Labelled], options: DataOptions, notes: list[str]) -> dict:
    """Points outside the square crop: counted, reported, and an error past `max_outside` of all points."""
    r = options.resolution
    points = torch.cat([p.landmarks for p in parts])
    names = [n for p in parts for n in p.names]
    outside = ((points < -0.5) | (points > r - 0.5)).any(-1)  # [N, K]
    count, total = int(outside.sum()), outside.numel()
    per_image = outside.sum(1)
    record = {"points": count, "of": total, "images": int((per_image > 0).sum()),
              "worst": names[int(per_image.argmax())] if count else None}
    if count and count > options.max_outside * total:
        raise UserError(f"{options.source}: {count} of {total} landmarks ({100 * count / total:.1f} %) fall outside "
                        f"the centred square crop (worst: {record['worst']}); crop the images around the faces "
                        f"first, or allow more with --set data.max_outside=0.1")
    if count:
        notes.append(f"{options.source}: {count} of {total} landmarks fall outside the centred square crop "
                     f"({record['images']} images, worst {record['worst']}); they are kept")
    return record


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
