"""Interrupted evaluations keep what finished (issue 27, row 7): Ctrl-C keeps the finished cells and prints the
command that continues; that command computes only the missing cells and writes the results.json an
uninterrupted run writes. Also: progress inside a cell, and stderr lines that are never wrapped in a log."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genbackbones.evaluate.cells import CELLS, is_resumable_evaluation
from genbackbones.progress import PROGRESS_SECONDS_ENV

from .cli_runs import run_cli
from .test_evaluate_backbones import make_tiny_run

# 2 backbones x 2 seeds = 4 cells of 10 fine-tuning steps (~1-5 s each on 2 shared cores): room for Ctrl-C
# between the first cell and the last
SETTINGS = ["--set", "min_steps=10", "--set", "max_steps=10", "--set", "data.pool=12", "--set", "data.test_size=6",
            "--set", "eval_batch_size=8"]
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.getbasetemp())  # shared with the other evaluate tests in one session


def evaluate_args(run: Path, out: Path, labels: str = "4") -> list[str]:
    return ["evaluate", str(run), "--task", "segmentation", "--labels", labels, "--seeds", "2", "--baselines",
            "random", "--out", str(out), *SETTINGS]


def comparable(results: dict, out: Path) -> dict:
    """results.json without its timing fields (timing.total_seconds, created, each run's seconds), and with the
    output folder's name out of the recorded command."""
    results = json.loads(json.dumps(results).replace(str(out), "OUT"))
    results.pop("created")
    results["timing"].pop("total_seconds")
    for run in results["runs"]:
        run.pop("seconds")
    return results


def interrupt_after_first_cell(args: list[str], out: Path, cwd: Path) -> tuple[int, str]:
    """Run ARGS and send SIGINT (Ctrl-C) as soon as the first finished cell is on disk."""
    # Ctrl-C in a terminal: SIGINT at its default disposition (a job started with `&` under nohup inherits it
    # ignored; see test_user_contract's Ctrl-C test)
    proc = subprocess.Popen([sys.executable, "-m", "genbackbones", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list((out / CELLS).glob("*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the evaluation ended before its first cell was kept: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow  # three evaluate processes and one refused: ~60 s on 2 idle cores
def test_ctrl_c_keeps_finished_cells_and_the_same_command_continues_to_the_same_results(tiny_run, tmp_path):
    # a long folder name with spaces: the printed command quotes it, and no stderr line is wrapped at 80 columns
    base = tmp_path / ("a folder whose name is long enough to pass eighty columns " * 2).strip()
    base.mkdir()
    straight_out, out = base / "straight", base / "evaluation with spaces"

    straight = run_cli(*evaluate_args(tiny_run, straight_out), cwd=base, env={**OFFLINE, PROGRESS_SECONDS_ENV: "0"})
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert sorted(p.name for p in straight_out.iterdir()) == ["model_index.json", "results.json",
                                                              "segmentation.png", "summary.csv"]  # no cells/ left
    # progress inside each cell, as plain lines (stderr is not a terminal), every update at interval 0
    assert "[1/4] evaluate-tiny-run · 4 labels · seed 0: 5/10 steps (50%)" in straight.stderr
    assert "[4/4] random init · 4 labels · seed 1: 10/10 steps (100%)" in straight.stderr
    # one line each, however long the path (rich wraps at 80 columns when stderr is not a terminal)
    assert f"results {straight_out}/results.json · {straight_out}/summary.csv · {straight_out}/segmentation.png\n" \
        in straight.stderr

    args = evaluate_args(tiny_run, out)
    code, err = interrupt_after_first_cell(args, out, base)
    assert code == 130 and "Traceback" not in err, err[-3000:]
    kept = len(list((out / CELLS).glob("*.json")))
    assert 1 <= kept < 4, kept
    assert f"interrupted: {kept} of 4 evaluations kept in {out}; continue it with `{shlex.join(['genbackbones', *args])}`\n" \
        in err, err[-3000:]
    assert shlex.quote(str(out)) in err and not (out / "results.json").exists()
    assert is_resumable_evaluation(out)

    # another evaluation into that folder is refused: nothing of this one lost, nothing of the other mixed in
    before = sorted((out / CELLS).iterdir())
    other = run_cli(*evaluate_args(tiny_run, out, labels="5"), cwd=base, env=OFFLINE)
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and len(lines) == 1, other.stderr[-3000:]
    assert lines[0] == (f"error: --out {out} holds {kept} finished evaluation(s) of another command "
                        f"(`{shlex.join(['genbackbones', *args])}`); continue that one with its own command, or "
                        "choose another --out")
    assert sorted((out / CELLS).iterdir()) == before

    # the same command line continues it: the kept cells are not computed again
    resumed = run_cli(*args, cwd=base, env=OFFLINE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing {out}: {kept} of 4 evaluations finished before are kept" in resumed.stderr
    assert len(re.findall(r"^\[\d/4\] .* · kept$", resumed.stderr, flags=re.M)) == kept
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in straight_out.iterdir())
    a = json.loads((straight_out / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert len(b["runs"]) == 4 and comparable(b, out) == comparable(a, straight_out)
    assert (out / "summary.csv").read_text() == (straight_out / "summary.csv").read_text()
    assert not is_resumable_evaluation(out)



@pytest.mark.slow  # two evaluations and a continued one: ~2 min on 2 busy cores
def test_kill_9_at_random_moments_of_an_evaluation_loses_nothing_finished(tiny_run, tmp_path):
    """The stress half of issue 27's acceptance for evaluations: SIGKILL (no handler runs) at seeded random
    moments after cells start to land leaves only whole cell files, never a half-written results folder, and
    the same command each time continues to the results an uninterrupted run writes."""
    import random

    straight_out, out = tmp_path / "straight", tmp_path / "killed"
    straight = run_cli(*evaluate_args(tiny_run, straight_out), cwd=tmp_path, env=OFFLINE)
    assert straight.returncode == 0, straight.stderr[-3000:]
    args, rng, kills = evaluate_args(tiny_run, out), random.Random(27), 0
    # kills land within one cell's time (as the uninterrupted run measured it) of the first kept cell, so on a
    # fast machine too they fall while the other cells are computed
    measured = [run["seconds"] for run in json.loads((straight_out / "results.json").read_text())["runs"]]
    cell_seconds = min([t for t in measured if t > 0] or [0.5])
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "genbackbones", *args], cwd=tmp_path, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **OFFLINE})
        deadline = time.time() + 300
        while not list((out / CELLS).glob("*.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, cell_seconds))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=120)
        if (out / "results.json").exists():
            break
        for cell in (out / CELLS).iterdir():  # only whole, readable cells; debris is hidden and temporary
            assert cell.name.startswith(".") or json.loads(cell.read_text())["key"], cell
    assert kills >= 1, "no kill landed: the evaluation finished before every kill"
    if not (out / "results.json").exists():  # (a kill can land after the final swap: then it is complete)
        resumed = run_cli(*args, cwd=tmp_path, env=OFFLINE)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in straight_out.iterdir())
    a = json.loads((straight_out / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert comparable(b, out) == comparable(a, straight_out)


def test_an_interrupted_evaluate_call_continues_to_the_same_results(tiny_run, tmp_path, monkeypatch):
    """The same contract through the Python API, in one process (fast): KeyboardInterrupt in the second cell."""
    import io

    import torch
    from rich.console import Console

    import genbackbones.evaluate.tasks as tasks
    from genbackbones.evaluate import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU
    tiny = ["min_steps=2", "max_steps=2", "data.pool=12", "data.test_size=6", "eval_batch_size=8"]

    def run(out: Path, console: Console) -> dict:
        evaluate([str(tiny_run)], "segmentation", labels="4", seeds=2, baselines=["random"], overrides=tiny,
                 out=out, device="cpu", console=console, table_console=Console(file=io.StringIO()))
        return json.loads((out / "results.json").read_text())

    try:
        straight = run(tmp_path / "straight", Console(file=io.StringIO()))
        real, calls = tasks.run_protocol, []

        def ctrl_c_in_the_second_cell(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(tasks, "run_protocol", ctrl_c_in_the_second_cell)
        console = Console(file=io.StringIO(), width=40)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "out", console)
        out = tmp_path / "out"
        assert console.file.getvalue().endswith(
            f"interrupted: 1 of 4 evaluations kept in {out}; continue it with `evaluate(..., out={str(out)!r})`\n")
        monkeypatch.setattr(tasks, "run_protocol", real)
        resumed = run(out, Console(file=io.StringIO()))
    finally:
        torch.set_num_threads(threads)
    assert comparable(resumed, out) == comparable(straight, tmp_path / "straight")
