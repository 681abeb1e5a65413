"""Recipes: strict validation, overrides, and one-line CLI errors (exit 2, no traceback, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genbackbones.errors import UserError
from genbackbones.recipes import Recipe, dump_recipe, list_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_quickstart_is_the_default_and_every_shipped_recipe_validates():
    assert load_recipe(None).name == "quickstart"
    shipped = list_recipes()
    assert any(p.stem == "quickstart" for p in shipped)
    for path in shipped:
        assert isinstance(load_recipe(path), Recipe), path


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "method: layermatch\ntrain:\n  lr_rate: 0.1\n")
    with pytest.raises(UserError, match=r"r\.yaml: unknown recipe key 'train\.lr_rate'"):
        load_recipe(path)


def test_wrong_types_and_bad_choices(tmp_path):
    with pytest.raises(UserError, match=r"'train\.steps' must be int"):
        load_recipe(write(tmp_path, "method: layermatch\ntrain:\n  steps: many\n"))
    with pytest.raises(UserError, match=r"'backbone\.init' must be one of"):
        load_recipe(write(tmp_path, "method: layermatch\nbackbone:\n  init: imagenet21k\n"))
    with pytest.raises(UserError, match=r"'train' must be a section"):
        load_recipe(write(tmp_path, "method: layermatch\ntrain: 5\n"))


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"r\.yaml line \d+: malformed YAML"):
        load_recipe(write(tmp_path, "train:\n  steps: [1, 2\n"))


def test_overrides_are_typed_and_validated():
    r = load_recipe(None, ["train.steps=7", "train.lr=1e-4", "backbone.arch=resnet18", "layermatch.taps=[synthesis.b8.x]"])
    assert (r.train.steps, r.train.lr, r.backbone.arch, r.method_cfg.taps) == (7, 1e-4, "resnet18", ["synthesis.b8.x"])
    with pytest.raises(UserError, match="unknown recipe key 'train.stepz'"):
        load_recipe(None, ["train.stepz=3"])
    with pytest.raises(UserError, match="key=value"):
        load_recipe(None, ["train.steps"])


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(None, ["train.steps=11"])
    again = load_recipe(write(tmp_path, dump_recipe(r)))
    assert again == r


@pytest.mark.parametrize("text, message", [
    ("method: layermatch\ntrain:\n  lr_rate: 0.1\n", "unknown recipe key 'train.lr_rate'"),
    ("train: [\n", "malformed YAML"),
    ("method: layermatch\ngenerator:\n  source: /nonexistent/ckpt.pkl\n", "/nonexistent/ckpt.pkl"),
])
def test_cli_bad_input_exit_2_one_line_no_run_folder(tmp_path, text, message):
    recipe = write(tmp_path, text)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "genbackbones", "pretrain", str(recipe), "-o", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0].replace("\n", ""), proc.stderr
    assert not out.exists(), "a rejected recipe must not leave a run folder"
