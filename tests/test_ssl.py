"""method: ssl (SimCLR, BYOL, VICReg through lightly): the losses against hand-computed values, views paired
image by image, bit-identical kill+resume, the export through the plain timm line, the card, budgets in images
or FLOPs, the evaluator on an SSL run, and the one-line error without the [ssl] extra."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from genbackbones.backbones import BackboneSpec, create_backbone
from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.engine.loop import StepCost, TrainCfg, read_metrics, resolve_budget
from genbackbones.errors import UserError
from genbackbones.export import backbone_state_from_checkpoint
from genbackbones.methods.ssl import SSLConfig, SSLModel, ViewMaker, make_transform
from genbackbones.recipes import load_recipe, to_dict
from tests.cli_runs import kill_and_resume, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BYOL_ON_FACES = textwrap.dedent("""
    name: tiny-byol
    method: ssl
    backbone: {arch: resnet18, init: random}
    data: {source: faces, count: 32, resolution: 32}
    ssl: {algorithm: byol, hidden_dim: 32, output_dim: 16}   # lightly's default BYOL views: blur, solarisation
    train: {steps: 6, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2, log_every: 1, log_with: none}
""")
VICREG_ON_GENERATED = textwrap.dedent("""
    name: tiny-vicreg
    method: ssl
    generator: {source: "random:tiny32"}
    backbone: {arch: resnet18, init: random}
    data: {source: generator}
    ssl: {algorithm: vicreg, hidden_dim: 32, output_dim: 16}
    train: {steps: 6, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2, log_every: 1, log_with: none}
""")
SIMCLR_HRNET_ON_GENERATED = textwrap.dedent("""
    name: tiny-simclr-hrnet
    method: ssl
    generator: {source: bundled}
    backbone: {arch: hrnet_w18_small, init: random}
    data: {source: generator}
    ssl: {algorithm: simclr, hidden_dim: 32, output_dim: 16, transform: {min_scale: 0.2, gaussian_blur: 0.0}}
    train: {images_seen: 10, batch_size: 4, lr: 1.0e-3, checkpoint_every: 2, log_every: 1, log_with: none}
""")


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------- losses, by hand


def tiny_model(algorithm: str) -> SSLModel:
    torch.manual_seed(0)
    backbone = create_backbone(BackboneSpec(arch="resnet18"))
    model = SSLModel(backbone, [4], SSLConfig(algorithm=algorithm, hidden_dim=16, output_dim=8)).train()
    if algorithm == "byol":  # a momentum network that is not the online one, as after some training
        with torch.no_grad():
            for p in list(model.momentum_backbone.parameters()) + list(model.momentum_projection.parameters()):
                p.add_(0.05 * torch.randn_like(p))
    return model


def ntxent_by_hand(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N embeddings against the 2N-1 others; its positive is the other view."""
    n = z0.shape[0]
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return -(sim.log_softmax(dim=1)[torch.arange(2 * n), positive]).mean()


def byol_by_hand(p0, p1, t0, t1) -> torch.Tensor:
    """BYOL, symmetrised: the prediction of view 0 against the momentum target of view 1, and back."""
    return 0.5 * (-F.cosine_similarity(p0, t1, dim=1).mean() - F.cosine_similarity(p1, t0, dim=1).mean())


def vicreg_by_hand(z0, z1, lam=25.0, mu=25.0, nu=1.0, eps=1e-4) -> torch.Tensor:
    n, d = z0.shape
    invariance = ((z0 - z1) ** 2).mean()
    variance = sum(torch.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean() for z in (z0, z1)) / 2
    covariance = 0.0
    for z in (z0, z1):
        zc = z - z.mean(dim=0)
        cov = zc.T @ zc / (n - 1)
        covariance = covariance + (cov ** 2).sum().sub((cov.diagonal() ** 2).sum()) / d
    return lam * invariance + mu * variance + nu * covariance


