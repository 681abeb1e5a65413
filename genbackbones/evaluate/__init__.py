"""Downstream evaluation: does a backbone beat ImageNet / random init with few labels?

    from genbackbones.evaluate import evaluate
    out = evaluate(["runs/quickstart"], task="segmentation", labels="4,16,64", seeds=3)

Every backbone and baseline runs through the identical protocol, data split, labelled
subsets and seeds (`tasks.py`); data of every format becomes the same tensors
(`data.py`); references and baselines resolve in `backbones.py`; outputs in `report.py`.
Everything the user can get wrong is checked before any training starts, and the
output folder is written atomically at the end, so a bad input leaves nothing behind.
While it runs, each finished cell (backbone x label count x seed) is kept in OUT/cells/
(`cells.py`): Ctrl-C says what was kept and the command that continues, and that
command computes only the cells still missing.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..version import versions

if TYPE_CHECKING:  # torch, timm and friends load on first use: `genbackbones --help` stays fast
    import torch
    from rich.console import Console

    from .backbones import ResolvedBackbone
    from .cells import CellStore
    from .data import EvalData
    from .options import DataOptions

__all__ = ["DataOptions", "evaluate", "run_evaluation", "parse_labels", "resolve_options", "MEAN_SHAPE"]

MEAN_SHAPE = "mean shape"  # the landmark reference row: the training labels' mean shape for every test image


def __getattr__(name: str):
    if name == "DataOptions":
        from .options import DataOptions

        return DataOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_LABELS = "4,16,64"
DEFAULT_RESOLUTION = 64


def evaluate(backbones: list[str], task: str = "segmentation", data: DataOptions | None = None,
             labels: str | list = DEFAULT_LABELS, seeds: int = 3, baselines: list[str] = ("imagenet", "random"),
             overrides: list[str] = (), epochs: float | None = None, protocol: str | None = None,
             out: Path | None = None, run: Path | None = None, device: str = "auto",
             console: Console | None = None, table_console: Console | None = None,
             command: list[str] | None = None) -> Path:
    """Run the evaluation, write the output folder (and RUN/evaluation/model_index.json), print the table.

    Finished cells are kept in OUT/cells/ as they finish; an OUT that holds the cells of
    an interrupted run of this evaluation is continued. `command`: the CLI arguments
    (sys.argv[1:]) that the Ctrl-C message gives back as the command that continues."""
    from rich.console import Console

    from .cells import CellStore
    from .report import merge_into_run, model_index, print_table, write_outputs

    console = console or Console(stderr=True, soft_wrap=True)  # a long path stays one line in a log
    out = _output_dir(out)
    if run is not None:
        _check_run(run)
    cells = CellStore(out, command)
    try:
        results = run_evaluation(backbones, task, data, labels, seeds, baselines, overrides, epochs, protocol,
                                 device, console, run=run, cells=cells)
    except KeyboardInterrupt:
        _print_interrupted(console, cells, out, command)
        raise
    write_outputs(results, out)
    print_table(results, table_console or Console())
    if run is not None:
        path = merge_into_run(run, model_index({**results, "summary": None}))
        console.print(f"model index for the card: {path} (apply it with `genbackbones export {shlex.quote(str(run))}`)")
    console.print(f"[green]results[/] {out}/results.json · {out}/summary.csv · {out}/{task}.png")
    return out


def run_evaluation(backbones: list[str], task: str = "segmentation", data: DataOptions | None = None,
                   labels: str | list = DEFAULT_LABELS, seeds: int = 3, baselines=("imagenet", "random"),
                   overrides: list[str] = (), epochs: float | None = None, protocol: str | None = None,
                   device: str = "auto", console: Console | None = None, run: Path | None = None,
                   cells: CellStore | None = None) -> dict:
    """Compute every number; returns the results dict (see report.py). Writes nothing, except with `cells`:
    then each finished cell is written there, and the cells found there already are not computed again."""
    from rich.console import Console

    console = console or Console(stderr=True, soft_wrap=True)  # a long path stays one line in a log
    started = time.perf_counter()
    plan = _plan(backbones, task, data, labels, seeds, baselines, overrides, epochs, protocol, device, run)
    for u in plan.unavailable:
        console.print(f"[yellow]{u.name}:[/] {u.reason}", highlight=False, soft_wrap=True)
    for note in plan.data.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    runs = _run_all(plan, console, cells)
    return _results(plan, runs, time.perf_counter() - started)


@dataclass
class _Plan:
    """Everything validated and resolved before the first training step."""

    task: str
    settings: object
    models: list[ResolvedBackbone]
    unavailable: list
    options: DataOptions
    data: EvalData
    counts: list[int]
    seeds: list[int]
    subsets: dict[tuple[int, int], list[int]]
    device: torch.device


def _plan(backbones, task, data, labels, seeds, baselines, overrides, epochs, protocol, device, run) -> _Plan:
    """Check every input (UserError on anything wrong), resolve backbones and baselines, load the data."""
    from .backbones import check_input, resolve_backbone, resolve_baselines, unique_names
    from .data import check_disjoint, subset_positions
    from .sources import load_data
    from .tasks import SETTINGS

    if task not in SETTINGS:
        raise UserError(f"unknown task {task!r}; use one of {', '.join(SETTINGS)}")
    if not backbones:
        raise UserError("give at least one BACKBONE (a run folder, an export folder, hf-hub:org/name or a timm name)")
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    settings, options = resolve_options(task, data, overrides, epochs, protocol)
    requested = parse_labels(labels)
    dev = _device(device)

    models = [resolve_backbone(b) for b in backbones]
    if any(m.name == MEAN_SHAPE for m in models):
        raise UserError(f"a backbone is named {MEAN_SHAPE!r}, the name of the landmark reference row; rename it")
    subject = _subject(models, run)
    models.insert(0, models.pop(models.index(subject)))
    extra, unavailable = resolve_baselines([b for b in baselines if b and b != "none"], models)
    models += extra
    unique_names(models)

    if options.resolution is None:
        options.resolution = models[0].input_size or DEFAULT_RESOLUTION
    evaldata = load_data(options, task)
    for model in models:
        check_input(model, options.resolution)
    counts = _label_counts(requested, len(evaldata.train))
    seed_list = list(range(seeds))
    subsets = {(n, s): subset_positions(len(evaldata.train), n, s) for n in counts for s in seed_list}
    check_disjoint(evaldata, subsets)
    return _Plan(task, settings, models, unavailable, options, evaldata, counts, seed_list, subsets, dev)


def resolve_options(task: str, data: DataOptions | None, overrides: list[str] = (), epochs: float | None = None,
                    protocol: str | None = None) -> tuple[object, DataOptions]:
    """The task's settings and the data options that `overrides` make (`data.*` items go to the data, the rest to
    the task): what results.json records as `settings` and `data.options`, without loading anything."""
    from .options import DataOptions, apply_data_overrides
    from .tasks import make_settings

    data_overrides = [o for o in overrides if o.strip().startswith("data.")]
    settings = make_settings(task, [o for o in overrides if o not in data_overrides], epochs, protocol)
    return settings, apply_data_overrides(DataOptions() if data is None else data, data_overrides)


def _results(plan: _Plan, runs: list[dict], seconds: float) -> dict:
    """The results dict that report.py renders and results.json stores."""
    import torch

    from .tasks import metric_specs

    schema, names = plan.data.schema, plan.data.train.names
    backbones = [m.describe() for m in plan.models]
    if plan.task == "landmarks":
        backbones.append({"name": MEAN_SHAPE, "reference": "the mean of the N training labels' landmarks, "
                          "predicted for every test image", "kind": "reference"})
    return {
        "format": "genbackbones-evaluation/1",
        "task": plan.task,
        "protocol": _protocol_name(plan.task, plan.settings),
        "metrics": [asdict(m) for m in metric_specs(plan.task, plan.settings)],
        "labels": plan.counts,
        "seeds": plan.seeds,
        "settings": asdict(plan.settings),
        "data": {**plan.data.description, "options": asdict(plan.options), "resolution": plan.options.resolution,
                 "classes": list(schema.classes), "landmarks": list(schema.landmark_names),
                 "eye_indices": list(schema.eye_indices), "normalisation": schema.normalisation or None,
                 "target": schema.target, "flip_mirror": list(schema.mirror), "flip": _flip_used(plan)},
        "notes": list(plan.data.notes),
        "subsets": {str(n): {str(s): [names[p] for p in plan.subsets[(n, s)]] for s in plan.seeds}
                    for n in plan.counts},
        "backbones": backbones,
        "unavailable": [{"name": u.name, "reason": u.reason} for u in plan.unavailable],
        "runs": runs,
        "timing": {"total_seconds": round(seconds, 1), "device": str(plan.device),
                   "torch_threads": torch.get_num_threads()},
        "versions": versions(),
        "command": sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _flip_used(plan: _Plan) -> bool:
    """Whether fine-tuning flips images (the setting, unless the data cannot be flipped safely)."""
    uses_finetuning = plan.task != "classification" or plan.settings.protocol == "finetune"
    return bool(uses_finetuning and plan.settings.flip and plan.data.schema.mirror_known)


def _reference_runs(plan: _Plan, subset_data: dict) -> list[dict]:
    """Landmarks: the mean shape of each labelled subset, scored like a backbone (same subsets, same test)."""
    from .tasks import mean_shape_nme, metric_specs

    if plan.task != "landmarks":
        return []
    keys = [m.key for m in metric_specs(plan.task, plan.settings)]
    runs = []
    for seed in plan.seeds:
        for n in plan.counts:
            value = mean_shape_nme(subset_data[(n, seed)], plan.data.test, plan.data.schema)
            # the same number in every landmark table: it is the reference for each protocol
            runs.append({"backbone": MEAN_SHAPE, "labels": n, "seed": seed, "metrics": {k: value for k in keys},
                         "seconds": 0.0})
    return runs


def parse_labels(labels: str | list) -> list:
    """'4,16,64,all' -> [4, 16, 64, 'all']."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    out = []
    for item in (str(i).strip() for i in items):
        if item == "all":
            out.append("all")
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        elif item:
            raise UserError(f"--labels: {item!r} is not a positive number or 'all' (e.g. --labels 4,16,64,all)")
    if not out:
        raise UserError("--labels is empty; e.g. --labels 4,16,64")
    return out


