"""The user's lines, run as typed: the timm lines the CLI prints and the cards carry, the CLI's conventions
(one-line errors, --version, completion, Ctrl-C), trackers, and offline behaviour.

Each timm line is executed in a fresh Python process (as a user would paste it) and its features are
compared bitwise with the trained module's, rebuilt from the run's checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from genbackbones.backbones import create_backbone
from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.export import backbone_state_from_checkpoint
from genbackbones.recipes import load_recipe
from tests.cli_runs import run_cli

RESNET = textwrap.dedent("""
    name: tiny-resnet
    generator: {source: "random:tiny32"}
    backbone: {arch: resnet18, init: random}
    layermatch: {head: linear}
    train: {steps: 3, batch_size: 4, lr: 1.0e-3, checkpoint_every: 3, log_every: 1}
""")


def timm_line(stdout: str) -> str:
    """The line after `timm: ` in what the CLI printed, exactly as a user copies it."""
    lines = [line for line in stdout.splitlines() if line.startswith("timm: ")]
    assert len(lines) == 1, stdout
    return lines[0].removeprefix("timm: ")


def run_as_typed(code: str, expected_path: Path, env: dict | None = None) -> list[int]:
    """Execute `code` (which defines `model`) in a fresh process; compare its features with the saved ones."""
    script = textwrap.dedent("""
        import timm, torch
        ref = torch.load({ref!r})
    """).format(ref=str(expected_path)) + textwrap.dedent(code) + textwrap.dedent("""
        with torch.no_grad():
            got = model.eval()(ref["x"])
        assert len(got) == len(ref["features"]), (len(got), len(ref["features"]))
        for a, b in zip(got, ref["features"]):
            assert torch.equal(a, b), "features differ from the trained backbone"
        print("channels", [f.shape[1] for f in got])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("channels", 1)[1].strip())


