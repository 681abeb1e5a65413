"""The real-scale recipes run: a training step (after the FLOP probe's) of the FFHQ-256 LayerMatch and GH-Feat
recipes on CPU, with a randomly initialised generator of NVIDIA's FFHQ-256 configuration (`random:ffhq256`) and tiny
batches, so that a user with a GPU and the real checkpoint meets no shape or configuration error. Also measures the
training step's peak memory per image at 256 px.

Only what cannot exist offline is replaced (`--set`): the converted NVIDIA generator (random:ffhq256), ImageNet
weights (init random), VGG16 weights (perceptual none) and FFHQ images (the bundled faces rendered at 256 px).
Everything else, bf16 autocast included, is the recipe's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# one step (the FLOP probe runs a second): a 256 px bf16 step at batch 4 took ~190 CPU-s, three of them most of
# this file's ten minutes
OFFLINE = ["--set", "generator.source=random:ffhq256", "--set", "train.steps=1", "--set", "train.checkpoint_every=1",
           "--set", "train.warmup_steps=0", "--set", "train.log_every=1"]
# The training step's own peak, not the process's: every other phase (building, the FLOP probe, export and its
# check) is batch-independent and can set the process peak, so two batch sizes once read the same 2.48 GiB. Linux
# resets a process's high-water mark (VmHWM) when 5 is written to /proc/self/clear_refs; the step is wrapped to
# reset it before and read it after. Memory that an earlier phase freed but the allocator kept can be reused by the
# step unseen; the FLOP probe, the largest such phase, runs a step at the same batch, so what it leaves scales
# with the batch too.
MEASURE = """
import re, resource, sys
import genbackbones.engine.loop as loop
from genbackbones.cli import main

def hwm_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

step_peaks, train_step = [], loop._train_step
def measured_step(*args, **kwargs):
    open("/proc/self/clear_refs", "w").write("5")
    logs = train_step(*args, **kwargs)
    step_peaks.append(hwm_kib())
    return logs

loop._train_step = measured_step
sys.argv = ["genbackbones", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    if exit.code:
        raise
print("step_peak_rss_kib", max(step_peaks))
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_measured(tmp_path: Path, name: str, *args: str, resolution: int = 256) -> tuple[int, int]:
    """Run `genbackbones pretrain ...` in a fresh process: (peak resident memory of its training steps, of the
    whole process), in KiB."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, "-c", MEASURE, "pretrain", *args, "-o", str(tmp_path / name)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / name / "run.json").read_text())
    assert info["status"] in ("trained", "exported") and info["resolution"] == resolution
    figure = {key: int(proc.stdout.split(key + " ")[1].split()[0]) for key in ("step_peak_rss_kib", "peak_rss_kib")}
    return figure["step_peak_rss_kib"], figure["peak_rss_kib"]


def test_layermatch_hrnet_w18_ffhq256_runs_a_step_and_memory_per_image(tmp_path):
    measured = {b: run_measured(tmp_path, f"lm-b{b}", "layermatch/hrnet_w18-ffhq256", *OFFLINE,
                                "--set", "backbone.init=random", "--set", f"train.batch_size={b}") for b in (1, 2)}
    steps = {b: step for b, (step, _) in measured.items()}
    per_image_gib = (steps[2] - steps[1]) / 2**20
    print(f"layermatch hrnet_w18 256 px: training step peak RSS {steps[1] / 2**20:.2f} GiB at batch 1, "
          f"{steps[2] / 2**20:.2f} GiB at batch 2 -> {per_image_gib:.2f} GiB per image; whole process "
          f"{measured[1][1] / 2**20:.2f} / {measured[2][1] / 2**20:.2f} GiB")
    assert (tmp_path / "lm-b2" / "export" / "config.json").exists()
    recipe = (tmp_path / "lm-b2" / "recipe.yaml").read_text()
    assert "mixed_precision: bf16" in recipe and "arch: hrnet_w18\n" in recipe
    assert 0 < per_image_gib < 4


def test_ghfeat_resnet50_ffhq256_runs_a_step(tmp_path):
    step_peak, peak = run_measured(tmp_path, "gh", "ghfeat/resnet50-ffhq256", *OFFLINE, "--set", "train.batch_size=2",
                        "--set", "data.source=faces", "--set", "data.count=8", "--set", "ghfeat.perceptual=none",
                        "--set", "ghfeat.style_samples=64")
    print(f"ghfeat resnet50 256 px, batch 2: training step peak RSS {step_peak / 2**20:.2f} GiB, "
          f"whole process {peak / 2**20:.2f} GiB")
    assert (tmp_path / "gh" / "export" / "config.json").exists()
