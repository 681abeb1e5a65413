"""At equal compute: LayerMatch vs GH-Feat vs self-supervised learning (lightly) vs random init.

The question a practitioner with a domain GAN asks: does the GAN route beat simply
running self-supervised learning on my unlabelled images? For each domain and
architecture this trains, through the same loop, export and evaluator, at the same
budget of images seen (16,000 = the LayerMatch UTKFace recipes' 1,000 steps x 16):

    layermatch        LayerMatch against the domain's generator
    ghfeat            GH-Feat: real images reconstructed through the generator
    simclr-real       SimCLR on the real unlabelled images      (method ssl, lightly)
    byol-real         BYOL on the real unlabelled images        (method ssl, lightly)
    simclr-generated  SimCLR on images drawn from the generator (method ssl, data.source: generator)

and evaluates them, with random init of each architecture, by the evaluator's protocols:

    utkface   gender and age group: linear probe, kNN (when the evaluator has it), fine-tuning;
              labels 16/64/256/1024 x 3 seeds; test faces from the held-out split the
              generator never saw (`python benchmarks/real_faces.py prepare`, run first if needed)
    faces     the bundled domain: segmentation, landmarks, hair colour (linear, kNN, fine-tune);
              labels 4/16/64 x 3 seeds

    python benchmarks/vs_ssl.py                     # everything (hours: see the estimate --tiny prints)
    python benchmarks/vs_ssl.py --domains faces     # one domain
    python benchmarks/vs_ssl.py --tiny              # the whole pipeline in minutes: a smoke test, not a
                                                    # measurement; prints the full run's estimated length
    python benchmarks/vs_ssl.py --domains faces --tasks segmentation:16,hair_colour-knn
                                                    # part of the evaluation grid (folder[:label counts])
    python benchmarks/vs_ssl.py --report-only       # README.md and compute.json from what is there now

Pretraining runs live in benchmarks/work/vs_ssl/runs/<domain>/<arch>-<method>/; a run already exported is skipped
and an interrupted one resumed, so the benchmark can be continued across sessions: an evaluation already written is
not redone, only the runs and label counts its table lacks are computed and merged into it (a run added later is
evaluated alone, beside rows made on another machine). Results go to benchmarks/results/vs_ssl/: one folder per
domain, architecture and task (<domain>/<arch>/<task>/: results.json, summary.csv, a plot, model_index.json; each
architecture is compared with its own random init), compute.json (images seen, steps, FLOPs per step and in all,
wall time and median step time of every run) and README.md with every table, the command and the measured wall
time. A NOTES.md beside that README (which commands ran in which sessions, what was left out) is copied into it.
compute.json keeps the rows of runs outside this call's domains, architectures and methods, and `--report-only` the
row of a run whose folder is not on this machine (trained in an earlier session, on another machine): the run
folders are git-ignored, the evaluations made from them are committed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see genbackbones/cli/__init__.py

from rich.console import Console  # noqa: E402

from genbackbones import atomic  # noqa: E402
from genbackbones.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "benchmarks" / "recipes"
UTKFACE_GENERATOR = REPO / "benchmarks" / "assets" / "utkface64" / "generator"
UTKFACE_WORK = REPO / "benchmarks" / "work" / "utkface64"
WORK = REPO / "benchmarks" / "work" / "vs_ssl"
TINY_WORK = REPO / "benchmarks" / "work" / "vs_ssl-tiny"
RESULTS = REPO / "benchmarks" / "results" / "vs_ssl"
DOMAINS = ("utkface", "faces")
ARCHS = ("resnet18", "hrnet_w18_small")
METHODS = ("layermatch", "ghfeat", "simclr-real", "byol-real", "simclr-generated")
BATCH = 16
FULL_IMAGES = 16_000  # = benchmarks/recipes/layermatch/*-utkface64.yaml: 1,000 steps x 16 images
TINY_IMAGES = 3 * BATCH
# "knn" plugs in when the evaluator has a kNN protocol (being added on another branch): protocols the
# evaluator refuses are left out and the README says so (`available_protocols`)
CLASSIFICATION_PROTOCOLS = ("linear", "knn", "finetune")
FULL_LABELS = {"utkface": "16,64,256,1024", "faces": "4,16,64"}
FINETUNE_LABELS = {"utkface": "64,256", "faces": "4,16"}  # segmentation, heatmap landmarks and fine-tuned classes
UTKFACE_TARGETS = ("gender", "age_group")
FACES_TARGET = "hair_colour"
FULL_SETTINGS = {"utkface": ["max_steps=400"], "faces": []}  # utkface: as benchmarks/real_faces.py's runs
# tiny: 20 fine-tuning steps, enough to time a step for the estimate (3 would time mostly the set-up)
TINY_SETTINGS = ["min_steps=20", "max_steps=20", "data.pool=16", "data.test_size=16", "eval_batch_size=16"]


@dataclass
class Pretraining:
    """One pretraining run of the benchmark: which recipe, with which overrides, into which folder."""

    domain: str
    arch: str
    method: str
    recipe: str
    overrides: list[str]

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.method}"

    def command(self, folder: Path) -> list[str]:
        return [sys.executable, "-m", "genbackbones", "pretrain", self.recipe, "-o", str(folder),
                *[a for o in self.overrides for a in ("--set", o)]]


def plan(domains: list[str], archs: list[str], methods: list[str], images: int, threads: int | None) -> list[Pretraining]:
    """Every pretraining run: the domain's recipe of each method, with the architecture and budget set."""
    runs = []
    for domain in domains:
        for arch in archs:
            for method in methods:
                recipe, extra = _recipe(domain, arch, method)
                overrides = [f"backbone.arch={arch}",
                             "backbone.feature_location=''" if arch.startswith("hrnet") else
                             "backbone.feature_location=null",
                             "train.steps=null", "train.flops=null", f"train.images_seen={images}",
                             f"train.batch_size={BATCH}", *extra]
                if threads:
                    overrides.append(f"train.num_threads={threads}")
                runs.append(Pretraining(domain, arch, method, recipe, overrides))
    return runs


