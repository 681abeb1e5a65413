"""benchmarks/real_faces.py prepare: the held-out faces never reach the generator, labels match file names."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from genbackbones.evaluate.data import DataOptions
from genbackbones.evaluate.sources import load_data

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_faces.py"


@pytest.fixture(scope="module")
def real_faces():
    spec = importlib.util.spec_from_file_location("real_faces", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_faces"] = module
    spec.loader.exec_module(module)
    return module


def _utkface_like(folder: Path, n: int) -> list[str]:
    """Small JPEGs named like UTKFace (`age_gender_race_date.jpg.chip.jpg`), plus one name that does not parse."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"{int(rng.integers(1, 90))}_{i % 2}_{i % 5}_2017011{i:05d}.jpg.chip.jpg"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name, format="JPEG")
        names.append(name)
    Image.new("RGB", (20, 20)).save(folder / "notes.jpg")
    return names


def test_age_bins_and_name_parsing(real_faces):
    assert [real_faces.age_group(a) for a in (0, 14, 15, 29, 44, 59, 60, 116)] == \
        ["0-14", "0-14", "15-29", "15-29", "30-44", "45-59", "60+", "60+"]
    assert real_faces.parse_name("26_1_2_20170116174525125.jpg.chip.jpg") == \
        {"age": 26, "gender": "female", "age_group": "15-29"}
    assert real_faces.parse_name("notes.jpg") is None


def test_prepare_keeps_held_out_faces_away_from_the_generator(real_faces, tmp_path):
    names = _utkface_like(tmp_path / "utk", 100)
    work = tmp_path / "work"
    facts = real_faces.prepare(tmp_path / "utk", work, 0.2, 0, pool=50, test_size=15, console=Console(quiet=True))
    gan = {p.name for p in (work / "gan").iterdir()}
    held_out = set(names) - gan
    assert facts["unparsed_names"] == ["notes.jpg"] and len(gan) == 80 and len(held_out) == 20
    eval_train = {p.name for p in (work / "eval" / "train").glob("*.jpg")}
    eval_test = {p.name for p in (work / "eval" / "test").glob("*.jpg")}
    assert len(eval_train) == 50 and len(eval_test) == 15
    assert eval_train <= gan and eval_test <= held_out  # test faces were never generator-training images
    with open(work / "eval" / "test" / "labels.csv") as f:
        for row in csv.DictReader(f):
            assert row == {"name": row["name"], **{k: str(v) for k, v in real_faces.parse_name(row["name"]).items()}}
    # the same seed gives the same split
    again = real_faces.prepare(tmp_path / "utk", tmp_path / "again", 0.2, 0, 50, 15, Console(quiet=True))
    assert again == {**facts, "source": facts["source"]}
    assert {p.name for p in (tmp_path / "again" / "gan").iterdir()} == gan


def test_the_evaluator_reads_the_prepared_folder(real_faces, tmp_path):
    _utkface_like(tmp_path / "utk", 60)
    work = tmp_path / "work"
    real_faces.prepare(tmp_path / "utk", work, 0.25, 0, 40, 15, Console(quiet=True))
    data = load_data(DataOptions(source=str(work / "eval"), target="gender", resolution=32), "classification")
    assert data.schema.classes == ("female", "male")
    assert len(data.train) == 40 and len(data.test) == 15
    assert tuple(data.train.images.shape[1:]) == (3, 32, 32)


def test_quality_puts_real_faces_closer_to_each_other_than_a_random_generator(real_faces, tmp_path):
    """On stand-in 'faces' (smooth blobs), real-vs-real must beat a random-init generator by a wide margin."""
    folder = tmp_path / "utk"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for i in range(160):
        cx, cy, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 10)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None] * np.array([200, 150, 120]) + 30
        name = f"{int(r * 6)}_{int(cx > 16)}_0_2017{i:05d}.jpg.chip.jpg"
        Image.fromarray(blob.astype(np.uint8)).save(folder / name, format="JPEG")
    real_faces.prepare(folder, tmp_path / "work", 0.25, 0, 40, 15, Console(quiet=True))
    report = real_faces.quality("random:tiny32", tmp_path / "work", n=40, net_steps=30, console=Console(quiet=True))
    assert report["n"] == 40
    assert report["real_vs_real"] < 0.5 * report["random_init_vs_real"]
    assert report["real_vs_real"] < 0.5 * report["generated_vs_real"]  # random:tiny32 is untrained too


def test_evaluate_writes_one_readme_for_utkface_classification_and_your_own_masks(real_faces, tmp_path,
                                                                                   tmp_path_factory):
    """Item 4: the benchmark's evaluate runs on any labelled face folder; every results folder lands in one README."""
    from .test_evaluate_backbones import make_tiny_run
    from .test_evaluate_data import write_segmentation_folder

    run = make_tiny_run(tmp_path_factory.getbasetemp())  # shared with the evaluate tests in one session
    _utkface_like(tmp_path / "utk", 40)
    work, out = tmp_path / "work", tmp_path / "results"
    real_faces.prepare(tmp_path / "utk", work, 0.25, 0, 24, 8, Console(quiet=True))
    common = [str(run), "--work", str(work), "--out", str(out), "--tiny", "--labels", "4", "--seeds", "1",
              "--baselines", "random", "--resolution", "32", "--set", "eval_batch_size=8"]
    assert real_faces.main(["evaluate", *common, "--targets", "gender", "--protocols", "linear"]) == 0
    masks = write_segmentation_folder(tmp_path / "mine", count=16)
    assert real_faces.main(["evaluate", *common, "--task", "segmentation", "--data", str(masks),
                            "--set", "data.test_size=6", "--classes", "background,lips,eyes"]) == 0
    seg = json.loads((out / "segmentation" / "results.json").read_text())
    assert seg["data"]["classes"] == ["background", "lips", "eyes"] and seg["data"]["classes_source"] == "--classes"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "gender-linear", "segmentation"]
    text = (out / "README.md").read_text()
    assert "## gender-linear" in text and "## segmentation" in text and "smoke test" in text
    assert text.count("| random init |") >= 2 and "Split:" not in text  # the last command used --data
    assert f"`{run}`: resnet18, layermatch" in text


def test_evaluate_without_a_prepared_folder_is_a_one_line_error(real_faces, tmp_path, capsys):
    assert real_faces.main(["evaluate", str(tmp_path), "--work", str(tmp_path / "none")]) == 2
    assert "run `python benchmarks/real_faces.py prepare` first" in capsys.readouterr().err


def test_every_data_flag_of_the_evaluator_reaches_the_benchmark_and_the_command(real_faces):
    """One flag table: `genbackbones evaluate` and `real_faces.py evaluate` read the same data options."""
    import typer

    from genbackbones.cli import app
    from genbackbones.evaluate.options import DATA_FLAGS, data_options, flag_values

    command = typer.main.get_command(app).commands["evaluate"]
    typer_flags = {opt for p in command.params for opt in p.opts}
    argv = ["evaluate", "runs/x"]
    for flag in DATA_FLAGS:
        assert flag.flag in typer_flags, flag.flag
        argv += [flag.flag, {"eye_indices": "36,45", "data_split": "train,test"}.get(flag.field, "v")]
    args = real_faces.parse_args(argv)
    options = data_options("faces", 64, **flag_values(args))
    assert options.eye_indices == (36, 45) and options.data_split == ("train", "test")
    assert options.classes == ("v",) and options.data_dir == "v" and options.image_column == "v"
