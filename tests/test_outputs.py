"""Outputs never destroy what they did not create, and one command writes a folder at a time (issue 27, rows 1-5).

Every command runs as a user types it, in a subprocess. One tiny run (ResNet-18 on
the random 32 px generator, 2 steps) is shared: it is itself made by two `pretrain
-o runs/q` started together, which is row 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from genbackbones.engine.loop import read_metrics
from genbackbones.outputs import hold, lock_path

TINY = textwrap.dedent("""
    name: tiny
    generator: {source: "random:tiny32"}
    backbone: {arch: resnet18, init: random}
    layermatch: {head: linear}
    train: {steps: 2, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2, log_every: 1}
""")
EXPORT_FILES = {"README.md", "config.json", "model.safetensors", "recipe.yaml"}


def start(*args: str, cwd: Path, umask: int = 0o022) -> subprocess.Popen:
    """`python -m genbackbones ARGS` in CWD under UMASK, not waited for."""
    return subprocess.Popen([sys.executable, "-m", "genbackbones", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(umask))


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(*args: str, cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess:
    return finish(start(*args, cwd=cwd, umask=umask))


def one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 with exactly one `error:` line (the last line), containing FRAGMENTS, and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry below FOLDER with its inode, size and mtime: a replaced or rewritten file changes it."""
    return {str(p.relative_to(folder)): (p.lstat().st_ino, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    """Two `pretrain tiny.yaml -o runs/q` started together in sandbox/, under umask 022."""
    sandbox = tmp_path_factory.mktemp("outputs") / "sandbox"
    sandbox.mkdir()
    (sandbox / "tiny.yaml").write_text(TINY)
    procs = [start("pretrain", "tiny.yaml", "-o", "runs/q", cwd=sandbox) for _ in range(2)]
    return sandbox, [finish(p) for p in procs]


@pytest.fixture(scope="module")
def sandbox(race):
    folder, procs = race
    assert sorted(p.returncode for p in procs) == [0, 2], [p.stderr[-1500:] for p in procs]
    return folder


def test_two_pretrains_on_one_folder_one_runs_and_the_other_gets_one_line(race):
    sandbox, procs = race
    done = [p for p in procs if p.returncode == 0]
    refused = [p for p in procs if p.returncode != 0]
    assert len(done) == 1 and len(refused) == 1, [p.stderr[-1500:] for p in procs]
    # together: "in use by pid N on HOST (genbackbones pretrain ...)"; if one had finished first: "not empty"
    line = one_error_line(refused[0], "runs/q")
    assert "is in use by pid" in line or "already exists and is not empty" in line, line
    assert "done run: runs/q" in done[0].stdout and "done run" not in refused[0].stdout
    assert [h["step"] for h in read_metrics(sandbox / "runs" / "q")] == [1, 2]  # each step once
    assert not lock_path(sandbox / "runs" / "q").exists(), "the lock is removed when the command ends"


def test_a_folder_in_use_names_its_holder(sandbox, tmp_path):
    with hold(tmp_path / "busy", command="genbackbones pretrain other.yaml"):
        proc = run("pretrain", str(sandbox / "tiny.yaml"), "-o", "busy", cwd=tmp_path)
    host = socket.gethostname()
    assert one_error_line(proc) == (f"error: busy is in use by pid {os.getpid()} on {host} (genbackbones pretrain "
                                    "other.yaml); wait for it or pick another folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused command leaves nothing behind"
    # the same for a resumed run, and for an evaluation (row 5: two at once silently replaced each other's results)
    with hold(sandbox / "runs" / "q"):
        proc = run("pretrain", "--resume", "runs/q", "--steps", "3", cwd=sandbox)
    one_error_line(proc, "runs/q is in use by pid")
    with hold(tmp_path / "evaluation" / "same", command="genbackbones evaluate runs/q --out evaluation/same"):
        proc = run("evaluate", str(sandbox / "runs" / "q"), "--out", "evaluation/same", cwd=tmp_path)
    one_error_line(proc, "evaluation/same is in use by pid", "(genbackbones evaluate runs/q --out evaluation/same)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_file_written_gets_the_mode_the_umask_gives(sandbox):
    run_dir = sandbox / "runs" / "q"
    written = [p for p in run_dir.rglob("*") if "logs" not in p.parts]
    assert {p.name for p in written} >= {"model.safetensors", "optimizer.pt", "config.json", "run.json"}
    modes = {str(p.relative_to(run_dir)): stat.S_IMODE(p.stat().st_mode) for p in written}
    expected = {name: 0o755 if (run_dir / name).is_dir() else 0o644 for name in modes}
    assert modes == expected  # on main: checkpoints/*/model.safetensors and export/model.safetensors were 0600
    # another umask gives other modes: the tool follows it, it does not hard-code 0644
    proc = run("export", "runs/q", "--out", "shared", cwd=sandbox, umask=0o007)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (sandbox / "shared").rglob("*")}
    assert set(modes) == EXPORT_FILES and set(modes.values()) == {0o660}, modes
    assert stat.S_IMODE((sandbox / "shared").stat().st_mode) == 0o770


def test_export_into_a_non_empty_folder_is_refused_and_everything_kept(sandbox):
    keep = sandbox / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("my notes")
    before = snapshot(sandbox)
    proc = run("export", "runs/q", "--out", "keep", cwd=sandbox)
    one_error_line(proc, "--out keep already exists and is not empty (notes.txt)", "--overwrite")
    assert snapshot(sandbox) == before and (keep / "notes.txt").read_text() == "my notes"
    # a file is named as one
    proc = run("export", "runs/q", "--out", "keep/notes.txt", cwd=sandbox)
    one_error_line(proc, "--out keep/notes.txt is a file")
    assert snapshot(sandbox) == before


@pytest.mark.parametrize(("cwd", "run_arg", "out", "why"), [
    ("sandbox", "runs/q", "runs/q", "is the input this command reads"),           # export q --out q
    (".", "sandbox/runs/q", "sandbox", "holds sandbox/runs/q, the input"),        # --out a parent of the run
    ("sandbox/runs", "q", "..", "holds q, the input"),                            # --out ..
    ("sandbox", "runs/q", "runs/q/checkpoints", "is inside the run folder"),       # a part of the run
])
def test_export_never_replaces_its_run_or_what_holds_it(sandbox, cwd, run_arg, out, why):
    top = sandbox.parent
    where = top / cwd
    before = snapshot(top)
    for extra in ([], ["--overwrite"]):
        proc = run("export", run_arg, "--out", out, *extra, cwd=where)
        one_error_line(proc, f"--out {out} {why}", "never replaced")
        assert snapshot(top) == before, "nothing may change, not even a lock file left behind"


def test_overwrite_replaces_an_earlier_export_but_never_a_run(sandbox):
    exported = sandbox / "exports" / "q"
    shutil.copytree(sandbox / "runs" / "q" / "export", exported)  # an earlier export, kept with notes
    (exported / "stale.txt").write_text("from an earlier export")
    before = snapshot(exported)
    one_error_line(run("export", "runs/q", "--out", "exports/q", cwd=sandbox), "already exists and is not empty")
    assert snapshot(exported) == before
    proc = run("export", "runs/q", "--out", "exports/q", "--overwrite", cwd=sandbox)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in exported.iterdir()} == EXPORT_FILES, "replaced as a whole"
    assert sha256(exported / "model.safetensors") == sha256(sandbox / "runs" / "q" / "export" / "model.safetensors")
    # another run is never replaced, with or without --overwrite
    other = sandbox / "runs" / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"status": "trained"}))
    (other / "recipe.yaml").write_text(TINY)
    before = snapshot(other)
    proc = run("export", "runs/q", "--out", "runs/other", "--overwrite", cwd=sandbox)
    one_error_line(proc, "--out runs/other is a run folder", "never replaced")
    assert snapshot(other) == before


