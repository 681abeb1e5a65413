"""The product against a StyleGAN3 teacher: taps larger than the image, LayerMatch, GH-Feat, annotate / cluster /
synthesize, and `pretrain --set generator.source=<StyleGAN3 pickle>` to a backbone the printed timm line loads.

A StyleGAN3 layer samples the image on a grid of its sampling rate plus a 10 px margin each side (a 32 px
generator's layers are 36 and 52 px; only the last two are 32 px). These tests check that the margin the taps
declare is where the image is not: the centre, resampled to the image, explains the image better than the whole
layer or any other crop; and that what LayerMatch substitutes (a prediction pasted into the traced activation's
centre) resumes to the traced image exactly when the prediction is the traced centre.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from genbackbones.backbones import create_backbone
from genbackbones.cli import app
from genbackbones.generators.base import crop_margin, paste_centre
from genbackbones.generators.open import open_generator
from genbackbones.methods.layermatch import LayerMatchModel, LayerMatchTask, choose_taps, layermatch_loss
from genbackbones.recipes import BackboneSpec
from genbackbones.semantics.activations import default_layers, generate, one_per_resolution
from genbackbones.semantics.extractors import load_extractor

from .cli_runs import run_cli
from .test_stylegan3_pickle import sg3_pickle, t_small  # noqa: F401 (t_small: the fixture network's pickle)
from .test_user_contract import run_as_typed, save_trained_features, timm_line

# no one_torch_thread here: the timm-line checks compare bitwise with a subprocess that runs torch's default threads
runner = CliRunner()
MARGIN_TAPS = ["synthesis.input"] + [f"synthesis.L{i}_36_64" for i in range(5)] + \
    [f"synthesis.L{i}_52_{c}" for i, c in zip(range(5, 13), (64, 64, 64, 64, 54, 45, 38, 32))]


@pytest.fixture(scope="module")
def sg3():
    return open_generator("random:sg3-t32").G


@pytest.fixture(scope="module")
def traced(sg3):
    with torch.no_grad():
        return sg3.trace(sg3.sample_latents(16, generator=torch.Generator().manual_seed(0)))


def linear_fit_r2(feat: torch.Tensor, img: torch.Tensor) -> float:
    """R^2 of the best per-pixel linear map from `feat` (bilinearly resampled to the image's size) to the image."""
    f = F.interpolate(feat.float(), size=img.shape[-2:], mode="bilinear", align_corners=False)
    x = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    y = img.permute(0, 2, 3, 1).reshape(-1, img.shape[1])
    residual = y - x @ torch.linalg.lstsq(x, y).solution
    return float(1 - residual.square().sum() / (y - y.mean(0)).square().sum())


def test_taps_declare_their_margin_and_the_centre_is_the_image(sg3, traced):
    specs = sg3.tap_specs()
    assert [n for n, s in specs.items() if s.margin] == MARGIN_TAPS
    assert all(specs[n].margin == 10 for n in MARGIN_TAPS)
    assert [specs[n].aligned_resolution for n in specs] == [16] * 6 + [32] * 10
    assert specs["synthesis.L13_32_32"].margin == 0 and specs["synthesis.L14_32_3"].kind == "img"
    info = runner.invoke(app, ["generator", "info", "random:sg3-t32", "--json"])
    assert info.exit_code == 0, info.output
    assert [t["margin"] for t in json.loads(info.stdout)["taps"]] == [10] * 14 + [0] * 2
    sg2 = open_generator("random:tiny32").G  # StyleGAN2's activations are the image's grid: no margin
    assert all(s.margin == 0 and s.aligned_resolution == s.resolution for s in sg2.tap_specs().values())
    for tap in ("synthesis.L3_36_64", "synthesis.L12_52_32"):
        act, m = traced.taps[tap], specs[tap].margin
        centre = linear_fit_r2(crop_margin(act, m), traced.img)
        whole = linear_fit_r2(act, traced.img)
        shifted = [linear_fit_r2(act[..., m + dy:act.shape[-2] - m + dy, m + dx:act.shape[-1] - m + dx], traced.img)
                   for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
        # measured (seed 0): L3 0.81 centre vs 0.65 whole; L12 0.94 vs 0.76, shifted crops lower
        assert centre > whole + 0.1, (tap, centre, whole)
        assert centre > max(shifted), (tap, centre, shifted)


def test_resume_from_the_traced_centre_pasted_back_is_the_traced_image(sg3):
    specs = sg3.tap_specs()
    with torch.no_grad():
        traced = sg3.trace(sg3.sample_latents(2, generator=torch.Generator().manual_seed(2)))
    for tap in MARGIN_TAPS:
        act, m = traced.taps[tap], specs[tap].margin
        pasted = paste_centre(crop_margin(act, m).clone(), act, m)
        assert torch.equal(sg3.resume(traced, tap, pasted), traced.img), tap
    # a changed centre changes the image, and the gradient reaches the centre only through the generator
    tap, m = "synthesis.L8_52_64", 10
    centre = (0.5 * crop_margin(traced.taps[tap], m)).requires_grad_(True)
    full = paste_centre(centre, traced.taps[tap], m)
    assert torch.equal(full[..., :m, :], traced.taps[tap][..., :m, :])  # the margin is the generator's
    loss = F.mse_loss(sg3.resume(traced, tap, full), traced.img)
    loss.backward()
    assert loss > 1e-4 and centre.grad.abs().sum() > 0


def test_layermatch_matches_aligned_sizes_and_losses_use_the_centre(sg3):
    backbone = create_backbone(BackboneSpec(arch="resnet18", init="random"))
    auto = choose_taps(sg3, backbone, 32, "auto", min_reduction=2)
    # at 32 px the levels are 16..1 px: the last 16 px layer (L4) is the nearest; matched at 16, not 36
    assert {(m.tap, m.resolution, m.margin) for m in auto} == {("synthesis.L4_36_64", 16, 10)}
    explicit = choose_taps(sg3, backbone, 32, ["synthesis.L12_52_32", "synthesis.L13_32_32"], min_reduction=2)
    assert [(m.tap, m.resolution, m.margin, m.level_size) for m in explicit] == [
        ("synthesis.L12_52_32", 32, 10, 16), ("synthesis.L13_32_32", 32, 0, 16)]
    model = LayerMatchModel(backbone, auto + explicit, ((0.5,) * 3, (0.5,) * 3), head="linear")
    z = sg3.sample_latents(4, generator=torch.Generator().manual_seed(1))
    rec_from_l12 = len(auto)  # the reconstruction resumes from L12 (margin 10)
    out = layermatch_loss(model, sg3, z, None, rec_tap_index=rec_from_l12, noise_mode="const")
    assert out.rec_tap == "synthesis.L12_52_32" and out.rec > 0
    with torch.no_grad():
        trace = sg3.trace(z)
        preds = model(trace.img)
    assert preds[explicit[0].key].shape == (4, 32, 32, 32)
    # the match loss is against the standardised centre, statistics included (updated from the centre above)
    target = model.to_target("synthesis.L12_52_32", trace.taps["synthesis.L12_52_32"])
    assert target.shape == (4, 32, 32, 32)
    expected = F.mse_loss(preds[explicit[0].key], target)
    got = model.match_losses(preds, trace.taps)[explicit[0].key]
    assert torch.allclose(got, expected)
    centre = crop_margin(trace.taps["synthesis.L12_52_32"], 10).float()
    std = model.standardizers["synthesis__L12_52_32"]
    assert torch.allclose(std.mean, centre.mean(dim=(0, 2, 3)), atol=1e-2)  # EMA of two centre batches
    sub = model.to_activation("synthesis.L12_52_32", preds[explicit[0].key], trace.taps["synthesis.L12_52_32"])
    assert sub.shape == trace.taps["synthesis.L12_52_32"].shape
    assert torch.equal(sub[..., :10], trace.taps["synthesis.L12_52_32"][..., :10])
    out.total.backward()
    assert all(p.grad is not None for p in model.heads[explicit[0].key].parameters())
    # the samples picture: traced train.batch_size at a time, the same pictures as in one batch
    pictures = {b: LayerMatchTask(model, sg3, None, None, None, SimpleNamespace(batch_size=b, grad_accum=1), 0,
                                  torch.device("cpu")).sample_images(n=5) for b in (2, 5)}
    assert list(pictures[2]) == ["generated"] + [f"rec {m.tap.removeprefix('synthesis.')} <- level {m.level}"
                                                 for m in model.matches]
    for name, images in pictures[2].items():
        assert images.shape == (5, 3, 32, 32) and torch.allclose(images, pictures[5][name], atol=1e-4), name


def test_semantics_reads_the_aligned_centre(sg3):
    layers = default_layers(sg3)
    assert layers == ["synthesis.input"] + [f"synthesis.{n}" for n in sg3.synthesis.layer_names[:-1]]
    assert one_per_resolution(sg3) == ["synthesis.L4_36_64", "synthesis.L13_32_32"]
    acts = generate(sg3, [0, 1], ["synthesis.L12_52_32", "synthesis.L13_32_32"]).acts
    assert acts["synthesis.L12_52_32"].shape == (2, 32, 32, 32)  # the 52 px layer's centre
    with torch.no_grad():
        z = np.stack([np.random.RandomState(seed).randn(sg3.z_dim) for seed in (0, 1)])  # generator sample's seeds
        trace = sg3.trace(torch.from_numpy(z).float())
    assert torch.equal(acts["synthesis.L12_52_32"], crop_margin(trace.taps["synthesis.L12_52_32"], 10))


def test_annotate_cluster_and_synthesize_against_a_stylegan3(tmp_path):
    source = "random:sg3-t32"
    result = runner.invoke(app, ["generator", "sample", source, "--n", "6", "--out", str(tmp_path / "grid.png"),
                                 "--save-seeds"])
    assert result.exit_code == 0, result.output
    masks = tmp_path / "masks"
    masks.mkdir()
    for image in sorted((tmp_path / "grid_images").glob("seed*.png")):  # the docs' stand-in: dark / bright
        grey = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
        Image.fromarray((grey > grey.mean()).astype(np.uint8)).save(masks / image.name)
    out = tmp_path / "ext"
    result = runner.invoke(app, ["annotate", source, "--masks", str(masks), "--seeds", str(tmp_path / "seeds.json"),
                                 "--extractor", "linear", "--classes", "dark,bright", "--steps", "100",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    ext = load_extractor(out)
    assert set(ext.config.resolutions) == {16, 32}  # image-aligned sizes, not 36 / 52
    assert ext.config.training["train_scores"]["miou"] > 85  # measured 92.6: the centre lies under its pixels
    data = tmp_path / "data"
    result = runner.invoke(app, ["synthesize", source, "--extractor", str(out), "--n", "3", "--out", str(data)])
    assert result.exit_code == 0, result.output
    assert len(list((data / "masks").iterdir())) == 3
    clusters = tmp_path / "cl"
    result = runner.invoke(app, ["cluster", source, "--k", "3", "--n", "4", "--init-k", "8", "--resolution", "16",
                                 "--max-pixels", "1500", "--samples", "2", "--out", str(clusters)])
    assert result.exit_code == 0, result.output
    assert (clusters / "clusters.json").exists()


@pytest.mark.slow
def test_pretrain_on_a_stylegan3_pickle_exports_what_the_timm_line_loads(tmp_path, t_small):  # noqa: F811
    marker = tmp_path / "pwned"
    pkl = sg3_pickle(tmp_path, t_small, marker)
    proc = run_cli("pretrain", "--set", f"generator.source={pkl}", "--set", "train.steps=2", "--set",
                   "train.batch_size=4", "-o", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["resolution"] == 32 and info["status"] == "exported"
    assert any(t.startswith("synthesis.L") for t in info["taps"])
    channels = save_trained_features(run, tmp_path / "expected.pt")
    assert run_as_typed(f"model = {timm_line(proc.stdout)}", tmp_path / "expected.pt") == channels
    assert not marker.exists(), "nothing from the pickle ran"


@pytest.mark.slow
def test_ghfeat_two_steps_through_stylegan3_styles(tmp_path):
    proc = run_cli("pretrain", "ghfeat/quickstart", "--set", "generator.source=random:sg3-t32", "--set",
                   "train.steps=2", "--set", "train.batch_size=4", "-o", "gh", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "gh" / "run.json").read_text())
    assert info["status"] == "exported"
    channels = save_trained_features(tmp_path / "gh", tmp_path / "expected.pt")
    assert run_as_typed(f"model = {timm_line(proc.stdout)}", tmp_path / "expected.pt") == channels
    # the run's encoder in use: images encoded to StyleGAN3 styles and re-rendered, per-level features, mixing
    sample = run_cli("generator", "sample", "random:sg3-t32", "--n", "2", "--out", "imgs.png", "--save-seeds",
                     cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr[-2000:]
    images = [str(p) for p in sorted((tmp_path / "imgs_images").glob("*.png"))]
    for args in (["reconstruct", "gh", *images, "--out", "rec.png"], ["features", "gh", *images, "--out", "feats"],
                 ["mix", "gh", *images, "--out", "mix.png"]):
        used = run_cli(*args, cwd=tmp_path)
        assert used.returncode == 0, (args[0], used.stderr[-2000:])
    assert all((tmp_path / name).exists() for name in ("rec.png", "mix.png", "feats"))
