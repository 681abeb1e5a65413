"""Real faces (UTKFace): backbones pretrained against a UTKFace generator vs random init and ImageNet.

Three steps, from the repository root:

    # 1. a fixed-seed split of ../shared/data/utkface into the generator's training images and a
    #    held-out test set (symlinks + labels.csv; nothing is copied, nothing is committed)
    python benchmarks/real_faces.py prepare
    # 2. after training the generator: its quality figure (domain Frechet distance, three numbers)
    python benchmarks/real_faces.py quality benchmarks/assets/utkface64/generator
    # 3. after training the backbones (benchmarks/README.md lists the commands):
    python benchmarks/real_faces.py evaluate runs/lm-hrnet-utkface runs/lm-resnet18-utkface runs/gh-resnet18-utkface

`prepare` writes benchmarks/work/utkface64/:

    gan/                 every training-split image (what `benchmarks/recipes/generators/utkface64.yaml` trains on)
    held_out/            every test-split image (never trains anything)
    eval/train/          a fixed-seed subset of the training split + labels.csv: the labelled pool
    eval/test/           a fixed-seed subset of the test split + labels.csv: never seen by the generator
    split.json           file counts, the seed and the age bins

`evaluate` runs attribute classification (gender; age group) with the linear-probe and the
fine-tune protocol at several label counts and 3 seeds, every backbone and baseline through the
identical protocol (`genbackbones.evaluate`), and writes one folder per target x protocol under
benchmarks/results/real_faces/, then rebuilds README.md there from every results folder (so the
protocols may be separate commands). With `--data DIR --task segmentation|landmarks` it evaluates
the same backbones on your own labelled faces (any layout or `datasets` source the evaluator
reads, with the same data flags: --classes, --eye-indices, --data-split, ...) into a folder
named after the task.

UTKFace is for non-commercial research only: nothing derived from it ships in the package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see genbackbones/cli/__init__.py

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

from genbackbones import atomic  # noqa: E402
from genbackbones.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UTKFACE = REPO.parent / "shared" / "data" / "utkface" / "images"
WORK = REPO / "benchmarks" / "work" / "utkface64"
RESULTS = REPO / "benchmarks" / "results" / "real_faces"
NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>[01])_")
GENDERS = ("male", "female")  # UTKFace: 0 male, 1 female
AGE_BINS = ((0, 14), (15, 29), (30, 44), (45, 59), (60, 200))
TARGETS = ("gender", "age_group")
PROTOCOLS = ("linear", "finetune")


def age_group(age: int) -> str:
    """The age bin of `age`, named like "15-29" (the last bin is "60+")."""
    for low, high in AGE_BINS:
        if low <= age <= high:
            return f"{low}+" if high >= 200 else f"{low}-{high}"
    raise ValueError(f"age {age} outside every bin")


def parse_name(name: str) -> dict | None:
    """UTKFace file name `[age]_[gender]_[race]_[date].jpg.chip.jpg` -> labels (None if it does not parse)."""
    m = NAME.match(name)
    if not m:
        return None
    age = int(m["age"])
    return {"age": age, "gender": GENDERS[int(m["gender"])], "age_group": age_group(age)}


def split_files(names: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A fixed-seed split of sorted file names into (train, test); disjoint by construction."""
    names = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(names))
    n_test = round(len(names) * test_fraction)
    test = sorted(names[i] for i in perm[:n_test])
    train = sorted(names[i] for i in perm[n_test:])
    return train, test