def _label_counts(requested: list, pool: int) -> list[int]:
    counts = sorted({pool if n == "all" else n for n in requested})
    if counts[-1] > pool:
        raise UserError(f"--labels {counts[-1]} is more than the {pool} images of the train pool")
    return counts


def _run_all(plan: _Plan, console: Console, cells: CellStore | None = None) -> list[dict]:
    """Every backbone x seed x label count through the same protocol, on the same subsets; with `cells`, each
    finished cell is kept there and the ones kept before are taken from it."""
    from rich.text import Text

    from ..progress import piece_progress
    from .cells import cell_identity, cell_key, weights_sha256
    from .tasks import FeatureCache, run_protocol

    cache = FeatureCache(getattr(plan.settings, "eval_batch_size", 64))
    subset_data = {key: plan.data.train.take(positions) for key, positions in plan.subsets.items()}
    order = [(model, seed, n) for model in plan.models for seed in plan.seeds for n in plan.counts]
    identities, keys = [], []
    if cells is not None:
        weights = {id(m): weights_sha256(m) for m in plan.models}
        identities = [cell_identity(plan, m, weights[id(m)], n, seed) for m, seed, n in order]
        keys = [cell_key(identity) for identity in identities]
        cells.start(keys)
        if cells.kept:
            console.print(Text(f"continuing {cells.folder.parent}: {cells.kept} of {len(order)} evaluations "
                               "finished before are kept"), highlight=False, soft_wrap=True)
    runs = []
    for i, (model, seed, n) in enumerate(order):
        label = f"[{i + 1}/{len(order)}] {model.name} · {n} labels · seed {seed}"
        if cells is not None and keys[i] in cells.done:
            run, when = cells.done[keys[i]], "kept"
        else:
            with piece_progress(console, label) as progress:
                result = run_protocol(plan.task, model, subset_data[(n, seed)], plan.data.test, plan.data.schema,
                                      plan.settings, seed, plan.device, cache, progress)
            run, when = {"backbone": model.name, "labels": n, "seed": seed, **result}, f"{result['seconds']:.0f} s"
            if cells is not None:
                cells.write(keys[i], identities[i], run)
                run = cells.done[keys[i]]  # as read back: a continued evaluation's results.json is the same
        shown = " · ".join(f"{k} {v:.1f}" for k, v in run["metrics"].items() if isinstance(v, float))
        console.print(Text(f"{label} · {shown} · {when}"), highlight=False, soft_wrap=True)
        runs.append(run)
    return runs + _reference_runs(plan, subset_data)