def _recipe(domain: str, arch: str, method: str) -> tuple[str, list[str]]:
    """(recipe, overrides) of a method on a domain: UTKFace recipes from benchmarks/recipes, bundled otherwise."""
    algorithm, _, source = method.partition("-")
    generated = ["data.source=generator", "data.count=0"]
    if domain == "utkface":
        if method == "layermatch":
            return str(RECIPES / "layermatch" / f"{arch}-utkface64.yaml"), []
        if method == "ghfeat":
            return str(RECIPES / "ghfeat" / "resnet18-utkface64.yaml"), []
        recipe = str(RECIPES / "ssl" / f"{algorithm}-{arch}-utkface64.yaml")
        return recipe, ([*generated, f"generator.source={UTKFACE_GENERATOR}"] if source == "generated" else [])
    if method == "layermatch":
        return "quickstart", ["generator.source=bundled"]
    if method == "ghfeat":
        return "ghfeat/quickstart", []
    return f"ssl/{algorithm}-quickstart", ([*generated, "generator.source=bundled"] if source == "generated" else [])


# ----------------------------------------------------------------------------- pretraining


def read_info(folder: Path) -> dict:
    path = folder / "run.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def pretrain(run: Pretraining, folder: Path, console: Console) -> dict:
    """Train (or resume, or just export) one run; returns its run.json. Output goes to <folder>.log."""
    from genbackbones.engine.checkpoints import latest_checkpoint

    info = read_info(folder)
    if info.get("status") == "exported":
        console.print(f"[dim]{run.domain}/{run.name}: done earlier ({folder})[/]")
        return info
    if info.get("status") == "trained":
        command = [sys.executable, "-m", "genbackbones", "export", str(folder)]
    elif (folder / "recipe.yaml").is_file() and latest_checkpoint(folder) is not None:
        command = [sys.executable, "-m", "genbackbones", "pretrain", "--resume", str(folder)]
    else:
        if folder.exists():  # started but without a checkpoint: nothing to keep
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        command = run.command(folder)
    console.print(f"{run.domain}/{run.name}: {shlex.join(command[2:])}", highlight=False, soft_wrap=True)
    log = folder.with_name(folder.name + ".log")  # not with_suffix: run names hold dots (scaling's lr0.5-b16-t0.5)
    t0 = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        raise UserError(f"{run.domain}/{run.name} failed (exit {done.returncode}); see {log}: {' | '.join(tail)}")
    info = read_info(folder)
    info["benchmark_wall_seconds"] = round(time.perf_counter() - t0, 1)  # this session: start-up and export too
    console.print(f"  {info.get('steps')} steps x {info.get('images_per_step')} images, "
                  f"{info.get('train_seconds')} s training, median step {info.get('median_step_seconds', 0):.3f} s",
                  highlight=False)
    return info


def recorded_rows(out: Path) -> dict[tuple[str, str], dict]:
    """compute.json's rows by (domain, backbone): what `--report-only` keeps for a run trained in an earlier
    session whose (git-ignored) folder is not on this machine."""
    path = out / "compute.json"
    rows = json.loads(path.read_text())["runs"] if path.is_file() else []
    return {(r["domain"], r["backbone"]): r for r in rows}


