"""Our folder format, `open_generator` dispatch, `convert`, the hf-hub: path, and the CLI commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.errors import UserError
from genbackbones.generators.formats.folder import (
    D_FILE,
    FORMAT,
    G_FILE,
    META_FILE,
    Provenance,
    save_generator,
)
from genbackbones.generators.open import open_generator
from genbackbones.generators.sampling import generate_images

from .conftest import FIXTURE_VARIANTS, FIXTURES, load_fixture
from .test_nvidia_pickle import tiny_nets, tiny_pickle, write_nvidia_pickle

runner = CliRunner()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def nvidia_pkl(tmp_path_factory):
    """The shared fixture's networks in an NVIDIA-style pickle, or a tiny random one without ../shared."""
    folder = tmp_path_factory.mktemp("pkl")
    if not FIXTURE_VARIANTS:
        return tiny_pickle(folder / "network.pkl")
    fx = load_fixture(FIXTURES / FIXTURE_VARIANTS[-1])  # the conditional variant when present
    kw = fx["kwargs"]
    return write_nvidia_pickle(folder / "network.pkl", {"G": ("Generator", kw["G"], fx["G"]),
                                                        "D": ("Discriminator", kw["D"], fx["D"]),
                                                        "G_ema": ("Generator", kw["G"], fx["G_ema"])})


