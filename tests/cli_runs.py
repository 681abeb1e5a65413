"""The CLI as a user runs it, in a subprocess: shared by the tests of every method, so each checks the same
kill-and-resume contract in the same way."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import safetensors.torch
import torch

from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.engine.loop import STOP_AFTER_ENV, read_metrics


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m genbackbones ARGS` in CWD, with ENV added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "genbackbones", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def kill_and_resume(recipe: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Pretrain RECIPE straight through, and again killed by SIGKILL right after checkpoint 4 then resumed;
    assert that both end with the same weights and the same logged losses. Returns the final weights."""
    straight = run_cli("pretrain", str(recipe), "-o", str(tmp_path / "straight"), "--no-export", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run_cli("pretrain", str(recipe), "-o", str(tmp_path / "killed"), "--no-export", cwd=tmp_path,
                     env={STOP_AFTER_ENV: "4"})
    assert killed.returncode == -9, "the run was meant to die by SIGKILL right after checkpoint 4"
    assert latest_checkpoint(tmp_path / "killed").name == "step-0000004"
    resumed = run_cli("pretrain", "--resume", str(tmp_path / "killed"), "--no-export", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 4" in resumed.stderr
    a = safetensors.torch.load_file(latest_checkpoint(tmp_path / "straight") / "model.safetensors")
    b = safetensors.torch.load_file(latest_checkpoint(tmp_path / "killed") / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill+resume"
    losses = [h["loss"] for h in read_metrics(tmp_path / "straight")]
    steps = read_metrics(tmp_path / "killed")
    assert losses == [h["loss"] for h in steps]
    # the resumed run's timing is the whole run's (every session), not the last session's
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert info["median_step_seconds"] == statistics.median(h["seconds"] for h in steps)
    assert info["train_seconds"] >= round(sum(h["seconds"] for h in steps), 1) - 0.1
    return a
