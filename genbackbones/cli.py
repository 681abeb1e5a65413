"""The `genbackbones` command line: parse, call the API, render with rich.

User errors (`UserError`) are printed as one line on stderr with exit code 2 and
no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_utils import console, err_console, fail, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a frozen StyleGAN2 into domain-specific timm backbones.")
@app.command()
@user_errors
def pretrain(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML path or name (default: quickstart)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set train.steps=100."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default runs/<name>-<time>)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="With --resume: train to this many steps in total."),
    no_export: bool = typer.Option(False, "--no-export", help="Skip the export at the end."),
):
    """Pretrain a backbone against a frozen generator (LayerMatch or GH-Feat, per the recipe); exports a timm folder."""
    from .pretrain import pretrain as run_pretrain
    from .recipes import load_recipe

    if resume is not None and (recipe or set_):
        fail("--resume continues a run with its saved recipe; drop the RECIPE and --set arguments (use --steps to extend)")
    loaded = None if resume is not None else load_recipe(recipe, set_)
    if loaded is not None and loaded.generator.source.startswith("random:"):
        err_console.print(f"[yellow]note:[/] generator.source={loaded.generator.source} is a randomly initialised "
                          "StyleGAN2 (untrained): the pipeline is real, the features are not useful.")
    run_dir = run_pretrain(loaded, output=output, resume=resume, console=err_console, export=not no_export,
                           steps=steps)
    console.print(f"[green]done[/] run: {run_dir}")
    if not no_export:
        console.print(f"timm: timm.create_model('local-dir:{(run_dir / 'export').resolve()}', pretrained=True, "
                      "features_only=True)")


@app.command("train-generator")
@user_errors
def train_generator_cmd(
    recipe: Optional[str] = typer.Argument(None, help="Recipe with method: stylegan2 (default: generators/faces64)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set train.steps=100."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default runs/<name>-<time>)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="With --resume: train to this many steps in total."),
):
    """Train a small StyleGAN2 on images (the procedural faces, a folder, or a `datasets` dataset)."""
    from .recipes import load_recipe
    from .train_generator import GENERATOR_DIR, train_generator

    if resume is not None and (recipe or set_):
        fail("--resume continues a run with its saved recipe; drop the RECIPE and --set arguments (use --steps to extend)")
    loaded = None if resume is not None else load_recipe(recipe or "generators/faces64", set_)
    run_dir = train_generator(loaded, output=output, resume=resume, console=err_console, steps=steps)
    console.print(f"[green]done[/] run: {run_dir}")
    console.print(f"generator: {run_dir / GENERATOR_DIR}  (use it with --set generator.source={run_dir / GENERATOR_DIR})")


@app.command("export")
@user_errors
def export_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Export folder (default RUN/export)."),
):
    """Export a run's backbone as model.safetensors + config.json + README.md (timm-loadable)."""
    from .export import export_run

    folder = export_run(run, out)
    console.print(f"[green]exported[/] {folder}")
    console.print(f"timm.create_model('local-dir:{folder.resolve()}', pretrained=True)")


@app.command("recipes")
@user_errors
def recipes_cmd():
    """List the bundled recipes."""
    import yaml

    from .recipes import RECIPES_DIR, list_recipes

    table = Table("recipe", "method", "backbone", "generator", "steps", "description")
    for path in list_recipes():
        data = yaml.safe_load(path.read_text()) or {}
        name = str(path.relative_to(RECIPES_DIR).with_suffix(""))
        table.add_row(name, str(data.get("method", "layermatch")), str(data.get("backbone", {}).get("arch", "")),
                      str(data.get("generator", {}).get("source", "")), str(data.get("train", {}).get("steps", "")),
                      str(data.get("description", "")).strip().split("\n")[0][:70])
    console.print(table)


def _mount_subcommands() -> None:
    """Commands that live in their own modules: each module's `register(app)` adds its commands."""
    from .cli_generator import app as generator_app

    app.add_typer(generator_app, name="generator", help="Convert, inspect and sample generators.")
    for module in ("genbackbones.evaluate.cli", "genbackbones.hub_cli", "genbackbones.ghfeat_cli",
                   "genbackbones.semantics.cli"):
        try:
            register = __import__(module, fromlist=["register"]).register
        except ModuleNotFoundError as err:  # a command group not built yet
            if err.name != module:
                raise
            continue
        register(app)


_mount_subcommands()


def main() -> None:
    # On a shared CPU, OpenMP threads that spin while waiting can slow a step ten-fold; wait passively
    # unless the user chose otherwise (must be set before torch is imported).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":
    sys.exit(main())
