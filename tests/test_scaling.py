"""benchmarks/scaling.py (issue 28): the validation split the settings are chosen on never touches the test set, and
the whole budget sweep runs end to end on tiny settings: a run killed mid-way resumes bit-identically, the settings
are chosen on validation scores, every budget is evaluated, summary.csv, the plots and compute.json are written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.engine.loop import STOP_AFTER_ENV, read_metrics
from genbackbones.errors import UserError
from genbackbones.evaluate.options import DataOptions, apply_data_overrides
from genbackbones.evaluate.sources import load_data
from tests.cli_runs import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_the_validation_split_is_held_out_of_the_pool_and_never_overlaps_the_test_split():
    plain = load_data(DataOptions(pool=40, test_size=12, resolution=32), "classification")
    held = load_data(apply_data_overrides(DataOptions(pool=40, test_size=12, resolution=32), ["data.validation=10"]),
                     "classification")
    index = lambda names: {int(n.split("/")[1]) for n in names}  # noqa: E731  faces/0000123 -> 123
    pool, test = index(plain.train.names), index(plain.test.names)
    validation, rest = index(held.test.names), index(held.train.names)
    assert len(validation) == 10 and len(rest) == 30
    assert validation | rest == pool and not validation & rest  # carved out of the pool, nothing else
    assert not validation & test and not rest & test  # the test indices are in neither
    assert held.description["validation"] == 10 and "the test set is not used" in held.description["test"]
    # the held-out images are the pool's own images with their own labels, not re-drawn ones
    positions = [plain.train.names.index(n) for n in held.test.names]
    assert torch.equal(held.test.labels, plain.train.take(positions).labels)
    assert held.test.names == load_data(DataOptions(pool=40, test_size=12, resolution=32, validation=10), "classification").test.names
    for bad, message in (("-1", "data.validation must be 0"), ("40", "hold out between 1 and 39 images")):
        with pytest.raises(UserError, match=message):
            load_data(apply_data_overrides(DataOptions(pool=40, test_size=12, resolution=32), [f"data.validation={bad}"]),
                      "classification")


def test_the_validation_split_of_a_folder_leaves_its_test_split_alone(tmp_path):
    from PIL import Image

    for i in range(30):
        folder = tmp_path / "data" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (i * 8, 255 - i * 8, i)).save(folder / f"{i:02d}.png")
    options = DataOptions(str(tmp_path / "data"), 16)
    plain, held = load_data(options, "classification"), load_data(DataOptions(**{**options.__dict__,
                                                                                 "validation": 6}), "classification")
    assert len(held.test) == 6 and set(held.test.names) <= set(plain.train.names)
    assert set(held.train.names) == set(plain.train.names) - set(held.test.names)
    assert not set(held.test.names) & set(plain.test.names) and not set(held.train.names) & set(plain.test.names)


@pytest.mark.slow
def test_scaling_tiny_runs_the_sweep_resumes_a_killed_run_and_writes_the_curves(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--tiny", "--arch", "resnet18", "--threads", "1",
           "--lr-factors", "1,2", "--batches", "4", "--temperatures", "0.5", "--budgets", "8,16",
           "--tasks", "landmarks,hair_colour-linear", "--work", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                            env={**os.environ, STOP_AFTER_ENV: "1"})
    assert killed.returncode == 2 and "Traceback" not in killed.stderr, killed.stderr[-3000:]
    first = tmp_path / "runs" / "faces" / "resnet18-layermatch-lr1-b4-8"
    assert "resnet18-layermatch failed (exit -9)" in " ".join(killed.stderr.split())
    assert latest_checkpoint(first).name == "step-0000001"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from step 1" in first.with_name(first.name + ".log").read_text()
    assert [h["step"] for h in read_metrics(first)] == [1, 2]
    # bit-identical: the resumed run ends with the weights of the same recipe trained straight through
    straight = run_cli("pretrain", str(first / "recipe.yaml"), "-o", str(tmp_path / "straight"), "--no-export",
                       cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = safetensors.torch.load_file(latest_checkpoint(first) / "model.safetensors")
    b = safetensors.torch.load_file(latest_checkpoint(tmp_path / "straight") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sittings = json.loads(first.with_name(first.name + ".provenance.json").read_text())["sittings"]
    assert len(sittings) == 2 and all(len(s["commit"]) == 40 and "CPU cores" in s["machine"] for s in sittings)
    runs = [d for d in (tmp_path / "runs" / "faces").iterdir() if d.is_dir()]
    assert any("t0.5" in d.name for d in runs)  # each run's log is named by its whole name, dots included
    assert all(d.with_name(d.name + ".log").is_file() for d in runs), sorted(p.name for p in runs[0].parent.iterdir())

    out = tmp_path / "out"
    selection = json.loads((out / "selection.json").read_text())
    lm = selection["selected"]["faces"]["layermatch"]
    assert [c["settings_tag"] for c in lm["stages"][0]["candidates"]] == ["lr1-b4", "lr2-b4"]
    assert lm["validation_tasks"] == {"landmarks": "4", "hair_colour-linear": "4"}
    # the criterion recomputed from the recorded validation scores: per task 1 = better, 2 = worse, 1.5 = tied
    one, two = lm["stages"][0]["candidates"]
    better = {"landmarks": lambda a, b: a < b, "hair_colour-linear": lambda a, b: a > b}  # NME, top-1
    rank = [sum(1.5 if x == y else (1.0 if better[t](x, y) else 2.0)
                for t, (x, y) in ((t, (a["validation"][t], b["validation"][t])) for t in better)) / 2
            for a, b in ((one, two), (two, one))]
    assert [one["mean_rank"], two["mean_rank"]] == rank
    assert lm["stages"][0]["chosen"] == (one if rank[0] <= rank[1] else two)["run"]
    assert "data.validation=8" in lm["evaluation_settings"]
    validation = json.loads((out / "selection" / "faces" / "resnet18" / "landmarks" / "results.json").read_text())
    assert validation["data"]["validation"] == 8 and validation["data"]["options"]["validation"] == 8
    chosen = {m: selection["selected"]["faces"][m]["chosen_tag"] for m in ("layermatch", "simclr-real")}

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0]) == ["method", "images_seen", "task", "labels", "metric", "mean", "std", "seeds", "settings",
                             "run", "commit", "machine", "evaluation"]
    for r in rows:  # every point says where it comes from: random init was not trained
        trained = r["method"] != "random init"
        assert (len(r["commit"]) >= 10 and "CPU cores" in r["machine"]) == trained and bool(r["run"]) == trained
        assert (out / r["evaluation"]).is_file()
    points = {(r["method"], int(r["images_seen"]), r["task"]) for r in rows}
    for task in ("faces/landmarks", "faces/hair_colour-linear"):
        assert {("layermatch", 8, task), ("layermatch", 16, task), ("simclr-real", 8, task),
                ("simclr-real", 16, task), ("random init", 0, task)} == {p for p in points if p[2] == task}
    sweep = json.loads((out / "sweep" / "faces" / "resnet18" / "landmarks" / "results.json").read_text())
    assert sweep["data"]["options"]["validation"] == 0  # the sweep is scored on the test set
    for r in rows:
        if r["method"] != "random init":
            assert r["settings"] == chosen[r["method"]]
            row = next(s for s in json.loads((out / "sweep" / "faces" / "resnet18" / r["task"].split("/")[1] /
                                              "results.json").read_text())["summary"]
                       if s["backbone"] == f"resnet18-{r['method']}-{r['settings']}-{r['images_seen']}"
                       and s["metric"] == r["metric"] and s["labels"] == int(r["labels"]))
            assert float(r["mean"]) == round(row["mean"], 4)
    for plot in ("faces-landmarks.png", "faces-hair_colour-linear.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    compute = json.loads((out / "compute.json").read_text())
    names = {r["backbone"] for r in compute["runs"]}
    assert {f"resnet18-layermatch-{chosen['layermatch']}-16", "resnet18-layermatch-lr2-b4-8"} <= names
    for r in compute["runs"]:
        assert r["flops"] == r["steps"] * r["flops_per_step"] > 0 and r["cpu_seconds"] > 0
        assert r["images_seen"] == int(r["backbone"].rsplit("-", 1)[1])
    generator = compute["generators"][0]
    assert generator["domain"] == "faces" and generator["flops"] == 5000 * generator["flops_per_step"] > 1e9
    assert "## Settings chosen on the validation split" in (out / "README.md").read_text()
    # a second call trains and evaluates nothing new
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "pretrain" not in again.stderr.replace("done earlier", ""), again.stderr[-2000:]


def _split_table(table: dict, keep: set[str]) -> dict:
    """`table` with only the backbones named in `keep` (and their rows), as one process's evaluation of them."""
    part = {**table, "backbones": [b for b in table["backbones"] if b["name"] in keep],
            "runs": [r for r in table["runs"] if r["backbone"] in keep]}
    part["benchmark"] = {**table["benchmark"], "runs": [r for r in table["benchmark"]["runs"]
                                                        if Path(r).name in keep]}
    return part