def test_a_dead_holders_lock_is_taken_over_with_a_note_and_sample_does_not_overwrite(tmp_path):
    lock = lock_path(tmp_path / "grid.png")
    lock.write_text(json.dumps({"pid": 4194303, "host": "gone", "command": "genbackbones generator sample x"}))
    proc = run("generator", "sample", "random:tiny32", "--n", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("note: grid.png was locked by pid 4194303 on gone (genbackbones generator sample x), which is no "
            "longer running; taking over its lock") in proc.stderr
    assert not lock.exists() and (tmp_path / "grid.png").stat().st_size > 0
    before = snapshot(tmp_path)
    one_error_line(run("generator", "sample", "random:tiny32", "--n", "2", "--seed", "5", cwd=tmp_path),
                   "grid.png already exists; pass --overwrite")
    assert snapshot(tmp_path) == before
    proc = run("generator", "sample", "random:tiny32", "--n", "2", "--seed", "5", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0 and "seeds 5..6" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_three_pretrains_without_o_started_together_get_three_folders(sandbox, tmp_path):
    archs = ["resnet18", "resnet10t", "resnet14t"]
    procs = [start("pretrain", str(sandbox / "tiny.yaml"), "--set", f"backbone.arch={arch}", "--no-export",
                   cwd=tmp_path) for arch in archs]
    results = [finish(p) for p in procs]
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-1500:] for r in results]
    printed = [r.stdout.split("done run: ")[1].split()[0] for r in results]
    assert len(set(printed)) == 3 and sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        Path(p).name for p in printed)
    for arch, folder in zip(archs, printed):
        recipe = (tmp_path / folder / "recipe.yaml").read_text()
        assert f"arch: {arch}\n" in recipe, (folder, recipe)
        assert [h["step"] for h in read_metrics(tmp_path / folder)] == [1, 2]
    assert not list((tmp_path / "runs").glob(".*.lock"))