def images(G, n=4, seed=0):
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    c = G.sample_labels(n, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        return G(z, c, noise_mode="const")


# ----------------------------------------------------------------------------- convert + load


def test_convert_then_load_is_bit_identical(nvidia_pkl, tmp_path):
    out = tmp_path / "generators" / "ffhq"
    result = runner.invoke(app, ["generator", "convert", str(nvidia_pkl), str(out), "--license", "Nvidia Source Code License-NC"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([META_FILE, G_FILE, D_FILE])
    meta = json.loads((out / META_FILE).read_text())
    assert meta["format"] == FORMAT and meta["class"] == "stylegan2"
    assert meta["source"] == "network.pkl" and meta["source_sha256"] == sha256(nvidia_pkl)
    assert meta["network"] == "G_ema" and meta["license"] == "Nvidia Source Code License-NC"
    assert meta["w_avg"] == "source" and meta["D_init_kwargs"] is not None
    assert meta["created_by"].startswith("genbackbones ")

    direct, folder = open_generator(nvidia_pkl), open_generator(out)
    assert torch.equal(images(folder.G), images(direct.G))
    img = images(direct.G, n=4)
    c = direct.G.sample_labels(4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(folder.D(img, c), direct.D(img, c))
    assert not folder.G.training and not any(p.requires_grad for p in folder.G.parameters())
    assert folder.meta["source_sha256"] == direct.meta["source_sha256"]


def test_convert_non_ema_generator(nvidia_pkl, tmp_path):
    out = tmp_path / "g"
    assert runner.invoke(app, ["generator", "convert", str(nvidia_pkl), str(out), "--network", "G"]).exit_code == 0
    assert json.loads((out / META_FILE).read_text())["network"] == "G"
    assert torch.equal(images(open_generator(out, network=None).G), images(open_generator(nvidia_pkl, "G").G))
    with pytest.raises(UserError, match="holds the checkpoint's G, not G_ema"):
        open_generator(out)  # the default asks for G_ema: refuse to hand over G silently


def test_network_choice_is_checked(nvidia_pkl, tmp_path):
    result = runner.invoke(app, ["generator", "convert", str(nvidia_pkl), str(tmp_path / "d"), "--network", "D"])
    assert result.exit_code == 2 and "network (--network) must be one of G_ema, G" in result.stderr


def test_convert_refuses_to_overwrite_and_keeps_the_old_folder(nvidia_pkl, tmp_path):
    out = tmp_path / "gen"
    assert runner.invoke(app, ["generator", "convert", str(nvidia_pkl), str(out)]).exit_code == 0
    (out / "note.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = runner.invoke(app, ["generator", "convert", str(nvidia_pkl), str(out), "--network", "G"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {out} already exists and is not empty (discriminator.safetensors, "
                                     "generator.json, generator.safetensors, ...); pick a new or empty folder, or "
                                     "pass --overwrite to replace it")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    result = runner.invoke(app, ["generator", "convert", str(nvidia_pkl), str(out), "--network", "G", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "note.txt").exists() and json.loads((out / META_FILE).read_text())["network"] == "G"
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]  # no temporary leftovers


# ----------------------------------------------------------------------------- damaged folders


@pytest.fixture()
def tiny_folder(tmp_path):
    G_ema, _, D = tiny_nets()
    return save_generator(tmp_path / "tiny", G_ema, D, Provenance(source="tiny.pkl", source_sha256="0" * 64))


def test_truncated_safetensors_is_a_user_error(tiny_folder):
    path = tiny_folder / G_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match=rf"{G_FILE} is truncated or corrupt .* re-download it"):
        open_generator(tiny_folder)


def test_missing_files_and_bad_json_are_user_errors(tiny_folder, tmp_path):
    (tiny_folder / D_FILE).unlink()
    with pytest.raises(UserError, match=rf"{D_FILE} is missing"):
        open_generator(tiny_folder)
    (tiny_folder / META_FILE).write_text("{not json")
    with pytest.raises(UserError, match=rf"{META_FILE} is not valid JSON"):
        open_generator(tiny_folder)
    (tiny_folder / META_FILE).write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(UserError, match="has format 'something/9', expected 'genbackbones.generator/1'"):
        open_generator(tiny_folder)
    (tiny_folder / META_FILE).unlink()
    with pytest.raises(UserError, match="is not a genbackbones generator folder"):
        open_generator(tiny_folder)
    with pytest.raises(UserError, match="no such file or folder"):
        open_generator(tmp_path / "nope.pkl")
    with pytest.raises(UserError, match="part of a generator folder; pass the folder"):
        open_generator(tiny_folder / G_FILE)


def test_nvidia_pickle_with_a_torch_suffix_gets_a_hint(tmp_path):
    path = tiny_pickle(tmp_path / "network.pt")
    with pytest.raises(UserError, match="network.pt looks like an NVIDIA network pickle"):
        open_generator(path)


def test_kwargs_that_do_not_fit_the_weights_are_user_errors(tiny_folder):
    meta = json.loads((tiny_folder / META_FILE).read_text())
    meta["G_init_kwargs"]["synthesis_kwargs"]["channel_max"] = 8
    (tiny_folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"weights do not match the architecture \(wrong shape: "):
        open_generator(tiny_folder)
    meta["G_init_kwargs"]["synthesis_kwargs"] = {"no_such_argument": 1}
    (tiny_folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="cannot build a StyleGAN2 Generator from its recorded arguments"):
        open_generator(tiny_folder)


# ----------------------------------------------------------------------------- hf-hub: from a local cache, offline

HUB_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import save_file
    from genbackbones.errors import UserError
    from genbackbones.generators.open import open_generator
    out = {}
    for spec in sys.argv[2:]:
        try:
            loaded = open_generator(spec)
        except UserError as err:
            out[spec] = str(err)
            continue
        z = torch.randn(2, loaded.G.z_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            save_file({"img": loaded.G(z, None, noise_mode="const").contiguous()}, sys.argv[1] + ".safetensors")
        out[spec] = loaded.meta["source"]
    print(json.dumps(out))
""")


def test_hf_hub_loads_offline_from_a_prepopulated_cache(tiny_folder, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-gan"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in (META_FILE, G_FILE, D_FILE):
        (snapshot / name).write_bytes((tiny_folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    result_file = tmp_path / "img"
    specs = ["hf-hub:someone/tiny-gan", f"hf-hub:someone/tiny-gan@{commit}", "hf-hub:someone/missing"]
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(result_file), *specs], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[specs[0]] == out[specs[1]] == "tiny.pkl"
    assert "not in the local Hugging Face cache" in out[specs[2]]
    from safetensors.torch import load_file

    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = open_generator(tiny_folder).G(z, None, noise_mode="const")
    assert torch.equal(load_file(f"{result_file}.safetensors")["img"], expected)


# ----------------------------------------------------------------------------- info and sample


def test_info_lists_taps_styles_and_provenance(tiny_folder):
    result = runner.invoke(app, ["generator", "info", str(tiny_folder), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["resolution"] == 8 and facts["z_dim"] == 16 and facts["num_ws"] == 4
    assert facts["discriminator"].startswith("yes") and facts["source_sha256"] == "0" * 64
    assert {t["name"] for t in facts["taps"]} >= {"synthesis.b4.x", "synthesis.b8.x", "synthesis.b8.conv0"}
    assert facts["style_dims"]["synthesis.b8.conv0"] == 16
    table = runner.invoke(app, ["generator", "info", str(tiny_folder)])
    assert table.exit_code == 0 and "synthesis.b8.conv1" in table.stdout
    assert f"source sha256: {'0' * 64}\n" in table.stdout


def test_sample_grid_is_reproducible_and_saves_seeds(tiny_folder, tmp_path):
    out = tmp_path / "samples" / "grid.png"
    args = ["generator", "sample", str(tiny_folder), "--n", "5", "--seed", "7", "--truncation", "0.7", "--out", str(out)]
    assert runner.invoke(app, [*args, "--save-seeds"]).exit_code == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 8, 3 * 8, 3)  # 5 images in a 3-column grid
    index = json.loads((out.parent / "seeds.json").read_text())
    assert [e["seed"] for e in index["images"]] == [7, 8, 9, 10, 11] and index["truncation_psi"] == 0.7
    G = open_generator(tiny_folder).G
    for entry in index["images"]:
        tile = np.asarray(Image.open(out.parent / entry["file"]))
        r, c = entry["row"], entry["col"]
        assert np.array_equal(tile, grid[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8])
        alone = generate_images(G, [entry["seed"]], truncation=0.7)[0].numpy()
        assert np.array_equal(tile, alone)  # image i depends on seed + i only
    first = out.read_bytes()
    assert runner.invoke(app, args).exit_code == 2  # an existing grid is replaced only when asked
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0 and out.read_bytes() == first


def test_sample_reports_user_errors(tiny_folder, tmp_path):
    result = runner.invoke(app, ["generator", "sample", str(tiny_folder), "--class-idx", "3", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and result.stderr.startswith("error: --class-idx 3 does not fit")


def test_a_resumed_runs_timing_covers_every_session_and_older_metric_lines():
    """LoopResult of a run resumed at step 2 of 4: the earlier steps count towards the time and the median; lines
    written by a version without `cpu_seconds` (or `seconds`) are skipped, not a KeyError after training."""
    from genbackbones.engine.loop import LoopResult

    earlier = [{"step": 1, "seconds": 10.0}, {"step": 2, "seconds": 30.0, "cpu_seconds": 3.0}]
    this_session = [{"step": 3, "seconds": 1.0, "cpu_seconds": 1.0}, {"step": 4, "seconds": 2.0, "cpu_seconds": 2.0}]
    result = LoopResult(steps_done=2, seconds=3.5, history=earlier + this_session)
    assert result.earlier_seconds == 40.0
    assert result.median_step_seconds == 6.0  # median of 10, 30, 1, 2
    assert result.median_step_cpu_seconds == 2.0  # median of 3, 1, 2
    assert LoopResult(steps_done=2, seconds=3.5, history=this_session).earlier_seconds == 0.0
