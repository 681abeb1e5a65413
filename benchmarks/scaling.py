"""Does the lead hold as compute grows? LayerMatch vs SimCLR (BYOL optional) across budgets of images seen.

docs/ssl.md compares the methods at one budget, 16,000 images seen per run. Self-supervised methods keep
improving long after that, so this trains HRNet-W18-small at several budgets (default 16k, 64k, 256k images
seen) through benchmarks/vs_ssl.py's machinery (its recipes, pretraining, evaluation tables and merging) and
draws the evaluator's metrics against images seen. Each domain's runs are evaluated on that domain's tasks, as
in vs_ssl's tables: bundled faces (pretrained on them or their generator): segmentation, landmarks, hair
colour (linear probe, fine-tuning); UTKFace (pretrained on its photos or its generator): gender (linear probe,
fine-tuning); 3 evaluation seeds, random init as the floor.

Fair settings, chosen at the smallest budget on a validation split, never the test set (`select`):
`data.validation` holds images out of the evaluator's labelled pool and scores them (genbackbones/evaluate/
data.py, hold_out_validation); the test set is not used. A coordinate search per domain and method, each stage
keeping the best so far (the recipe's value first, so it wins ties):

    learning rate   x 0.5, 1, 2 of the recipe's                  (every method; 3 runs)
    batch size      16 vs 64 at equal images seen, best lr kept   (SimCLR; 1 more run)
    temperature     0.5 (recipe) vs 0.1, best lr and batch kept   (SimCLR; 1 more run)

8 runs per domain instead of the full grid's 3 + 12: the lr matters most for every method and is searched
first; the batch and temperature are SimCLR's two knobs that the literature finds it sensitive to. The criterion:
on each validation task (the domain's dense and global tasks, VALIDATION_TASKS), the headline metric's mean
over seeds ranks the stage's candidates; the lowest mean rank wins. Ranks make tasks with different units
(mIoU, NME, accuracy) count equally. The chosen settings are kept for the larger budgets.

Each budget is its own run: the loop's learning rate follows warm-up + cosine to the run's last step
(engine/loop.py cosine_schedule), so a 16k run extended to 64k (`pretrain --resume --steps`) is not the
64k run. The smallest budget's run of the chosen settings is the selection's run (the same recipe and
overrides). Every run resumes bit-identically from its last checkpoint (the CLI's resume), so a run can be
split across sittings; `<run>.provenance.json` beside each run folder records the commit (and whether the
checkout had uncommitted changes) and machine of every sitting, and a run started by another commit is not
resumed by this one (retrain it: one curve, one code version per run).

    python benchmarks/scaling.py                 # select, then sweep every budget, then the report
    python benchmarks/scaling.py select          # only the selection runs and their validation tables
    python benchmarks/scaling.py sweep           # the budgets (needs the selection)
    python benchmarks/scaling.py report          # summary.csv, compute.json, plots, README from what is there
    python benchmarks/scaling.py merge --parts A,B --out C   # outputs run side by side (one per method) -> one
    python benchmarks/scaling.py --tiny          # the whole pipeline on tiny settings: a smoke test

Run folders live in --work (default benchmarks/work/scaling; git-ignored); results in
benchmarks/results/scaling/: selection.json, selection/<domain>/<arch>/<task>/ (validation tables),
sweep/<domain>/<arch>/<task>/ (test tables), summary.csv (method, images_seen, task, labels, mean, std),
compute.json (per run: images seen, FLOPs, training time and CPU time; each domain's generator cost as a
separate line), one plot per task (<domain>-<task>.png) and README.md (with NOTES.md copied in).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see genbackbones/cli/__init__.py

sys.path.insert(0, str(Path(__file__).resolve().parent))  # vs_ssl beside this file

import vs_ssl  # noqa: E402
from rich.console import Console  # noqa: E402

from genbackbones import atomic  # noqa: E402
from genbackbones.errors import UserError  # noqa: E402

REPO = vs_ssl.REPO
WORK = REPO / "benchmarks" / "work" / "scaling"
TINY_WORK = REPO / "benchmarks" / "work" / "scaling-tiny"
RESULTS = REPO / "benchmarks" / "results" / "scaling"
ARCH = "hrnet_w18_small"
DOMAINS = ("faces", "utkface")  # faces first: the dense tasks, where LayerMatch leads at 16k
METHODS = ("layermatch", "simclr-real", "byol-real")
BUDGETS = (16_000, 64_000, 256_000)
TINY_BUDGETS = (8, 16, 64)
LR_FACTORS = (1.0, 0.5, 2.0)  # the recipe's value first: it wins ties
SIMCLR_BATCHES = (16, 64)
TINY_BATCHES = (4, 8)
TEMPERATURES = (0.5, 0.1)  # the recipes' value first
VALIDATION = {"faces": 500, "utkface": 1000}  # of the labelled pools of 2,000 and 4,000
TINY_VALIDATION = 8  # of vs_ssl's tiny pool of 16
# (results folder, label counts) of each domain's validation tasks: one dense and one global family where the
# domain has both; fine-tuning at one count, as it is where the evaluation's time goes
VALIDATION_TASKS = {"faces": {"segmentation": "16", "landmarks": "16", "hair_colour-linear": "64"},
                    "utkface": {"gender-linear": "256", "gender-finetune": "64"}}
SWEEP_TASKS = {"faces": ("segmentation", "landmarks", "hair_colour-linear", "hair_colour-finetune"),
               "utkface": ("gender-linear", "gender-finetune")}
# how each generator was trained: benchmarks/assets/utkface64/README.md and genbackbones/assets/faces64/generator.json
GENERATORS = {
    "utkface": {"generator": "benchmarks/assets/utkface64/generator",
                "recipe": "benchmarks/recipes/generators/utkface64.yaml", "steps": 4500, "batch_size": 16,
                # `genbackbones train-generator benchmarks/recipes/generators/utkface64.yaml --set train.steps=40
                # --set train.num_threads=1`, 2026-12-06, the sweep's machine: mean CPU time of steps 2-40
                "time": "recorded as 7-12 images/s on one core of a 2-core CPU VM across resumed sessions "
                        "(benchmarks/assets/utkface64/README.md: 1.7-2.9 h for 72,000 images); its recipe measured "
                        "at 1.17 CPU-s a step on one core, so about 1.5 CPU-hours for 4,500 steps",
                "seconds_range": [4500 * 1.17, 4500 * 1.17]},
    "faces": {"generator": "bundled (genbackbones/assets/faces64)", "recipe": "generators/faces64", "steps": 5000,
              "batch_size": 16,
              # `genbackbones train-generator generators/faces64 --set train.steps=40 --set train.num_threads=1`,
              # 2026-12-06, the sweep's machine: mean CPU time of steps 2-40 (R1 every 16th step included)
              "time": "not recorded when it was trained (docs/generators.md: 80 kimg on the project's 2-core CPU "
                      "machine); its recipe measured at 1.32 CPU-s a step on one core, so about 1.8 CPU-hours for "
                      "5,000 steps", "seconds_range": [5000 * 1.32, 5000 * 1.32]},
}


@dataclass(frozen=True)
class Settings:
    """One point of the selection grid: the recipe's learning rate times `lr_factor`, a batch, a temperature."""

    lr_factor: float = 1.0
    batch: int = 16
    temperature: float | None = None  # SimCLR only; None: the recipe's

    def tag(self) -> str:
        return f"lr{self.lr_factor:g}-b{self.batch}" + ("" if self.temperature is None else f"-t{self.temperature:g}")


