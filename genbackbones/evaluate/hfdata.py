"""`datasets` datasets as evaluation data: a Hub id from the local cache, a saved dataset, or a builder.

`--data` is one of:

- a folder written by `save_to_disk` (a Dataset or a DatasetDict);
- a Hub dataset id (`org/name`), loaded with `datasets.load_dataset(id, name=--data-config,
  revision=--data-revision, data_dir=--data-dir)`: from the local `datasets` cache when
  offline (HF_DATASETS_OFFLINE=1), which `datasets` itself does not check against the
  requested revision, so a requested commit id is compared with the cached one here;
- a builder name (`imagefolder`, `csv`, ...) only together with `--data-dir`: alone it would
  load every file under the current folder.

Splits: `--data-split TRAIN[,TEST]`; by default `train` (else the first split) is the
labelled pool and `test` (else `validation`) the test set; a single split is divided once
with a fixed seed. The label and landmark columns are read whole (they are small); images
and masks are decoded `DECODE_CHUNK` rows at a time while they are resized, so a large
dataset is never held in memory at full size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.masks import CLASS_FILES, read_class_names
from ..errors import UserError
from .data import EvalData, Found, _assemble, _Row, fixed_split_description, split_rows
from .options import DataOptions

COMMIT = re.compile(r"[0-9a-f]{40}")


def builder_names() -> set[str]:
    """`datasets`' packaged builders (imagefolder, csv, parquet, ...): names that are not datasets."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

        return set(_PACKAGED_DATASETS_MODULES)
    except ImportError:  # a private table: fall back to the common ones
        return {"imagefolder", "audiofolder", "videofolder", "csv", "json", "parquet", "text", "arrow", "pandas",
                "webdataset"}


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
        or (path / "state.json").exists()


def load_hf(options: DataOptions, task: str) -> EvalData:
    loaded, hub = _open(options)
    train_ds, test_ds, train_split, test_split = _choose_splits(loaded, options)
    found = _columns(train_ds, options, task)
    if task == "segmentation":
        found.class_names, found.class_colors, found.classes_source = _mask_class_names(train_ds, options, hub)
    source = options.source
    train_rows = _rows(train_ds, options, task, _prefix(source, train_split))
    if test_ds is not None:
        test_rows = _rows(test_ds, options, task, _prefix(source, test_split))
        split = f"the dataset's {train_split!r} and {test_split!r} splits"
    else:
        train_rows, test_rows = split_rows(train_rows, options)
        split = fixed_split_description(options)
    if hub is not None:
        hub.update({"train_split": train_split, "test_split": test_split or train_split,
                    "test_held_out": None if test_ds is not None else split})
    name = source if hub is not None else (f"{Path(source).name} (saved `datasets` dataset)" if Path(source).is_dir()
                                           else f"{source} {options.data_dir} (local files)")
    revision = f", revision {hub['revision'][:12]}" if hub and hub.get("revision") else ""
    description = {"source": source, "name": name, "summary": f"`datasets` dataset {source}{revision}",
                   "split": split, "hub": hub}
    fetch = _Fetch(options.image_column, options.mask_column if task == "segmentation" else None)
    return _assemble(train_rows, test_rows, options, task, found, description, fetch)


def _prefix(source: str, split: str | None) -> str:
    return f"{source}[{split}]" if split and not split.startswith("(") else source


# ---------------------------------------------------------------------------
# Opening: saved folder, Hub id (cache), builder + data_dir
# ---------------------------------------------------------------------------