def test_merge_joins_outputs_run_side_by_side_exactly_and_refuses_what_differs(tmp_path):
    """Two outputs made by one process per method (each with its own random-init rows) merge into the table one
    process would have written: the same summary, random init once; a random init that differs, or a method
    selected twice, is one line and exit 2."""
    from genbackbones.evaluate.report import summarise

    table = json.loads((REPO / "benchmarks" / "results" / "vs_ssl" / "faces" / "hrnet_w18_small" / "landmarks" /
                        "results.json").read_text())
    lanes = {"a": {"hrnet_w18_small-layermatch", "random init", "mean shape"},
             "b": {"hrnet_w18_small-simclr-real", "random init", "mean shape"}}
    methods = {"a": "layermatch", "b": "simclr-real"}
    for lane, keep in lanes.items():
        folder = tmp_path / lane / "sweep" / "faces" / "hrnet_w18_small" / "landmarks"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_split_table(table, keep)))
        (tmp_path / lane / "selection.json").write_text(json.dumps(
            {"criterion": "c", "grid": {"lr_factors": [1.0]}, "selected": {"faces": {methods[lane]: {
                "x": lane, "chosen_tag": "lr1-b16", "validation_tasks": {"landmarks": "16"},
                "stages": [{"stage": "lr", "chosen": "r", "candidates": [
                    {"run": "r", "settings_tag": "lr1-b16", "validation": {"landmarks": 40.0}, "mean_rank": 1.0}]}]}}}}))
    generator = {"domain": "faces", "generator": "g", "steps": 1, "batch_size": 1, "images_seen": 1, "time": "t",
                 "flops_per_step": 1.0, "flops": 1.0}  # so the report counts no generator's cost here
    # one run name in two domains (each domain's selection trains the same settings): both rows are kept
    row = json.loads((REPO / "benchmarks" / "results" / "scaling" / "compute.json").read_text())["runs"][0]
    compute = {d: {**row, "domain": d, "backbone": "hrnet_w18_small-layermatch-lr1-b16-16000", "x": d}
               for d in ("faces", "utkface")}
    (tmp_path / "a" / "compute.json").write_text(json.dumps({"command": "c", "runs": [compute["faces"]],
                                                             "generators": [generator]}))
    (tmp_path / "b" / "compute.json").write_text(json.dumps({"command": "c", "runs": [compute["utkface"]],
                                                             "generators": []}))
    script = [sys.executable, str(REPO / "benchmarks" / "scaling.py"), "merge", "--domains", "faces",
              "--work", str(tmp_path / "runs")]
    done = subprocess.run([*script, "--parts", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads((tmp_path / "c" / "sweep" / "faces" / "hrnet_w18_small" / "landmarks" /
                         "results.json").read_text())
    expected = summarise(_split_table(table, lanes["a"] | lanes["b"]))
    assert sorted(merged["summary"], key=json.dumps) == sorted(expected, key=json.dumps)
    assert sum(r["backbone"] == "random init" for r in merged["runs"]) == len(table["labels"]) * len(table["seeds"])
    assert [Path(r).name for r in merged["benchmark"]["runs"]] == ["hrnet_w18_small-layermatch",
                                                                   "hrnet_w18_small-simclr-real"]
    selection = json.loads((tmp_path / "c" / "selection.json").read_text())
    assert {m: r["x"] for m, r in selection["selected"]["faces"].items()} == {"layermatch": "a", "simclr-real": "b"}
    assert (tmp_path / "c" / "summary.csv").is_file()  # the report follows the merge
    runs = json.loads((tmp_path / "c" / "compute.json").read_text())["runs"]
    assert sorted((r["domain"], r["x"]) for r in runs) == [("faces", "faces"), ("utkface", "utkface")]

    b_table = tmp_path / "b" / "sweep" / "faces" / "hrnet_w18_small" / "landmarks" / "results.json"
    other = json.loads(b_table.read_text())
    next(r for r in other["runs"] if r["backbone"] == "random init" and r["labels"] == 4 and r["seed"] == 0
         )["metrics"]["nme_heatmap"] += 1.0
    b_table.write_text(json.dumps(other))
    differs = subprocess.run([*script, "--parts", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path / "d")],
                             capture_output=True, text=True, timeout=300)
    assert differs.returncode == 2 and "Traceback" not in differs.stderr
    assert "random init at 4 labels, seed 0 is in two evaluations" in " ".join(differs.stderr.split())
    twice = subprocess.run([*script, "--parts", f"{tmp_path / 'a'},{tmp_path / 'a'}", "--out", str(tmp_path / "e")],
                           capture_output=True, text=True, timeout=300)
    assert twice.returncode == 2 and "faces/layermatch is selected in two parts" in twice.stderr
    alone = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 2 and alone.stderr.startswith("error: merge needs --parts"), alone.stderr[-2000:]