@pytest.mark.slow
def test_racing_and_killed_exports_leave_whole_exports_only(sandbox):
    """4 exports racing on one --out, then exports killed by SIGKILL at random (seeded) moments: the target is
    always a whole export (the earlier one or the new one), never half-written, and a finished one is never lost."""
    reference = sha256(sandbox / "runs" / "q" / "export" / "model.safetensors")
    out = sandbox / "exports" / "stress"

    def whole() -> None:
        assert {p.name for p in out.iterdir()} == EXPORT_FILES, sorted(p.name for p in out.iterdir())
        assert sha256(out / "model.safetensors") == reference
        assert json.loads((out / "config.json").read_text())["genbackbones"]["steps"] == 2

    t0 = time.perf_counter()
    results = [finish(p) for p in [start("export", "runs/q", "--out", "exports/stress", cwd=sandbox)
                                   for _ in range(4)]]
    seconds = time.perf_counter() - t0
    assert sorted(r.returncode for r in results) == [0, 2, 2, 2], [r.stderr[-800:] for r in results]
    for refused in (r for r in results if r.returncode):
        one_error_line(refused, "exports/stress")
    whole()
    results = [finish(p) for p in [start("export", "runs/q", "--out", "exports/stress", "--overwrite", cwd=sandbox)
                                   for _ in range(4)]]
    assert 0 in {r.returncode for r in results} and {r.returncode for r in results} <= {0, 2}, \
        [r.stderr[-800:] for r in results]
    for refused in (r for r in results if r.returncode):
        one_error_line(refused, "exports/stress is in use by pid")
    whole()
    rng = random.Random(27)
    for _ in range(3):  # 4 processes shared 2 cores above: one export alone takes about half as long
        proc = start("export", "runs/q", "--out", "exports/stress", "--overwrite", cwd=sandbox)
        time.sleep(rng.uniform(0.2, seconds / 2))
        proc.kill()
        proc.communicate()
        whole()
    proc = run("export", "runs/q", "--out", "exports/stress", "--overwrite", cwd=sandbox)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a killed holder's lock never wedges the folder
    whole()
    # what a kill left beside it (a `.tmp-stress-*` folder, a lock file) is gone after the next export
    assert sorted(p.name for p in out.parent.iterdir() if "stress" in p.name) == ["stress"]