def compute_row(run: Pretraining, folder: Path, info: dict) -> dict:
    """What compute.json and the README record about one run. Times come from metrics.jsonl, which holds every
    step of the run: a run resumed across sessions by a version before the whole-run timing in run.json
    recorded only its last session there."""
    from genbackbones.engine.loop import read_metrics

    steps = read_metrics(folder)
    if steps and all("seconds" in h and "cpu_seconds" in h for h in steps):
        info = {**info, "train_seconds": round(sum(h["seconds"] for h in steps), 1),
                "median_step_seconds": statistics.median(h["seconds"] for h in steps),
                "median_step_cpu_seconds": statistics.median(h["cpu_seconds"] for h in steps)}
    return {"domain": run.domain, "backbone": run.name, "arch": run.arch, "method": run.method,
            "recipe": run.recipe if not run.recipe.startswith(str(REPO)) else str(Path(run.recipe).relative_to(REPO)),
            "overrides": run.overrides,
            "folder": str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder), "steps": info.get("steps"),
            "images_seen": info.get("images_seen"), "flops_per_step": info.get("flops_per_step"),
            "flops": info.get("flops"), "train_seconds": info.get("train_seconds"),
            "median_step_seconds": info.get("median_step_seconds"),
            "median_step_cpu_seconds": info.get("median_step_cpu_seconds"), "num_processes": info.get("num_processes"),
            "device": info.get("device"), "budget": info.get("budget")}


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    domain: str
    folder: str  # results folder under <out>/<domain>/
    task: str
    protocol: str | None
    target: str | None
    labels: str  # label counts of this job (fine-tuning is where the CPU time goes, so it gets fewer)


def available_protocols() -> tuple[list[str], list[str]]:
    """The classification protocols the evaluator accepts now, and those it does not have (yet)."""
    from genbackbones.evaluate.tasks import make_settings

    ok, missing = [], []
    for protocol in CLASSIFICATION_PROTOCOLS:
        try:
            make_settings("classification", [], None, protocol)
            ok.append(protocol)
        except UserError:
            missing.append(protocol)
    return ok, missing


def evaluations(domains: list[str], protocols: list[str]) -> list[Evaluation]:
    """The evaluation grid. Frozen protocols (linear, kNN; ridge for landmarks) are cheap and get every label
    count; fine-tuning costs ~1-2 CPU-minutes per backbone x label count x seed at 64 px, so it gets the
    counts in FINETUNE_LABELS (and age group is not fine-tuned): this is what fits 2 CPU cores in an afternoon."""
    jobs = []
    for domain in domains:
        if domain == "faces":
            jobs += [Evaluation(domain, "segmentation", "segmentation", None, None, FINETUNE_LABELS["faces"]),
                     Evaluation(domain, "landmarks", "landmarks", None, None, FINETUNE_LABELS["faces"])]
            jobs += [Evaluation(domain, f"{FACES_TARGET}-{p}", "classification", p, FACES_TARGET,
                                FINETUNE_LABELS["faces"] if p == "finetune" else FULL_LABELS["faces"])
                     for p in protocols]
        else:
            jobs += [Evaluation(domain, f"{t}-{p}", "classification", p, t,
                                FINETUNE_LABELS["utkface"] if p == "finetune" else FULL_LABELS["utkface"])
                     for t in UTKFACE_TARGETS for p in protocols if p != "finetune" or t == "gender"]
    return jobs


def selected(jobs: list[Evaluation], tasks: str | None) -> list[Evaluation]:
    """The jobs `--tasks` names (`folder[:labels]`, labels replacing the job's own), in the grid's order. A number
    after a task's labels is one more label count of it: `segmentation:4,16,landmarks` is segmentation at 4 and 16
    labels and landmarks at the grid's counts."""
    if not tasks:
        return jobs
    wanted, last = {}, None
    for token in (t.strip() for t in tasks.split(",") if t.strip()):
        if last is not None and wanted[last] and (token.isdigit() or token == "all"):
            wanted[last] += "," + token
        else:
            last, _, labels = token.partition(":")
            if last in wanted and bool(wanted[last]) != bool(labels):
                raise UserError(f"--tasks: {last} is named twice, once with label counts and once without")
            wanted[last] = ",".join(filter(None, [wanted.get(last, ""), labels]))  # named twice: both counts
    unknown = sorted(set(wanted) - {j.folder for j in jobs})
    if unknown:
        raise UserError(f"--tasks: {unknown[0]!r} is not one of {', '.join(sorted({j.folder for j in jobs}))}")
    from genbackbones.evaluate import parse_labels

    for folder, labels in wanted.items():
        try:
            parse_labels(labels or "1")
        except UserError as error:
            raise UserError(f"--tasks {folder}:{labels}: label counts are positive numbers, e.g. {folder}:4,16") \
                from error
    return [replace(j, labels=wanted[j.folder] or j.labels) for j in jobs if j.folder in wanted]


def results_folder(out: Path, job: Evaluation, arch: str) -> Path:
    """Where one evaluation's results live: one table per domain, architecture and task (an architecture is
    compared with its own random init; ResNet-18 and HRNet rows side by side would compare architectures)."""
    return out / job.domain / arch / job.folder