def _print_interrupted(console: Console, cells: CellStore, out: Path, command: list[str] | None) -> None:
    """Ctrl-C: what was kept, and the command that continues (the same one, with --out added when it was the
    default folder)."""
    from ..interrupt import command_line, print_interrupted

    if cells.total is None:
        kept = "no evaluation had finished yet"
    else:
        kept = f"{cells.kept} of {cells.total} evaluation{'s' if cells.total != 1 else ''} kept in {out}"
    if command is None:  # called from Python: the same call continues
        print_interrupted(console, kept, f"evaluate(..., out={str(out)!r})")
        return
    args = list(command)
    if not any(a in ("--out", "-o") or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    print_interrupted(console, kept, command_line(args))


def _subject(models: list[ResolvedBackbone], run: Path | None) -> ResolvedBackbone:
    """The backbone the model index is about: the --run backbone, else the first one."""
    if run is None:
        return models[0]
    export = (Path(run) / "export").resolve()
    for model in models:
        if model.provenance.get("folder") == str(export):
            return model
    raise UserError(f"--run {run}: that run must also be one of the BACKBONE arguments")


def _check_run(run: Path) -> None:
    if not (Path(run) / "recipe.yaml").exists():
        raise UserError(f"--run {run} is not a run folder (no recipe.yaml)")


def _output_dir(out: Path | None) -> Path:
    if out is None:
        out = Path("evaluation") / datetime.now().strftime("%Y%m%d-%H%M%S")
        while out.exists():
            out = out.with_name(out.name + "-1")
        return out
    from .cells import is_resumable_evaluation

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not is_resumable_evaluation(out):
        raise UserError(f"--out {out} already exists and is not empty; choose another folder")
    return out


def _device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    return dev


def _protocol_name(task: str, settings) -> str:
    if task == "segmentation":
        return "fine-tuned, fused stride-4 decoder"
    if task == "landmarks":
        parts = (["heatmap fine-tuned"] if settings.heatmap else []) + (["frozen + ridge"] if settings.ridge else [])
        return " / ".join(parts)
    knn = f"kNN (k={settings.knn_k}, cosine, T={settings.knn_temperature:g}), frozen"
    return {"linear": "linear probe, frozen", "knn": knn, "finetune": "fine-tuned"}[settings.protocol]
