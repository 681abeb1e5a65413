"""The results tables in docs/ssl.md are copies of committed summary.csv files: every cell must equal its file.

The tables are written by hand from benchmarks/results/vs_ssl and benchmarks/results/scaling, so a retrained run
or a re-evaluated table could leave a stale figure in the docs that no other test reads. Each table row ends with a
link to its summary.csv; the row's label gives the metric and label count (and, for the budget sweep's table, the
task and images seen), the header the backbone of each column.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "ssl.md"
ROW = re.compile(r"^\| (?P<label>[^|]+) \| (?P<cells>.+) \| \[[^]]+\]\((?P<csv>[^)]+/summary\.csv)\) \|$", re.M)
HEADER = re.compile(r"^\| task \(test score[^|]*\| (?P<columns>.+) \| results \|$", re.M)
# docs column -> the backbone's name in summary.csv (`{arch}-{method}`, or a baseline's own name)
COLUMNS = {"LayerMatch": "layermatch", "GH-Feat": "ghfeat", "SimCLR, real": "simclr-real", "BYOL, real": "byol-real",
           "SimCLR, generated": "simclr-generated", "random init": None}
SCALING = "results/scaling/summary.csv"  # the budget sweep's table: its own summary.csv layout, checked below
CELL = re.compile(r"^(\*\*)?(?P<mean>-?\d+\.\d) ± (?P<std>\d+\.\d)(\*\*)?$")


def _metric(label: str) -> str:
    if "mIoU" in label:
        return "miou"
    if "NME" in label:
        return "nme_heatmap"
    return "top1"


def _rows() -> list[tuple[str, list[str], list[str], Path]]:
    text = PAGE.read_text()
    headers = [(m.start(), [c.strip() for c in m["columns"].split("|")]) for m in HEADER.finditer(text)]
    rows = []
    for m in ROW.finditer(text):
        if m["csv"].endswith(SCALING):
            continue
        columns = [cols for start, cols in headers if start < m.start()][-1]
        rows.append((m["label"], columns, [c.strip() for c in m["cells"].split("|")], PAGE.parent / m["csv"]))
    return rows


def test_the_page_has_result_tables():
    assert len(_rows()) >= 20


@pytest.mark.parametrize("label,columns,cells,path", _rows(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_cell_equals_its_summary_csv(label, columns, cells, path):
    arch = path.parent.parent.name
    labels = int(re.search(r"([\d,]+) labels", label)[1].replace(",", ""))
    metric = _metric(label)
    table = {(r["backbone"], r["metric"], int(r["labels"])): (float(r["mean"]), float(r["std"]))
             for r in csv.DictReader(path.open())}
    assert len(cells) == len(columns)
    values = []
    for column, cell in zip(columns, cells):
        method = COLUMNS[column]
        backbone = f"{arch}-{method}" if method else column
        mean, std = table[(backbone, metric, labels)]
        shown = CELL.match(cell)
        assert shown, f"{label}, {column}: {cell!r} is not 'mean ± std'"
        assert (shown["mean"], shown["std"]) == (f"{mean:.1f}", f"{std:.1f}"), f"{label}, {column}: {path}"
        values.append((mean, std, cell.startswith("**")))
    if "mean shape" in label:
        mean, std = table[("mean shape", metric, labels)]
        assert f"mean shape {mean:.1f}" in label
    _check_bold(label, values)


def _check_bold(label: str, values: list[tuple[float, float, bool]]) -> None:
    """The page's rule: bold is the best of the row when its lead over the second exceeds both their stds."""
    sign = -1 if "↓" in label else 1
    best, second = sorted(values, key=lambda v: -sign * v[0])[:2]
    should_bold = sign * (best[0] - second[0]) > max(best[1], second[1])
    assert [v[2] for v in values] == [should_bold and v is best for v in values], f"{label}: bold marks"


def _scaling_rows() -> list[tuple[str, list[str], list[str], Path]]:
    text = PAGE.read_text()
    headers = [(m.start(), [c.strip() for c in m["columns"].split("|")]) for m in HEADER.finditer(text)]
    return [(m["label"], [cols for start, cols in headers if start < m.start()][-1],
             [c.strip() for c in m["cells"].split("|")], PAGE.parent / m["csv"])
            for m in ROW.finditer(text) if m["csv"].endswith(SCALING)]


def test_the_page_has_the_budget_sweep_table():
    """Issue 28's acceptance: the budget sweep's numbers in docs/ssl.md, every budget of both methods."""
    rows = _scaling_rows()
    budgets = {re.search(r"([\d,]+) images seen", label)[1] for label, *_ in rows}
    assert len(rows) >= 9 and len(budgets) >= 3


@pytest.mark.parametrize("label,columns,cells,path", _scaling_rows(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_budget_sweep_cell_equals_its_summary_csv(label, columns, cells, path):
    """A row: '<domain>/<task> <metric> ↑|↓, N labels, M images seen'; a column: a method of summary.csv (random
    init is its row at 0 images seen, the same in every budget's row)."""
    task = label.split(" ", 1)[0]
    labels = int(re.search(r"([\d,]+) labels?", label)[1].replace(",", ""))
    images = int(re.search(r"([\d,]+) images seen", label)[1].replace(",", ""))
    metric = _metric(label)
    table = {(r["method"], int(r["images_seen"]), r["task"], r["metric"], int(r["labels"])):
             (float(r["mean"]), float(r["std"])) for r in csv.DictReader(path.open())}
    assert len(cells) == len(columns)
    values = []
    for column, cell in zip(columns, cells):
        method = COLUMNS[column] or column
        mean, std = table[(method, 0 if method == "random init" else images, task, metric, labels)]
        shown = CELL.match(cell)
        assert shown, f"{label}, {column}: {cell!r} is not 'mean ± std'"
        assert (shown["mean"], shown["std"]) == (f"{mean:.1f}", f"{std:.1f}"), f"{label}, {column}: {path}"
        values.append((mean, std, cell.startswith("**")))
    _check_bold(label, values)
