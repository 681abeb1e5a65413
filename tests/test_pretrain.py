"""LayerMatch end to end: the loss falls, the export loads in timm (local-dir and offline hf-hub)
with identical features, and a killed run resumes bit-identically."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from genbackbones.export import backbone_state_from_checkpoint
from genbackbones import pretrain
from genbackbones.recipes import load_recipe
from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.engine.loop import read_metrics
from tests.cli_runs import kill_and_resume, run_cli

TINY = textwrap.dedent("""
    name: tiny
    generator: {source: "random:tiny32"}
    backbone: {arch: resnet18, init: random}
    layermatch: {head: linear}
    train: {steps: 6, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2, log_every: 1}
""")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart recipe (shortened to 60 steps): the real default configuration."""
    out = tmp_path_factory.mktemp("qs") / "run"
    recipe = load_recipe(None, ["train.steps=60", "train.checkpoint_every=30", "train.batch_size=8"])
    return pretrain(recipe, output=out)


def test_quickstart_loss_falls(quickstart_run):
    history = read_metrics(quickstart_run)
    assert [h["step"] for h in history] == list(range(1, 61))
    tenth = len(history) // 10
    for key in ("match", "loss"):
        first = sum(h[key] for h in history[:tenth]) / tenth
        last = sum(h[key] for h in history[-tenth:]) / tenth
        assert last < 0.9 * first, f"{key} did not fall: first 10% {first:.3f}, last 10% {last:.3f}"
    info = json.loads((quickstart_run / "run.json").read_text())
    assert info["status"] == "exported" and info["taps"]
    assert (quickstart_run / "samples.png").stat().st_size > 1000
    assert list((quickstart_run / "logs").rglob("events.out.tfevents*")), "TensorBoard logs missing"


def _trained_features(run: Path, arch: str, **kwargs) -> torch.nn.Module:
    model = timm.create_model(arch, pretrained=False, features_only=True, **kwargs)
    model.load_state_dict(backbone_state_from_checkpoint(latest_checkpoint(run)))
    return model.eval()


@torch.no_grad()
def test_export_loads_in_timm_local_dir_with_identical_features(quickstart_run):
    export = quickstart_run / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["num_classes"] == 0 and cfg["architecture"] == "hrnet_w18_small"
    assert cfg["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and cfg["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert cfg["genbackbones"]["method"] == "layermatch" and cfg["genbackbones"]["generator"]["sha256"]
    x = torch.randn(2, 3, 64, 64)
    trained = _trained_features(quickstart_run, "hrnet_w18_small", feature_location="")
    loaded = timm.create_model(f"local-dir:{export}", pretrained=True, features_only=True).eval()  # the plain line
    assert loaded.feature_info.channels() == trained.feature_info.channels() == [64, 16, 32, 64, 128]
    for a, b in zip(trained(x), loaded(x), strict=True):
        assert torch.equal(a, b)
    assert timm.data.resolve_data_config({}, model=loaded)["mean"] in ((0.5, 0.5, 0.5), [0.5, 0.5, 0.5])
    # the untrained classification head is not in the export: asking for it fails instead of loading random layers
    with pytest.raises(RuntimeError, match="incre_modules"):
        timm.create_model(f"local-dir:{export}", pretrained=True, features_only=True, feature_location="incre")


def test_export_loads_through_offline_hf_hub_cache(quickstart_run, tmp_path):
    """timm's hf-hub: path against a pre-populated Hugging Face cache (HF_HUB_OFFLINE=1, no network)."""
    export = quickstart_run / "export"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--genbackbones-test--hrnet_w18_small.layermatch"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(export / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    trained = _trained_features(quickstart_run, "hrnet_w18_small", feature_location="")
    torch.save(trained(torch.ones(1, 3, 64, 64)), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch, timm
        x = torch.ones(1, 3, 64, 64)
        m = timm.create_model('hf-hub:genbackbones-test/hrnet_w18_small.layermatch', pretrained=True,
                              features_only=True).eval()
        with torch.no_grad():
            got = m(x)
        ref = torch.load({str(tmp_path / 'expected.pt')!r})
        assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref)), 'features differ'
        print('ok')
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_kill_and_resume_is_bit_identical(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    kill_and_resume(recipe, tmp_path)


def test_two_cpu_processes_with_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("steps: 6", "steps: 4"))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29611", "-m", "genbackbones",
                           "pretrain", str(recipe), "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done run:") == 1 and proc.stdout.count("timm:") == 1, proc.stdout  # rank 0 only
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["num_processes"] == 2 and info["status"] == "exported"
    cfg = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert cfg["genbackbones"]["images_per_step"] == 8


def test_resume_refuses_recipe_arguments_and_bad_folders(tmp_path):
    proc = run_cli("pretrain", "--resume", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("export", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a genbackbones run" in proc.stderr
