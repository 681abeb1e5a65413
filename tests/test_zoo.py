"""The zoo: zoo.yaml is valid and honest, and its entries are timm pretrained tags that load from the HF cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file
from typer.testing import CliRunner

from genbackbones.errors import UserError
from genbackbones.zoo import load_zoo, register_entries

ENTRY = "hrnet_w18_small.layermatch_faces64"


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
        if "ffhq" in e.tag:  # NVIDIA's FFHQ StyleGAN2 is non-commercial, and so is everything trained on it
            assert e.license == "other" and e.license_name == "nvidia-source-code-license-nc"
    planned = {e.name for e in entries if e.status == "planned"}
    assert planned >= {"hrnet_w18.layermatch_ffhq256", "hrnet_w32.layermatch_ffhq256", "resnet50.ghfeat_ffhq256"}


def test_broken_zoo_yaml_is_a_user_error(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text("entries:\n  - arch: resnet50\n    tag: x\n    repo: a/resnet50.x\n    method: layermatch\n"
                    "    generator: g\n    domain: faces\n    input_size: 64\n    license: mit\n    status: planned\n"
                    "    results: [{task: seg, dataset: d, metric: m, labels: 8, value: 0.9}]\n")
    with pytest.raises(UserError, match="planned entry has no weights"):
        load_zoo(path)
    path.write_text("entries:\n  - arch: resnet50\n    tag: x\n")
    with pytest.raises(UserError, match="missing repo"):
        load_zoo(path)


def test_registered_entries_are_timm_pretrained_tags():
    added = register_entries()
    assert ENTRY in added and "hrnet_w18.layermatch_ffhq256" not in added  # planned: not registered
    assert timm.is_model_pretrained(ENTRY) and ENTRY in timm.list_pretrained("hrnet_w18_small.*")
    cfg = timm.models.get_pretrained_cfg(ENTRY)
    assert cfg.hf_hub_id == "genbackbones/hrnet_w18_small.layermatch_faces64"
    assert cfg.num_classes == 0 and cfg.input_size == (3, 64, 64) and cfg.mean == (0.5, 0.5, 0.5)
    assert timm.models.get_pretrained_cfg("hrnet_w18_small").tag != "layermatch_faces64"  # default unchanged
    assert register_entries() == added  # idempotent


def test_import_genbackbones_registers_the_zoo_without_importing_timm(tmp_path):
    proc = python(f"""
        import sys
        import genbackbones
        assert "timm" not in sys.modules and "torch" not in sys.modules, "import genbackbones must stay light"
        import timm
        assert timm.is_model_pretrained("{ENTRY}"), (
            "genbackbones/__init__.py does not call zoo.register_zoo(); add: "
            "from .zoo import register_zoo as _register_zoo; _register_zoo()")
        print("registered")
    """, offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "registered"


def test_zoo_entry_loads_from_the_offline_hf_cache(tmp_path):
    """Weights placed in the HF cache as the Hub would leave them load through the timm name, offline."""
    model = timm.create_model("hrnet_w18_small", num_classes=0)  # stand-in weights, random
    snapshot = tmp_path / "hub" / "models--genbackbones--hrnet_w18_small.layermatch_faces64"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (snapshot / "snapshots" / commit).mkdir(parents=True)
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text(commit)
    weights = snapshot / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    config = '{"architecture": "hrnet_w18_small", "num_classes": 0}'
    (snapshot / "snapshots" / commit / "config.json").write_text(config)

    proc = python(f"""
        import genbackbones, timm, torch
        from genbackbones.zoo import register_zoo
        from safetensors.torch import load_file
        register_zoo()  # what `import genbackbones` does once wired; explicit here to test loading alone
        ref = load_file({str(weights)!r})
        model = timm.create_model("{ENTRY}", pretrained=True)
        state = model.state_dict()
        assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
        feats = timm.create_model("{ENTRY}", pretrained=True, features_only=True, feature_location="")
        fstate = feats.state_dict()
        assert fstate and all(torch.equal(v, ref[k]) for k, v in fstate.items() if k in ref)
        print("ok", model.pretrained_cfg["input_size"])
    """, offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok (3, 64, 64)"


def test_zoo_command_lists_entries():
    from genbackbones.cli import app

    result = CliRunner().invoke(app, ["zoo"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in (ENTRY, "genbackbones/hrnet_w32.layermatch_ffhq256", "nvidia-source-code-license-nc", "planned"):
        assert text in result.output
