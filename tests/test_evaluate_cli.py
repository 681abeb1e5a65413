"""`genbackbones evaluate` end to end at a tiny size, the other protocols through the API, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import EvalResult
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.evaluate import run_evaluation
from genbackbones.evaluate.report import merge_into_run, model_index, summarise, write_outputs

from .test_evaluate_backbones import make_tiny_run, offline_env, write_standin_cache
from .test_evaluate_data import write_five_class_masks


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.getbasetemp())  # shared with test_evaluate_backbones in one session


TINY = ["--set", "min_steps=2", "--set", "max_steps=2", "--set", "data.pool=12", "--set", "data.test_size=6",
        "--set", "eval_batch_size=8"]


def copy_run(run: Path, dest: Path) -> Path:
    """The files of a run that evaluation reads (not its checkpoints), so --run can write into the copy."""
    dest.mkdir()
    for name in ("recipe.yaml", "run.json"):
        shutil.copy(run / name, dest / name)
    shutil.copytree(run / "export", dest / "export")
    return dest


def test_cli_segmentation_end_to_end_with_the_imagenet_standin(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    write_standin_cache(tmp_path / "hf")
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "genbackbones", "evaluate", str(run), "--task", "segmentation", "--labels", "4",
           "--seeds", "1", "--out", str(out), "--run", str(run), "--baselines", "imagenet,random", *TINY]
    done = subprocess.run(cmd, env=offline_env(tmp_path / "hf"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"results.json", "summary.csv", "segmentation.png", "model_index.json"}
    results = json.loads((out / "results.json").read_text())
    assert [b["kind"] for b in results["backbones"]] == ["run", "imagenet", "random"]
    assert results["unavailable"] == [] and results["labels"] == [4] and results["seeds"] == [0]
    assert len(results["runs"]) == 3
    for r in results["runs"]:
        assert 0 <= r["metrics"]["miou"] <= 100 and 0 <= r["metrics"]["pixel_accuracy"] <= 100
        assert set(r["metrics"]["iou"]) == set(results["data"]["classes"]) and r["steps"] == 2
    assert results["settings"]["min_steps"] == 2 and results["data"]["options"]["pool"] == 12
    assert len(results["subsets"]["4"]["0"]) == 4
    assert not set(results["subsets"]["4"]["0"]) & {f"faces/{i:07d}" for i in range(1_000_000, 1_000_006)}
    assert "mIoU" in done.stdout and "imagenet (resnet18.a1_in1k)" in done.stdout  # the table
    # the card's model index, in the run and in the output folder, in the format `export` reads
    index = json.loads((run / "evaluation" / "model_index.json").read_text())
    assert index == json.loads((out / "model_index.json").read_text())
    assert index["model_name"] == "run"
    # the bundled domain is not a Hub dataset: no model-index entry with a made-up dataset id, the card's table only
    assert index["eval_results"] == []
    assert [r["metric"] for r in index["rows"]] == ["mIoU (%)", "pixel accuracy (%)"]
    assert index["rows"][0]["dataset"] == "genbackbones bundled faces (procedural)"
    assert index["rows"][0]["protocol"] == "finetune" and index["rows"][0]["labels"] == 4
    assert "random init" in index["rows"][0]["value"] and "imagenet" in index["rows"][0]["value"]


def test_cli_reports_missing_imagenet_weights(tiny_run, tmp_path):
    (tmp_path / "empty-hf").mkdir()
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "genbackbones", "evaluate", str(tiny_run), "--task", "classification", "--labels",
           "4,all", "--seeds", "2", "--out", str(out), "--baselines", "imagenet", *TINY]
    done = subprocess.run(cmd, env=offline_env(tmp_path / "empty-hf"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [b["kind"] for b in results["backbones"]] == ["run"]  # nothing evaluated under the name imagenet
    assert results["unavailable"][0]["name"] == "imagenet"
    assert results["unavailable"][0]["reason"].startswith("weights not available")
    assert results["labels"] == [4, 12] and len(results["runs"]) == 4
    assert "not available" in done.stdout
    assert "not available" in (out / "summary.csv").read_text()


@pytest.fixture
def one_thread():
    """In-process training with one thread: on a shared CPU, spinning OpenMP threads are ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_landmarks_and_finetuned_classification_through_the_api(tiny_run, tmp_path, one_thread):
    tiny = ["min_steps=2", "max_steps=2", "data.pool=10", "data.test_size=6", "eval_batch_size=8"]
    lm = run_evaluation([str(tiny_run)], "landmarks", labels="4", seeds=1, baselines=[], overrides=tiny,
                        device="cpu")
    assert [m["key"] for m in lm["metrics"]] == ["nme_heatmap", "nme_ridge"]
    assert lm["runs"][0]["metrics"]["nme_heatmap"] > 0 and lm["runs"][0]["metrics"]["nme_ridge"] > 0
    assert lm["data"]["landmarks"][:2] == ["left_eye", "right_eye"] and lm["data"]["flip_mirror"] == [1, 0, 2, 4, 3]
    assert lm["data"]["normalisation"]["points"] == [0, 1] and lm["data"]["flip"] is True
    # the mean-shape reference row: the 4 training faces' mean shape, scored on the same test faces
    reference = [r for r in lm["runs"] if r["backbone"] == "mean shape"]
    assert len(reference) == 1 and lm["backbones"][-1]["kind"] == "reference"
    assert reference[0]["metrics"]["nme_heatmap"] == reference[0]["metrics"]["nme_ridge"] > 0
    cls = run_evaluation([str(tiny_run)], "classification", labels="4", seeds=1, baselines=[], overrides=tiny,
                         protocol="finetune", device="cpu")
    assert cls["settings"]["protocol"] == "finetune" and cls["data"]["target"] == "hair_colour"
    assert 0 <= cls["runs"][0]["metrics"]["top1"] <= 100
    # reports render for any task; merging into a run replaces entries for the same metric and label count
    write_outputs(lm, tmp_path / "lm-out")
    assert (tmp_path / "lm-out" / "landmarks.png").stat().st_size > 1000
    assert {r["metric"] for r in summarise(lm)} == {"nme_heatmap", "nme_ridge"}
    merge_into_run(tmp_path / "r", model_index(cls))
    merge_into_run(tmp_path / "r", model_index(lm))
    merged = json.loads(merge_into_run(tmp_path / "r", model_index(lm)).read_text())
    assert merged["eval_results"] == []  # bundled faces: not a Hub dataset
    assert len(merged["rows"]) == 4  # 2 classification + 2 landmark metrics, the repeat replaced
    assert "mean shape" in merged["rows"][-1]["value"]


runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["--labels", "4,abc"], "--labels: 'abc' is not a positive number"),
    (["--task", "depth"], "unknown task 'depth'"),
    (["--set", "learning_rate=1"], "unknown segmentation setting"),
    (["--linear"], "--linear/--finetune apply to --task classification only"),
    (["--labels", "5000"], "more than the 2000 images"),
    (["--data", "{bad_folder}"], "no images"),
    (["--data", "./no-such-folder-xyz"], "folder does not exist"),
    (["--target", "eye_colour", "--task", "classification"], "no attribute 'eye_colour'"),
    (["--data", "imagefolder"], "`datasets` builder"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_run, tmp_path, args, message):
    (tmp_path / "bad").mkdir()
    args = [a.replace("{bad_folder}", str(tmp_path / "bad")) for a in args]
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--out", str(out), "--baselines", "random", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def test_bad_backbone_from_the_command_line_exits_2(tmp_path):
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "-m", "genbackbones", "evaluate", str(tmp_path / "missing-run"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_existing_output_and_foreign_run_are_refused(tiny_run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--out", str(tmp_path / "full")])
    assert result.exit_code == 2 and "already exists and is not empty" in result.stderr
    other = copy_run(tiny_run, tmp_path / "other")
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--run", str(other), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "must also be one of the BACKBONE arguments" in result.stderr
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("args, message", [
    (["--task", "classification", "--protocol", "knn", "--finetune"], "--protocol knn and --finetune disagree"),
    (["--task", "classification", "--protocol", "knn", "--set", "knn_k=0"], "knn_k=0: must be greater than 0"),
    (["--task", "classification", "--set", "knn_temperature=-1"], "knn_temperature=-1.0: must be greater than 0"),
    (["--task", "classification", "--protocol", "nearest"], "protocol must be one of linear, knn, finetune"),
    (["--task", "landmarks", "--eye-indices", "-1,2"], "--eye-indices '-1,2': give two different landmark"),
    (["--task", "landmarks", "--eye-indices", "3,3"], "--eye-indices '3,3': give two different landmark"),
    (["--data-split", "a,b,c"], "--data-split 'a,b,c': give the train split, or train,test"),
    (["--data-config", "x"], "--data-config apply to `datasets` data"),
    (["--labels", "0"], "--labels: '0' is not a positive number"),
    (["--labels", "-4"], "--labels: '-4' is not a positive number"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--resolution", "8"], "--resolution must be at least 16 px"),
    (["--set", "data.test_fraction=1.5"], "data.test_fraction must be between 0 and 1"),
    (["--set", "ridge_grid=0", "--task", "landmarks"], "ridge_grid=0: must be greater than 0"),
])
def test_impossible_values_are_refused_before_anything_is_written(tiny_run, tmp_path, args, message):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--out", str(out), "--baselines", "none", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_cli_on_real_layouts_records_normalisation_flips_and_the_mean_shape(tiny_run, tmp_path, one_thread):
    """The user's lines on a 68-point CSV with numbered columns and on unnamed 5-class masks."""
    from .test_evaluate_data import write_numbered_landmark_csv

    lm_data = write_numbered_landmark_csv(tmp_path / "lm68", count=12)
    out = tmp_path / "lm-eval"
    tiny = ["--set", "min_steps=2", "--set", "max_steps=2", "--set", "eval_batch_size=8"]
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--task", "landmarks", "--data", str(lm_data), "--labels",
                                 "4", "--seeds", "1", "--baselines", "none", "--out", str(out), *tiny])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    norm = results["data"]["normalisation"]
    assert norm["points"] == [36, 45] and norm["rule"] == "iBUG 300-W (68 points): outer eye corners"
    assert norm["flip_pairs_from"] == "iBUG 300-W (68 points)" and results["data"]["flip"] is True
    assert results["runs"][0]["flip"] is True
    assert "mean shape (reference)" in result.stdout  # the reference row of every landmark table
    assert {r["backbone"] for r in results["runs"]} == {tiny_run.name, "mean shape"}
    assert "mean shape" in (out / "summary.csv").read_text()

    masks = write_five_class_masks(tmp_path / "five", 10)
    out = tmp_path / "seg-eval"
    result = runner.invoke(app, ["evaluate", str(tiny_run), "--task", "segmentation", "--data", str(masks),
                                 "--labels", "4", "--seeds", "1", "--baselines", "none", "--out", str(out), *tiny])
    assert result.exit_code == 0, result.output
    assert "horizontal flips are off" in result.stderr and "classes.txt" in result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["flip"] is False and results["runs"][0]["flip"] is False
    assert any("flips are off" in n for n in results["notes"])
    assert results["data"]["classes_source"].startswith("none found")


def test_knn_on_a_cached_hub_dataset_goes_into_the_model_index(tiny_run, tmp_path):
    """`--data org/name` from the `datasets` cache, offline: the id and revision reach results.json and the card."""
    from huggingface_hub import ModelCard, ModelCardData

    from .test_evaluate_layouts import SHA, hub_cached_dataset, labelled_faces

    hub_cached_dataset(tmp_path / "hf", "me/faces", {"train": labelled_faces(12), "test": labelled_faces(6, 30)})
    run = copy_run(tiny_run, tmp_path / "run")
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "genbackbones", "evaluate", str(run), "--task", "classification", "--protocol", "knn",
           "--data", "me/faces", "--target", "smiling", "--data-split", "train,test", "--labels", "4,8", "--seeds",
           "2", "--baselines", "random", "--run", str(run), "--out", str(out), "--set", "eval_batch_size=8"]
    env = {**offline_env(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"].startswith("kNN (k=20, cosine") and results["settings"]["knn_k"] == 20
    assert results["data"]["hub"]["id"] == "me/faces" and results["data"]["hub"]["revision"] == SHA
    assert all(0 <= r["metrics"]["top1"] <= 100 and r["k"] in (4, 8) for r in results["runs"])
    index = json.loads((run / "evaluation" / "model_index.json").read_text())
    assert set(index) == {"model_name", "eval_results", "rows"}  # the shape export.py and hub.py read
    first = index["eval_results"][0]
    assert first["dataset_type"] == "me/faces" and first["dataset_revision"] == SHA
    assert first["dataset_split"] == "test" and first["dataset_args"] == {"train_split": "train"}
    assert first["metric_name"] == "top-1" and first["metric_config"] == "knn"  # protocol out of the name
    assert {(r["metric_type"], r["metric_args"]["labels"]) for r in index["eval_results"]} == \
        {("accuracy", 4), ("accuracy", 8), ("balanced_accuracy", 4), ("balanced_accuracy", 8)}
    # the model-index round-trips through a model card with every per-metric field intact
    results_kw = [EvalResult(**r) for r in index["eval_results"]]
    card = ModelCard(f"---\n{ModelCardData(model_name='run', eval_results=results_kw).to_yaml()}\n---\n")
    assert card.data.eval_results == results_kw