def prepare(source: Path, out: Path, test_fraction: float, seed: int, pool: int, test_size: int,
            console: Console) -> dict:
    """Write the symlink folders and labels; returns what split.json records."""
    if not source.is_dir():
        raise UserError(f"{source} does not exist; point --utkface at the folder of UTKFace images")
    files = sorted(p.name for p in source.iterdir() if p.is_file() and p.name.lower().endswith(".jpg"))
    labels = {n: parse_name(n) for n in files}
    unparsed = [n for n, lab in labels.items() if lab is None]
    names = [n for n, lab in labels.items() if lab is not None]
    if len(names) < 20:
        raise UserError(f"{source}: found {len(names)} images named like UTKFace (age_gender_race_date.jpg); "
                        "need at least 20")
    train, test = split_files(names, test_fraction, seed)
    rng = np.random.default_rng(seed + 1)
    eval_train = sorted(rng.choice(train, size=min(pool, len(train)), replace=False).tolist())
    eval_test = sorted(rng.choice(test, size=min(test_size, len(test)), replace=False).tolist())
    assert not set(train) & set(test) and not set(eval_train) & set(test)
    with atomic.directory(out, overwrite=out.exists()) as tmp:
        _links(tmp / "gan", source, train)
        _links(tmp / "held_out", source, test)
        for sub, chosen in (("train", eval_train), ("test", eval_test)):
            _links(tmp / "eval" / sub, source, chosen)
            rows = ["name,gender,age_group,age"] + [
                f"{n},{labels[n]['gender']},{labels[n]['age_group']},{labels[n]['age']}" for n in chosen]
            (tmp / "eval" / sub / "labels.csv").write_text("\n".join(rows) + "\n")
        facts = {"source": str(source), "images": len(names), "unparsed_names": unparsed, "seed": seed,
                 "test_fraction": test_fraction, "generator_training_images": len(train), "held_out": len(test),
                 "eval_pool": len(eval_train), "eval_test": len(eval_test),
                 "age_bins": [age_group(lo) for lo, _ in AGE_BINS],
                 "eval_test_distribution": {t: _counts([labels[n][t] for n in eval_test]) for t in TARGETS}}
        (tmp / "split.json").write_text(json.dumps(facts, indent=2) + "\n")
    console.print(f"[green]written[/] {out}: {len(train)} generator-training images, {len(test)} held out; "
                  f"labelled pool {len(eval_train)}, test {len(eval_test)}")
    return facts