@dataclass
class Run:
    """One pretraining run: a method with settings at a budget of images seen."""

    domain: str
    arch: str
    method: str
    settings: Settings
    images: int
    threads: int | None
    tiny: bool

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.method}-{self.settings.tag()}-{self.images}"

    def pretraining(self) -> vs_ssl.Pretraining:
        """vs_ssl's run of this method at this budget, with this run's settings in place of the recipe's."""
        base = vs_ssl.plan([self.domain], [self.arch], [self.method], self.images, self.threads)[0]
        overrides = [o for o in base.overrides if not o.startswith("train.batch_size=")]
        lr = recipe_lr(base) * self.settings.lr_factor
        overrides += [f"train.batch_size={self.settings.batch}", f"train.lr={lr:g}"]
        if self.settings.temperature is not None:
            overrides.append(f"ssl.temperature={self.settings.temperature:g}")
        if self.tiny:  # a checkpoint every step, so a tiny run can be killed and resumed mid-way
            overrides.append("train.checkpoint_every=1")
        return replace(base, overrides=overrides)


def recipe_lr(run: vs_ssl.Pretraining) -> float:
    from genbackbones.recipes import load_recipe

    return float(load_recipe(run.recipe).train.lr)


# ----------------------------------------------------------------------------- provenance


def provenance() -> dict:
    """This checkout's commit, whether it has uncommitted changes, and the machine."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": f"{platform.machine()}, {model}, {os.cpu_count()} CPU cores",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def sitting_commit(sitting: dict, width: int) -> str:
    """A sitting's commit as shown in summary.csv and the README: its first `width` hex digits, `+dirty` when the
    checkout had uncommitted changes."""
    return (sitting["commit"] or "?")[:width] + ("+dirty" if sitting["dirty"] else "")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def train(run: Run, work: Path, console: Console) -> dict:
    """Train, resume or skip one run (vs_ssl.pretrain), recording this sitting's commit and machine beside it."""
    folder = work / run.domain / run.name
    record_path = folder.with_name(folder.name + ".provenance.json")
    sittings = json.loads(record_path.read_text())["sittings"] if record_path.is_file() else []
    info = vs_ssl.read_info(folder)
    if info.get("status") != "exported":
        here = provenance()
        if folder.exists() and sittings and sittings[-1]["commit"] != here["commit"]:
            console.print(f"[yellow]{run.name}: started by commit {sittings[-1]['commit']}, resumed by "
                          f"{here['commit']}[/] (both recorded; delete the folder to retrain it with one commit)")
        if not folder.exists():
            sittings = []
        folder.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(record_path, json.dumps({"run": run.name, "sittings": [*sittings, here]}, indent=2) + "\n")
    return vs_ssl.pretrain(run.pretraining(), folder, console)


