"""The card follows the export: `export RUN --out DIR` after `evaluate ... --run RUN` carries the run's evaluation
table and model-index, and `push DIR --dry-run` publishes that card (issue 27, row 9)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import ModelCard

from .cli_runs import run_cli
from .test_evaluate_backbones import offline_env
from .test_evaluate_cli import tiny_run  # noqa: F401  (the session's shared 2-step run)
from .test_evaluate_layouts import SHA, hub_cached_dataset, labelled_faces


def test_an_export_outside_its_run_carries_and_pushes_the_evaluation(tiny_run, tmp_path):  # noqa: F811
    hub_cached_dataset(tmp_path / "hf", "me/faces", {"train": labelled_faces(12), "test": labelled_faces(6, 30)})
    env = {**offline_env(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    run = Path(shutil.copytree(tiny_run, tmp_path / "runs" / "q"))  # exported by `pretrain`, before evaluation
    done = run_cli("evaluate", "runs/q", "--task", "classification", "--protocol", "knn", "--data", "me/faces",
                   "--target", "smiling", "--data-split", "train,test", "--labels", "4", "--seeds", "2",
                   "--baselines", "random", "--run", "runs/q", "--out", "eval", "--set", "eval_batch_size=8",
                   cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())["summary"]
    top1 = {r["backbone"]: r for r in summary if r["metric"] == "top1"}
    mine, random_init = top1["q"], top1["random init"]
    # the table's cell as evaluate computed it: mean ± std over the 2 seeds, the baseline beside it
    cell = f"{mine['mean']:.1f} ± {mine['std']:.1f} (2 seeds; random init {random_init['mean']:.1f} ± "

    done = run_cli("export", "runs/q", "--out", "exports/q", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = tmp_path / "exports" / "q"
    assert json.loads((exported / "evaluation" / "model_index.json").read_text()) == \
        json.loads((run / "evaluation" / "model_index.json").read_text())
    assert cell in (exported / "README.md").read_text()

    done = run_cli("push", "exports/q", "--repo-id", "me/q-faces", "--dry-run", cwd=tmp_path,
                   env={**env, "COLUMNS": "300"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "No evaluation has been attached yet" not in done.stdout
    assert cell in done.stdout and "evaluation/model_index.json" in done.stdout
    # the model-index (a Hub dataset's results) in the pushed card's metadata, under the repo's name
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("─") and "README.md" in line) + 1
    end = next(i for i in range(start, len(lines)) if lines[i] and set(lines[i]) == {"─"})
    card = ModelCard("\n".join(lines[start:end]))
    results = {(r.metric_type, r.metric_args["labels"]): r for r in card.data.eval_results}
    assert set(results) == {("accuracy", 4), ("balanced_accuracy", 4)}
    assert results["accuracy", 4].metric_value == round(mine["mean"], 2)
    assert results["accuracy", 4].dataset_type == "me/faces" and results["accuracy", 4].dataset_revision == SHA
    assert card.data.model_name == "q-faces"
