"""The zoo: zoo.yaml is valid and honest, nothing unloadable reaches timm's registry, and the line
`genbackbones zoo` prints for a published entry loads the trained features from the HF cache, offline."""

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
from typer.testing import CliRunner

from genbackbones.backbones import BackboneSpec, create_backbone
from genbackbones.errors import UserError
from genbackbones.export import export_backbone
from genbackbones.zoo import load_zoo

ENTRY = "hrnet_w18_small.layermatch_faces64"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_zoo_yaml_is_valid_and_honest():
    entries = load_zoo()
    names = {e.name for e in entries}
    assert {ENTRY, "hrnet_w18.layermatch_ffhq256", "hrnet_w32.layermatch_ffhq256", "resnet50.ghfeat_ffhq256"} <= names
    for e in entries:
        assert timm.is_model(e.arch), e.arch
        assert e.repo.endswith(f"/{e.name}"), "the Hub repo is named like the timm name"
        assert e.status == "published" or not e.results, "results only for published weights"
        assert e.loadable == (e.status == "published") and (e.load_line == "-") != e.loadable
        if "ffhq" in e.tag:  # NVIDIA's FFHQ StyleGAN2 is non-commercial, and so is everything trained on it
            assert e.license == "other" and e.license_name == "nvidia-source-code-license-nc"
    planned = {e.name for e in entries if e.status == "planned"}
    assert planned >= {"hrnet_w18.layermatch_ffhq256", "hrnet_w32.layermatch_ffhq256", "resnet50.ghfeat_ffhq256"}


def test_broken_zoo_yaml_is_a_user_error(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text("entries:\n  - arch: resnet50\n    tag: x\n    repo: a/resnet50.x\n    method: layermatch\n"
                    "    generator: g\n    domain: faces\n    input_size: 64\n    license: mit\n    status: in-progress\n"
                    "    results: [{task: seg, dataset: d, metric: m, labels: 8, value: 0.9}]\n")
    with pytest.raises(UserError, match="not published has no weights"):
        load_zoo(path)
    path.write_text("entries:\n  - arch: resnet50\n    tag: x\n")
    with pytest.raises(UserError, match="missing repo"):
        load_zoo(path)
    path.write_text(path.read_text() + "    repo: a/other\n    method: m\n    generator: g\n    domain: d\n"
                    "    input_size: 64\n    license: mit\n    status: planned\n")
    with pytest.raises(UserError, match="named like the timm name"):
        load_zoo(path)


def test_import_genbackbones_stays_light_and_adds_nothing_to_timm(tmp_path):
    """An in-progress entry (no weights) must not appear among timm's pretrained models."""
    in_progress = [e.name for e in load_zoo() if e.status == "in-progress"]
    assert ENTRY in in_progress
    proc = python(f"""
        import sys
        import genbackbones
        assert "timm" not in sys.modules and "torch" not in sys.modules, "import genbackbones must stay light"
        import timm
        import genbackbones.zoo
        genbackbones.zoo.load_zoo()
        listed = [n for n in timm.list_pretrained() if n in {in_progress!r}]
        assert not listed and not timm.is_model_pretrained("{ENTRY}"), listed
        print("clean")
    """, offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


@torch.no_grad()
def test_published_entry_line_loads_trained_features_offline(tmp_path, monkeypatch):
    """A zoo file with a published entry: the line `genbackbones zoo` prints, run as typed with timm alone,
    gives the exported (here: perturbed random) features bitwise, from a pre-populated HF cache."""
    spec = BackboneSpec(arch="hrnet_w18_small", feature_location="")
    torch.manual_seed(0)
    features = create_backbone(spec).eval()
    for p in features.parameters():
        p.add_(0.01 * torch.randn_like(p))  # not timm's initialisation: a random init cannot pass as trained
    export = export_backbone(features, spec, tmp_path / "export", input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
                             license="apache-2.0", provenance={"method": "layermatch"})
    snapshot = tmp_path / "hf" / "hub" / f"models--genbackbones--{ENTRY}"
    (snapshot / "snapshots" / COMMIT).mkdir(parents=True)
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text(COMMIT)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(export / name, snapshot / "snapshots" / COMMIT / name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.save({"x": x, "features": features(x)}, tmp_path / "expected.pt")

    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(textwrap.dedent(f"""
        entries:
          - {{arch: hrnet_w18_small, tag: layermatch_faces64, repo: genbackbones/{ENTRY}, method: layermatch,
              generator: g, domain: faces, input_size: 64, license: apache-2.0, status: published}}
          - {{arch: resnet18, tag: layermatch_x, repo: genbackbones/resnet18.layermatch_x, method: layermatch,
              generator: g, domain: faces, input_size: 64, license: apache-2.0, status: in-progress}}
    """))
    monkeypatch.setattr("genbackbones.zoo.ZOO_FILE", zoo)
    from genbackbones.cli import app

    listed = CliRunner().invoke(app, ["zoo"], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    lines = [line.removeprefix("  load: ") for line in listed.output.splitlines() if line.startswith("  load: timm")]
    assert lines == [f"timm.create_model('hf-hub:genbackbones/{ENTRY}', pretrained=True, features_only=True)"]
    proc = python(f"""
        import timm, torch
        ref = torch.load({str(tmp_path / 'expected.pt')!r})
        model = {lines[0]}
        with torch.no_grad():
            got = model.eval()(ref["x"])
        assert len(got) == len(ref["features"]) and all(torch.equal(a, b) for a, b in zip(got, ref["features"]))
        print("trained", [f.shape[1] for f in got])
    """, offline_env(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "trained [64, 16, 32, 64, 128]"


def test_zoo_command_never_truncates_and_has_json():
    from genbackbones.cli import app

    result = CliRunner().invoke(app, ["zoo"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    for text in (f"{ENTRY}  (in-progress)", "hrnet_w32.layermatch_ffhq256  (planned)",
                 "licence: nvidia-source-code-license-nc", "Hub repo: genbackbones/resnet50.ghfeat_ffhq256"):
        assert text in result.output.splitlines() or f"  {text}" in result.output.splitlines(), text
    as_json = CliRunner().invoke(app, ["zoo", "--json"], env={"COLUMNS": "80"})
    data = json.loads(as_json.output)
    assert {d["name"] for d in data} >= {ENTRY} and all(d["repo"].endswith(d["name"]) for d in data)