@torch.no_grad()
def save_trained_features(run: Path, path: Path) -> list[int]:
    """The trained backbone, rebuilt from the run's checkpoint (not from the export), and its features."""
    recipe = load_recipe(run / "recipe.yaml")
    model = create_backbone(recipe.backbone.with_init("random")).eval()
    model.load_state_dict(backbone_state_from_checkpoint(latest_checkpoint(run)))
    res = json.loads((run / "run.json").read_text())["resolution"]
    x = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(3))
    torch.save({"x": x, "features": model(x)}, path)
    return model.feature_info.channels()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An HRNet run (the quickstart, shortened) and a ResNet run, both through the CLI as a user types it."""
    tmp = tmp_path_factory.mktemp("contract")
    recipe = tmp / "resnet.yaml"
    recipe.write_text(RESNET)
    hrnet = run_cli("pretrain", "--set", "train.steps=3", "--set", "train.batch_size=4", "-o", "hrnet", cwd=tmp)
    assert hrnet.returncode == 0, hrnet.stderr[-3000:]
    resnet = run_cli("pretrain", str(recipe), "-o", "resnet", cwd=tmp)
    assert resnet.returncode == 0, resnet.stderr[-3000:]
    return {"hrnet": (tmp / "hrnet", hrnet.stdout), "resnet": (tmp / "resnet", resnet.stdout)}


@pytest.mark.parametrize("arch", ["hrnet", "resnet"])
def test_the_printed_timm_line_gives_the_trained_backbone(runs, arch, tmp_path):
    run, stdout = runs[arch]
    line = timm_line(stdout)
    assert line == f"timm.create_model('local-dir:{(run / 'export').resolve()}', pretrained=True, features_only=True)"
    channels = save_trained_features(run, tmp_path / "expected.pt")
    assert run_as_typed(f"model = {line}", tmp_path / "expected.pt") == channels
    if arch == "hrnet":
        assert channels == [64, 16, 32, 64, 128], "HRNet is trained through its segmentation branches"


def test_hrnet_export_refuses_the_untrained_head(runs, tmp_path):
    """A plain call gives trained levels; asking for timm's classification head fails loudly instead."""
    export = runs["hrnet"][0] / "export"
    for kwargs, message in (("features_only=True, feature_location='incre'", "incre_modules"),
                            ("features_only=False", "feature_location")):
        proc = subprocess.run([sys.executable, "-c", f"import timm; timm.create_model('local-dir:{export}', "
                                                     f"pretrained=True, {kwargs})"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and message in proc.stderr, (kwargs, proc.stderr[-1500:])


@pytest.mark.parametrize("arch", ["hrnet", "resnet"])
def test_the_card_snippet_runs_as_written(runs, arch, tmp_path):
    run, _ = runs[arch]
    card = (run / "export" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert blocks, card
    channels = save_trained_features(run, tmp_path / "expected.pt")
    assert run_as_typed(blocks[0], tmp_path / "expected.pt") == channels
    assert "@inproceedings{galeev" in card and "@inproceedings{karras2020stylegan2" in card  # BibTeX


def test_export_command_and_config_follow_timm_conventions(runs, tmp_path):
    run, _ = runs["resnet"]
    proc = run_cli("export", str(run), "--out", str(tmp_path / "again"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = timm_line(proc.stdout)
    save_trained_features(run, tmp_path / "expected.pt")
    run_as_typed(f"model = {line}", tmp_path / "expected.pt")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["model_args"]["features_only"] is True and config["model_args"]["pretrained_strict"] is True
    assert config["num_classes"] == 0 and config["pretrained_cfg"]["interpolation"] == "bicubic"  # as the evaluator
    assert config["genbackbones"]["method"] == "layermatch" and config["genbackbones"]["images_seen"] == 12


def test_an_export_cut_short_by_out_indices_loads_strictly_and_never_gives_untrained_levels(tmp_path):
    """out_indices [1, 2]: layers 3-4 were never trained. The plain line gives the trained levels (strict load);
    asking timm for more levels gives NaN there, never plausible random features."""
    recipe = tmp_path / "resnet.yaml"
    recipe.write_text(RESNET)
    proc = run_cli("pretrain", str(recipe), "--set", "backbone.out_indices=[1,2]", "-o", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = timm_line(proc.stdout)
    assert save_trained_features(tmp_path / "run", tmp_path / "expected.pt") == [64, 128]
    assert run_as_typed(f"model = {line}", tmp_path / "expected.pt") == [64, 128]
    config = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert config["model_args"]["pretrained_strict"] is True and config["model_args"]["out_indices"] == [1, 2]
    script = textwrap.dedent(f"""
        import timm, torch
        model = {line.replace("features_only=True", "features_only=True, out_indices=(1, 2, 3, 4)")}.eval()
        levels = model(torch.randn(1, 3, 32, 32))
        print([bool(torch.isnan(f).all()) for f in levels])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[False,", "False,", "True,", "True]"]


def test_run_folder_recipe_is_resolved_and_holds_only_the_methods_sections(runs):
    saved = yaml.safe_load((runs["hrnet"][0] / "recipe.yaml").read_text())
    assert set(saved) == {"name", "description", "method", "seed", "generator", "backbone", "train", "layermatch",
                          "license"}, "a LayerMatch run carries no gan:/ghfeat:/data: sections"
    assert saved["backbone"]["feature_location"] == ""  # resolved, not null
    config = json.loads((runs["hrnet"][0] / "export" / "config.json").read_text())
    assert set(config["genbackbones"]["recipe"]) == set(saved)


def test_trackers_get_the_recipe_the_learning_rate_and_the_samples(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs["hrnet"][0]
    events = sorted((run / "logs").rglob("events.out.tfevents*"))
    assert events
    tags: dict[str, list[str]] = {"scalars": [], "images": []}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        for key in tags:
            tags[key] += acc.Tags().get(key, [])
    assert "lr" in tags["scalars"] and "loss" in tags["scalars"], tags
    assert any("samples" in t for t in tags["images"]), tags
    hparams = list((run / "logs").rglob("hparams.yml"))
    assert hparams and yaml.safe_load(hparams[0].read_text())["train.lr"] == 2.0e-3
    assert all("lr" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


def test_log_with_none_channels_last_and_a_missing_tracker(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RESNET)
    proc = run_cli("pretrain", str(recipe), "--set", "train.log_with=none", "--set", "train.channels_last=true",
               "-o", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list((tmp_path / "run").rglob("events.out.tfevents*"))
    save_trained_features(tmp_path / "run", tmp_path / "expected.pt")  # NHWC training exports like any other
    run_as_typed(f"model = {timm_line(proc.stdout)}", tmp_path / "expected.pt")
    try:
        import wandb  # noqa: F401
    except ImportError:
        proc = run_cli("pretrain", str(recipe), "--set", "train.log_with=wandb", "-o", "run2", cwd=tmp_path)
        assert proc.returncode == 2 and "pip install wandb" in proc.stderr and not (tmp_path / "run2").exists()


# ----------------------------------------------------------------------------- the CLI's conventions


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--set", "train.batch_size=0", "-o", "run"], "'train.batch_size' must be >= 1"),
    (["pretrain", "--set", "train.steps=-5", "-o", "run"], "'train.steps' must be >= 1"),
    (["pretrain", "--set", "train.lr=0", "-o", "run"], "'train.lr' must be a positive number"),
    (["pretrain", "--set", "gan.r1_gamma=1", "-o", "run"], "unknown recipe key 'gan'"),
    (["pretrain", "--steps", "5", "-o", "run"], "--steps extends a resumed run"),
    (["pretrain", "binary.yaml", "-o", "run"], "not a text file"),
    (["pretrain", "broken.yaml", "-o", "run"], "malformed YAML"),
    (["generator", "sample", "bundled", "--n", "0"], "--n"),
    (["generator", "sample", "bundled", "--truncation", "abc"], "--truncation"),
    (["no-such-command"], "No such command"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "broken.yaml").write_text("train:\n  steps: [1, 2\n  lr: {a: b\n")
    line = one_line_error(run_cli(*args, cwd=tmp_path))
    assert message in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "grid.png").exists()


def test_version_help_and_completion(tmp_path):
    from genbackbones import __version__

    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"genbackbones {__version__}"
    proc = run_cli("reconstruct", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "faces:A:B" in proc.stdout, proc.stdout  # rendered literally, no emoji
    proc = run_cli("--show-completion", cwd=tmp_path, env={"SHELL": "/bin/bash"})
    assert proc.returncode == 0 and "complete" in proc.stdout and "_GENBACKBONES_COMPLETE" in proc.stdout.upper()


def test_ctrl_c_marks_the_run_interrupted_and_says_how_to_resume(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RESNET.replace("steps: 3", "steps: 100000").replace("checkpoint_every: 3", "checkpoint_every: 2"))
    # Ctrl-C in a terminal: SIGINT at its default disposition. A shell without job control starts `cmd &` with
    # SIGINT ignored and children inherit that, so under `nohup bash .ci/run &` the run rightly went on training
    # (714 steps in the 120 s, seen by the stacks below); the child is given the terminal's disposition.
    # -X faulthandler: should it still be alive 120 s after SIGINT, SIGABRT makes it print every thread's stack.
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "genbackbones", "pretrain", str(recipe),
                             "-o", "run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while latest_checkpoint(tmp_path / "run") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"still running {time.time() - sent:.0f} s after Ctrl-C; its stacks:\n{err[-6000:]}")
    assert proc.returncode == 130, err[-2000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "interrupted" and info["last_checkpoint_step"] >= 2
    assert "continue it with `genbackbones pretrain --resume run`" in err, err[-2000:]
    assert "Traceback" not in err


def test_offline_hub_downloads_fail_at_once_in_one_line(tmp_path):
    """No network (here: an endpoint nothing listens on): one line within seconds, no retry loop."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    start = time.time()
    line = one_line_error(run_cli("pretrain", "--set", "backbone.init=imagenet", "-o", "run", cwd=tmp_path, env=env))
    assert "ImageNet weights" in line and time.time() - start < 60
    line = one_line_error(run_cli("list", "someorg", cwd=tmp_path, env=env))
    assert "cannot reach the Hub" in line and "HF_HUB_OFFLINE=1" not in line
    assert not (tmp_path / "run").exists()


def test_python_api_names_are_the_functions():
    import genbackbones
    from genbackbones import export_run, load_recipe, open_generator, pretrain

    assert callable(pretrain) and callable(load_recipe) and callable(export_run) and callable(open_generator)
    assert genbackbones.pretrain is pretrain  # no submodule shadows it
    for source in ("bundled", "random:tiny32"):
        assert open_generator(source).G.img_resolution in (32, 64)