def _open(options: DataOptions):
    """(Dataset or DatasetDict, Hub facts or None); UserError with the first line of any loading error."""
    import datasets

    source = options.source
    if Path(source).is_dir():
        given = [f"--{n.replace('_', '-')}" for n in ("data_config", "data_revision", "data_dir")
                 if getattr(options, n)]
        if given:
            raise UserError(f"{', '.join(given)} apply to a Hub dataset id or a builder name, not to the saved "
                            f"dataset {source}")
        return _load(lambda: datasets.load_from_disk(source), source), None
    if source in builder_names():
        if not options.data_dir:
            raise UserError(f"--data {source} is a `datasets` builder, not a dataset: alone it reads every file "
                            f"under the current folder; give your folder (--data DIR) or --data {source} "
                            "--data-dir DIR")
        if options.data_revision:
            raise UserError(f"--data-revision applies to a Hub dataset id, not to the builder {source}")
        if not Path(options.data_dir).is_dir():
            raise UserError(f"--data-dir {options.data_dir}: folder does not exist")
        return _load(lambda: datasets.load_dataset(source, name=options.data_config, data_dir=options.data_dir),
                     source), None
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", source):
        raise UserError(f"--data {source!r} is neither a folder nor a Hub dataset id (org/name)")
    loaded = _load(lambda: datasets.load_dataset(source, name=options.data_config, revision=options.data_revision,
                                                 data_dir=options.data_dir), source)
    return loaded, _hub_facts(loaded, options)


def _load(load, source: str):
    try:
        return load()
    except UserError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        hint = ("give a folder, a dataset saved with save_to_disk, or a Hub id present in the `datasets` cache "
                "(load it once online, or copy the cache and set HF_DATASETS_OFFLINE=1)")
        if isinstance(err, ValueError) and "config" in first.lower():
            hint = "choose one with --data-config"
        raise UserError(f"cannot load dataset {source!r} ({type(err).__name__}: {first}); {hint}") from None


def _hub_facts(loaded, options: DataOptions) -> dict:
    """The Hub id, the commit the cached files came from (the cache folder's name), the config."""
    first = next(iter(loaded.values())) if hasattr(loaded, "values") else loaded
    files = [Path(f["filename"]) for f in first.cache_files]
    cached = next((f.parent.name for f in files if COMMIT.fullmatch(f.parent.name)), None)
    wanted = options.data_revision
    if wanted and COMMIT.fullmatch(wanted) and cached and cached != wanted:
        raise UserError(f"--data-revision {wanted}: the `datasets` cache holds revision {cached} of "
                        f"{options.source}; load that revision online once, or ask for {cached}")
    return {"id": options.source, "revision": cached or wanted, "requested_revision": wanted,
            "config": options.data_config or first.info.config_name}