# ----------------------------------------------------------------------------- selection


def stages(method: str, batches: tuple[int, ...], lr_factors: tuple[float, ...],
           temperatures: tuple[float, ...]) -> list[tuple[str, callable]]:
    """The coordinate search: (stage, candidates given the best settings so far), in order."""
    first = Settings(batch=batches[0], temperature=temperatures[0] if method.startswith("simclr") else None)
    out = [("lr", lambda best: [replace(first, lr_factor=f) for f in lr_factors])]
    if method.startswith("simclr"):
        out += [("batch", lambda best: [replace(best, batch=b) for b in batches]),
                ("temperature", lambda best: [replace(best, temperature=t) for t in temperatures])]
    return out


def validation_job(domain: str, folder: str, labels: str) -> vs_ssl.Evaluation:
    job = next(j for j in vs_ssl.evaluations([domain], ["linear", "finetune"]) if j.folder == folder)
    return replace(job, labels=labels)


def evaluate_runs(jobs: list[vs_ssl.Evaluation], arch: str, runs: list[Path], out: Path, seeds: int,
                  settings: list[str], console: Console) -> dict[str, dict]:
    """vs_ssl's evaluation of these runs into `out`'s tables (merged into what is there), by table folder."""
    plans = [vs_ssl.plan_table(job, arch, runs, out, job.labels, seeds, settings, ["random"]) for job in jobs]
    return {plan.job.folder: vs_ssl.evaluate(plan, out, seeds, settings, "auto", console) for plan in plans}


def headline(results: dict, backbone: str, labels: int) -> tuple[float, bool]:
    """The mean over seeds of a table's first metric for one backbone and label count, and its direction."""
    from genbackbones.evaluate.report import summarise

    spec = results["metrics"][0]
    row = next(r for r in summarise(results) if r["backbone"] == backbone and r["metric"] == spec["key"]
               and r["labels"] == labels)
    return row["mean"], spec["higher_is_better"]


def mean_ranks(scores: dict[str, list[tuple[float, bool]]]) -> dict[str, float]:
    """Candidate -> its rank (1 = best) averaged over tasks; tied values share the mean of their ranks."""
    names = list(scores)
    tasks = len(next(iter(scores.values())))
    ranks = {n: 0.0 for n in names}
    for t in range(tasks):
        values = {n: scores[n][t][0] if scores[n][t][1] else -scores[n][t][0] for n in names}
        for n in names:
            better = sum(v > values[n] for v in values.values())
            same = sum(v == values[n] for v in values.values())
            ranks[n] += (better + (same + 1) / 2) / tasks
    return ranks


