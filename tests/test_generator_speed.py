"""benchmarks/generator_speed.py as typed: old code read from git, timed against the files on disk, outputs checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "generator_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_one_cell_against_the_committed_code(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the script reads the old code from git")
    out = tmp_path / "speed.json"
    proc = _run("--before", "HEAD", "--sizes", "64", "--batches", "2", "--pairs", "1",
                "--only", "G forward,G reconstruction", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["size"], r["batch"], r["workload"]) for r in result["rows"]] == [
        (64, 2, "G forward"), (64, 2, "G reconstruction")]
    for row in result["rows"]:
        assert row["before_s"] > 0 and row["after_s"] > 0 and row["speedup"] > 0
        # the two versions were given the same weights and inputs: they must compute the same thing
        assert row["max_abs_diff_rel"] <= 1e-5
    assert "| 64 | 2 | G forward |" in proc.stdout


def test_stylegan3_cell_against_the_committed_code(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the script reads the old code from git")
    out = tmp_path / "speed.json"
    proc = _run("--family", "stylegan3", "--before", "HEAD", "--sizes", "64", "--batches", "1", "--pairs", "1",
                "--only", "G forward,G reconstruction", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["family"] == "stylegan3"
    assert [(r["size"], r["batch"], r["workload"]) for r in result["rows"]] == [
        (64, 1, "G forward"), (64, 1, "G reconstruction")]
    for row in result["rows"]:
        assert row["before_s"] > 0 and row["after_s"] > 0 and row["max_abs_diff_rel"] <= 1e-5


@pytest.mark.parametrize("args,message", [
    (("--sizes", "65"), "--sizes must be among [64, 256]"),
    (("--only", "G fwd"), "unknown workload(s) ['G fwd']"),
    (("--family", "stylegan3", "--only", "D forward"), "unknown workload(s) ['D forward']"),
    (("--before", "no-such-revision", "--sizes", "64"), "cannot read genbackbones/generators/stylegan2.py"),
])
def test_bad_arguments_are_one_error_line(args, message):
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""