@dataclass
class TablePlan:
    """What one evaluation job computes: everything when its table is new, else only what the table lacks."""

    job: Evaluation
    arch: str
    runs: list[Path]  # this call's run folders of the domain and architecture
    labels: str
    baselines: list[str]
    old: dict | None  # the table already written, None when there is none
    new_runs: list[Path]  # evaluated at the table's label counts
    new_labels: list[int]  # every run of the table and its baselines evaluated at these


def plan_table(job: Evaluation, arch: str, runs: list[Path], out: Path, labels: str, seeds: int,
               settings: list[str], baselines: list[str]) -> TablePlan:
    """Decide what an evaluation computes and refuse, before any training, whatever would make its table wrong.

    A table already written is not redone: a run added later is evaluated alone at its label counts, new label
    counts for every run of the table and its baselines, and the rows are merged (`merge_results`). So a run of
    the table must be the one whose rows it holds: one exported after them, or one that this call would train
    again because its folder is not here, is refused; so are other seeds, baselines, settings or data."""
    from genbackbones.evaluate import parse_labels

    folder = results_folder(out, job, arch)
    name = f"{job.domain}/{arch}/{job.folder}"
    wanted = parse_labels(labels)
    if not (folder / "results.json").is_file():
        return TablePlan(job, arch, runs, labels, baselines, None, list(runs), [])
    old = json.loads((folder / "results.json").read_text())
    away = f"move {folder} away to evaluate the runs afresh"
    if old["seeds"] != list(range(seeds)):
        raise UserError(f"{name}: its table has {len(old['seeds'])} seed(s), this call asks {seeds}; {away}")
    if "all" in wanted:
        raise UserError(f"{name}: 'all' labels cannot be added to a table; give the count, or {away}")
    table_baselines = sorted({b["kind"] for b in old["backbones"] if b["kind"] in ("random", "imagenet")} |
                             {"imagenet" for _ in old["unavailable"]})  # only ImageNet weights can be unavailable
    if table_baselines != sorted(set(baselines)):
        raise UserError(f"{name}: its table has baselines {','.join(table_baselines) or 'none'}, this call asks "
                        f"{','.join(sorted(set(baselines))) or 'none'}; pass --baselines "
                        f"{','.join(table_baselines) or 'none'}, or {away}")
    for key, value in _settings_and_data(job, settings).items():
        if _portable(value) != _portable(old[key] if key == "settings" else old["data"]["options"]):
            raise UserError(f"{name}: its table was made with other evaluation {key}; {away}")
    recorded = _recorded_runs(old)
    exported = {r.name for r in runs if read_info(r).get("status") == "exported"}
    retrained = sorted(r.name for r in runs if r.name in recorded and r.name not in exported)
    if retrained:
        raise UserError(f"{name}: {', '.join(retrained)} is in its table but its folder is not here, and training "
                        "it again would put another run under its name; copy the folder here with its file times "
                        f"(cp -a), leave it out of --methods, or {away}")
    _check_same_runs(old, [r for r in runs if r.name in recorded], name, away)  # all exported (checked above)
    new_labels = sorted(set(wanted) - set(old["labels"]))
    absent = sorted(recorded - exported)
    if new_labels and absent:
        raise UserError(f"{name}: labels {','.join(map(str, new_labels))} need every run of its table here, and "
                        f"{', '.join(absent)} is not; copy its folder here with its file times (cp -a), leave "
                        f"those label counts out, or {away}")
    return TablePlan(job, arch, runs, labels, baselines, old, [r for r in runs if r.name not in recorded],
                     new_labels)


def _settings_and_data(job: Evaluation, settings: list[str]) -> dict:
    """The evaluation settings and data options an evaluation of `job` records (without loading any data)."""
    from dataclasses import asdict

    from genbackbones.evaluate import resolve_options

    task_settings, options = resolve_options(job.task, _data_options(job), settings, protocol=job.protocol)
    return {"settings": asdict(task_settings), "data": asdict(options)}


def _recorded_runs(results: dict) -> set[str]:
    """The run names of a table: its benchmark record, else (a table `genbackbones evaluate` wrote) its run rows."""
    if "benchmark" in results:
        return {Path(r).name for r in results["benchmark"]["runs"]}
    return {b["name"] for b in results["backbones"] if b["kind"] == "run"}


