"""Label efficiency on the bundled faces: a LayerMatch backbone vs random init (and ImageNet when cached).

Segmentation, landmarks and attribute classification at 4/16/64 labels, 3 seeds, every
backbone through the identical protocol (`genbackbones.evaluate`). Prints one table per
metric and writes, under the output folder (default benchmarks/results/label_efficiency/):

    <task>/results.json, summary.csv, <task>.png, model_index.json   (one folder per task)
    README.md                                                          (all tables + provenance)

Make the run first, then point the benchmark at it:

    # today: the quickstart recipe (hrnet_w18_small, 200 steps x 16 images) with its randomly
    # initialised generator `random:small64` -- exercises the pipeline, features are not meaningful
    genbackbones pretrain -o runs/quickstart-bench
    # once the trained bundled generator ships (`generator.source: bundled`):
    genbackbones pretrain --set generator.source=bundled -o runs/layermatch-faces
    python benchmarks/label_efficiency.py runs/layermatch-faces

`--tiny` runs a few steps at 2 label counts and 2 seeds (minutes): a smoke test of the
benchmark itself, not a measurement. ImageNet weights are used only if they are in the
Hugging Face cache; otherwise the tables say "not available" (set HF_HUB_OFFLINE=1 to skip
the network check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see genbackbones/cli/__init__.py

from rich.console import Console  # noqa: E402

from genbackbones.errors import UserError  # noqa: E402
from genbackbones.evaluate import run_evaluation  # noqa: E402
from genbackbones.evaluate.report import markdown_tables, print_table, summarise, write_outputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ("segmentation", "landmarks", "classification")
TINY = ["min_steps=3", "max_steps=3", "data.pool=64", "data.test_size=32"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console, err = Console(), Console(stderr=True)
    tiny = args.tiny
    labels = args.labels or ("4,16" if tiny else "4,16,64")
    seeds = args.seeds or (2 if tiny else 3)
    out = Path(args.out or REPO / "benchmarks" / "results" / ("label_efficiency_tiny" if tiny else "label_efficiency"))
    sections, devices, started = [], set(), time.perf_counter()
    try:
        for task in args.tasks.split(","):
            overrides = (TINY if tiny else []) + list(args.set)
            results = run_evaluation([str(args.run)], task, labels=labels, seeds=seeds,
                                     baselines=args.baselines.split(","), overrides=overrides, device=args.device,
                                     console=err)
            write_outputs(results, out / task)
            devices.add(results["timing"]["device"])
            print_table({**results, "summary": summarise(results)}, console)
            sections.append(markdown_tables({**results, "summary": summarise(results)}))
    except UserError as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        return 2
    minutes = (time.perf_counter() - started) / 60
    (out / "README.md").write_text(readme(args, sections, minutes, labels, seeds, ", ".join(sorted(devices))))
    console.print(f"[green]written[/] {out}/README.md and one folder per task ({minutes:.1f} min)")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="LayerMatch run folder (from `genbackbones pretrain`)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--labels", default=None, help="default 4,16,64 (tiny: 4,16)")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (tiny: 2)")
    parser.add_argument("--baselines", default="imagenet,random")
    parser.add_argument("--set", action="append", default=[], help="protocol/data setting, as in `evaluate --set`")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="a few steps: proves the benchmark runs")
    return parser.parse_args(argv)


def readme(args, sections: list[str], minutes: float, labels: str, seeds: int, device: str) -> str:
    config = json.loads((args.run / "export" / "config.json").read_text())
    prov = config.get("genbackbones", {})
    gen = prov.get("generator", {})
    budget = f"{prov.get('steps')} steps x {prov.get('images_per_step')} generated images"
    warning = ("\n> **The generator was randomly initialised (untrained)**: these numbers exercise the pipeline; "
               "they say nothing about LayerMatch.\n" if gen.get("trained") is False else "")
    tiny = "\n> `--tiny`: a few fine-tuning steps per run. A smoke test of the benchmark, not a measurement.\n" \
        if args.tiny else ""
    return "\n".join([
        "# Label efficiency on the bundled faces", "",
        f"Backbone: `{args.run}` — {config.get('architecture')} pretrained with {prov.get('method')} for {budget}, "
        f"generator: {gen.get('description') or gen.get('source')}.", warning, tiny,
        f"Labels {labels}, {seeds} seeds; baselines: {args.baselines}; extra settings: {args.set or 'none'}.",
        f"Wall time {minutes:.1f} min on {platform.machine()}, device {device}; "
        f"command: `{' '.join([Path(sys.executable).name, *sys.argv])}`.", "",
        "Every number is mean ± sample std over seeds; per-seed values, settings and data splits are in each "
        "task's results.json.", "", *sections])


if __name__ == "__main__":
    sys.exit(main())
