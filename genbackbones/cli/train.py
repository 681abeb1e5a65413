"""Training commands: `pretrain`, `train-generator`, `export`, `recipes`.

`pretrain` and `train-generator` are the same run skeleton (engine/runs.py) for the
methods each accepts; a recipe's `method:` decides what trains.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .common import console, err_console, is_main_process, print_copyable

app = typer.Typer()

SET_HELP = "Override a recipe value, e.g. --set train.steps=100 (repeatable)."
RESUME_HELP = "Continue this run folder from its last checkpoint."
OUTPUT_HELP = ("Run folder (default runs/<name>-<time>, with -2, -3 ... when taken); must not exist or be empty. "
               "Locked while the command runs.")
STEPS_HELP = "With --resume: train to this many steps in total."


def _run(command: str, recipe: Optional[str], set_: list[str], resume: Optional[Path], output: Optional[Path],
         steps: Optional[int], export: bool, default_recipe: str) -> Path:
    from ..engine.runs import train
    from ..recipes import load_recipe

    if resume is not None and (recipe or set_):
        raise UserError("--resume continues a run with its saved recipe; drop the RECIPE and --set arguments "
                        "(use --steps to extend)")
    if steps is not None and resume is None:
        raise UserError("--steps extends a resumed run; for a new run use --set train.steps=N")
    loaded = None if resume is not None else load_recipe(recipe or default_recipe, set_)
    if loaded is not None and loaded.generator.source.startswith("random:") and "generator" in _uses(loaded):
        err_console.print(f"[yellow]note:[/] generator.source={loaded.generator.source} is a randomly initialised "
                          "generator (untrained): the pipeline is real, the features are not useful.", soft_wrap=True)
    return train(loaded, output=output, resume=resume, console=err_console, export=export, steps=steps,
                 command=command)


def _uses(recipe) -> tuple[str, ...]:
    from ..recipes import sections_read

    return sections_read(recipe)


@app.command()
def pretrain(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML path or bundled name (default: quickstart)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help=STEPS_HELP),
    no_export: bool = typer.Option(False, "--no-export", help="Skip the export at the end."),
):
    """Pretrain a backbone against a frozen generator (the recipe's method); exports a timm folder."""
    from ..cards import load_line

    run_dir = _run("pretrain", recipe, set_, resume, output, steps, not no_export, "quickstart")
    if not is_main_process():
        return
    print_copyable(f"done run: {run_dir}")
    if not no_export:
        print_copyable(f"timm: {load_line(run_dir / 'export')}")


@app.command("train-generator")
def train_generator(
    recipe: Optional[str] = typer.Argument(None, help="Recipe with method: stylegan2 (default: generators/faces64)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help=RESUME_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help=STEPS_HELP),
):
    """Train a small StyleGAN2 on images (the procedural faces, a folder, or a `datasets` dataset)."""
    from ..methods.stylegan2 import GENERATOR_DIR

    run_dir = _run("train-generator", recipe, set_, resume, output, steps, False, "generators/faces64")
    if not is_main_process():
        return
    print_copyable(f"done run: {run_dir}")
    print_copyable(f"generator: {run_dir / GENERATOR_DIR}  (use it with --set generator.source={shlex.quote(str(run_dir / GENERATOR_DIR))})")


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Export folder (default RUN/export, replaced); "
                                       "must not exist or be empty unless --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out (an earlier export); "
                                   "never a run folder, RUN, or a folder holding RUN."),
):
    """Export a run's backbone as model.safetensors + config.json + README.md (timm-loadable)."""
    from ..outputs import check_writable_folder

    if out is not None:  # refused at once, before the heavy imports; checked again under the folder's lock
        check_writable_folder(out, overwrite=overwrite, inputs=[run])
    from ..cards import load_line
    from ..export import export_run

    folder = export_run(run, out, overwrite=overwrite)
    print_copyable(f"exported {folder}")
    print_copyable(f"timm: {load_line(folder)}")


def _length(train: dict) -> str:
    """A recipe's run length as written: steps, or its budget of images seen or FLOPs."""
    if train.get("images_seen") is not None:
        return f"{train['images_seen']} images"
    if train.get("flops") is not None:
        return f"{float(train['flops']):.3g} FLOPs"
    return f"{train['steps']} steps" if train.get("steps") is not None else "-"


@app.command("recipes")
def recipes_cmd(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")):
    """List the bundled recipes (names work from any folder: `genbackbones pretrain NAME`)."""
    import json

    from ..recipes import bundled_name, list_recipes, read_yaml

    rows = []
    for path in list_recipes():
        data = read_yaml(path) or {}
        rows.append({"recipe": bundled_name(path), "method": str(data.get("method", "layermatch")),
                     "backbone": (data.get("backbone") or {}).get("arch"),
                     "generator": (data.get("generator") or {}).get("source"),
                     "steps": _length((data.get("train") or {})),
                     "description": " ".join(str(data.get("description", "")).split())})
    if as_json:
        print_copyable(json.dumps(rows, indent=2))
        return
    # one block per recipe (as `zoo`): a table squeezed into an 80-column terminal folded each description into
    # hundreds of narrow lines; here nothing is cut and the name stands alone on its line, to be copied
    for row in rows:
        console.print(f"[bold]{row['recipe']}[/]", highlight=False, soft_wrap=True)
        facts = [row["method"], row["backbone"], row["generator"] and f"generator {row['generator']}", row["steps"]]
        print_copyable("  " + " · ".join(str(f) for f in facts if f))
        print_copyable(f"  {row['description']}")