def select(domain: str, method: str, args, work: Path, out: Path, console: Console) -> dict:
    """The coordinate search of one domain and method; returns its record (stages, scores, chosen settings)."""
    budget = args.budgets[0]
    settings = [*vs_ssl.TINY_SETTINGS, f"data.validation={TINY_VALIDATION}"] if args.tiny else \
        [*vs_ssl.FULL_SETTINGS[domain], f"data.validation={VALIDATION[domain]}"]
    labels = {f: ("4" if args.tiny else n) for f, n in VALIDATION_TASKS[domain].items()
              if not args.tasks or f in args.tasks}
    if not labels:
        raise UserError(f"--tasks: none of {domain}'s validation tasks ({', '.join(VALIDATION_TASKS[domain])}) is "
                        "named, so nothing would choose the settings")
    jobs = [validation_job(domain, f, n) for f, n in labels.items()]
    best, record = None, {"budget": budget, "validation_tasks": labels, "evaluation_settings": settings, "stages": []}
    for stage, candidates in stages(method, args.batches, args.lr_factors, args.temperatures):
        runs = [Run(domain, ARCH if not args.arch else args.arch, method, s, budget, args.threads, args.tiny)
                for s in dict.fromkeys(candidates(best))]  # a candidate met before is the same run
        for run in runs:
            train(run, work, console)
        tables = evaluate_runs(jobs, runs[0].arch, [work / domain / r.name for r in runs], out / "selection",
                               args.seeds, settings, console)
        scores = {r.name: [headline(tables[f], r.name, int(n)) for f, n in labels.items()] for r in runs}
        ranks = mean_ranks(scores)
        winner = min(runs, key=lambda r: ranks[r.name])  # the first of equals: the earlier (recipe) value
        best = winner.settings
        record["stages"].append({"stage": stage, "candidates": [
            {"run": r.name, "settings": r.settings.__dict__, "settings_tag": r.settings.tag(),
             "mean_rank": round(ranks[r.name], 3),
             "validation": {f: round(v, 4) for f, (v, _) in zip(labels, scores[r.name])}} for r in runs],
            "chosen": winner.name})
        console.print(f"[bold]{domain}/{method} {stage}[/]: {winner.settings.tag()} (mean rank "
                      f"{ranks[winner.name]:.2f} of {len(runs)})", highlight=False)
    record["chosen"] = best.__dict__
    record["chosen_tag"] = best.tag()
    return record


def write_selection(out: Path, selection: dict, args) -> None:
    atomic.write_text(out / "selection.json", json.dumps({
        "criterion": "per stage, each candidate's headline metric (first metric of the table: mIoU, NME, top-1) "
                     "averaged over evaluation seeds on the validation split, ranked on every validation task "
                     "(1 = best, ties share ranks); the lowest mean rank over the tasks wins, the earlier "
                     "candidate (the recipe's value) on a tie",
        "search": "coordinate search: learning rate x factors (every method), then SimCLR's batch size at equal "
                  "images seen, then its temperature, each stage keeping the best so far",
        "grid": {"lr_factors": list(args.lr_factors), "simclr_batches": list(args.batches),
                 "simclr_temperatures": list(args.temperatures)},
        "validation_images": TINY_VALIDATION if args.tiny else VALIDATION,
        "selected": selection}, indent=2) + "\n")


# ----------------------------------------------------------------------------- sweep


def chosen_settings(out: Path, domain: str, method: str) -> Settings:
    path = out / "selection.json"
    selected = json.loads(path.read_text())["selected"] if path.is_file() else {}
    if method not in selected.get(domain, {}):
        raise UserError(f"no selected settings for {domain}/{method} in {path}; run `python benchmarks/scaling.py "
                        "select` first")
    return Settings(**selected[domain][method]["chosen"])


def sweep_runs(args, out: Path) -> list[Run]:
    return [Run(d, args.arch or ARCH, m, chosen_settings(out, d, m), b, args.threads, args.tiny)
            for d in args.domains for b in args.budgets for m in args.methods]


def sweep(args, work: Path, out: Path, console: Console) -> None:
    """Every budget in ascending order, each domain's exported runs evaluated after each budget (merged)."""
    for budget in args.budgets:
        for domain in args.domains:
            runs = [r for r in sweep_runs(args, out) if r.domain == domain and r.images == budget]
            for run in runs:
                train(run, work, console)
            done = [work / domain / r.name for r in sweep_runs(args, out)
                    if r.domain == domain and vs_ssl.read_info(work / domain / r.name).get("status") == "exported"]
            settings = vs_ssl.TINY_SETTINGS if args.tiny else vs_ssl.FULL_SETTINGS[domain]
            jobs = [j for j in vs_ssl.evaluations([domain], ["linear", "finetune"]) if j.folder in SWEEP_TASKS[domain]
                    and (not args.tasks or j.folder in args.tasks)]
            if args.tiny:
                jobs = [replace(j, labels="4") for j in jobs]
            evaluate_runs(jobs, args.arch or ARCH, done, out / "sweep", args.seeds, settings, console)


# ----------------------------------------------------------------------------- merge


