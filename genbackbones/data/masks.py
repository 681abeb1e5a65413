"""Segmentation masks as files: class-index, palette or colour-coded images, and the class names beside them.

Shared by the evaluator (labelled data in many layouts) and the data factory (`annotate` reads the masks a user
drew), so it lives with the data, below both.

- class-index PNG (mode L/I: pixel value = class), palette PNG (mode P: palette index = class), or colour-coded
  RGB with a colour -> class map; anti-aliased edge colours (blends of two class colours) snap to the nearer class;
- class names from `classes.txt` / `classes.json` / `id2label.json` next to the masks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
COLOUR_TOLERANCE = 30.0  # RGB distance within which a mask colour belongs to a class colour or a blend of two
MIN_UNMAPPED_PIXELS = 16  # an unmapped colour covering at least this many pixels is an error, not anti-aliasing


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


CLASS_FILES = ("classes.txt", "classes.json", "id2label.json")


def read_class_names(folders: Sequence[Path]) -> tuple[tuple[str, ...] | None, str | None, str | None]:
    """(class names, colour-map file, where they came from) from the first class file in `folders`.

    `classes.txt`: one name per line in class-index order (or `index name` / `index: name` lines), or one
    comma-separated line (as `--classes` takes them);
    `classes.json` / `id2label.json`: a list of names, {index: name} (the Hub's id2label), {name: index},
    or {name: colour} / [{name, color}] (a colour map for colour-coded masks).
    """
    for folder in folders:
        for name in CLASS_FILES:
            path = Path(folder) / name
            if path.is_file():
                names, colours = _parse_class_file(path)
                return names, colours, str(path)
    return None, None, None


def _parse_class_file(path: Path) -> tuple[tuple[str, ...] | None, str | None]:
    if path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if len(lines) == 1 and "," in lines[0]:  # one comma-separated line: the form `--classes` takes
            return _check_names(tuple(v.strip() for v in lines[0].split(",") if v.strip()), path), None
        numbered = [re.fullmatch(r"(\d+)\s*[:,=\s]\s*(.+)", ln) for ln in lines]
        if lines and all(numbered):
            return _from_index_map({int(m.group(1)): m.group(2).strip() for m in numbered}, path), None
        return _check_names(tuple(lines), path), None
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return _check_names(tuple(raw), path), None
    if isinstance(raw, list) or (isinstance(raw, dict) and raw and all(_is_colour(v) for v in raw.values())):
        return None, str(path)  # a colour map: read by parse_class_colors
    if isinstance(raw, dict) and raw and all(is_int(k) for k in raw):
        return _from_index_map({int(k): str(v) for k, v in raw.items()}, path), None
    if isinstance(raw, dict) and raw and all(isinstance(v, int) for v in raw.values()):
        return _from_index_map({v: str(k) for k, v in raw.items()}, path), None
    raise UserError(f"{path}: expected a list of class names, {{index: name}}, {{name: index}} or {{name: colour}}")


def _is_colour(value) -> bool:
    return (isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()) is not None) or \
        (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value))


def _from_index_map(mapping: dict[int, str], path: Path) -> tuple[str, ...]:
    if min(mapping) < 0:
        raise UserError(f"{path}: class indices must be 0 or more")
    return _check_names(tuple(mapping.get(i, f"class_{i}") for i in range(max(mapping) + 1)), path)


def _check_names(names: tuple[str, ...], path: Path) -> tuple[str, ...]:
    if not names:
        raise UserError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: a class name appears twice")
    return names


def is_int(value) -> bool:
    """Whether a value (a JSON key, a CSV cell) reads as an integer."""
    try:
        int(str(value))
        return True
    except ValueError:
        return False
