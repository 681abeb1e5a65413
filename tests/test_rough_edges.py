"""Small things a new user tripped over (issue 27): each checked the way the user met it, through the CLI.

Every bad input is one `error:` line, exit 2, nothing written; hints print paths a shell reads back whole.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from .cli_runs import run_cli
from .test_evaluate_cli import tiny_run  # noqa: F401  (the session's shared 2-step resnet18 run)

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def one_error(proc) -> str:
    """The single `error:` line of a refused command (exit 2, no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------- recipes


def test_out_indices_past_the_last_level_name_the_key_and_the_levels(tmp_path):
    line = one_error(run_cli("pretrain", "--set", "backbone.out_indices=[1,9]", "--set", "train.steps=2",
                             "-o", "run", cwd=tmp_path))
    assert line == "error: backbone.out_indices=[1, 9]: hrnet_w18_small has feature levels 0-4; choose among " \
                   "them, or null for timm's default"
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    from genbackbones.errors import UserError
    from genbackbones.recipes import load_recipe

    with pytest.raises(UserError, match=r"^--set backbone.out_indices=\[3,1\]: 'backbone.out_indices' must list "
                                        r"feature levels as increasing integers >= 0"):
        load_recipe(None, ["backbone.arch=resnet18", "backbone.out_indices=[3,1]"])


def test_empty_or_methodless_recipes_are_refused_not_run_as_the_quickstart(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    line = one_error(run_cli("pretrain", "empty.yaml", "-o", "run", cwd=tmp_path))
    assert line.startswith("error: empty.yaml is empty;") and "method: layermatch" in line
    (tmp_path / "short.yaml").write_text("train: {steps: 2}\n")
    line = one_error(run_cli("pretrain", "short.yaml", "-o", "run", cwd=tmp_path))
    assert line.startswith("error: short.yaml: the recipe names no method; add `method: <name>`")
    assert not (tmp_path / "run").exists()
    from genbackbones.recipes import load_recipe

    # a method section names its method: it is not the quickstart's layermatch
    (tmp_path / "gan.yaml").write_text("gan: {preset: tiny32}\ndata: {source: faces}\n")
    assert load_recipe(tmp_path / "gan.yaml").method == "stylegan2"


def test_a_set_typo_is_blamed_on_the_set_item_not_the_bundled_recipe(tmp_path):
    line = one_error(run_cli("pretrain", "--set", "train.steps=2", "--set", "trian.steps=2", "-o", "run",
                             cwd=tmp_path))
    assert line.startswith("error: --set trian.steps=2: unknown recipe key 'trian'; valid keys here: ")
    assert "quickstart.yaml" not in line and not (tmp_path / "run").exists()
    from genbackbones.errors import UserError
    from genbackbones.recipes import load_recipe

    with pytest.raises(UserError, match=r"^--set train.steps=0: 'train.steps' must be >= 1, got 0$"):
        load_recipe(None, ["train.lr=0.1", "train.steps=0", "train.batch_size=2"])
    (tmp_path / "bad.yaml").write_text("method: layermatch\ntrain: {stepz: 2}\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown recipe key 'train.stepz'"):  # the file's own mistake
        load_recipe(tmp_path / "bad.yaml", ["train.steps=2"])


def test_train_generator_on_a_missing_folder_says_no_such_folder(tmp_path, monkeypatch):
    line = one_error(run_cli("train-generator", "--set", "data.source=./my_faces", "--set", "train.steps=1",
                             "-o", "gen", cwd=tmp_path, env=OFFLINE))
    assert line.startswith("error: data.source ./my_faces: no such folder; give a folder of images, "), line
    assert not (tmp_path / "gen").exists()
    import datasets

    from genbackbones.data.images import open_images
    from genbackbones.errors import UserError

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="^data.source /no/such/faces: no such folder;"):
        open_images("/no/such/faces", 32)
    # a bare name is also a Hub id: both are said, from the cache, at once
    with pytest.raises(UserError, match="^data.source my_faces: no such folder, and no Hub dataset 'my_faces'"):
        open_images("my_faces", 32)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_refuses_a_labels_file_with_several_columns_and_unknown_settings(tiny_run, tmp_path):  # noqa: F811
    (tmp_path / "lab" / "images").mkdir(parents=True)
    lines = ["file,colour,size"]
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(tmp_path / "lab" / "images" / f"{i}.png")
        lines.append(f"{i}.png,{'red' if i % 2 else 'blue'},{i}")
    (tmp_path / "lab" / "labels.csv").write_text("\n".join(lines) + "\n")
    common = [str(tiny_run), "--task", "classification", "--baselines", "random", "--out", "out"]
    line = one_error(run_cli("evaluate", *common, "--data", "lab", cwd=tmp_path, env=OFFLINE))
    assert line == ("error: lab/labels.csv has 2 label columns (colour, size); choose one with --target, "
                    "e.g. --target colour")
    line = one_error(run_cli("evaluate", *common, "--set", "data.pol=12", cwd=tmp_path, env=OFFLINE))
    assert line.startswith("error: --set 'data.pol=12': unknown data setting; valid: data.pool, ")
    assert not (tmp_path / "out").exists()
    from genbackbones.errors import UserError
    from genbackbones.evaluate import resolve_options

    with pytest.raises(UserError, match=r"^--set 'data.pool=many': expected an integer$"):  # not 'a int'
        resolve_options("classification", None, ["data.pool=many"])
    with pytest.raises(UserError, match=r"^--set min_steps=2.5: expected an integer$"):
        resolve_options("classification", None, ["min_steps=2.5"])


def test_card_rows_say_1_seed_and_3_seeds():
    from genbackbones.evaluate.report import model_index

    def rows(seeds: int) -> list[str]:
        results = {"task": "classification", "protocol": "linear", "labels": [4], "seeds": list(range(seeds)),
                   "data": {"name": "faces"}, "unavailable": [],
                   "backbones": [{"name": "mine"}, {"name": "random init"}],
                   "metrics": [{"key": "top1", "label": "top-1 (%)", "higher_is_better": True}],
                   "runs": [{"backbone": b, "labels": 4, "seed": s, "metrics": {"top1": 50.0 + s + 10 * (b == "mine")}}
                            for b in ("mine", "random init") for s in range(seeds)]}
        return [r["value"] for r in model_index(results)["rows"]]

    assert rows(1) == ["60.0 (1 seed; random init 50.0)"]
    std = math.sqrt(((0 - 1) ** 2 + 0 + (2 - 1) ** 2) / 2)  # sample std of 60, 61, 62
    assert rows(3) == [f"61.0 ± {std:.1f} (3 seeds; random init 51.0 ± {std:.1f})"]


# ----------------------------------------------------------------------------- hints, info, help


def test_hints_quote_paths_with_spaces(tmp_path):
    run = tmp_path / "my runs" / "q 1"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("method: layermatch\ngenerator: {source: 'random:tiny32'}\n"
                                     "backbone: {arch: resnet18}\ntrain: {steps: 2}\n")
    quoted = shlex.quote(str(run))
    assert quoted != str(run)
    line = one_error(run_cli("export", str(run), cwd=tmp_path))
    assert f"(genbackbones pretrain --resume {quoted})" in line
    line = one_error(run_cli("push", str(run), "--repo-id", "me/q", "--dry-run", cwd=tmp_path, env=OFFLINE))
    assert f"run `genbackbones export {quoted}` first" in line
    assert shlex.split(line.split("`")[1]) == ["genbackbones", "export", str(run)]  # a shell reads one argument


def test_info_on_a_local_folder_says_it_is_local(tiny_run, tmp_path):  # noqa: F811
    export = Path(shutil.copytree(tiny_run / "export", tmp_path / "exports" / "q"))
    done = run_cli("info", "exports/q", cwd=tmp_path, env={**OFFLINE, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exports/q (a local folder, not a Hub repo)" in done.stdout
    config = json.loads((export / "config.json").read_text())
    assert f"load: timm.create_model('local-dir:{export.resolve()}', pretrained=True, features_only=True)" \
        in done.stdout
    assert config["genbackbones"]["method"] in done.stdout and "model.safetensors" in done.stdout
    line = one_error(run_cli("info", ".", cwd=tmp_path, env=OFFLINE))
    assert line.startswith("error: . is a local folder but neither a run, an export")
    # a generator folder: no card until it is pushed, its licence from generator.json
    from genbackbones.generators.formats.folder import Provenance, save_generator
    from genbackbones.hub import local_info

    from .test_nvidia_pickle import tiny_nets

    G, _, _ = tiny_nets()
    folder = save_generator(tmp_path / "gen", G, None, Provenance(source="x.pkl", license="Nvidia Source Code "
                                                                                          "License-NC"))
    found = local_info(folder)
    assert found.local and found.kind == "generator" and found.license == "nvidia-source-code-license-nc"
    assert found.load_line == f"genbackbones.open_generator('{folder.resolve()}')"
    assert {name for name, _ in found.files} == {"generator.json", "generator.safetensors"}


def test_every_command_option_and_argument_has_help():
    import typer.main

    from genbackbones.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, [*path, name])

    missing, seen = [], 0
    for path, command in walk(typer.main.get_command(app), ["genbackbones"]):
        seen += 1
        if not (command.help or "").strip():
            missing.append(" ".join(path))
        for param in command.params:
            seen += 1
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0] if param.opts else param.name}")
    assert seen > 150 and missing == []


# ----------------------------------------------------------------------------- images


def test_reading_image_files_raises_no_torch_warning(tmp_path):
    """`reconstruct a.png` printed torch's 'non-writable NumPy array' warning: PIL arrays are read-only."""
    from genbackbones.methods.ghfeat.use import read_images

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "folder").mkdir()
    Image.new("L", (20, 20), 90).save(tmp_path / "folder" / "b.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, names = read_images([str(tmp_path / "a.png"), str(tmp_path / "folder")], 16)
    assert images.shape == (2, 3, 16, 16) and names == [str(tmp_path / "a.png"), str(tmp_path / "folder" / "b.png")]
    assert images[0, 0].mean().item() == pytest.approx(200 / 127.5 - 1, abs=1e-6)
