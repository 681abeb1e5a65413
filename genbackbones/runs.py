"""Run folders: choosing a new one, reopening one to resume, and its run.json.

Shared by every training command (pretrain, train-generator, GH-Feat) so that a
run folder always means the same thing: `recipe.yaml` (the resolved recipe),
`run.json` (status and provenance), `metrics.jsonl`, `logs/`, `checkpoints/`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from . import atomic
from .errors import UserError
from .recipes import Recipe, load_recipe


def reopen_or_new(recipe: Recipe | None, resume: Path | None, steps: int | None, default_recipe: str | None,
                  command: str) -> tuple[Recipe, Path | None]:
    """The recipe to run and, when resuming, the run folder (a new folder is chosen later,
    once the inputs have been validated, so that bad input leaves nothing behind)."""
    if resume is None:
        return recipe or load_recipe(default_recipe), None
    run_dir = Path(resume)
    if not (run_dir / "recipe.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no recipe.yaml); pass the folder `{command}` printed")
    return load_recipe(run_dir / "recipe.yaml", [f"train.steps={steps}"] if steps else []), run_dir


def new_run_dir(recipe: Recipe, output: Path | None) -> Path:
    if output is not None:
        output = Path(output)
        if output.exists() and any(output.iterdir()):
            raise UserError(f"{output} already exists and is not empty; pick another --output or "
                            f"continue it with --resume {output}")
        return output
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.name}-{stamp}"


def write_run_info(accelerator, run_dir: Path, info: dict) -> None:
    if accelerator.is_main_process:
        atomic.write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def finish_pretraining(accelerator, run_dir: Path, info: dict, seconds: float, start: int, steps: int,
                       samples, export: bool) -> None:
    """After the loop of a backbone pretraining: sample grid, run.json, export, then release the processes.

    `samples` is a callable returning the grid rows (called on the main process only).
    """
    from .export import export_run
    from .images import save_grid

    if accelerator.is_main_process:
        save_grid(samples(), run_dir / "samples.png", scale=2)
        info.update(status="trained", train_seconds=round(seconds, 1), steps=steps,
                    compute=f"{accelerator.num_processes} x {accelerator.device.type}, "
                            f"{seconds / 60:.1f} min for steps {start}-{steps}")
        write_run_info(accelerator, run_dir, info)
        if export:
            export_run(run_dir)
            info["status"] = "exported"
            write_run_info(accelerator, run_dir, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
