"""benchmarks/gpu_throughput.py as typed: one-line errors, and (slow) one real-scale LayerMatch step on this
machine, so the script a GPU user runs has been run end to end (on a GPU its figures are still unmeasured here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["--steps", "0"], ["--batch", "-1"], ["--recipes", "quickstart"]])
def test_bad_arguments_are_one_line(args):
    proc = run(*args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


@pytest.mark.slow
def test_one_real_scale_step_runs_and_reports(tmp_path):
    proc = run("--recipes", "layermatch/hrnet_w18-ffhq256", "--steps", "1", "--warmup", "0", "--batch", "1",
               "--json", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "t.json").read_text())
    (row,) = record["runs"]
    assert row["resolution"] == 256 and row["generator"] == "random:ffhq256" and row["floor_s"] > 0
    assert record["replaced"] == ["generator.source=random:ffhq256", "backbone.init=random"]
