"""Damaged checkpoints are skipped, not fatal: `pretrain --resume` and `export` take the newest intact one and say
which they skipped and why; a run with none intact is one line, exit 2 (issue 27, row 6)."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from genbackbones.engine.checkpoints import latest_intact_checkpoint, verify_checkpoint
from genbackbones.engine.loop import read_metrics
from genbackbones.export import backbone_state_from_checkpoint
from tests.cli_runs import run_cli

TINY = textwrap.dedent("""
    name: tiny
    generator: {source: "random:tiny32"}
    backbone: {arch: resnet18, init: random}
    layermatch: {head: linear}
    train: {steps: 6, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2, log_every: 1}
""")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A 6-step run straight through; it keeps checkpoints 4 and 6."""
    tmp = tmp_path_factory.mktemp("straight")
    (tmp / "tiny.yaml").write_text(TINY)
    done = run_cli("pretrain", "tiny.yaml", "-o", "run", "--no-export", cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp / "run" / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    return tmp / "run"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "model.safetensors")


def test_resume_skips_a_truncated_newest_checkpoint_and_ends_bit_identical(straight, tmp_path):
    """A disk that filled while step 6 was saved: resume continues from step 4 and ends where the uninterrupted
    run ended, bit for bit, with the same logged losses."""
    run = copy_run(straight, tmp_path / "my run")  # a space in the path: the note names the folder relative to it
    truncate(run / "checkpoints" / "step-0000006" / "model.safetensors", 1_000_000)
    resumed = run_cli("pretrain", "--resume", str(run), "--no-export", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "note: skipped checkpoints/step-0000006: model.safetensors truncated (1,000,000 of " in resumed.stderr
    assert "resuming from step 4" in resumed.stderr and "Traceback" not in resumed.stderr
    a, b = weights(straight / "checkpoints" / "step-0000006"), weights(run / "checkpoints" / "step-0000006")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in read_metrics(run)] == [h["loss"] for h in read_metrics(straight)]
    assert json.loads((run / "run.json").read_text())["resumed_from_step"] == 4


def test_export_takes_the_previous_checkpoint_and_says_why(straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    state = run / "checkpoints" / "step-0000006" / "trainer_state.json"
    state.write_text(state.read_text().replace('"step": 6', '"step": 5'))  # a state that does not fit its folder
    done = run_cli("export", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: skipped checkpoints/step-0000006: trainer_state.json records step 5, not the folder's 6" \
        in done.stderr
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["genbackbones"]["steps"] == 4
    exported = safetensors.torch.load_file(run / "export" / "model.safetensors")
    step4 = backbone_state_from_checkpoint(run / "checkpoints" / "step-0000004")
    assert step4 and all(torch.equal(exported[k], v) for k, v in step4.items())
    assert not all(torch.equal(exported[k], v)
                   for k, v in backbone_state_from_checkpoint(run / "checkpoints" / "step-0000006").items())


def test_a_run_with_no_intact_checkpoint_is_one_line_for_resume_and_export(straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    optimizer = run / "checkpoints" / "step-0000006" / "optimizer.pt"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)  # the size recorded, the content gone
    truncate(run / "checkpoints" / "step-0000004" / "scheduler.pt", 100)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")}
    for args in (["pretrain", "--resume", str(run)], ["export", str(run)]):
        line = one_line_error(run_cli(*args, cwd=tmp_path))
        assert f"{run} has no intact checkpoint (2 damaged; the newest, step-0000006: optimizer.pt damaged (" in line
        assert f"train it again from its saved recipe: `genbackbones pretrain {run}/recipe.yaml -o NEW_FOLDER`" in line
    assert not (run / "export").exists()
    assert {p: p.read_bytes() for p in before} == before  # run.json, metrics untouched


def test_verify_names_each_kind_of_damage(straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    newest, older = run / "checkpoints" / "step-0000006", run / "checkpoints" / "step-0000004"
    assert verify_checkpoint(newest) is None and latest_intact_checkpoint(run) == (newest, [])

    (newest / "scheduler.pt").unlink()
    assert verify_checkpoint(newest) == "scheduler.safetensors / scheduler.pt missing"
    shutil.copy(older / "scheduler.pt", newest / "scheduler.pt")
    # a checkpoint written before sizes were recorded: the file itself shows the damage
    state = json.loads((newest / "trainer_state.json").read_text())
    del state["files"]
    (newest / "trainer_state.json").write_text(json.dumps(state))
    assert verify_checkpoint(newest) is None
    truncate(newest / "model.safetensors", 2_000_000)
    assert verify_checkpoint(newest).startswith("model.safetensors damaged (")
    shutil.copy(older / "model.safetensors", newest / "model.safetensors")
    truncate(newest / "optimizer.pt", 5_000)
    assert verify_checkpoint(newest).startswith("optimizer.pt damaged (")
    (newest / "trainer_state.json").write_text("{")
    assert verify_checkpoint(newest).startswith("trainer_state.json unreadable (")
    found, skipped = latest_intact_checkpoint(run)
    assert found == older and [s.checkpoint for s in skipped] == [newest]


def test_a_skipped_newer_checkpoint_never_pushes_an_intact_one_out(tmp_path):
    """Resumed from step 2 past a damaged step 4, with keep_checkpoints=1: saving step 3 keeps step 3 (the old
    count, newest first, removed steps 2 and 3 and left only the damaged 4)."""
    from accelerate import Accelerator

    from genbackbones.engine.checkpoints import save_checkpoint

    accelerator, model = Accelerator(cpu=True), torch.nn.Linear(2, 2)
    for step in (2, 4):
        save_checkpoint(accelerator, tmp_path, step, 0, {"model": model})
    truncate(tmp_path / "checkpoints" / "step-0000004" / "model.safetensors", 10)
    assert latest_intact_checkpoint(tmp_path)[0].name == "step-0000002"
    save_checkpoint(accelerator, tmp_path, 3, 1, {"model": model})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003", "step-0000004"]
    found, skipped = latest_intact_checkpoint(tmp_path)
    assert found.name == "step-0000003" and [s.checkpoint.name for s in skipped] == ["step-0000004"]
