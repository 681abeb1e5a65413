"""`load_data`: which source `--data` names, and the labelled data it gives (evaluate/data.py's one format).

    faces                      the bundled procedural domain (data.py)
    a folder                   one of the layouts of folders.py
    a saved `datasets` folder, a cached Hub dataset id, or a builder name with --data-dir   (hfdata.py)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .data import TASKS, EvalData, _drop_duplicated_test_images, _faces, hold_out_validation
from .folders import load_folder
from .hfdata import is_saved_dataset, load_hf
from .options import DataOptions, check

HUB_ONLY = ("data_config", "data_revision", "data_dir", "data_split")


def load_data(options: DataOptions, task: str) -> EvalData:
    """Every train and test example of `options.source`, validated; see the module docstring."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if options.resolution is None or options.resolution < 16:
        raise UserError(f"evaluation resolution must be at least 16 px, got {options.resolution}")
    check(options)
    if options.source in ("faces", "", None):
        _refuse_hub_options(options, "the bundled faces")
        data = _faces(options, task)  # disjoint index ranges: no duplicates to drop
    else:
        data = _drop_duplicated_test_images(_load_other(options, task))
    return hold_out_validation(data, options.validation) if options.validation else data


def _load_other(options: DataOptions, task: str) -> EvalData:
    path = Path(options.source)
    if path.is_dir() and not is_saved_dataset(path):
        _refuse_hub_options(options, f"a folder ({path})")
        data = load_folder(path, options, task)
    elif path.is_dir():
        data = load_hf(options, task)
    elif path.exists():
        raise UserError(f"--data {path} is a file; give a folder, a saved `datasets` dataset or a Hub id")
    elif options.source.startswith(("/", "./", "../", "~")):
        raise UserError(f"--data {options.source}: folder does not exist")
    else:
        data = load_hf(options, task)  # a Hub id from the local cache, or a builder name with --data-dir
    return data


def _refuse_hub_options(options: DataOptions, what: str) -> None:
    given = [f"--{name.replace('_', '-')}" for name in HUB_ONLY if getattr(options, name)]
    if given:
        raise UserError(f"{', '.join(given)} apply to `datasets` data (a Hub id or a builder name), not to {what}")
