"""GH-Feat: the encoder covers every style of any generator, the losses train it (reconstruction beats the
untrained encoder), resume is bit-identical, the trunk exports to timm, the commands work, and the VGG
perceptual network is never silently random (missing weights are a one-line error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from typer.testing import CliRunner

from genbackbones.errors import UserError
from genbackbones.export import backbone_state_from_checkpoint
from genbackbones.generators.open import open_generator
from genbackbones.generators.stylegan2 import Generator
from genbackbones.engine.runs import train
from genbackbones.methods.ghfeat import build_encoder
from genbackbones.methods.ghfeat.model import split_layers, style_levels, style_statistics
from genbackbones.methods.ghfeat.use import extract_features, load_run, mix, parse_levels, read_images, reconstruct, ssim
from genbackbones.recipes import Recipe, load_recipe
from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.engine.loop import read_metrics
from tests.cli_runs import run_cli

from .conftest import FIXTURES

TINY = textwrap.dedent("""
    name: tiny-ghfeat
    method: ghfeat
    generator: {source: "random:tiny32"}
    backbone: {arch: resnet18, init: random}
    data: {source: faces, count: 256}
    ghfeat: {perceptual: none, fpn_channels: 32, style_samples: 256, r1_every: 2, lr_decay_every: 3}
    train: {steps: 16, batch_size: 4, lr: 1.0e-3, betas: [0.0, 0.99], checkpoint_every: 8, log_every: 4,
            num_threads: 1}