@pytest.mark.parametrize("algorithm", ["simclr", "byol", "vicreg"])
@torch.no_grad()
def test_the_loss_is_the_hand_computed_value_and_depends_on_the_pairing(algorithm):
    model = tiny_model(algorithm)
    g = torch.Generator().manual_seed(1)
    view0, view1 = torch.randn(6, 3, 32, 32, generator=g), torch.randn(6, 3, 32, 32, generator=g)
    got = model(view0, view1)  # the loss exactly as the method's training step calls it
    z0, z1 = model.embed(view0), model.embed(view1)
    wrong = torch.roll(torch.arange(6), 1)  # view 1 of another image: a wrong pairing
    if algorithm == "simclr":
        expected, mispaired = ntxent_by_hand(z0, z1, 0.5), ntxent_by_hand(z0, z1[wrong], 0.5)
    elif algorithm == "byol":
        p0, p1 = model.prediction(z0), model.prediction(z1)
        t0, t1 = model.momentum_embed(view0), model.momentum_embed(view1)
        expected, mispaired = byol_by_hand(p0, p1, t0, t1), byol_by_hand(p0, p1[wrong], t0, t1[wrong])
        assert not torch.allclose(t0, z0, atol=1e-3), "the target must come from the momentum network"
    else:
        expected, mispaired = vicreg_by_hand(z0, z1), vicreg_by_hand(z0, z1[wrong])
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert abs(mispaired.item() - got.item()) > 1e-3, "a wrong pairing gives another value"


def test_views_pair_each_image_with_its_own_views():
    """With lightly's transform made deterministic, view k of image i is image i itself (normalised)."""
    identity = {"min_scale": 1.0, "hf_prob": 0.0, "cj_prob": 0.0, "random_gray_scale": 0.0, "gaussian_blur": 0.0}
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    views = ViewMaker(make_transform("simclr", 32, mean, std, identity), mean, std)
    pixels = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    images = pixels.float() / 127.5 - 1  # as image sources give them
    view0, view1 = views(images)
    expected = (pixels.float() / 255 - 0.5) / 0.5
    assert torch.allclose(view0, expected, atol=1e-6) and torch.allclose(view1, expected, atol=1e-6)
    assert torch.allclose(views.to_image(view0), images, atol=1e-5)
    # and the real transforms differ between the two views of an image
    views = ViewMaker(make_transform("simclr", 32, mean, std, {}), mean, std)
    torch.manual_seed(0)
    view0, view1 = views(images)
    assert not torch.allclose(view0, view1)


def test_bad_transform_options_are_named():
    with pytest.raises(UserError, match="'blur_prob' is not an option of lightly's SimCLRViewTransform; valid: "):
        make_transform("simclr", 32, (0.5,) * 3, (0.5,) * 3, {"blur_prob": 0.5})
    with pytest.raises(UserError, match="BYOLView1Transform"):
        make_transform("byol", 32, (0.5,) * 3, (0.5,) * 3, {"solarize_prob": 0.1})  # VICReg's name, not BYOL's


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("text", [BYOL_ON_FACES, VICREG_ON_GENERATED], ids=["byol-faces", "vicreg-generated"])
def test_kill_and_resume_is_bit_identical(tmp_path, text):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(text)
    weights = kill_and_resume(recipe, tmp_path)
    if "byol" in text:
        assert any(k.startswith("momentum_backbone.") for k in weights), "BYOL's momentum network is checkpointed"
    losses = [h["loss"] for h in read_metrics(tmp_path / "straight")]
    assert len(set(losses)) == len(losses) == 6