def _choose_splits(loaded, options: DataOptions):
    """(train Dataset, test Dataset or None, train split name, test split name or None)."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        if options.data_split:
            raise UserError(f"{options.source} has a single split; drop --data-split")
        return loaded, None, "(single split)", None
    available = list(loaded)
    if options.data_split:
        missing = [s for s in options.data_split if s not in loaded]
        if missing:
            raise UserError(f"--data-split: {options.source} has no split {missing[0]!r}; splits: "
                            f"{', '.join(available)}")
        train = options.data_split[0]
        test = options.data_split[1] if len(options.data_split) > 1 else None
    else:
        test = next((s for s in ("test", "validation") if s in loaded), None)
        train = "train" if "train" in loaded else next((s for s in available if s != test), None)
        if train is None:  # only a test split
            train, test = test, None
    if test == train:
        raise UserError(f"--data-split {train},{test}: the train and test splits must differ")
    return loaded[train], (loaded[test] if test else None), train, test


# ---------------------------------------------------------------------------
# Columns, class names and rows
# ---------------------------------------------------------------------------


def _columns(ds, options: DataOptions, task: str) -> Found:
    """Check the needed columns exist; what their features say (ClassLabel names, landmark names)."""
    import datasets

    from .folders import pair_names

    columns, source = ds.column_names, options.source

    def need(col: str, option: str) -> None:
        if col not in columns:
            raise UserError(f"dataset {source!r} has no column {col!r} ({option}); columns: {', '.join(columns)}")

    need(options.image_column, "--image-column")
    found = Found()
    if task == "segmentation":
        need(options.mask_column, "--mask-column")
    elif task == "landmarks":
        cols = options.landmark_columns or ("landmarks",)
        for c in cols:
            need(c, "--landmark-columns")
        options.landmark_columns = tuple(cols)
        found.landmark_names = pair_names(list(cols)) if len(cols) > 1 else None
    else:
        if options.target is None:
            class_labels = [c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
            options.target = "label" if "label" in columns else (class_labels[0] if class_labels else None)
        if options.target is None:
            raise UserError(f"dataset {source!r}: choose the label column with --target "
                            f"(columns: {', '.join(columns)})")
        need(options.target, "--target / --label-column")
        feature = ds.features[options.target]
        if isinstance(feature, datasets.ClassLabel):
            found.label_names = list(feature.names)
    return found


def _mask_class_names(ds, options: DataOptions, hub: dict | None):
    """Class names of the masks: a ClassLabel inside the mask feature, else a class file beside the
    saved dataset or in the Hub snapshot cache (`id2label.json`, as Hub segmentation datasets ship)."""
    import datasets

    feature = ds.features[options.mask_column]
    while not isinstance(feature, datasets.ClassLabel) and hasattr(feature, "feature"):
        feature = feature.feature
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names), None, f"the {options.mask_column!r} column's ClassLabel"
    if Path(options.source).is_dir():
        return read_class_names([Path(options.source)])
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache

        for name in CLASS_FILES:
            path = try_to_load_from_cache(hub["id"], name, repo_type="dataset", revision=hub.get("revision"))
            if isinstance(path, str):
                return read_class_names([Path(path).parent])
    return None, None, None


def _rows(ds, options: DataOptions, task: str, prefix: str) -> list[_Row]:
    """One row per example with its label or points; images stay in the dataset until `_Fetch`."""
    n = len(ds)
    rows = [_Row(name=f"{prefix}[{i}]", image=None, ref=(ds, i)) for i in range(n)]
    if task == "landmarks":
        cols = options.landmark_columns
        values = [list(ds[c]) for c in cols]
        for i, row in enumerate(rows):
            row.points = _points([v[i] for v in values], cols, row.name)
    elif task == "classification":
        for row, value in zip(rows, ds[options.target]):
            if value is None or value == "":
                raise UserError(f"{row.name}: no label in column {options.target!r}")
            row.label = value
    return rows


def _points(values: Sequence, columns: Sequence[str], name: str) -> np.ndarray:
    try:
        if len(columns) == 1:
            points = np.asarray(values[0], dtype=np.float64).reshape(-1, 2)
        else:
            points = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise UserError(f"{name}: landmark columns {', '.join(columns)} are missing or not numeric x,y pairs") from None
    if not np.isfinite(points).all() or points.shape[0] < 2:
        raise UserError(f"{name}: missing landmark coordinates in {', '.join(columns)}")
    return points


class _Fetch:
    """Decodes the image (and mask) of a chunk of rows with one batched read per dataset."""

    def __init__(self, image_column: str, mask_column: str | None):
        self.columns = [image_column] + ([mask_column] if mask_column else [])

    def __call__(self, chunk: list[_Row]) -> list[tuple[object, object]]:
        out: list[tuple[object, object]] = [(None, None)] * len(chunk)
        groups: dict[int, tuple[object, list[tuple[int, int]]]] = {}
        for pos, row in enumerate(chunk):
            ds, index = row.ref
            groups.setdefault(id(ds), (ds, []))[1].append((pos, index))
        for ds, items in groups.values():
            batch = ds.select_columns(self.columns)[[index for _, index in items]]
            masks = batch[self.columns[1]] if len(self.columns) > 1 else [None] * len(items)
            for (pos, _), image, mask in zip(items, batch[self.columns[0]], masks):
                out[pos] = (image, mask)
        return out
