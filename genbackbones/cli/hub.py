"""Hub and zoo commands of the `genbackbones` CLI: push, pull, list, info, zoo.

Parsing and printing only; the work is in `genbackbones/hub.py` and `zoo.py`. Nothing here prints a token: none is ever handed to this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import console, err_console, print_copyable

app = typer.Typer()


@app.command("push")
def push_cmd(
    source: Path = typer.Argument(..., help="Run folder, its export/ folder, or a generator folder."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo, ORG/NAME (created if needed)."),
    private: bool = typer.Option(False, "--private",
                                 help="Create the repo private (an existing repo keeps its visibility)."),
    revision: Optional[str] = typer.Option(None, "--revision",
                                           help="Branch to commit to (created from main if needed)."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Commit summary."),
    tag: list[str] = typer.Option([], "--tag", help="Extra card tag, e.g. the domain: --tag faces (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the files and the card; send nothing."),
):
    """Upload a backbone (run or export) or a generator to the Hugging Face Hub in one commit."""
    from .. import hub

    if dry_run:
        staged = hub.stage(source, repo_id, tag)
        _print_files(staged)
        console.rule("README.md")
        console.print(staged.card, markup=False, highlight=False, soft_wrap=True)
        console.rule()
        print_copyable(f"dry run: nothing was sent. After the push: {staged.load_line}")
        return
    result = hub.push(source, repo_id, private=private, revision=revision, commit_message=commit_message, tags=tag)
    console.print(f"[green]pushed[/] {len(result.staged.files)} files to {result.repo_id}@{result.revision} "
                  f"(commit {result.commit[:10]})", highlight=False)
    print_copyable(result.url)
    print_copyable(result.staged.load_line)


def _print_files(staged) -> None:
    console.print(f"{staged.kind} → {staged.repo_id}", markup=False, highlight=False)
    table = Table("file", "size")
    for f in staged.files:
        table.add_row(f.path, _size(f.size))
    table.add_row("[bold]total[/]", _size(sum(f.size for f in staged.files)))
    console.print(table)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("pull")
def pull_cmd(
    spec: str = typer.Argument(..., help="ORG/NAME or ORG/NAME@REVISION (hf-hub: prefix optional)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Download into this folder instead of the HF cache."),
):
    """Download a repo into the Hugging Face cache (or --out) and print where it is."""
    from ..hub import pull

    folder = pull(spec, out)
    err_console.print(f"[green]pulled[/] {spec}")
    print_copyable(str(folder))


@app.command("list")
def list_cmd(org: str = typer.Argument(..., help="Hub organisation or user.")):
    """List an organisation's model repos: kind, method, licence and headline metrics from their cards."""
    from ..hub import list_repos

    repos = list_repos(org)
    if not repos:
        console.print(f"{org} has no model repos (or none visible to you)", markup=False)
        return
    table = Table("repo", "kind", "method", "licence", "metrics", "updated")
    for r in repos:
        table.add_row(r.repo_id + (" (private)" if r.private else ""), r.kind, r.method, r.license,
                      "\n".join(r.metrics) or "-", r.last_modified)
    console.print(table)


@app.command("info")
def info_cmd(spec: str = typer.Argument(..., help="hf-hub:ORG/NAME[@REVISION] (prefix optional), or a local "
                                                   "run, export or generator folder.")):
    """Show a repo's method, generator, licence, evaluation results and files."""
    from ..hub import info

    data = info(spec)
    title = f"{data.repo_id} (a local folder, not a Hub repo)" if data.local else f"{data.repo_id} @ {data.revision[:10]}"
    table = Table(show_header=False, title=title)
    for key, value in (("kind", data.kind), ("method", data.method), ("generator", data.generator),
                       ("generator sha256", data.generator_sha256), ("licence", data.license),
                       ("base model", data.base_model or "-"), ("tags", ", ".join(data.tags) or "-")):
        table.add_row(key, str(value))
    console.print(table)
    print_copyable(f"load: {data.load_line}")  # on its own line, never wrapped: it is copied whole
    if data.eval_results:
        results = Table("task", "dataset", "metric", "value", title="evaluation (model-index)")
        for r in data.eval_results:
            results.add_row(str(r["task"]), str(r["dataset"]), str(r["metric"]), str(r["value"]))
        console.print(results)
    else:
        console.print("no evaluation results in the card", markup=False)
    if data.files:
        files = Table("file", "size", title="files")
        for name, size in data.files:
            files.add_row(name, _size(size))
        console.print(files)


@app.command("zoo")
def zoo_cmd(as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON.")):
    """List the backbones genbackbones publishes, with the timm line of each published one."""
    import dataclasses
    import json

    from ..zoo import load_zoo

    entries = load_zoo()
    if as_json:
        print_copyable(json.dumps([{**dataclasses.asdict(e), "name": e.name, "load": e.load_line} for e in entries],
                                  indent=2))
        return
    # one block per entry, each fact on its own line: nothing is cut or folded into table cells, whatever the
    # terminal's width, and names and load lines can be copied whole
    for e in entries:
        console.print(f"[bold]{e.name}[/]  ({e.status})", highlight=False, soft_wrap=True)
        facts = {"method": e.method, "domain": e.domain, "licence": e.license_label, "generator": e.generator,
                 "Hub repo": e.repo, "load": e.load_line if e.loadable else "no weights yet"}
        facts.update({f"{r['task']} {r['dataset']} {r['metric']}@{r['labels']}": r["value"] for r in e.results})
        for key, value in facts.items():
            print_copyable(f"  {key}: {value}")
    if not any(e.loadable for e in entries):
        print_copyable("No entry is published yet: in-progress and planned entries have no weights to load.")
    print_copyable("Published entries load with timm alone: timm.create_model('hf-hub:<org>/<timm name>', "
                   "pretrained=True, features_only=True)")
