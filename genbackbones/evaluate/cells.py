"""Finished evaluation cells on disk, so an interrupted evaluation keeps what finished and continues from it.

A cell is one backbone x label count x seed through the protocol: the unit that
`tasks.run_protocol` computes and results.json lists under `runs`. While an evaluation
runs, each finished cell is written at once, atomically, to

    OUT/cells/<key>.json     {"format", "key", "identity", "run", "command"}

`key` is the sha256 of `identity`: everything that decides the cell's numbers: the
task and its settings, the data (its description, options and schema, and the
cell's labelled images and the test images by content: names, pixels, labels), the backbone (what results.json records about
it, and the sha256 of its weights file, so a re-exported run is evaluated again),
the label count, the seed and the device type. A cell whose key matches is not
computed again: its numbers are the ones an uninterrupted evaluation would have
written, because every cell seeds its own randomness from its seed (tasks.py) and
no cell depends on another.

When the evaluation finishes, the output folder is replaced by its final contents
(results.json, summary.csv, the plot, model_index.json: report.write_outputs) and
`cells/` goes with the folder it replaced. So a folder with `cells/` and no
results.json is an interrupted evaluation (`is_resumable_evaluation`); cells of
another evaluation in it are refused rather than mixed in (`check_foreign`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .. import atomic
from ..errors import UserError
from ..interrupt import command_line

CELLS = "cells"
FORMAT = "genbackbones-evaluation-cell/1"
RESULTS = "results.json"
# what report.write_outputs leaves beside results.json; a kill between its files must not block a re-run
OUTPUT_FILES = ("summary.csv", "model_index.json")


def is_resumable_evaluation(out: str | Path) -> bool:
    """Whether `out` holds an interrupted evaluation (finished cells, no results.json), which the same command
    continues. For the refusal of a non-empty --out: such a folder is the one case that is not refused."""
    out = Path(out)
    if not (out / CELLS).is_dir() or (out / RESULTS).exists():
        return False
    return all(p.name == CELLS or p.name.startswith(".") or p.name in OUTPUT_FILES or p.suffix == ".png"
               for p in out.iterdir())


def weights_sha256(backbone) -> str | None:
    """sha256 of the file(s) a backbone's weights load from; None for a random init (its seed decides it) and for
    timm weights that timm downloads by name (the name and tag decide them)."""
    from .backbones import WEIGHT_FILES

    load = backbone.load or {}
    files: list[Path] = []
    overlay = (load.get("pretrained_cfg_overlay") or {}).get("file")
    name = str(load.get("model_name", ""))
    if overlay:
        files = [Path(overlay)]
    elif name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        files = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _content_sha256(data, positions=None) -> str:
    """The names, pixels and labels of a labelled set (or of its rows at `positions`): a labels file, mask or
    image fixed between an interrupted evaluation and its continuation changes the key, so no stale cell is
    reused. Hashing the small uint8 / int64 tensors of an evaluation costs milliseconds."""
    if positions is not None:
        data = data.take(positions)
    digest = hashlib.sha256("\n".join(map(str, data.names)).encode())
    for tensor in (data.images, data.masks, data.landmarks, data.labels):
        if tensor is not None:
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cell_identity(plan, backbone, weights: str | None, n: int, seed: int) -> dict:
    """What decides one cell's numbers (see the module docstring); its sha256 is the cell's key."""
    return {
        "format": FORMAT, "task": plan.task, "settings": asdict(plan.settings),
        "data": {"description": plan.data.description, "options": asdict(plan.options),
                 "schema": asdict(plan.data.schema),
                 "train": _content_sha256(plan.data.train, plan.subsets[(n, seed)]),
                 "test": _content_sha256(plan.data.test)},
        "backbone": {**backbone.describe(), "weights_sha256": weights},
        "labels": n, "seed": seed, "device": plan.device.type,
    }


def cell_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class CellStore:
    """The finished cells of one output folder: read at the start, one file written per cell as it finishes."""

    def __init__(self, out: str | Path, command: list[str] | None = None):
        self.folder = Path(out) / CELLS
        self.command = command
        self.total: int | None = None  # cells in the plan, once known
        self.done: dict[str, dict] = {}  # key -> finished run, of this plan

    def read(self) -> dict[str, dict]:
        """Every readable cell file in the folder: key -> its record (unreadable ones are computed again)."""
        found = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("format") == FORMAT and record.get("key") == path.stem:
                found[path.stem] = record
        return found

    def start(self, keys: list[str]) -> None:
        """Take the finished cells of this plan (`keys`); refuse a folder holding another evaluation's."""
        found = self.read()
        foreign = [record for key, record in found.items() if key not in set(keys)]
        if foreign:
            command = foreign[0].get("command")
            shown = f" (`{command_line(command)}`)" if command else ""
            raise UserError(f"--out {self.folder.parent} holds {len(foreign)} finished evaluation(s) of another "
                            f"command{shown}; continue that one with its own command, or choose another --out")
        self.total = len(keys)
        self.done = {key: record["run"] for key, record in found.items()}

    def write(self, key: str, identity: dict, run: dict) -> None:
        record = {"format": FORMAT, "key": key, "identity": identity, "run": run, "command": self.command}
        atomic.write_text(self.folder / f"{key}.json", json.dumps(record, indent=1, default=str) + "\n")
        self.done[key] = json.loads(json.dumps(run, default=str))  # as a re-run will read it back

    @property
    def kept(self) -> int:
        return len(self.done)