@pytest.fixture(scope="module")
def hrnet_run(tmp_path_factory) -> Path:
    """SimCLR on images drawn from the bundled generator, HRNet-W18-small, a budget of 10 images (3 steps)."""
    folder = tmp_path_factory.mktemp("ssl")
    (folder / "tiny.yaml").write_text(SIMCLR_HRNET_ON_GENERATED)
    proc = run_cli("pretrain", "tiny.yaml", "-o", "run", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "timm: timm.create_model('local-dir:" in proc.stdout
    return folder / "run"


@torch.no_grad()
def test_export_loads_through_the_plain_timm_line(hrnet_run):
    export = hrnet_run / "export"
    loaded = timm.create_model(f"local-dir:{export}", pretrained=True, features_only=True).eval()
    trained = timm.create_model("hrnet_w18_small", pretrained=False, features_only=True, feature_location="")
    trained.load_state_dict(backbone_state_from_checkpoint(latest_checkpoint(hrnet_run)))
    untrained = create_backbone(BackboneSpec(arch="hrnet_w18_small", feature_location=""))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outs = loaded(x)
    assert [o.shape[1] for o in outs] == [64, 16, 32, 64, 128]
    for a, b in zip(trained.eval()(x), outs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(untrained.eval()(x)[-1], outs[-1]), "the export holds trained weights"
    state = safetensors.torch.load_file(latest_checkpoint(hrnet_run) / "model.safetensors")
    exported = safetensors.torch.load_file(export / "model.safetensors")
    assert len(exported) == sum(k.startswith("backbone.") for k in state) and not any("projection" in k
                                                                                       for k in exported)


def test_run_records_its_budget_and_compute(hrnet_run):
    info = json.loads((hrnet_run / "run.json").read_text())
    assert info["method"] == "ssl" and info["algorithm"] == "simclr"
    assert info["budget"]["images_seen"] == 10 and info["steps"] == 3 == math.ceil(10 / 4)  # rounded up
    assert info["images_seen"] == 12 and info["images_per_step"] == 4
    assert info["generator"]["sha256"] and info["data"] == "images drawn from the generator at every step"
    assert "level(s) [1, 2, 3, 4] (240 channels)" in info["features"]  # HRNet: every branch feeds the head
    assert info["train_seconds"] > 0 and info["median_step_seconds"] > 0
    assert info["flops"] == 3 * info["flops_per_step"]
    saved = load_recipe(hrnet_run / "recipe.yaml")  # resolved: steps, no budget; features and feature_location
    assert (saved.train.steps, saved.train.images_seen, saved.train.flops) == (3, None, None)
    assert saved.method_cfg.features == "all" and saved.backbone.feature_location == ""
    assert saved.generator.source == "bundled"


def test_flops_per_step_are_the_generator_and_both_views_forward_and_backward(hrnet_run):
    """The counted step = the generator drawing the batch + the SSL model on two views, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from genbackbones.generators.open import open_generator

    recipe = load_recipe(hrnet_run / "recipe.yaml")
    G = open_generator("bundled").G
    model = SSLModel(create_backbone(recipe.backbone), [1, 2, 3, 4], recipe.method_cfg).train()
    with FlopCounterMode(display=False) as generator_flops, torch.no_grad():
        G(torch.randn(4, G.z_dim), None)
    with FlopCounterMode(display=False) as model_flops:
        model(torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)).backward()
    expected = generator_flops.get_total_flops() + model_flops.get_total_flops()
    assert json.loads((hrnet_run / "run.json").read_text())["flops_per_step"] == expected


def test_the_card_says_which_self_supervised_method_it_is(hrnet_run):
    card = (hrnet_run / "export" / "README.md").read_text()
    assert "# hrnet_w18_small · SimCLR (self-supervised)" in card
    assert "contrastive self-supervised method (lightly's loss, heads and view transforms)" in card
    assert "images drawn from a frozen StyleGAN generator" in card
    assert "not a LayerMatch or GH-Feat backbone" in card and "pretrained with **LayerMatch" not in card
    assert "chen2020simclr" in card and "lightly-ai/lightly" in card
    assert "- ssl" in card  # the Hub tag


def test_evaluate_runs_on_an_ssl_run(hrnet_run, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli("evaluate", str(hrnet_run), "--task", "classification", "--labels", "4", "--seeds", "1",
                   "--baselines", "random", "--out", str(out), "--set", "data.pool=12", "--set", "data.test_size=8",
                   "--set", "eval_batch_size=8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [b["kind"] for b in results["backbones"]] == ["run", "random"]
    assert results["backbones"][0]["provenance"]["method"] == "ssl"
    assert all(0 <= r["metrics"]["top1"] <= 100 for r in results["runs"]) and len(results["runs"]) == 2


# ----------------------------------------------------------------------------- budgets and recipes


def test_budgets_resolve_to_steps_rounded_up():
    cost = StepCost(images_per_step=8, flops_per_step=7.5e9)
    cfg = TrainCfg(images_seen=41)
    assert resolve_budget(cfg, cost) == {"images_seen": 41, "steps": 6, **cost.as_dict()}
    assert (cfg.steps, cfg.images_seen) == (6, None)
    cfg = TrainCfg(flops=2.0e10)
    assert resolve_budget(cfg, cost)["steps"] == 3 == cfg.steps and cfg.flops is None
    cfg = TrainCfg(steps=5)
    assert resolve_budget(cfg, cost) is None and cfg.steps == 5
    assert TrainCfg().steps == 300  # no budget: the default length


def test_two_budgets_and_impossible_budgets_are_one_line_errors(tmp_path):
    (tmp_path / "r.yaml").write_text(BYOL_ON_FACES)
    proc = run_cli("pretrain", "r.yaml", "--set", "train.images_seen=100", "-o", "run", cwd=tmp_path)
    assert "'train.images_seen' and train.steps both give the run's length" in one_line_error(proc)
    proc = run_cli("pretrain", "r.yaml", "--set", "train.steps=null", "--set", "train.flops=-1", "-o", "run",
                   cwd=tmp_path)
    assert "'train.flops' must be a positive number" in one_line_error(proc)
    assert not (tmp_path / "run").exists()


def test_the_generator_section_is_read_only_for_generated_images(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(BYOL_ON_FACES + "generator: {source: bundled}\n")
    with pytest.raises(UserError, match="method ssl does not read the 'generator' section"):
        load_recipe(real)
    (tmp_path / "gen.yaml").write_text(VICREG_ON_GENERATED)
    assert "generator" in to_dict(load_recipe(tmp_path / "gen.yaml"))  # what recipe.yaml saves
    (tmp_path / "faces.yaml").write_text(BYOL_ON_FACES)
    assert "generator" not in to_dict(load_recipe(tmp_path / "faces.yaml"))
    with pytest.raises(UserError, match="does not read the 'generator' section"):  # a leftover generator section
        load_recipe(tmp_path / "gen.yaml", ["data.source=faces"])
    ghfeat = tmp_path / "gh.yaml"
    ghfeat.write_text("method: ghfeat\ndata: {source: generator}\nghfeat: {perceptual: none}\n")
    proc = run_cli("pretrain", str(ghfeat), "-o", "run", cwd=tmp_path)
    assert "data.source 'generator'" in one_line_error(proc) and not (tmp_path / "run").exists()


def test_without_lightly_the_error_is_one_line_naming_the_extra(tmp_path):
    """lightly hidden (a None entry in sys.modules makes its import fail as if it were not installed)."""
    (tmp_path / "r.yaml").write_text(BYOL_ON_FACES)
    script = ("import sys; sys.modules['lightly'] = None; from genbackbones.cli import main; "
              "sys.argv = ['genbackbones', 'pretrain', 'r.yaml', '-o', 'run']; main()")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    line = one_line_error(proc)
    assert "method ssl needs lightly" in line and "pip install genbackbones[ssl]" in line
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_vs_ssl_tiny_runs_the_pipeline_and_continues_where_it_stopped(tmp_path):
    """benchmarks/vs_ssl.py --tiny at its smallest: two runs, every task, the README; a second call redoes nothing."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "benchmarks" / "vs_ssl.py"), "--tiny", "--threads", "1", "--archs", "resnet18",
           "--methods", "layermatch,simclr-real", "--images", "32", "--work", str(tmp_path / "runs"),
           "--out", str(tmp_path / "out")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "estimate of the full benchmark on this machine" in first.stderr
    compute = json.loads((tmp_path / "out" / "compute.json").read_text())
    assert [r["backbone"] for r in compute["runs"]] == ["resnet18-layermatch", "resnet18-simclr-real"]
    for r in compute["runs"]:
        assert r["steps"] == 2 and r["images_seen"] == 32 and r["flops_per_step"] > 1e9 and r["train_seconds"] > 0
    folders = {p.parent.name for p in (tmp_path / "out" / "faces" / "resnet18").glob("*/results.json")}
    assert {"segmentation", "landmarks", "hair_colour-linear", "hair_colour-finetune"} <= folders
    seg = json.loads((tmp_path / "out" / "faces" / "resnet18" / "segmentation" / "results.json").read_text())
    assert [b["name"] for b in seg["backbones"]] == ["resnet18-layermatch", "resnet18-simclr-real", "random init"]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| faces | resnet18-simclr-real | 2 | 32 |" in readme and "## faces/resnet18/segmentation" in readme
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done earlier") == 2 + len(folders)
    report = subprocess.run([*cmd[:cmd.index("--methods") + 1], "layermatch,simclr-real,byol-real",
                             *cmd[cmd.index("--methods") + 2:], "--report-only"], capture_output=True, text=True,
                            timeout=600)
    assert report.returncode == 0 and "done earlier" not in report.stderr, report.stderr[-3000:]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "Not run (no exported run, so not in any table below): faces/resnet18-byol-real." in readme
    assert "## faces/resnet18/segmentation" in readme
    assert not (tmp_path / "runs" / "faces" / "resnet18-byol-real").exists()
    # a run folder gone (git-ignored, trained on another machine): --report-only keeps its recorded row
    shutil.move(tmp_path / "runs" / "faces" / "resnet18-simclr-real", tmp_path / "away")
    report = subprocess.run([*cmd, "--report-only"], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    kept = json.loads((tmp_path / "out" / "compute.json").read_text())
    assert kept["runs"] == compute["runs"]
    assert "| faces | resnet18-simclr-real | 2 | 32 |" in (tmp_path / "out" / "README.md").read_text()
    # a call for part of the grid (here one method) keeps the other runs' rows
    part = subprocess.run([*cmd[:cmd.index("--methods") + 1], "layermatch", *cmd[cmd.index("--methods") + 2:],
                           "--report-only"], capture_output=True, text=True, timeout=600)
    assert part.returncode == 0, part.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "compute.json").read_text())["runs"] == compute["runs"]
    # a run added later (its siblings' folders gone): only its rows are computed, merged into the table
    seg_path = tmp_path / "out" / "faces" / "resnet18" / "segmentation" / "results.json"
    add = [*cmd[:cmd.index("--methods") + 1], "layermatch,byol-real", *cmd[cmd.index("--methods") + 2:]]
    added = subprocess.run([*add, "--tasks", "segmentation,landmarks"], capture_output=True, text=True, timeout=600)
    assert added.returncode == 0, added.stderr[-3000:]
    landmarks = json.loads((seg_path.parents[1] / "landmarks" / "results.json").read_text())
    assert [r["backbone"] for r in landmarks["runs"]].count("mean shape") == 1  # scored by both parts, kept once
    assert "1 runs + baselines -, labels 4" in added.stderr
    merged = json.loads(seg_path.read_text())
    assert [b["name"] for b in merged["backbones"]] == ["resnet18-layermatch", "resnet18-simclr-real",
                                                        "resnet18-byol-real", "random init"]
    assert merged["runs"][:len(seg["runs"])] == seg["runs"] and len(merged["runs"]) == len(seg["runs"]) + 1
    assert [p["backbones"] for p in merged["parts"]] == [[b["name"] for b in seg["backbones"]], ["resnet18-byol-real"]]
    assert {Path(r).name for r in merged["benchmark"]["runs"]} == {"resnet18-layermatch", "resnet18-simclr-real",
                                                                    "resnet18-byol-real"}
    # a new label count needs every run of the table: refused while simclr-real's folder is gone
    refused = subprocess.run([*add, "--tasks", "segmentation:2"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "error: faces/resnet18/segmentation: labels 2 need every run of its table here, and " \
           "resnet18-simclr-real is not" in " ".join(refused.stderr.split())
    assert json.loads(seg_path.read_text()) == merged
    # other seeds or baselines than the table's are refused before anything runs, the table kept
    for extra, message in ((["--seeds", "2"], "its table has 1 seed(s), this call asks 2"),
                           (["--baselines", "none"], "its table has baselines random, this call asks none")):
        other = subprocess.run([*add, "--tasks", "segmentation", *extra], capture_output=True, text=True, timeout=600)
        assert other.returncode == 2 and message in " ".join(other.stderr.split()), other.stderr[-3000:]
    # a run of the table whose folder is gone would be trained again under its name: refused before training
    gone = subprocess.run([*cmd, "--tasks", "segmentation"], capture_output=True, text=True, timeout=600)
    assert gone.returncode == 2 and "resnet18-simclr-real is in its table but its folder is not here" in \
        " ".join(gone.stderr.split()), gone.stderr[-3000:]
    assert not (tmp_path / "runs" / "faces" / "resnet18-simclr-real").exists()
    assert json.loads(seg_path.read_text()) == merged
    # ... and computed for every run and the baseline, the earlier rows kept, once it is back
    shutil.move(tmp_path / "away", tmp_path / "runs" / "faces" / "resnet18-simclr-real")
    three = [*cmd[:cmd.index("--methods") + 1], "layermatch,simclr-real,byol-real", *cmd[cmd.index("--methods") + 2:]]
    more = subprocess.run([*three, "--tasks", "segmentation:2"], capture_output=True, text=True, timeout=900)
    assert more.returncode == 0, more.stderr[-3000:]
    wider = json.loads(seg_path.read_text())
    assert wider["labels"] == [2, 4] and len(wider["parts"]) == 3
    assert wider["runs"][:len(merged["runs"])] == merged["runs"]
    assert sorted((r["backbone"], r["labels"]) for r in wider["runs"] if r["labels"] == 2) == sorted(
        (b["name"], 2) for b in merged["backbones"])
    assert {s["labels"] for s in wider["summary"]} == {2, 4}
    assert wider["timing"]["total_seconds"] == round(sum(p["total_seconds"] for p in wider["parts"]), 1)
    # a run trained again after its table was made is not the run in the table: refused, the table kept
    os.utime(tmp_path / "runs" / "faces" / "resnet18-layermatch" / "export" / "model.safetensors")
    stale = subprocess.run([*three, "--tasks", "segmentation:3"], capture_output=True, text=True, timeout=600)
    assert stale.returncode == 2, stale.stderr[-3000:]
    assert "resnet18-layermatch was exported after its rows were made" in " ".join(stale.stderr.split())
    assert json.loads(seg_path.read_text()) == wider


def _load_vs_ssl():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_ssl.py"
    spec = importlib.util.spec_from_file_location("vs_ssl", path)
    vs_ssl = importlib.util.module_from_spec(spec)
    sys.modules["vs_ssl"] = vs_ssl  # dataclasses look their module up there
    spec.loader.exec_module(vs_ssl)
    return vs_ssl


def test_vs_ssl_merge_is_exact_across_checkouts_and_refuses_what_differs():
    """A committed table split by backbone and label count, one part made in another checkout, merges back to the
    same rows and summary; different settings or a row in two parts are refused."""
    import copy

    from genbackbones.evaluate.report import summarise

    vs_ssl = _load_vs_ssl()
    table = json.loads((vs_ssl.RESULTS / "utkface" / "resnet18" / "gender-linear" / "results.json").read_text())
    assert table["labels"] == [16, 64, 256, 1024] and len(table["backbones"]) == 6
    moved = re.sub(r'/[^" ]*?/benchmarks/work/', "/home/someone/genbackbones/benchmarks/work/", json.dumps(table))
    assert moved != json.dumps(table)
    first, later = copy.deepcopy(table), json.loads(moved)
    first["labels"] = [16, 64]
    first["subsets"] = {n: v for n, v in table["subsets"].items() if n in ("16", "64")}
    first["runs"] = [r for r in table["runs"] if r["labels"] in (16, 64)]
    later["runs"] = [r for r in later["runs"] if r["labels"] in (256, 1024)]
    merged = vs_ssl.merge_results([first, later])
    key = lambda r: (r["backbone"], r["labels"], r["seed"])  # noqa: E731
    assert sorted(merged["runs"], key=key) == sorted(table["runs"], key=key)
    assert merged["labels"] == table["labels"] and merged["subsets"] == table["subsets"]
    assert summarise(merged) == summarise(table) and len(merged["parts"]) == 2
    other = copy.deepcopy(later)
    other["settings"]["knn_k"] = 5
    with pytest.raises(UserError, match="their 'settings' differ"):
        vs_ssl.merge_results([first, other])
    with pytest.raises(UserError, match="at 16 labels, seed 0 is in two evaluations"):
        vs_ssl.merge_results([first, first])


def test_vs_ssl_tasks_selects_evaluations_and_their_label_counts():
    """`--tasks folder[:labels]`: a session short of time runs part of the grid, and the README says what is left."""
    vs_ssl = _load_vs_ssl()
    grid = vs_ssl.evaluations(["faces"], ["linear", "knn", "finetune"])
    jobs = vs_ssl.selected(grid, "hair_colour-knn,segmentation:16")
    assert [(j.folder, j.labels) for j in jobs] == [("segmentation", "16"), ("hair_colour-knn", "4,16,64")]
    assert vs_ssl.selected(grid, None) == grid
    jobs = vs_ssl.selected(grid, "segmentation:4,16,hair_colour-knn:4")  # a bare number continues the labels
    assert [(j.folder, j.labels) for j in jobs] == [("segmentation", "4,16"), ("hair_colour-knn", "4")]
    assert [(j.folder, j.labels) for j in vs_ssl.selected(grid, "segmentation:4,segmentation:16,")] == [
        ("segmentation", "4,16")]  # a task named twice keeps both counts; an empty item is nothing
    with pytest.raises(UserError, match="--tasks: segmentation is named twice"):
        vs_ssl.selected(grid, "segmentation:4,segmentation")
    with pytest.raises(UserError, match="--tasks segmentation:0: label counts are positive numbers"):
        vs_ssl.selected(grid, "segmentation:0")
    with pytest.raises(UserError, match="--tasks: 'gender-linear' is not one of"):
        vs_ssl.selected(grid, "gender-linear")
