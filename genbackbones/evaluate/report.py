"""What an evaluation leaves behind: results.json, summary.csv, a plot, a table and model-index entries.

- `results.json`: every number (per backbone, label count and seed), the settings, the
  seeds, the data description and split, the labelled subsets, backbone provenance,
  unavailable baselines and why, timings and versions. Everything else is derived
  from it (`write_outputs` can be re-run on a loaded results dict).
- `summary.csv`: mean and sample std over seeds per backbone x metric x label count.
- `<task>.png`: metric vs number of labels (log x axis), one line per backbone with a
  +-1 std band.
- `model_index.json`: the format `genbackbones export` reads into the model card:
  {"model_name", "eval_results": [huggingface_hub.EvalResult kwargs], "rows": [...]}, for
  the first backbone (the one the card is about), with the baselines in the rows.
  `eval_results` (the card's machine-readable model-index) are written only for data that
  is a Hub dataset: the model-index requires `dataset.type` to be a Hub dataset id, and a
  local folder or the bundled domain has none, so those results go to the card's table
  (`rows`) only. The protocol is the `metric_config` and the label count is in
  `metric_args` (per metric: `dataset.args` is shared by every metric of one dataset
  entry in the model-index), never in the metric name.

The output folder is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import atomic, outputs
from ..errors import plural
from .metrics import mean_std

TASK_TYPES = {"segmentation": "image-segmentation", "landmarks": "keypoint-detection",
              "classification": "image-classification"}
SHORT = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "nme_heatmap": "NME (heatmap)",
         "nme_ridge": "NME (frozen + ridge)", "top1": "top-1", "balanced_accuracy": "balanced accuracy"}


def summarise(results: dict) -> list[dict]:
    """Mean and sample std over seeds for every backbone x metric x label count."""
    rows = []
    for backbone in results["backbones"]:
        for spec in results["metrics"]:
            for n in results["labels"]:
                values = [r["metrics"][spec["key"]] for r in results["runs"]
                          if r["backbone"] == backbone["name"] and r["labels"] == n
                          and r["metrics"].get(spec["key"]) is not None]
                mean, std = mean_std(values)
                rows.append({"backbone": backbone["name"], "metric": spec["key"], "labels": n, "mean": mean,
                             "std": std, "seeds": len(values), "values": values})
    return rows


def write_outputs(results: dict, out: Path) -> Path:
    """The whole output folder, atomically (an existing empty folder is replaced)."""
    out = Path(out)
    results = {**results, "summary": summarise(results)}
    with atomic.directory(out, overwrite=out.exists()) as tmp:
        (tmp / "results.json").write_text(to_json(results))
        (tmp / "summary.csv").write_text(summary_csv(results))
        (tmp / "model_index.json").write_text(json.dumps(model_index(results), indent=2) + "\n")
        plot(results, tmp / f"{results['task']}.png")
    return out


def to_json(data) -> str:
    """Strict JSON: NaN and infinities become null."""
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def summary_csv(results: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "backbone", "metric", "labels", "mean", "std", "seeds", "values"])
    for r in results["summary"]:
        writer.writerow([results["task"], r["backbone"], r["metric"], r["labels"], _fmt(r["mean"], 4),
                         _fmt(r["std"], 4), r["seeds"], " ".join(_fmt(v, 4) for v in r["values"])])
    for u in results["unavailable"]:
        writer.writerow([results["task"], u["name"], "", "", "", "", 0, u["reason"]])
    return buf.getvalue()


def _fmt(value, digits: int = 1) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(row: dict) -> str:
    if not row["seeds"]:
        return "-"
    return f"{row['mean']:.1f} ± {row['std']:.1f}" if row["seeds"] > 1 else f"{row['mean']:.1f}"


def print_table(results: dict, console: Console) -> None:
    """One rich table per headline metric: backbones x label counts, mean ± std over seeds; best in bold."""
    summary = results.get("summary") or summarise(results)
    for spec in results["metrics"]:
        arrow = "higher is better" if spec["higher_is_better"] else "lower is better"
        table = Table(title=f"{results['task']}: {spec['label']}, {arrow}",
                      caption=f"mean ± std over {plural(len(results['seeds']), 'seed')} · {results['data']['summary']}")
        table.add_column("backbone")
        for n in results["labels"]:
            table.add_column(f"{n} labels", justify="right")
        references = {b["name"] for b in results["backbones"] if b.get("kind") == "reference"}
        best = {n: _best([r for r in summary if r["metric"] == spec["key"] and r["labels"] == n
                          and r["backbone"] not in references], spec)
                for n in results["labels"]}
        for backbone in results["backbones"]:
            cells = []
            for n in results["labels"]:
                row = next(r for r in summary if r["backbone"] == backbone["name"] and r["metric"] == spec["key"]
                           and r["labels"] == n)
                text = _cell(row)
                cells.append(f"[bold]{text}[/]" if best[n] == backbone["name"] else text)
            label = f"{backbone['name']} (reference)" if backbone["name"] in references else backbone["name"]
            table.add_row(label, *cells)
        for u in results["unavailable"]:
            table.add_row(u["name"], *(["not available"] * len(results["labels"])))
        console.print(table)
    for note in results.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for u in results["unavailable"]:
        console.print(f"[yellow]{u['name']}:[/] {u['reason']}", highlight=False, soft_wrap=True)


def _best(rows: list[dict], spec: dict) -> str | None:
    rows = [r for r in rows if r["seeds"] and not math.isnan(r["mean"])]
    if len(rows) < 2:
        return None
    pick = max if spec["higher_is_better"] else min
    return pick(rows, key=lambda r: r["mean"])["backbone"]


def plot(results: dict, path: Path) -> None:
    """Metric vs number of labels (log x), one line per backbone with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results.get("summary") or summarise(results)
    specs = results["metrics"]
    fig, axes = plt.subplots(1, len(specs), figsize=(5.2 * len(specs), 4.2), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        for backbone in results["backbones"]:
            rows = sorted((r for r in summary if r["backbone"] == backbone["name"] and r["metric"] == spec["key"]
                           and r["seeds"]), key=lambda r: r["labels"])
            if not rows:
                continue
            x = [r["labels"] for r in rows]
            mean = [r["mean"] for r in rows]
            std = [r["std"] for r in rows]
            reference = backbone.get("kind") == "reference"
            line, = ax.plot(x, mean, marker="" if reference else "o", linestyle="--" if reference else "-",
                            color="grey" if reference else None,
                            label=f"{backbone['name']} (reference)" if reference else backbone["name"])
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(results["labels"], [str(n) for n in results["labels"]])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images")
        ax.set_ylabel(spec["label"] + ("" if spec["higher_is_better"] else "  (lower is better)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    title = f"{results['task']} · {results['data']['summary']} · mean ± std over {plural(len(results['seeds']), 'seed')}"
    if results["unavailable"]:
        title += "\n" + "; ".join(f"{u['name']}: not available" for u in results["unavailable"])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_tables(results: dict, plot_dir: str | None = None) -> str:
    """One markdown table per metric (backbones x label counts, mean ± std over seeds), for benchmark READMEs.

    `results` must carry its summary (`summarise`); the plot is linked from `<plot_dir>/<task>.png`.
    """
    lines = [f"## {results['task']} ({results['protocol']})", ""]
    for spec in results["metrics"]:
        arrow = "higher is better" if spec["higher_is_better"] else "lower is better"
        lines += [f"**{spec['label']}** ({arrow})", "",
                  "| backbone | " + " | ".join(f"{n} labels" for n in results["labels"]) + " |",
                  "|---|" + "---|" * len(results["labels"])]
        for b in results["backbones"]:
            cells = []
            for n in results["labels"]:
                row = next(r for r in results["summary"] if r["backbone"] == b["name"] and r["metric"] == spec["key"]
                           and r["labels"] == n)
                cells.append(f"{row['mean']:.1f} ± {row['std']:.1f}")
            name = f"{b['name']} (reference)" if b.get("kind") == "reference" else b["name"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for u in results["unavailable"]:
            lines.append(f"| {u['name']} | " + " | ".join("not available" for _ in results["labels"]) + " |")
        lines.append("")
    for u in results["unavailable"]:
        lines.append(f"- {u['name']}: {u['reason']}")
    folder = plot_dir or results["task"]
    lines += ["", f"![{results['task']}]({folder}/{results['task']}.png)", ""]
    return "\n".join(lines)


def model_index(results: dict) -> dict:
    """EvalResult kwargs for the first backbone (Hub datasets only), plus card rows comparing it with the rest."""
    summary = results.get("summary") or summarise(results)
    subject = results["backbones"][0]["name"]
    data = results["data"]
    hub = data.get("hub")
    eval_results, rows = [], []
    for spec in results["metrics"]:
        protocol = spec.get("protocol") or results["protocol"]
        for n in results["labels"]:
            mine = _row(summary, subject, spec["key"], n)
            if not mine or not mine["seeds"] or math.isnan(mine["mean"]):
                continue
            if hub:
                eval_results.append(_eval_result(results, spec, protocol, n, mine, hub))
            others = [f"{b['name']} {_cell(_row(summary, b['name'], spec['key'], n))}"
                      for b in results["backbones"][1:]]
            others += [f"{u['name']}: not available" for u in results["unavailable"]]
            value = f"{_cell(mine)} ({plural(mine['seeds'], 'seed')}" + ("; " + "; ".join(others) if others else "") + ")"
            rows.append({"task": f"{results['task']} ({results['protocol']})", "dataset": data["name"],
                         "metric": spec["label"], "labels": n, "value": value, "protocol": protocol})
    return {"model_name": subject, "eval_results": eval_results, "rows": rows}


def _eval_result(results: dict, spec: dict, protocol: str, n: int, mine: dict, hub: dict) -> dict:
    """One huggingface_hub.EvalResult's kwargs: the Hub dataset, the metric, and how it was obtained."""
    out = {
        "task_type": TASK_TYPES[results["task"]],
        "task_name": results["task"],
        "dataset_type": hub["id"], "dataset_name": hub["id"],
        "dataset_config": hub.get("config"), "dataset_split": hub.get("test_split"),
        "dataset_revision": hub.get("revision"),
        "dataset_args": {k: v for k, v in (("train_split", hub.get("train_split")),
                                           ("test", hub.get("test_held_out"))) if v},
        "metric_type": spec["model_index_type"], "metric_name": SHORT[spec["key"]],
        "metric_value": round(mine["mean"], 2),
        "metric_config": protocol,
        "metric_args": {"labels": n, "seeds": mine["seeds"], "std": round(mine["std"], 2)},
    }
    return {k: v for k, v in out.items() if v is not None}


def _row(summary: list[dict], backbone: str, metric: str, n: int) -> dict | None:
    return next((r for r in summary if r["backbone"] == backbone and r["metric"] == metric and r["labels"] == n),
                None)


RUN_MODEL_INDEX = Path("evaluation") / "model_index.json"  # inside a run folder: what export and push put in cards


def read_model_index(run_dir: Path) -> tuple[list, list[dict]] | None:
    """(EvalResults, table rows) from RUN/evaluation/model_index.json; None when the run was not evaluated."""
    from huggingface_hub import EvalResult

    from ..errors import UserError

    path = Path(run_dir) / RUN_MODEL_INDEX
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return [EvalResult(**r) for r in data.get("eval_results", [])], list(data.get("rows", []))
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{path}: malformed ({err}); run `genbackbones evaluate ... --run` again") from None


def merge_into_run(run_dir: Path, index: dict) -> Path:
    """Add entries to RUN/evaluation/model_index.json, replacing earlier ones for the same task/metric/labels."""
    path = Path(run_dir) / RUN_MODEL_INDEX
    with outputs.waiting_for(path):  # two evaluations of one run (other --out folders) each keep their rows
        old = json.loads(path.read_text()) if path.exists() else {}
        new_keys = {_result_key(r) for r in index["eval_results"]}
        new_rows = {_row_key(r) for r in index["rows"]}
        merged = {
            "model_name": index.get("model_name") or old.get("model_name"),
            "eval_results": [r for r in old.get("eval_results", []) if _result_key(r) not in new_keys
                             and not _legacy(r)] + index["eval_results"],
            "rows": [r for r in old.get("rows", []) if _row_key(r) not in new_rows] + index["rows"],
        }
        atomic.write_text(path, json.dumps(merged, indent=2) + "\n")
    return path


def _result_key(r: dict) -> tuple:
    return (r.get("task_type"), r.get("dataset_type"), r.get("dataset_config"), r.get("dataset_split"),
            r.get("dataset_revision"), r.get("metric_type"), r.get("metric_config"),
            (r.get("metric_args") or {}).get("labels"))


def _legacy(r: dict) -> bool:
    """Entries of the first format (label count in the metric name, a dataset id that was not on the Hub)."""
    return re.search(r" @ \d+ labels$", r.get("metric_name") or "") is not None


def _row_key(r: dict) -> tuple:
    return r.get("task"), r.get("dataset"), r.get("metric"), str(r.get("labels"))