def evaluate(plan: TablePlan, out: Path, seeds: int, settings: list[str], device: str, console: Console) -> dict:
    """Compute what `plan_table` decided and write the merged table."""
    from genbackbones.evaluate.report import write_outputs

    job, arch, old = plan.job, plan.arch, plan.old
    if old is not None and not plan.new_runs and not plan.new_labels:
        console.print(f"[dim]{job.domain}/{arch}/{job.folder}: done earlier[/]")
        return old
    if old is None:
        parts = [_evaluate(job, arch, plan.runs, plan.labels, seeds, settings, plan.baselines, device, console)]
    else:
        parts = [old]
        if plan.new_runs:  # at the label counts already there; the baselines are there too
            parts.append(_evaluate(job, arch, plan.new_runs, ",".join(map(str, old["labels"])), seeds, settings, [],
                                   device, console))
        if plan.new_labels:
            parts.append(_evaluate(job, arch, plan.runs, ",".join(map(str, plan.new_labels)), seeds, settings,
                                   plan.baselines, device, console))
    results = merge_results(parts)
    names = {r.name for r in plan.runs}
    kept = [r for r in (old["benchmark"]["runs"] if old and "benchmark" in old else []) if Path(r).name not in names]
    results["benchmark"] = {"runs": sorted(kept + [str(r) for r in plan.runs]), "domain": job.domain, "arch": arch}
    write_outputs(results, results_folder(out, job, arch))
    return results


def _check_same_runs(results: dict, runs: list[Path], name: str, away: str) -> None:
    """Refuse an exported run folder exported after its rows in `results` were made: it is another training under
    the same name (retrained, or copied in), and its rows beside the old ones would make one silently wrong table."""
    for run in runs:
        made = min((datetime.fromisoformat(p["created"]) for p in _history(results) if run.name in p["backbones"]),
                   default=None)
        exported = datetime.fromtimestamp((run / "export" / "model.safetensors").stat().st_mtime, timezone.utc)
        if made is not None and exported > made:
            raise UserError(f"{name}: {run.name} was exported after its rows were made ({made:%Y-%m-%d %H:%M} UTC), "
                            f"so it is not the run in the table; {away}")


def _data_options(job: Evaluation):
    from genbackbones.evaluate.data import DataOptions

    return DataOptions("faces", 64, target=job.target) if job.domain == "faces" else \
        DataOptions(str(UTKFACE_WORK / "eval"), 64, target=job.target)


def _evaluate(job: Evaluation, arch: str, runs: list[Path], labels: str, seeds: int, settings: list[str],
              baselines: list[str], device: str, console: Console) -> dict:
    """The evaluator on these runs and label counts, on the domain's evaluation data."""
    from genbackbones.evaluate import run_evaluation

    data = _data_options(job)
    console.print(f"[bold]{job.domain}/{arch}/{job.folder}[/]: {len(runs)} runs + baselines "
                  f"{','.join(baselines) or '-'}, labels {labels}")
    return run_evaluation([str(r) for r in runs], job.task, data=data, labels=labels, seeds=seeds,
                          baselines=baselines, overrides=settings, protocol=job.protocol, device=device,
                          console=console)


# fields that must agree for two evaluations' rows to sit in one table
_SAME = ("format", "task", "protocol", "metrics", "seeds", "settings", "data")


def merge_results(parts: list[dict]) -> dict:
    """Several evaluations of one task on the same data, settings and seeds -> one results dict: the union of their
    backbones, label counts and rows. The rows are independent (a labelled subset depends only on its count and
    seed, and each subset is checked to be the same in every part), so the merge is exact; what each part was
    (command, date, versions, time) stays in `parts`. A row present twice is an error, not a silent choice, unless
    it is a baseline that depends on its seed alone (random init, the landmark mean shape) with the same numbers in
    both: then it is one row."""
    first = parts[0]
    for part in parts[1:]:
        for key in _SAME:
            if _portable(part[key]) != _portable(first[key]):
                raise UserError(f"cannot merge evaluations of {first['task']}: their {key!r} differ; evaluate into a "
                                "new --out folder instead")
    subsets, backbones, unavailable, rows = {}, {}, {}, {}
    for part in parts:
        for n, by_seed in part["subsets"].items():
            if subsets.setdefault(n, by_seed) != by_seed:
                raise UserError(f"cannot merge: the {n}-label subsets differ between the evaluations")
        for b in part["backbones"]:
            backbones.setdefault(b["name"], b)
        for u in part["unavailable"]:
            unavailable.setdefault(u["name"], u)
        for r in part["runs"]:
            key = (r["backbone"], r["labels"], r["seed"])
            if key in rows and backbones[key[0]].get("kind") in ("reference", "random") and _same_numbers(
                    r["metrics"], rows[key]["metrics"]):
                continue  # the landmark mean shape and random init (seeded by its seed alone): every evaluation
                # that has them scores them on the same subsets, the same; a row that differs is still refused
            if key in rows:
                raise UserError(f"cannot merge: {key[0]} at {key[1]} labels, seed {key[2]} is in two evaluations")
            rows[key] = r
    history = [p for part in parts for p in _history(part)]
    first = {k: v for k, v in first.items() if k != "summary"}  # write_outputs makes it from the merged rows
    return {**first, "labels": sorted({n for p in parts for n in p["labels"]}),
            "subsets": dict(sorted(subsets.items(), key=lambda kv: int(kv[0]))),
            # the runs first, then the baselines and the reference row, as one evaluation orders them
            "backbones": sorted(backbones.values(), key=lambda b: b["kind"] in ("random", "imagenet", "reference")),
            "unavailable": list(unavailable.values()),
            "runs": list(rows.values()),
            "timing": {**first["timing"], "total_seconds": round(sum(p["total_seconds"] for p in history), 1)},
            "parts": history}


