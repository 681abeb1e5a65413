"""BACKBONE references and baselines, including ImageNet weights from an offline Hugging Face cache.

The `imagenet` baseline is tested with a *local stand-in for timm's weights*: a randomly
initialised resnet18 saved as model.safetensors + config.json in the cache layout of
`timm/resnet18.a1_in1k` (no download is possible here). The evaluator must load exactly
that file through timm, and report "weights not available" when the cache is empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genbackbones.errors import UserError
from genbackbones.evaluate.backbones import (
    ResolvedBackbone,
    imagenet_tag,
    is_imagenet_only,
    random_baseline,
    resolve_backbone,
    resolve_baselines,
)

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def make_tiny_run(base: Path) -> Path:
    """A 2-step resnet18 LayerMatch run at 32 px (shared by the evaluate tests; ~15 s once per session)."""
    run = base / "evaluate-tiny-run"
    if (run / "export" / "config.json").exists():
        return run
    from genbackbones import pretrain
    from genbackbones.recipes import load_recipe

    recipe = load_recipe(None, ["generator.source=random:tiny32", "backbone.arch=resnet18", "train.steps=2",
                                "train.batch_size=4"])
    return pretrain(recipe, output=run)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.getbasetemp())


def write_standin_cache(hf_home: Path, seed: int = 123) -> torch.Tensor:
    """A random resnet18 in the HF cache layout of timm/resnet18.a1_in1k; returns its conv1 weight."""
    import safetensors.torch
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False)
    repo = hf_home / "hub" / "models--timm--resnet18.a1_in1k"
    folder = repo / "snapshots" / SNAPSHOT
    folder.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    return model.conv1.weight.detach().clone()


def offline_env(hf_home: Path) -> dict:
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


PROBE = """
import json, sys, torch
from genbackbones.evaluate.backbones import resolve_backbone, resolve_baselines
first = resolve_backbone(sys.argv[1])
found, missing = resolve_baselines(["imagenet", "random"], [first])
out = {"found": [b.describe() for b in found], "missing": [m.__dict__ for m in missing]}
imagenet = [b for b in found if b.kind == "imagenet"]
if imagenet:
    model = imagenet[0].build(seed=0)
    out["conv1_sum"] = float(model.conv1.weight.double().sum())
    out["levels"] = len(model.feature_info.channels())
if len(sys.argv) > 2:  # an hf-hub: reference served from the same offline cache
    hub = resolve_backbone(sys.argv[2])
    out["hub"] = {**hub.describe(), "conv1_sum": float(hub.build(seed=0).conv1.weight.double().sum())}
print(json.dumps(out))
"""


def probe(run: Path, hf_home: Path, *hub_reference: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(run), *hub_reference], env=offline_env(hf_home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def cache_export_as_hub_repo(export: Path, hf_home: Path, repo: str) -> None:
    """An export folder placed in the HF cache as if downloaded from the Hub repo `repo`."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(export, folder / "snapshots" / SNAPSHOT)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(SNAPSHOT)


def test_imagenet_baseline_loads_the_cached_standin_offline(tiny_run, tmp_path):
    conv1 = write_standin_cache(tmp_path / "hf")
    cache_export_as_hub_repo(tiny_run / "export", tmp_path / "hf", "me/tiny-layermatch")
    out = probe(tiny_run, tmp_path / "hf", "hf-hub:me/tiny-layermatch")
    assert out["missing"] == []
    imagenet = next(b for b in out["found"] if b["kind"] == "imagenet")
    assert imagenet["name"] == "imagenet (resnet18.a1_in1k)"
    assert "models--timm--resnet18.a1_in1k" in imagenet["provenance"]["weights_file"]
    assert imagenet["mean"] == pytest.approx([0.485, 0.456, 0.406])  # fed with timm's ImageNet normalisation
    assert out["conv1_sum"] == pytest.approx(float(conv1.double().sum()), rel=1e-6)  # exactly the cached weights
    assert out["levels"] == 5
    # hf-hub: references resolve from the cache without network, with the export's own normalisation
    hub = out["hub"]
    assert hub["kind"] == "hf-hub" and hub["name"] == "me/tiny-layermatch" and hub["mean"] == [0.5, 0.5, 0.5]
    run_conv1 = resolve_backbone(str(tiny_run)).build(0).conv1.weight.double().sum().item()
    assert hub["conv1_sum"] == pytest.approx(run_conv1, rel=1e-6)


def test_imagenet_baseline_absent_offline_is_reported_not_replaced(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    out = probe(tiny_run, tmp_path / "empty")
    assert [b["kind"] for b in out["found"]] == ["random"]
    assert out["missing"][0]["name"] == "imagenet"
    reason = out["missing"][0]["reason"]
    assert reason.startswith("weights not available") and "timm/resnet18.a1_in1k" in reason and "hf download" in reason


def test_run_export_and_local_dir_references(tiny_run):
    run = resolve_backbone(str(tiny_run))
    assert run.kind == "run" and run.arch == "resnet18" and run.input_size == 32
    assert run.mean == (0.5, 0.5, 0.5) and run.provenance["method"] == "layermatch"
    export = resolve_backbone(str(tiny_run / "export"))
    local = resolve_backbone(f"local-dir:{tiny_run / 'export'}")
    assert export.kind == local.kind == "export"
    a, b = run.build(0), local.build(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_random_baseline_mirrors_the_first_backbone(tiny_run):
    first = resolve_backbone(str(tiny_run))
    rnd = random_baseline(first)
    assert (rnd.arch, rnd.mean, rnd.std, rnd.feature_kwargs) == (first.arch, first.mean, first.std,
                                                                 first.feature_kwargs)
    w0, w0_again, w1 = (rnd.build(s).conv1.weight for s in (0, 0, 1))
    assert torch.equal(w0, w0_again) and not torch.equal(w0, w1)  # seeded init, different per seed


def test_random_baselines_mirror_every_architecture(tiny_run):
    resnet = resolve_backbone(str(tiny_run))
    hrnet = ResolvedBackbone(name="lm-hrnet", reference="x", kind="run", arch="hrnet_w18_small", mean=(0.5,) * 3,
                             std=(0.25,) * 3, feature_kwargs={"features_only": True, "feature_location": ""})
    found, missing = resolve_baselines(["random"], [hrnet, resnet, hrnet])
    assert [(b.name, b.arch, b.mean, b.feature_kwargs) for b in found] == [
        ("random init (hrnet_w18_small)", "hrnet_w18_small", hrnet.mean, hrnet.feature_kwargs),
        (f"random init ({resnet.arch})", resnet.arch, resnet.mean, resnet.feature_kwargs)]
    assert missing == []
    assert [b.name for b in resolve_baselines(["random"], [resnet, resnet])[0]] == ["random init"]


def test_bad_references_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_backbone(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="neither a run folder"):
        resolve_backbone(str(tmp_path))
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="has no export yet"):
        resolve_backbone(str(tmp_path))
    with pytest.raises(UserError, match="not a run folder, an export folder"):
        resolve_backbone("not_a_timm_model_xyz")
    with pytest.raises(UserError, match="unknown baseline"):
        resolve_baselines(["imagenet21k"], [])


def test_imagenet_tags_exclude_other_pretraining_data():
    assert imagenet_tag("resnet18") == "a1_in1k"
    assert imagenet_tag("vit_base_patch16_clip_224") is None  # CLIP weights are not ImageNet pretraining
    assert is_imagenet_only("in12k_ft_in1k") and not is_imagenet_only("laion2b_ft_in12k_in1k")
    assert not is_imagenet_only("fb_swsl_ig1b_ft_in1k")