def merge(parts: list[Path], out: Path, console: Console) -> None:
    """Outputs of this script made side by side -> one output: their selections and their tables.

    Why: one process trains and evaluates on one core, so a 2-core machine runs one process per method
    (`--methods layermatch --out A`, `--methods simclr-real --out B`) and merges A and B here. The tables merge
    exactly (vs_ssl.merge_results: rows are independent; random init, evaluated in both, is one row when its
    numbers agree, and refused when they do not); a method selected in two parts, or parts searched over other
    grids, are refused."""
    from genbackbones.evaluate.report import write_outputs

    if len(parts) < 2:
        raise UserError("merge needs --parts A,B[,...]: at least two output folders of this script")
    if out.resolve() in {p.resolve() for p in parts}:
        raise UserError(f"--out {out} is one of --parts; merge into a new folder")
    records = []
    for part in parts:
        path = part / "selection.json"
        if not path.is_file():
            raise UserError(f"--parts: {part} has no selection.json; give output folders of this script")
        records.append(json.loads(path.read_text()))
    selected: dict[str, dict] = {}
    for part, record in zip(parts, records):
        if {k: v for k, v in record.items() if k != "selected"} != {k: v for k, v in records[0].items()
                                                                    if k != "selected"}:
            raise UserError(f"--parts: {part} and {parts[0]} were selected with other criteria or grids")
        for domain, methods in record["selected"].items():
            for method, chosen in methods.items():
                if method in selected.get(domain, {}):
                    raise UserError(f"--parts: {domain}/{method} is selected in two parts; keep one")
                selected.setdefault(domain, {})[method] = chosen
    tables: dict[Path, list[Path]] = {}
    for part in parts:
        for path in sorted(part.glob("*/*/*/*/results.json")):  # selection|sweep/domain/arch/task/results.json
            tables.setdefault(path.parent.relative_to(part), []).append(path)
    out.mkdir(parents=True, exist_ok=True)
    for folder, paths in sorted(tables.items()):
        results = [json.loads(p.read_text()) for p in paths]
        merged = vs_ssl.merge_results(results) if len(results) > 1 else results[0]
        runs = sorted({r for part in results for r in part.get("benchmark", {}).get("runs", [])})
        merged["benchmark"] = {**results[0].get("benchmark", {}), "runs": runs}
        write_outputs(merged, out / folder)
        console.print(f"{folder}: {len(paths)} part(s), {len(merged['backbones'])} backbones", highlight=False)
    atomic.write_text(out / "selection.json", json.dumps({**records[0], "selected": selected}, indent=2) + "\n")
    computes = [json.loads((p / "compute.json").read_text()) for p in parts if (p / "compute.json").is_file()]
    if computes:  # the report adds the rows of the run folders in --work; the generators' lines are kept
        atomic.write_text(out / "compute.json", json.dumps({
            "command": computes[0]["command"],
            "runs": list({run_key(r): r for c in computes for r in c["runs"]}.values()),
            "generators": list({g["domain"]: g for c in computes for g in c["generators"]}.values())}, indent=2) + "\n")


# ----------------------------------------------------------------------------- report


def parse_run_name(name: str) -> tuple[str, str, int] | None:
    """A sweep backbone's (method, settings tag, images seen) from its name; None for random init."""
    for method in METHODS:
        marker = f"-{method}-"
        if marker in name:
            rest = name.split(marker, 1)[1]
            tag, _, images = rest.rpartition("-")
            return method, tag, int(images)
    return None


def summary_rows(out: Path, work: Path) -> list[dict]:
    """Every sweep table's headline rows: method, images seen, task, labels, metric, mean, std, seeds, and where
    the point comes from: the run (compute.json's row, with its recipe and overrides), the commit(s) and machine(s)
    of its sittings (its provenance.json in `work`; random init: none) and the evaluation table (with its
    command in results.json)."""
    from genbackbones.evaluate.report import summarise

    rows = []
    for path in sorted((out / "sweep").glob("*/*/*/results.json")):
        results = json.loads(path.read_text())
        domain, task = path.parts[-4], path.parts[-2]
        for r in summarise(results):
            parsed = parse_run_name(r["backbone"])
            if not r["seeds"] or (parsed is None and r["backbone"] != "random init"):
                continue
            method, tag, images = parsed if parsed else ("random init", "", 0)
            record = work / domain / f"{r['backbone']}.provenance.json"
            sittings = json.loads(record.read_text())["sittings"] if parsed and record.is_file() else []
            rows.append({"method": method, "images_seen": images, "task": f"{domain}/{task}", "labels": r["labels"],
                         "metric": r["metric"], "mean": round(r["mean"], 4), "std": round(r["std"], 4),
                         "seeds": r["seeds"], "settings": tag, "run": r["backbone"] if parsed else "",
                         "commit": " ".join(dict.fromkeys(sitting_commit(s, 10) for s in sittings)),
                         "machine": "; ".join(dict.fromkeys(s["machine"] for s in sittings)),
                         "evaluation": str(path.relative_to(out))})
    return rows


def write_summary(out: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "images_seen", "task", "labels", "metric", "mean", "std",
                                                "seeds", "settings", "run", "commit", "machine", "evaluation"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / "summary.csv", buffer.getvalue())