def _same_numbers(a, b) -> bool:
    """Two metrics records equal to 1e-6 relative (numbers), or exactly (anything else), at every depth (a metric
    may be a dict, e.g. per-class scores)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_numbers(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _portable(value):
    """`value` with the checkout's absolute path taken out of its strings: the prepared UTKFace split is the same
    data in /work/a/benchmarks/work/... and /work/b/benchmarks/work/... (the subsets' image names are compared too)."""
    if isinstance(value, dict):  # data.validation=0 (the test set scored) is what tables made before it existed did
        return {k: _portable(v) for k, v in value.items() if not (k == "validation" and v == 0)}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    return re.sub(r"/\S*?/(benchmarks/work/)", r"\1", value) if isinstance(value, str) else value


def _history(results: dict) -> list[dict]:
    """The evaluations a results dict is made of: its merged parts, or itself."""
    return results.get("parts", [_part(results)])


def _part(results: dict) -> dict:
    """What one evaluation was, kept when it is merged with others."""
    return {"command": results["command"], "created": results["created"], "versions": results["versions"],
            "labels": results["labels"], "backbones": [b["name"] for b in results["backbones"]],
            "total_seconds": results["timing"]["total_seconds"], "device": results["timing"]["device"],
            "torch_threads": results["timing"]["torch_threads"]}


# ----------------------------------------------------------------------------- report and estimate


def finetune_steps(n: int, settings: dict) -> int:
    """The evaluator's fine-tuning length for N labels: clamp(epochs x N / batch, min_steps, max_steps)."""
    return int(min(settings["max_steps"], max(settings["min_steps"], math.ceil(settings["epochs"] * n /
                                                                                  settings["batch_size"]))))


def estimate(compute: list[dict], evaluated: list[dict], domains: list[str], archs: list[str],
             methods: list[str], protocols: list[str], seeds: int = 3) -> dict:
    """The full benchmark's length from the step times measured by the runs and evaluations recorded in the results
    folder (pretraining and fine-tuning; `--report-only` estimates from what earlier sessions measured).

    Pretraining: each run's steps at the full budget x the median step time measured for the same
    architecture and method (the UTKFace and bundled generators have the same architecture). Evaluation:
    every fine-tuning (segmentation, heatmap landmarks, classification fine-tune) at its full length x
    the seconds per step measured for that architecture and task (a whole fine-tuning run's time over its
    steps, so its set-up and test pass are spread over the steps). Not included: linear probes, ridge and kNN
    (feature extraction once per backbone: the committed real_faces linear probe of 5 backbones took a
    minute), test-set passes, start-up and export.
    """
    step_time = {(r["arch"], r["method"]): r["median_step_seconds"] for r in compute if r["median_step_seconds"]}
    step_cpu = {(r["arch"], r["method"]): r["median_step_cpu_seconds"] for r in compute
                if r.get("median_step_cpu_seconds")}
    pretraining, pretraining_cpu = (sum(FULL_IMAGES / BATCH * times[(a, m)] for _ in domains for a in archs
                                        for m in methods if (a, m) in times) for times in (step_time, step_cpu))
    per_step: dict[tuple[str, str], float] = {}
    for results in evaluated:
        task = results["task"] if results["task"] != "classification" else "classification-finetune"
        if results["task"] == "classification" and results["settings"].get("protocol") != "finetune":
            continue
        for r in results["runs"]:
            if r.get("steps"):
                arch = next(b["arch"] for b in results["backbones"] if b["name"] == r["backbone"])
                per_step.setdefault((arch.split(".")[0], task), r["seconds"] / r["steps"])
    defaults = {"epochs": 50.0, "min_steps": 300, "max_steps": 2000, "batch_size": 8}
    tasks = {"faces": ["segmentation", "landmarks"] + (["classification-finetune"] if "finetune" in protocols else []),
             "utkface": ["classification-finetune"] if "finetune" in protocols else []}  # gender only
    finetuning = 0.0
    for domain in domains:
        settings = {**defaults, "max_steps": 400} if domain == "utkface" else defaults
        counts = [int(n) for n in FINETUNE_LABELS[domain].split(",")]
        models = [(a, m) for a in archs for m in methods] + [(a, "random") for a in archs]
        for task in tasks[domain]:
            for arch, _ in models:
                if (arch, task) in per_step:
                    finetuning += seeds * sum(finetune_steps(n, settings) for n in counts) * per_step[(arch, task)]
    return {"pretraining_hours": pretraining / 3600, "pretraining_cpu_hours": pretraining_cpu / 3600,
            "finetuning_hours": finetuning / 3600,
            "step_seconds": {f"{a}-{m}": s for (a, m), s in step_time.items()},
            "step_cpu_seconds": {f"{a}-{m}": s for (a, m), s in step_cpu.items()},
            "finetune_step_seconds": {f"{a} {t}": s for (a, t), s in per_step.items()}}


def readme(out: Path, written: dict[str, dict], compute: list[dict], missing_protocols: list[str], command: str,
           seconds: float, tiny: bool, grid: list[Evaluation], archs: list[str], not_run: list[str]) -> str:
    """The results README: `written` is every table in `out`, by its folder (<domain>/<arch>/<task>)."""
    from genbackbones.evaluate.report import markdown_tables, summarise

    lines = ["# At equal compute: LayerMatch vs GH-Feat vs self-supervised learning vs random init", "",
             f"Command: `{command}`. Wall time of this command: {seconds / 60:.1f} min (runs and evaluations done by "
             f"earlier sessions are not included; each run's own time is in the table). Machine: "
             f"{platform.machine()}, {os.cpu_count()} CPU cores." + (" `--tiny`: a few steps per run, a smoke test "
                                                                      "of the pipeline, not a measurement." if tiny
                                                                      else ""), "",
             "Every run sees the same number of images (`train.images_seen`); FLOPs per step are counted by "
             "torch's FlopCounterMode over one training step (forward and backward of everything the step runs, "
             "generator included; matrix products and convolutions). Times are the run's logged step times "
             "(metrics.jsonl, every session of a resumed run; start-up, checkpoints and export not included).", "",
             "| domain | backbone | steps | images seen | GFLOPs / step | TFLOPs in all | time in training steps | "
             "median step (wall / CPU) |", "|---|---|---|---|---|---|---|---|"]
    for r in compute:
        lines.append(f"| {r['domain']} | {r['backbone']} | {r['steps']} | {r['images_seen']} | "
                     f"{r['flops_per_step'] / 1e9:.1f} | {r['flops'] / 1e12:.3g} | {r['train_seconds'] / 60:.1f} min | "
                     f"{r['median_step_seconds']:.3f} s / {r['median_step_cpu_seconds']:.3f} s |")
    lines.append("")
    if not_run:
        lines += [f"Not run (no exported run, so not in any table below): {', '.join(not_run)}.", ""]
    if (out / "NOTES.md").is_file():  # the person who ran it: which commands, in which sessions, what was left out
        lines += ["## How these numbers were made", "", (out / "NOTES.md").read_text().strip(), ""]
    if missing_protocols:
        lines += [f"Not evaluated: classification protocol(s) {', '.join(missing_protocols)} (this evaluator does "
                  "not have them yet).", ""]
    not_run = [f"{j.domain}/{a}/{j.folder}" for j in grid for a in archs if f"{j.domain}/{a}/{j.folder}" not in written]
    if not_run:
        lines += [f"Not evaluated (left out of the runs above, e.g. by `--tasks`): {', '.join(not_run)}.", ""]
    for folder, results in written.items():
        results = {**results, "summary": summarise(results)}
        timing = results["timing"]
        tables = markdown_tables(results, folder).split("\n", 2)[2]
        lines += [f"## {folder}", "", f"Data: {results['data']['summary']}. Labels "
                  f"{', '.join(map(str, results['labels']))}; seeds {len(results['seeds'])}; evaluation wall time "
                  f"{timing['total_seconds'] / 60:.1f} min on {timing['device']} ({timing['torch_threads']} threads).",
                  "", tables]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default=None, help="utkface,faces (tiny: faces)")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--images", type=int, default=None, help=f"images seen per run (default {FULL_IMAGES}, "
                                                                 f"tiny {TINY_IMAGES})")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (tiny 1)")
    parser.add_argument("--labels", default=None, help="default per domain (utkface 16,64,256,1024; faces 4,16,64)")
    parser.add_argument("--tasks", default=None,
                        help="only these evaluations, each `folder[:labels]` (e.g. gender-linear,segmentation:4,16): "
                             "fewer tasks or label counts when a session has less time than the whole grid")
    parser.add_argument("--baselines", default="random", help="evaluator baselines (random, imagenet or none)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for pretraining and evaluation")
    parser.add_argument("--work", type=Path, default=None, help=f"run folders (default {WORK.relative_to(REPO)})")
    parser.add_argument("--out", type=Path, default=None, help=f"results (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-evaluation", action="store_true", help="pretraining runs only")
    parser.add_argument("--report-only", action="store_true",
                        help="neither train nor evaluate: write README.md and compute.json from the exported runs and "
                             "the results already there, listing the runs that are missing")
    parser.add_argument("--tiny", action="store_true", help="the bundled domain, a few steps: the pipeline in minutes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    started = time.perf_counter()
    command = shlex.join(["python", "benchmarks/vs_ssl.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        domains = (args.domains or ("faces" if args.tiny else ",".join(DOMAINS))).split(",")
        archs, methods = args.archs.split(","), args.methods.split(",")
        for name, values, valid in (("domain", domains, DOMAINS), ("arch", archs, ARCHS), ("method", methods, METHODS)):
            bad = [v for v in values if v not in valid]
            if bad:
                raise UserError(f"--{name}s: {bad[0]!r} is not one of {', '.join(valid)}")
        images = args.images or (TINY_IMAGES if args.tiny else FULL_IMAGES)
        seeds = args.seeds or (1 if args.tiny else 3)
        work = args.work or (TINY_WORK / "runs" if args.tiny else WORK / "runs")
        out = args.out or (TINY_WORK / "results" if args.tiny else RESULTS)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if "utkface" in domains and not (UTKFACE_WORK / "eval" / "train" / "labels.csv").is_file():
            console.print("the UTKFace split is not prepared: running `python benchmarks/real_faces.py prepare`")
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_faces.py"), "prepare"], check=True)

        protocols, missing = available_protocols()
        grid = evaluations(domains, protocols)
        if args.tiny:
            grid = [replace(j, labels="4") for j in grid]
        jobs = [] if args.skip_evaluation or args.report_only else selected(grid, args.tasks)  # checked before training
        runs = plan(domains, archs, methods, images, args.threads)
        baselines = [b for b in args.baselines.split(",") if b and b != "none"]
        if set(baselines) - {"random", "imagenet"}:
            raise UserError(f"--baselines: {args.baselines!r}: use random, imagenet or none")
        settings = TINY_SETTINGS if args.tiny else None
        folders = {(d, a): [work / r.domain / r.name for r in runs if (r.domain, r.arch) == (d, a)]
                   for d in domains for a in archs}
        plans = [plan_table(job, arch, folders[(job.domain, arch)], out, args.labels or job.labels, seeds,
                            settings or FULL_SETTINGS[job.domain], baselines)
                 for job in jobs for arch in archs]  # every refusal before any training
        compute, not_run = [], []
        recorded = recorded_rows(out)
        for run in runs:
            folder = work / run.domain / run.name
            if args.report_only and read_info(folder).get("status") != "exported":
                if (run.domain, run.name) in recorded:
                    compute.append(recorded[(run.domain, run.name)])
                else:
                    not_run.append(f"{run.domain}/{run.name}")
                continue
            info = read_info(folder) if args.report_only else pretrain(run, folder, console)
            compute.append(compute_row(run, folder, info))
        planned = {(r.domain, r.name) for r in runs}  # runs of other domains, archs or methods stay recorded
        compute += [row for key, row in recorded.items() if key not in planned]
        for table in plans:  # label counts: --labels, else --tasks', else the grid's
            evaluate(table, out, seeds, settings or FULL_SETTINGS[table.job.domain], args.device, console)
        seconds = time.perf_counter() - started
        atomic.write_text(out / "compute.json", json.dumps({"command": command, "wall_seconds": round(seconds, 1),
                                                            "runs": compute}, indent=2) + "\n")
        written = {path.parent.relative_to(out).as_posix(): json.loads(path.read_text())
                   for path in sorted(out.glob("*/*/*/results.json"))}  # this call's tables and earlier ones
        atomic.write_text(out / "README.md", readme(out, written, compute, missing, command, seconds, args.tiny,
                                                    grid, archs, not_run))
        console.print(f"[green]written[/] {out}/README.md ({seconds / 60:.1f} min)")
        guess = estimate(compute, list(written.values()), list(DOMAINS), list(ARCHS), list(METHODS), protocols)
        console.print(
            f"estimate of the full benchmark on this machine, from the step times measured here: pretraining "
            f"{guess['pretraining_hours']:.1f} h wall ({guess['pretraining_cpu_hours']:.1f} h of CPU time of the "
            f"training processes) for {len(DOMAINS) * len(ARCHS) * len(METHODS)} runs x "
            f"{FULL_IMAGES // BATCH} steps, fine-tuning {guess['finetuning_hours']:.1f} h (linear probes, kNN, "
            "ridge, test passes and start-up not included)", highlight=False, soft_wrap=True)
        atomic.write_text(out / "estimate.json", json.dumps(guess, indent=2) + "\n")
        return 0
    except UserError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