""")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_recipe(tmp_path: Path, *overrides: str) -> Recipe:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return load_recipe(path, list(overrides))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ghfeat")
    return train(tiny_recipe(tmp), output=tmp / "run")


# ----------------------------------------------------------------------------- encoder and generator


def _fixture_generators() -> list[tuple[str, dict]]:
    if not FIXTURES.exists():
        return []
    return [(p.parent.name, json.loads(p.read_text())["G"]) for p in sorted(FIXTURES.glob("*/init_kwargs.json"))]


def _encoder_for(G: Generator) -> torch.nn.Module:
    recipe = Recipe(method="ghfeat")
    recipe.backbone.arch, recipe.method_cfg.fpn_channels = "resnet18", 16
    return build_encoder(recipe, G, style_statistics(G, 64, 0)).eval()


@pytest.mark.parametrize("variant", ["random:tiny32"] + ([name for name, _ in _fixture_generators()] or ["<fixtures>"]))
@torch.no_grad()
def test_encoder_predicts_every_style_of_the_generator(variant):
    if variant == "<fixtures>":
        pytest.skip(f"NVIDIA fixture architectures not found at {FIXTURES} (they live in ../shared)")
    if variant.startswith("random:"):
        G = open_generator(variant).G
    else:
        G = Generator(**dict(_fixture_generators())[variant]).eval()
    encoder = _encoder_for(G)
    x = torch.rand(2, 3, G.img_resolution, G.img_resolution) * 2 - 1
    styles = encoder(x)
    dims = G.style_dims()
    assert list(styles) == list(dims) and len(dims) == len(G.synthesis.style_layers)
    for name, d in dims.items():
        assert styles[name].shape == (2, d), name
    assert sorted(sum(encoder.groups.values(), [])) == sorted(dims)  # each style from exactly one head
    assert G.synthesize_from_styles(styles).shape == (2, 3, G.img_resolution, G.img_resolution)


@torch.no_grad()
def test_synthesis_from_the_true_styles_is_the_generator():
    G = open_generator("random:tiny32").G
    ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1)), None)
    assert torch.equal(G.synthesize_from_styles(G.synthesis.compute_styles(ws), noise_mode="const"),
                       G.synthesis(ws, noise_mode="const"))


@torch.no_grad()
def test_style_mean_is_the_styles_of_w_avg():
    G = open_generator("random:tiny32").G
    assert "untrained mapping" in style_statistics(G, 64, 0).origin  # a random mapping has w_avg = 0
    G.mapping.w_avg.copy_(torch.randn(G.w_dim))
    stats = style_statistics(G, 64, 0)
    expected = G.synthesis.compute_styles(G.mapping.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1))
    assert stats.origin == "w_avg of the mapping network"
    for name, value in expected.items():
        assert torch.allclose(stats.mean[name], value[0]) and (stats.std[name] > 0).all()


def test_layers_split_like_the_paper_at_256_and_in_proportion_elsewhere():
    def layers(num_blocks: int) -> list[str]:
        names = ["synthesis.b4.conv1", "synthesis.b4.torgb"]
        for r in (2 ** i for i in range(3, num_blocks + 2)):
            names += [f"synthesis.b{r}.conv0", f"synthesis.b{r}.conv1", f"synthesis.b{r}.torgb"]
        return names

    groups = split_layers(layers(7))  # 256 px: paper Table 7, coarse 4-8, middle 16-32, fine 64-256
    blocks = {g: sorted({n.split(".")[1] for n in v}, key=lambda b: int(b[1:])) for g, v in groups.items()}
    assert blocks == {"coarse": ["b4", "b8"], "middle": ["b16", "b32"], "fine": ["b64", "b128", "b256"]}
    for n in range(1, 11):
        names = layers(n)
        groups = split_layers(names)
        assert sum(groups.values(), []) == names  # synthesis order kept, every layer once
        if n >= 3:
            assert all(groups.values())


def test_levels_follow_nvidia_w_indices():
    G = open_generator("random:tiny32").G
    levels = style_levels(G)
    assert len(levels) == G.num_ws and levels[0] == ["synthesis.b4.conv1"]
    assert levels[1] == ["synthesis.b4.torgb", "synthesis.b8.conv0"]  # toRGB shares the next conv's w
    assert parse_levels("0-2", levels) == [0, 1, 2] and parse_levels("6-", levels) == [6, 7]
    assert parse_levels("coarse", levels, {"coarse": ["synthesis.b4.torgb"]}) == [1]
    with pytest.raises(UserError, match="--levels"):
        parse_levels("3-99", levels)


def test_ssim_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.image")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 32, 32, generator=g)).clamp(-1, 1)
    # torchmetrics also averages the reflect-padded border windows; ours (as scikit-image) only whole windows
    _, full = tm.structural_similarity_index_measure((b + 1) / 2, (a + 1) / 2, data_range=1.0, reduction="none",
                                                     return_full_image=True)
    ref = full[..., 5:-5, 5:-5].flatten(1).mean(1)
    assert torch.allclose(ssim(b, a), ref, atol=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(3))


# ----------------------------------------------------------------------------- training


def test_run_records_what_it_used_and_the_loss_falls(tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["status"] == "exported" and info["method"] == "ghfeat"
    assert info["discriminator"].startswith("fresh") and info["perceptual"].startswith("none")
    assert set(info["groups"]) == {"coarse", "middle", "fine"}
    history = read_metrics(tiny_run)
    assert [h["step"] for h in history] == list(range(1, 17))
    assert {"E/mse", "E/adv", "D/loss", "Dr1/r1"} <= set().union(*history)
    first, last = sum(h["E/mse"] for h in history[:4]) / 4, sum(h["E/mse"] for h in history[-4:]) / 4
    assert last < first, f"reconstruction loss did not fall: {first:.3f} -> {last:.3f}"
    assert (tiny_run / "samples.png").stat().st_size > 1000


def test_reconstruction_beats_the_untrained_encoder_and_the_mean_image(tiny_run, tmp_path):
    result = reconstruct(tiny_run, ["faces:16"], tmp_path / "grid.png", baselines=True)
    untrained, mean = result.baselines["untrained encoder"], result.baselines["mean image"]
    assert result.images == 16 and (tmp_path / "grid.png").exists()
    assert result.mse < 0.9 * untrained["mse"], (result.mse, untrained["mse"])
    assert result.mse < 0.9 * mean["mse"], (result.mse, mean["mse"])


@torch.no_grad()
def test_exported_trunk_loads_in_timm_with_identical_features(tiny_run):
    export = tiny_run / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["genbackbones"]["method"] == "ghfeat"
    loaded = timm.create_model(f"local-dir:{export}", pretrained=True, features_only=True).eval()
    trunk = load_run(tiny_run).encoder.backbone
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for a, b in zip(trunk(x), loaded(x)):
        assert torch.equal(a, b)
    trained = timm.create_model("resnet18", features_only=True)
    trained.load_state_dict(backbone_state_from_checkpoint(latest_checkpoint(tiny_run)))
    assert all(torch.equal(a, b) for a, b in zip(trained.eval()(x), loaded(x)))


def test_resume_is_bit_identical(tmp_path):
    straight = train(tiny_recipe(tmp_path, "train.steps=4", "train.checkpoint_every=2"),
                               output=tmp_path / "straight", export=False)
    half = train(tiny_recipe(tmp_path, "train.steps=2", "train.checkpoint_every=2"),
                           output=tmp_path / "half", export=False)
    resumed = train(resume=half, steps=4, export=False)
    assert json.loads((resumed / "run.json").read_text())["resumed_from_step"] == 2
    for name in ("model", "D"):
        a = safetensors.torch.load_file(latest_checkpoint(straight) / f"{name}.safetensors")
        b = safetensors.torch.load_file(latest_checkpoint(resumed) / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    assert read_metrics(straight) != [] and [h["E/loss"] for h in read_metrics(straight)] == \
        [h["E/loss"] for h in read_metrics(resumed)]


# ----------------------------------------------------------------------------- commands


def test_mix_and_features(tiny_run, tmp_path):
    path = mix(tiny_run, ["faces:2"], ["faces:2:5"], "0-3", tmp_path / "mix.png")
    assert path.stat().st_size > 500
    shapes = extract_features(tiny_run, ["faces:3"], tmp_path / "f.safetensors")
    G = load_run(tiny_run).generator
    assert len([k for k in shapes if k.startswith("level.")]) == G.num_ws
    assert shapes["all"] == (3, sum(G.style_dims().values()))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "f.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["levels"])["0"] == ["synthesis.b4.conv1"]
    with pytest.raises(UserError, match="faces:N"):
        read_images(["faces:zero"], 32)


def _app():
    """The `genbackbones` command itself."""
    from genbackbones.cli import app

    return app


def test_reconstruct_command_prints_scores_and_fails_in_one_line(tiny_run, tmp_path):
    runner = CliRunner()
    out = runner.invoke(_app(), ["reconstruct", str(tiny_run), "faces:4", "--out", str(tmp_path / "r.png"),
                                 "--baselines"])
    assert out.exit_code == 0, out.output
    assert "MSE" in out.output and "SSIM" in out.output and "untrained encoder" in out.output
    bad = runner.invoke(_app(), ["reconstruct", str(tmp_path), "faces:4"])
    assert bad.exit_code == 2 and "not a genbackbones run" in bad.output and "Traceback" not in bad.output


def test_ghfeat_commands_are_mounted_on_the_cli():
    import typer.main

    from genbackbones.cli import app

    names = set(typer.main.get_command(app).commands)
    assert {"reconstruct", "mix", "features"} <= names, "mount genbackbones.cli.ghfeat in genbackbones/cli/__init__.py"


# ----------------------------------------------------------------------------- VGG16 perceptual network


def test_missing_vgg_weights_is_a_one_line_error_and_leaves_nothing(tmp_path):
    recipe = tmp_path / "vgg.yaml"
    recipe.write_text(TINY.replace("perceptual: none, ", ""))  # perceptual not stated: vgg16 is the default
    env = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1"}
    proc = run_cli("pretrain", str(recipe), "-o", str(tmp_path / "run"), cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) <= 3  # one message (rich may wrap it)
    flat = " ".join(err.split())
    assert "huggingface-cli download timm/vgg16.tv_in1k" in flat and "ghfeat.perceptual: none" in flat
    assert not (tmp_path / "run").exists()


def test_vgg_weights_from_the_hf_cache_give_conv4_3_features(tmp_path):
    """A LOCAL STAND-IN for timm/vgg16.tv_in1k: random VGG16 conv weights (the classifier left out to keep the
    file small) in a pre-populated offline Hugging Face cache, read in a fresh process."""
    with torch.device("meta"):  # timm's own VGG16 layout, without allocating its 120M-parameter classifier
        vgg = timm.create_model("vgg16", pretrained=False)
    features = vgg.features.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    for name, p in features.named_parameters():
        with torch.no_grad():
            fan_in = p[0].numel()  # He initialisation keeps the activations in range through ten layers
            p.copy_(torch.randn(p.shape, generator=g) * (2 / fan_in) ** 0.5 if p.ndim == 4 else torch.zeros_like(p))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--timm--vgg16.tv_in1k"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    safetensors.torch.save_file(state, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vgg16", "num_classes": 1000}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet normalisation of tv_in1k
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = features[:23](((x + 1) / 2 - mean) / std)  # timm's own conv4_3 (+ReLU)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch
        from genbackbones.methods.ghfeat.perceptual import VGGConv4_3, perceptual_distance
        io = torch.load({str(tmp_path / 'io.pt')!r})
        net = VGGConv4_3()
        got = net(io["x"])
        assert got.shape == (2, 512, 4, 4), got.shape
        assert torch.allclose(got, io["expected"], atol=1e-5), (got - io["expected"]).abs().max()
        fake = (io["x"] * 0.5).requires_grad_(True)
        d = perceptual_distance(net, fake, io["x"])
        d.backward()
        assert d > 0 and fake.grad.abs().sum() > 0 and not any(p.requires_grad for p in net.parameters())
        print("ok")
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