def _links(folder: Path, source: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for n in names:
        (folder / n).symlink_to((source / n).resolve())


def _counts(values: list[str]) -> dict[str, int]:
    keys, counts = np.unique(values, return_counts=True)
    return {str(k): int(c) for k, c in zip(keys, counts)}


def quality(generator: str, work: Path, n: int, net_steps: int, console: Console) -> dict:
    """Domain Frechet distance on real faces: generated-vs-held-out next to real-vs-real and a random-init G.

    As `genbackbones.quality` for the bundled domain, but the feature network (a small CNN) learns gender and
    age group from UTKFace training faces; real-vs-real compares training faces it did not learn from with
    the held-out faces.
    """
    import torch

    from genbackbones.data.images import load_folder
    from genbackbones.generators.open import open_generator
    from genbackbones.quality import (features_of, frechet_distance, generated_images, random_init_like,
                                      train_attribute_net_on)

    G = open_generator(generator).G
    size = G.img_resolution
    console.print(f"loading faces at {size} px ...")
    train, held_out = load_folder(work / "gan", size), load_folder(work / "held_out", size)
    n = min(n, len(held_out), len(train) // 2)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    other_real, fit = order[:n], order[n:]
    names = [Path(name).name for name in train.names]
    labels = {t: [parse_name(names[i])[t] for i in fit.tolist()] for t in TARGETS}
    labels = {t: torch.tensor([sorted(set(v)).index(x) for x in v]) for t, v in labels.items()}
    console.print(f"training the feature network on {len(fit)} faces ({net_steps} steps) ...")
    net = train_attribute_net_on(train.batch(fit.tolist()), labels, steps=net_steps)
    reference = features_of(net, held_out.batch(list(range(n))))
    report = {"n": n, "feature_net_steps": net_steps,
              "real_vs_real": frechet_distance(features_of(net, train.batch(other_real.tolist())), reference),
              "generated_vs_real": frechet_distance(features_of(net, generated_images(G, n)), reference),
              "random_init_vs_real": frechet_distance(features_of(net, generated_images(random_init_like(G), n)),
                                                      reference)}
    console.print(json.dumps(report, indent=2))
    return report


def evaluate(args, console: Console, err: Console) -> int:
    """Every target x protocol through `run_evaluation`; one results folder each, then README.md.

    The README is rebuilt from every results folder under --out, so the linear probe and the
    fine-tune may be run by separate commands (with different label counts) into one table set.
    """
    from dataclasses import replace

    from genbackbones.evaluate import run_evaluation
    from genbackbones.evaluate.options import choose_protocol
    from genbackbones.evaluate.options import data_options, flag_values
    from genbackbones.evaluate.report import print_table, summarise, write_outputs

    data = args.data or args.work / "eval"
    if args.data is None and not (data / "train" / "labels.csv").is_file():
        raise UserError(f"{data} is not prepared; run `python benchmarks/real_faces.py prepare` first")
    labels = args.labels or ("8,32" if args.tiny else "16,64,256,1024")
    seeds = args.seeds or (2 if args.tiny else 3)
    tiny = ["min_steps=3", "max_steps=3"] if args.tiny else []
    overrides = [*tiny, *args.set]  # protocol settings and data.* options such as data.test_size
    options = data_options(str(data), args.resolution, **flag_values(args))  # the evaluator's own data flags
    if args.task == "classification":
        targets = args.targets.split(",") if options.target is None else [options.target]
        jobs = [(f"{t}-{p}", replace(options, target=t), choose_protocol(p, None)) for t in targets
                for p in args.protocols.split(",")]
    else:  # your own masks or landmarks: one protocol per task
        jobs = [(args.task, options, None)]
    for folder, options, protocol in jobs:
        results = run_evaluation([str(r) for r in args.runs], args.task, data=options, labels=labels, seeds=seeds,
                                 baselines=args.baselines.split(","), overrides=overrides, protocol=protocol,
                                 device=args.device, console=err)
        results["benchmark"] = {"tiny": args.tiny, "runs": [str(r) for r in args.runs]}
        write_outputs(results, args.out / folder)
        print_table({**results, "summary": summarise(results)}, console)
    split_file = args.work / "split.json"
    split = json.loads(split_file.read_text()) if args.data is None and split_file.is_file() else None
    atomic.write_text(args.out / "README.md", readme(args.out, split))
    console.print(f"[green]written[/] {args.out}/README.md")
    return 0


def readme(out: Path, split: dict | None) -> str:
    """README.md for every results folder under `out` (`<target>-<protocol>` or a task), each with its command."""
    from genbackbones.evaluate.report import markdown_tables, summarise

    sections, runs = [], {}
    order = [f"{t}-{p}" for t in TARGETS for p in PROTOCOLS]  # UTKFace first, in this order; then the rest
    folders = sorted(out.glob("*/results.json"), key=lambda path: (
        order.index(path.parent.name) if path.parent.name in order else len(order), path.parent.name))
    for path in folders:
        results = json.loads(path.read_text())
        results["summary"] = summarise(results)
        bench = results.get("benchmark", {})
        for run in bench.get("runs", []):
            runs.setdefault(run, _describe_run(Path(run)))
        tiny = " `--tiny`: a few steps per run, a smoke test, not a measurement." if bench.get("tiny") else ""
        st, timing = results["settings"], results["timing"]
        steps = (f"fine-tune steps clamp({st['epochs']:g} epochs, {st['min_steps']}, {st['max_steps']}); "
                 if results["task"] != "classification" or st.get("protocol") == "finetune" else "")
        tables = markdown_tables(results, path.parent.name).split("\n", 2)[2]  # our heading replaces its own
        sections.append(
            f"## {path.parent.name}\n\nData: {results['data']['summary']}. Labels "
            f"{', '.join(map(str, results['labels']))}; seeds {len(results['seeds'])}; {steps}"
            f"wall time {timing['total_seconds'] / 60:.1f} min on {timing['device']} ({timing['torch_threads']} "
            f"threads). Command: `python {' '.join(results['command'])}`.{tiny}\n\n{tables}")
    about = [] if split is None else [
        f"Split: {split['generator_training_images']} generator-training images, {split['held_out']} held out "
        f"(seed {split['seed']}); labelled pool {split['eval_pool']} (training split), test {split['eval_test']} "
        f"(held-out split only). Age bins {', '.join(split['age_bins'])}.", ""]
    return "\n".join([
        "# Real faces: backbones pretrained on a face generator vs baselines", "", *about,
        "Backbones:", *runs.values(), "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores. Mean ± sample std over seeds; per-seed "
        "values and settings are in each folder's results.json. UTKFace: non-commercial research licence.", "",
        *sections])


def _describe_run(run: Path) -> str:
    config_path = run / "export" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    prov = config.get("genbackbones", {})
    return (f"- `{run}`: {config.get('architecture', '?')}, {prov.get('method', '?')}, "
            f"{prov.get('steps', '?')} steps x {prov.get('images_per_step', '?')} images")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from genbackbones.evaluate.options import add_argparse_flags

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fixed-seed split into generator-training and held-out images")
    prep.add_argument("--utkface", type=Path, default=UTKFACE)
    prep.add_argument("--work", type=Path, default=WORK)
    prep.add_argument("--test-fraction", type=float, default=0.2)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--pool", type=int, default=4000, help="labelled pool drawn from the training split")
    prep.add_argument("--test-size", type=int, default=2000, help="test images drawn from the held-out split")
    qu = sub.add_parser("quality", help="the generator's domain Frechet distance vs real-vs-real and random init")
    qu.add_argument("generator", help="generator folder (or any genbackbones generator source)")
    qu.add_argument("--work", type=Path, default=WORK)
    qu.add_argument("--n", type=int, default=4741, help="faces per set (at most the held-out count)")
    qu.add_argument("--net-steps", type=int, default=600)
    qu.add_argument("--json", type=Path, default=None, help="also write the report here")
    ev = sub.add_parser("evaluate", help="classification tables for the given runs vs baselines")
    ev.add_argument("runs", type=Path, nargs="+", help="pretraining runs (or any backbone reference)")
    ev.add_argument("--work", type=Path, default=WORK)
    ev.add_argument("--task", default="classification", choices=("classification", "segmentation", "landmarks"),
                    help="segmentation / landmarks: with --data, your own labelled faces (masks/ or landmarks.csv)")
    ev.add_argument("--data", default=None,
                    help="labelled faces in any form `genbackbones evaluate --data` reads (docs/evaluate.md); default "
                    "the prepared UTKFace eval/")
    ev.add_argument("--targets", default=",".join(TARGETS), help="classification: labels.csv columns (--target "
                    "gives one)")
    ev.add_argument("--protocols", default=",".join(PROTOCOLS), help="classification: linear, knn, finetune")
    add_argparse_flags(ev)  # every data flag of `genbackbones evaluate`, parsed by the same code
    ev.add_argument("--labels", default=None, help="default 16,64,256,1024 (tiny: 8,32)")
    ev.add_argument("--seeds", type=int, default=None, help="default 3 (tiny: 2)")
    ev.add_argument("--baselines", default="imagenet,random")
    ev.add_argument("--resolution", type=int, default=64)
    ev.add_argument("--set", action="append", default=[], help="protocol/data setting, as in `evaluate --set`")
    ev.add_argument("--out", type=Path, default=RESULTS)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--tiny", action="store_true", help="a few steps: proves the benchmark runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console, err = Console(), Console(stderr=True)
    try:
        if args.command == "prepare":
            prepare(args.utkface, args.work, args.test_fraction, args.seed, args.pool, args.test_size, console)
            return 0
        if args.command == "quality":
            report = quality(args.generator, args.work, args.n, args.net_steps, console)
            if args.json:
                atomic.write_text(args.json, json.dumps(report, indent=2) + "\n")
            return 0
        return evaluate(args, console, err)
    except UserError as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