def test_default_names_are_unique_while_held_and_skip_existing_folders(tmp_path):
    """The library side of row 4, without the timing of real processes: a name held or already used is skipped."""
    from genbackbones.outputs import claim_new

    (tmp_path / "runs" / "tiny-1200").mkdir(parents=True)  # an earlier run of the same second
    with claim_new(tmp_path / "runs", "tiny-1200") as a, claim_new(tmp_path / "runs", "tiny-1200") as b:
        assert (a.name, b.name) == ("tiny-1200-2", "tiny-1200-3")
        assert not a.exists() and not b.exists(), "a claim makes no folder: bad input leaves nothing behind"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-1200"]


def test_a_filesystem_without_flock_writes_unlocked_with_a_note(tmp_path, monkeypatch, capsys):
    import errno

    import genbackbones.outputs as outputs

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(outputs.fcntl, "flock", no_locks)
    with hold(tmp_path / "out"):
        pass
    assert "cannot be locked (No locks available)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ from a review of the above (each failed before)


def test_an_output_swapped_into_place_is_never_the_current_folder(sandbox, tmp_path):
    """`export --out .` from an empty folder: the swap would move the folder the user stands in (it was a
    ValueError traceback after the whole export)."""
    here = tmp_path / "empty"
    here.mkdir()
    proc = run("export", str(sandbox / "runs" / "q"), "--out", ".", cwd=here)
    one_error_line(proc, "--out . is the current folder or holds it")
    assert list(here.iterdir()) == [] and list(tmp_path.iterdir()) == [here]


def test_annotate_overwrite_never_replaces_the_masks_it_reads(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "seed0000.png").write_bytes(b"the user's mask")
    before = snapshot(tmp_path)
    proc = run("annotate", "random:tiny32", "--masks", "masks", "--out", "masks", "--overwrite", cwd=tmp_path)
    one_error_line(proc, "--out masks is the input this command reads", "never replaced")
    assert snapshot(tmp_path) == before


def test_leftovers_are_only_this_outputs_and_a_parked_old_folder_is_put_back(tmp_path):
    from genbackbones.outputs import claim

    # another output's temporary and parked folders (`model-v2`, `model-2`) share the prefix: never touched
    others = [tmp_path / ".tmp-model-v2-ab12cd34", tmp_path / ".old-model-2-999", tmp_path / ".tmp-model-2-x_9y8z7w"]
    ours_tmp = tmp_path / ".tmp-model-k3j4h5g6"
    for folder in [*others, ours_tmp]:
        folder.mkdir()
        (folder / "f").write_text("x")
    # a swap killed between its two renames: the old export is parked and `model` is missing
    parked = tmp_path / ".old-model-4242"
    parked.mkdir()
    (parked / "model.safetensors").write_text("the only copy")
    with claim(tmp_path / "model"):
        pass
    assert all(folder.is_dir() for folder in others)
    assert not ours_tmp.exists() and not parked.exists()
    assert (tmp_path / "model" / "model.safetensors").read_text() == "the only copy"


def test_a_failed_swap_without_an_atomic_exchange_keeps_the_old_folder(tmp_path, monkeypatch):
    from genbackbones import atomic

    target = tmp_path / "export"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # as on macOS or NFS
    real_replace, calls = os.replace, []

    def failing_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder into place: interrupted
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_second_rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic.directory(target, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (target / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_cell_key_follows_the_labels_not_only_the_names():
    import torch

    from genbackbones.evaluate.cells import _content_sha256
    from genbackbones.evaluate.data import Labelled

    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    a = Labelled(images, ["a", "b", "c"], labels=torch.tensor([0, 1, 0]))
    b = Labelled(images, ["a", "b", "c"], labels=torch.tensor([0, 1, 1]))  # one label fixed by the user
    assert _content_sha256(a) != _content_sha256(b)
    assert _content_sha256(a, [0, 1]) == _content_sha256(b, [0, 1])