def plot(out: Path, rows: list[dict]) -> list[Path]:
    """One figure per task: the headline metric against images seen (log x), one panel per label count, one line
    per method with a ±1 std band over evaluation seeds, random init as a dashed floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task in sorted({r["task"] for r in rows}):
        metric = next(r["metric"] for r in rows if r["task"] == task)
        mine = [r for r in rows if r["task"] == task and r["metric"] == metric]
        counts = sorted({r["labels"] for r in mine})
        fig, axes = plt.subplots(1, len(counts), figsize=(4.6 * len(counts), 3.8), squeeze=False)
        for ax, n in zip(axes[0], counts):
            at = [r for r in mine if r["labels"] == n]
            budgets = sorted({r["images_seen"] for r in at if r["method"] != "random init"})
            for method in [m for m in METHODS if any(r["method"] == m for r in at)]:
                points = sorted((r for r in at if r["method"] == method), key=lambda r: r["images_seen"])
                x, mean, std = ([r[k] for r in points] for k in ("images_seen", "mean", "std"))
                line, = ax.plot(x, mean, marker="o", label=method)
                ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.2, linewidth=0)
            floor = next((r for r in at if r["method"] == "random init"), None)
            if floor and budgets:
                ax.axhline(floor["mean"], color="grey", linestyle="--", label="random init")
            ax.set_xscale("log")
            if budgets:
                ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
            ax.minorticks_off()
            ax.set_xlabel("images seen in pretraining")
            ax.set_ylabel(f"{metric} ({'lower' if metric.startswith('nme') else 'higher'} is better)")
            ax.set_title(f"{n} labels", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{task} ({metric}): mean ± std over evaluation seeds", fontsize=9)
        fig.tight_layout()
        path = out / f"{task.replace('/', '-')}.png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        atomic.write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def run_key(row: dict) -> tuple[str, str]:
    """A compute row's identity: run names repeat across domains (each domain's selection trains the same
    settings), so the name alone would let one domain's row replace the other's."""
    return row["domain"], row["backbone"]


def compute_rows(work: Path, args) -> list[dict]:
    """compute.json's run rows: vs_ssl's row of every run folder here, with its CPU time and sittings added."""
    from genbackbones.engine.loop import read_metrics

    rows = []
    for domain in args.domains:
        for folder in sorted(p for p in (work / domain).glob("*") if p.is_dir()):
            parsed = parse_run_name(folder.name)
            info = vs_ssl.read_info(folder)
            if parsed is None or info.get("status") != "exported":
                continue
            steps = read_metrics(folder)
            base = vs_ssl.plan([domain], [args.arch or ARCH], [parsed[0]], parsed[2], args.threads)[0]
            row = vs_ssl.compute_row(base, folder, info)
            record = folder.with_name(folder.name + ".provenance.json")
            rows.append({**row, "backbone": folder.name, "settings": parsed[1],
                         "cpu_seconds": round(sum(h.get("cpu_seconds", 0) for h in steps), 1),
                         "sittings": json.loads(record.read_text())["sittings"] if record.is_file() else None})
    return rows


def generator_cost(domain: str, work: Path, console: Console) -> dict:
    """The generator's own training: its recorded steps and time, and FLOPs per step counted now by the trainer's
    own counter (torch's FlopCounterMode over one training step of the same recipe: a one-step run)."""
    record = dict(GENERATORS[domain])
    folder = work / "generator-cost" / domain
    info = vs_ssl.read_info(folder)
    if not info.get("flops_per_step"):
        recipe = str(REPO / record["recipe"]) if record["recipe"].startswith("benchmarks/") else record["recipe"]
        command = [sys.executable, "-m", "genbackbones", "train-generator", recipe, "-o", str(folder),
                   "--set", "train.steps=1", "--set", "train.num_threads=1"]
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            console.print(f"[yellow]{domain} generator: FLOPs not counted[/] ({done.stderr.strip()[-300:]})")
        info = vs_ssl.read_info(folder)
    per_step = info.get("flops_per_step")
    images = record["steps"] * record["batch_size"]
    return {"domain": domain, **{k: v for k, v in record.items() if k != "seconds_range"},
            "images_seen": images, "flops_per_step": per_step,
            "flops": per_step * record["steps"] if per_step else None,
            "seconds_range": record["seconds_range"]}


def report(args, work: Path, out: Path, command: str, seconds: float, console: Console) -> None:
    rows = summary_rows(out, work)
    write_summary(out, rows)
    plots = plot(out, rows)
    previous = json.loads((out / "compute.json").read_text()) if (out / "compute.json").is_file() else {}
    runs = {run_key(r): r for r in previous.get("runs", [])}  # rows of runs whose folders are not here stay
    runs.update({run_key(r): r for r in compute_rows(work, args)})
    generators = {g["domain"]: g for g in previous.get("generators", [])}
    for domain in args.domains:
        if not (generators.get(domain) or {}).get("flops_per_step"):
            generators[domain] = generator_cost(domain, work, console)
        else:  # the counted FLOPs are kept; what is known of its training time is this file's
            generators[domain] = {**generators[domain], "time": GENERATORS[domain]["time"],
                                  "seconds_range": GENERATORS[domain]["seconds_range"]}
    atomic.write_text(out / "compute.json", json.dumps({"command": command, "runs": list(runs.values()),
                                                        "generators": list(generators.values())}, indent=2) + "\n")
    atomic.write_text(out / "README.md", readme(out, rows, list(runs.values()), list(generators.values()), plots,
                                                command, seconds, args))
    console.print(f"[green]written[/] {out}/README.md, summary.csv ({len(rows)} rows), {len(plots)} plot(s)")


def readme(out: Path, rows: list[dict], runs: list[dict], generators: list[dict], plots: list[Path], command: str,
           seconds: float, args) -> str:
    lines = ["# Does the lead hold as compute grows? LayerMatch vs SSL across budgets of images seen", "",
             f"Command: `{command}` ({seconds / 60:.1f} min). Only what finished is here: a budget or task "
             "missing below has not been run yet." + (" `--tiny`: a smoke test, not a measurement." if args.tiny
                                                     else ""), "",
             "## Runs", "", "| domain | run | images seen | steps | TFLOPs | training time | CPU time | commit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["domain"], r["method"], r["images_seen"] or 0, r["backbone"])):
        commits = sorted({sitting_commit(s, 7) for s in r.get("sittings") or []})
        lines.append(f"| {r['domain']} | {r['backbone']} | {r['images_seen']} | {r['steps']} | "
                     f"{(r['flops'] or 0) / 1e12:.3g} | {(r['train_seconds'] or 0) / 60:.1f} min | "
                     f"{(r.get('cpu_seconds') or 0) / 60:.1f} min | {', '.join(commits) or 'not recorded'} |")
    lines += ["", "Generators (their own training, a separate cost: counts when no generator of the domain exists):",
              "", "| domain | generator | steps x batch | images seen | TFLOPs | time |", "|---|---|---|---|---|---|"]
    for g in generators:
        flops = f"{g['flops'] / 1e12:.3g}" if g.get("flops") else "not counted"
        lines.append(f"| {g['domain']} | {g['generator']} | {g['steps']} x {g['batch_size']} | {g['images_seen']} | "
                     f"{flops} | {g['time']} |")
    lines += ["", "FLOPs: torch's FlopCounterMode over one training step (vs_ssl's compute rows), times the steps.", ""]
    if (out / "NOTES.md").is_file():
        lines += ["## How these numbers were made", "", (out / "NOTES.md").read_text().strip(), ""]
    selection = json.loads((out / "selection.json").read_text()) if (out / "selection.json").is_file() else {}
    lines += ["## Settings chosen on the validation split", "",
              "Criterion: " + selection.get("criterion", "not selected yet") + ".", ""]
    for domain, methods in selection.get("selected", {}).items():
        for method, record in methods.items():
            tried = dict.fromkeys(c["settings_tag"] for stage in record["stages"] for c in stage["candidates"])
            lines.append(f"- {domain}/{method}: {record['chosen_tag']} (of {', '.join(tried)})")
        tasks = list(next(iter(methods.values()))["validation_tasks"].items())
        lines += ["", f"{domain}, validation scores (mean over seeds; mIoU and top-1 higher, NME lower is better):",
                  "", "| method | stage | settings | " + " | ".join(f"{t} ({n} labels)" for t, n in tasks) +
                  " | mean rank | chosen |", "|---" * (len(tasks) + 5) + "|"]
        for method, record in methods.items():
            for stage in record["stages"]:
                for c in stage["candidates"]:
                    scores = " | ".join(f"{c['validation'][t]:.2f}" if t in c["validation"] else "-" for t, _ in tasks)
                    lines.append(f"| {method} | {stage['stage']} | {c['settings_tag']} | {scores} | "
                                 f"{c['mean_rank']:g} | {'yes' if c['run'] == stage['chosen'] else ''} |")
    lines += ["", "## Results (test split)", "", "summary.csv holds every point (random init at images seen 0); "
              "one figure per task, one panel per label count.", ""]
    for path in plots:
        lines += [f"![{path.stem}]({path.name})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _numbers(kind):
    return lambda text: tuple(kind(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", nargs="?", default="all", choices=("all", "select", "sweep", "merge", "report"))
    parser.add_argument("--domains", default=None, help="faces,utkface (tiny: faces)")
    parser.add_argument("--methods", default="layermatch,simclr-real")
    parser.add_argument("--byol", action="store_true", help="add BYOL on the real images (byol-real)")
    parser.add_argument("--budgets", type=_numbers(int), default=None,
                        help="images seen per run, the first is where settings are chosen (default 16000,64000,256000)")
    parser.add_argument("--lr-factors", type=_numbers(float), default=LR_FACTORS)
    parser.add_argument("--batches", type=_numbers(int), default=None, help="SimCLR batch sizes (default 16,64)")
    parser.add_argument("--temperatures", type=_numbers(float), default=TEMPERATURES)
    parser.add_argument("--tasks", type=_numbers(str), default=None,
                        help="only these evaluation folders (e.g. landmarks,gender-linear): a shorter session; the "
                             "selection then uses only the named validation tasks")
    parser.add_argument("--arch", default=None, help=f"default {ARCH} (tests: resnet18 for speed)")
    parser.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default 3, tiny 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every run and evaluation")
    parser.add_argument("--work", type=Path, default=None, help=f"run folders (default {WORK.relative_to(REPO)})")
    parser.add_argument("--out", type=Path, default=None, help=f"results (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--parts", type=_numbers(Path), default=(),
                        help="merge: the output folders to merge into --out (one per method run side by side)")
    parser.add_argument("--tiny", action="store_true", help="bundled faces, a few images: the pipeline in minutes")
    args = parser.parse_args(argv)
    args.domains = [d for d in (args.domains or ("faces" if args.tiny else ",".join(DOMAINS))).split(",") if d]
    args.methods = [m for m in args.methods.split(",") if m] + (["byol-real"] if args.byol else [])
    args.budgets = args.budgets or (TINY_BUDGETS if args.tiny else BUDGETS)
    args.batches = args.batches or (TINY_BATCHES if args.tiny else SIMCLR_BATCHES)
    args.seeds = args.seeds or (1 if args.tiny else 3)
    return args


def check(args) -> None:
    for name, values, valid in (("domains", args.domains, DOMAINS), ("methods", args.methods, METHODS)):
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise UserError(f"--{name}: {bad[0] if bad else 'none'!r} is not one of {', '.join(valid)}")
    known = {t for d in args.domains for t in (*SWEEP_TASKS[d], *VALIDATION_TASKS[d])}
    if args.tasks and set(args.tasks) - known:
        raise UserError(f"--tasks: {sorted(set(args.tasks) - known)[0]!r} is not one of {', '.join(sorted(known))}")
    if args.arch and args.arch not in vs_ssl.ARCHS:
        raise UserError(f"--arch {args.arch!r}: use one of {', '.join(vs_ssl.ARCHS)}")
    budgets = args.budgets
    if list(budgets) != sorted(set(budgets)) or budgets[0] < 1:
        raise UserError(f"--budgets {','.join(map(str, budgets))}: give increasing positive numbers of images")
    if not args.tiny and (len(budgets) < 3 or budgets[-1] < 8 * budgets[0]):
        raise UserError(f"--budgets {','.join(map(str, budgets))}: a curve needs at least 3 budgets spanning at "
                        "least 8x (e.g. 16000,64000,256000)")
    if not args.lr_factors or not args.batches or not args.temperatures or min(args.lr_factors) <= 0 or \
            min(args.batches) < 1 or min(args.temperatures) <= 0:
        raise UserError("--lr-factors, --batches and --temperatures take positive numbers, e.g. 0.5,1,2")
    if any(b % s for b in budgets for s in args.batches):
        raise UserError(f"--budgets must be multiples of every batch size ({','.join(map(str, args.batches))}) so "
                        "runs of different batches see the same number of images")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    started = time.perf_counter()
    command = shlex.join(["python", "benchmarks/scaling.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        check(args)
        work = args.work or (TINY_WORK / "runs" if args.tiny else WORK)
        out = args.out or (TINY_WORK / "results" if args.tiny else RESULTS)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if "utkface" in args.domains and not (vs_ssl.UTKFACE_WORK / "eval" / "train" / "labels.csv").is_file():
            console.print("the UTKFace split is not prepared: running `python benchmarks/real_faces.py prepare`")
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_faces.py"), "prepare"], check=True)
        if args.stage in ("all", "select"):
            path = out / "selection.json"
            selection = json.loads(path.read_text())["selected"] if path.is_file() else {}
            for domain in args.domains:
                for method in args.methods:
                    selection.setdefault(domain, {})[method] = select(domain, method, args, work, out, console)
                    write_selection(out, selection, args)
        if args.stage in ("all", "sweep"):
            sweep(args, work, out, console)
        if args.stage == "merge":
            merge(list(args.parts), out, console)
        report(args, work, out, command, time.perf_counter() - started, console)
        return 0
    except UserError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
