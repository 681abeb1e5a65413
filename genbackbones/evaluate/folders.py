"""Local folders of labelled images: the layouts the evaluator reads, and the error that lists them.

Public face sets come in a handful of layouts; each is recognised by its folder and file
names, and a folder that matches none gets one error line listing them all (`LAYOUTS`).
A folder with `train/` and `test/` sub-folders, each in one of these layouts, keeps that
split; any other folder is split once with a fixed seed.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from ..data.images import IMAGE_SUFFIXES
from ..data.masks import MASK_SUFFIXES, read_class_names
from ..errors import UserError
from .data import EvalData, Found, _assemble, _Row, fixed_split_description, split_rows
from .options import DataOptions

IMAGE_DIRS = ("images", "imgs", "img", "image", "JPEGImages")  # the evaluator's, LaPa/Helen, Pascal VOC
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "SegmentationClass", "segmentations", "gt")
LANDMARK_CSVS = ("landmarks.csv", "keypoints.csv", "points.csv")
POINT_DIRS = ("landmarks", "keypoints", "points", "annotations")  # per-image .pts / .txt files
LABEL_FILES = ("labels.csv", "metadata.csv", "metadata.jsonl")  # the evaluator's; `datasets` imagefolder's
NAME_COLUMNS = ("name", "file", "filename", "file_name", "image", "image_name", "image_id", "path")

LAYOUTS = {
    "segmentation": (
        "images/ + masks/ (one mask per image, same file stem; index, palette or colour PNG)",
        "JPEGImages/ + SegmentationClass/ (Pascal VOC; images without a mask are skipped)",
        "imgs/, img/ or image/ + labels/, label/, annotations/, segmentations/ or gt/ (LaPa, Helen)",
        "*.png beside masks/",
    ),
    "landmarks": (
        "images/ + landmarks.csv, keypoints.csv or points.csv (a name column, then x,y column pairs or "
        "numbered columns 0..2K-1)",
        "images/ + <stem>.pts per image (iBUG 300-W), beside the images or in landmarks/ or annotations/",
        "images/ + landmarks/<stem>.txt per image (LaPa: a count line, then one x y line per point)",
    ),
    "classification": (
        "<class>/<image> sub-folders",
        "images/ (or *.png) + labels.csv, metadata.csv or metadata.jsonl (a file name column + label columns)",
        "*.png + --label-pattern (labels from file names)",
    ),
}
ANY_LAYOUT = ("train/ + test/ (each laid out as above: that split is kept)", "a `datasets` save_to_disk folder")


def layout_error(folder: Path, task: str, problem: str) -> UserError:
    """One line: what is wrong, then every layout the evaluator reads for the task."""
    layouts = " | ".join(LAYOUTS[task] + ANY_LAYOUT)
    return UserError(f"{folder}: {problem}; accepted layouts for {task}: {layouts} (docs/evaluate.md, Layouts)")


def load_folder(root: Path, options: DataOptions, task: str) -> EvalData:
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, found, how = _folder_rows(root / "train", root, options, task)
        test, _, _ = _folder_rows(root / "test", root, options, task)
        for prefix, rows in (("train", train), ("test", test)):  # names stay unique across the two folders
            for row in rows:
                row.name = f"{prefix}/{row.name}"
        split = "the folder's train/ and test/ sub-folders"
    else:
        rows, found, how = _folder_rows(root, root, options, task)
        train, test = split_rows(rows, options)
        split = fixed_split_description(options)
    description = {"source": str(root), "name": f"{root.resolve().name} (local folder)",
                   "summary": f"folder {root} ({how})", "split": split}
    return _assemble(train, test, options, task, found, description)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _first_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _first_file(folders: list[Path], names: tuple[str, ...]) -> Path | None:
    return next((f / n for f in folders for n in names if (f / n).is_file()), None)


def _folder_rows(folder: Path, root: Path, options: DataOptions, task: str) -> tuple[list[_Row], Found, str]:
    """(rows, what was found, how the labels were found) for one split folder."""
    images_dir = _first_dir(folder, IMAGE_DIRS)
    label_file = _first_file([folder], LABEL_FILES) if task == "classification" else None
    class_dirs = task == "classification" and images_dir is None and not options.label_pattern \
        and label_file is None and not _image_files(folder, recursive=False)
    if class_dirs:
        base, files = folder, _image_files(folder, recursive=True)
    else:
        base = images_dir or folder
        files = _image_files(base, recursive=images_dir is not None)
    if not files:
        raise layout_error(folder, task, "no images found")
    rows = [_Row(name=str(f.relative_to(base)), image=f) for f in files]
    found = Found()
    if task == "segmentation":
        rows, how = _attach_masks(rows, folder, base, found)
        found.class_names, found.class_colors, found.classes_source = read_class_names(
            [folder, root, base] + [d for d in (_first_dir(folder, MASK_DIRS),) if d])
    elif task == "landmarks":
        how = _attach_landmarks(rows, folder, base, options, found)
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
    elif label_file is not None:
        _attach_table_labels(rows, label_file, options)
        how = f"images + {label_file.name}"
    else:
        raise layout_error(folder, task, "no labels.csv, metadata.csv/.jsonl, class sub-folders or --label-pattern")
    return rows, found, how


def _attach_masks(rows: list[_Row], folder: Path, base: Path, found: Found) -> tuple[list[_Row], str]:
    mask_dir = _first_dir(folder, tuple(n for n in MASK_DIRS if folder / n != base))
    if mask_dir is None:
        raise layout_error(folder, "segmentation", f"images in {base.name}/ but no mask folder")
    voc = mask_dir.name == "SegmentationClass"  # VOC: every image in JPEGImages/, masks for a subset
    kept = []
    for row in rows:
        stem = Path(row.name).with_suffix("")
        row.mask = next((c for c in (mask_dir / f"{stem}{s}" for s in MASK_SUFFIXES) if c.is_file()), None)
        if row.mask is not None:
            kept.append(row)
        elif not voc:
            raise UserError(f"{base / row.name}: no mask (looked for {mask_dir / stem}.png)")
    if voc:
        if not kept:
            raise layout_error(folder, "segmentation", f"no image of {base.name}/ has a mask in {mask_dir.name}/")
        if len(kept) < len(rows):
            found.notes.append(f"{folder}: {len(rows) - len(kept)} images of {base.name}/ have no mask in "
                               f"{mask_dir.name}/ and are not used (Pascal VOC layout)")
    return kept, f"{base.name}/ + {mask_dir.name}/"


# ---------------------------------------------------------------------------
# Landmarks: a CSV, or one point file per image
# ---------------------------------------------------------------------------


def _attach_landmarks(rows: list[_Row], folder: Path, base: Path, options: DataOptions, found: Found) -> str:
    table = _first_file([folder, base], LANDMARK_CSVS)
    if table is not None:
        found.landmark_names = _attach_csv_landmarks(rows, table, options)
        return f"{base.name}/ + {table.name}"
    point_dirs = [base, folder] + [folder / d for d in POINT_DIRS if (folder / d).is_dir()]
    if any(_point_file(point_dirs, row) for row in rows[:1]):
        for row in rows:
            path = _point_file(point_dirs, row)
            if path is None:
                raise UserError(f"{base / row.name}: no point file (looked for {Path(row.name).stem}.pts / .txt "
                                f"in {', '.join(str(d) for d in point_dirs)})")
            row.points = read_point_file(path)
        return f"{base.name}/ + one point file per image"
    raise layout_error(folder, "landmarks", "no landmarks.csv / keypoints.csv / points.csv and no per-image "
                       ".pts or .txt point files")


def _point_file(folders: list[Path], row: _Row) -> Path | None:
    stem = Path(row.name).with_suffix("")
    for folder in folders:
        for suffix in (".pts", ".txt"):
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def read_point_file(path: Path) -> np.ndarray:
    """[K, 2] from an iBUG `.pts` file (`version`, `n_points: K`, `{`, K `x y` lines, `}`) or a LaPa `.txt`
    (a count line, then K `x y` lines)."""
    text = path.read_text(errors="replace")
    body = text[text.index("{") + 1:text.rindex("}")] if "{" in text and "}" in text else text
    lines = [ln.split() for ln in body.splitlines() if ln.strip()]
    declared = re.search(r"n_points\s*:\s*(\d+)", text)
    count = int(declared.group(1)) if declared else None
    if lines and len(lines[0]) == 1 and "{" not in text and lines[0][0].isdigit():  # LaPa: a count line first
        count, lines = int(lines[0][0]), lines[1:]
    try:
        points = np.array([[float(v) for v in ln[:2]] for ln in lines], dtype=np.float64).reshape(-1, 2)
    except ValueError:
        points = np.zeros((0, 2))
    if not len(points) or not np.isfinite(points).all() or any(len(ln) < 2 for ln in lines) or \
            (count is not None and count != len(points)):
        raise UserError(f"{path}: not a point file (expected n_points: K and K 'x y' lines, or a count line and "
                        "K 'x y' lines)")
    return points


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if path.suffix == ".jsonl":
        records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        header = list(dict.fromkeys(k for r in records for k in r))
        return header, [[str(r.get(h, "")) for h in header] for r in records]
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
    """A name column, then x,y column pairs (or the pairs named by --landmark-columns)."""
    header, body = _read_csv(path)
    name_col = _name_column(header)
    if options.landmark_columns:
        missing = [c for c in options.landmark_columns if c not in header]
        if missing:
            raise UserError(f"{path}: no column(s) {', '.join(missing)}; columns: {', '.join(header)}")
        columns = [header.index(c) for c in options.landmark_columns]
    else:
        columns = _interleave_xy(header, [i for i in range(len(header)) if i != name_col])
    if len(columns) < 4 or len(columns) % 2:
        raise UserError(f"{path}: landmarks need x,y column pairs for at least 2 points, got {len(columns)} columns")
    names = pair_names([header[c] for c in columns])
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


def _interleave_xy(header: list[str], columns: list[int]) -> list[int]:
    """Columns named x0..xK-1 then y0..yK-1 (x_1, X1 ...) -> x0,y0,x1,y1,...; any other order is kept as is."""
    parsed = [re.fullmatch(r"([xXyY])[_\-]?(\d+)", header[c].strip()) for c in columns]
    if not parsed or not all(parsed):
        return columns
    xs = {int(m.group(2)): c for m, c in zip(parsed, columns) if m.group(1) in "xX"}
    ys = {int(m.group(2)): c for m, c in zip(parsed, columns) if m.group(1) in "yY"}
    if sorted(xs) != sorted(ys) or 2 * len(xs) != len(columns):
        return columns
    return [c for i in sorted(xs) for c in (xs[i], ys[i])]


def pair_names(columns: list[str]) -> tuple[str, ...]:
    """left_eye_x,left_eye_y,... -> left_eye,...; unnamed or numbered pairs -> p0, p1, ..."""
    names = []
    for i in range(0, len(columns), 2):
        x, y = columns[i], columns[i + 1]
        stem_x, stem_y = re.sub(r"[_\-\s]?x$", "", x, flags=re.I), re.sub(r"[_\-\s]?y$", "", y, flags=re.I)
        names.append(stem_x if stem_x == stem_y and stem_x else f"p{i // 2}")
    return tuple(names)


def _attach_table_labels(rows: list[_Row], path: Path, options: DataOptions) -> None:
    header, body = _read_csv(path)
    name_col = _name_column(header)
    label_columns = [h for i, h in enumerate(header) if i != name_col]
    if not options.target and len(label_columns) > 1:  # which one is the label is the user's choice, not ours
        raise UserError(f"{path} has {len(label_columns)} label columns ({', '.join(label_columns)}); choose one "
                        f"with --target, e.g. --target {label_columns[0]}")
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
