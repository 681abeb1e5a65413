"""The one run skeleton: every training command (pretrain, train-generator, any method) goes through `train`.

    reopen and lock, or claim, the run folder -> the method validates and builds its inputs ->
    accelerator -> the cost of one step (a throwaway copy) -> a budget becomes steps ->
    the method builds its task -> recipe.yaml -> resume -> run.json ->
    the loop -> samples.png -> the method's finish -> export -> run.json

Everything that can be wrong with the user's input is checked by the method's
`prepare` (and `build`) before the run folder is created, so bad input leaves
nothing behind, and the recipe is saved fully resolved (a budget of images or
FLOPs as the steps it came to). A run folder always means the same thing:

    recipe.yaml        the fully resolved recipe, only the sections its method reads
    run.json           status (running, interrupted, failed, trained, exported), provenance, versions, and
                       the compute: images and counted FLOPs per step, the budget, wall time, median step time
                       (wall and CPU)
    metrics.jsonl      every step's losses, learning rates and throughput
    logs/              the trackers' files (TensorBoard by default)
    checkpoints/       the latest states (resume from the last one)
    samples.png        the method's sample grid (also sent to the trackers)
    export/            the timm-loadable backbone, for methods that train one
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shlex
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.text import Text

from .. import atomic, outputs
from ..data.grids import grid_image, save_png
from ..errors import UserError, first_line
from ..methods import get_method
from ..recipes import Recipe, dump_recipe, load_recipe, to_dict
from ..version import versions
from ..interrupt import command_line, print_interrupted
from .checkpoints import (checkpoint_step, latest_checkpoint, latest_intact_checkpoint, load_checkpoint,
                          no_intact_checkpoint, skipped_notes)
from .loop import StepCost, count_step_flops, log_image, make_accelerator, resolve_budget, run_loop, tracker_config

RUN_STATUSES = ("running", "interrupted", "failed", "trained", "exported")


def train(recipe: Recipe | None = None, output: Path | None = None, resume: Path | None = None,
          console: Console | None = None, export: bool = True, steps: int | None = None,
          command: str | None = None) -> Path:
    """Run (or resume) the recipe's method; returns the run folder.

    `command` is the CLI command that asked (`pretrain`, `train-generator`): a recipe
    for a method that another command runs is refused with a pointer to it. The run
    folder is claimed and locked for the whole run (outputs.py): a second command on
    it gets one line, and two runs started in the same second get two folders.
    """
    with contextlib.ExitStack() as claims:
        return _train(claims, recipe, output, resume, console, export, steps, command)


def _train(claims: contextlib.ExitStack, recipe: Recipe | None, output: Path | None, resume: Path | None,
           console: Console | None, export: bool, steps: int | None, command: str | None) -> Path:
    console = console or Console(stderr=True)
    if recipe is None and resume is None:
        raise UserError("give a recipe or a run folder to resume")
    recipe, run_dir = (recipe, None) if resume is None else reopen(resume, steps)
    method = get_method(recipe.method)
    if command is not None and method.command != command:
        raise UserError(f"{recipe.method} recipes run with `genbackbones {method.command}`, not `{command}`")
    if resume is not None:
        claims.enter_context(_lock_run(run_dir))
    else:  # only a locked name until everything is resolved: the folder is made once the input is valid
        run_dir = claims.enter_context(claim_run_dir(recipe, output))

    # -- validate and build everything before anything is written --------------
    num_processes = int(os.environ.get("WORLD_SIZE", "1"))
    prepared = method.prepare(recipe, num_processes)
    previous = _read_run_info(run_dir) if resume is not None else {}
    checkpoint, skipped = None, []
    if resume is not None:  # the newest checkpoint that verifies; damaged newer ones are skipped with a note
        checkpoint, skipped = latest_intact_checkpoint(run_dir)
        if checkpoint is None and skipped:
            raise no_intact_checkpoint(run_dir, skipped, method.command)
    accelerator = make_accelerator(recipe.train, run_dir, prepared.find_unused_parameters)
    cost = recorded_step_cost(previous, accelerator) or measure_step_cost(method, prepared, recipe, accelerator)
    budget = resolve_budget(recipe.train, cost) or previous.get("budget")
    task = method.build(prepared, recipe, accelerator)
    if recipe.train.channels_last:  # in place: the optimisers keep their parameters
        for module in task.state_objects().values():
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("logs", config=tracker_config(to_dict(recipe)))

    start = load_checkpoint(checkpoint, task.state_objects(), accelerator.device) if checkpoint is not None else 0
    info = {
        "status": "running", "method": recipe.method, **method.describe(prepared, recipe),
        "images_per_step": cost.images_per_step, "flops_per_step": cost.flops_per_step,
        "flops_counted": FLOPS_COUNTED, "budget": budget,
        "num_processes": accelerator.num_processes, "device": str(accelerator.device),
        "mixed_precision": recipe.train.mixed_precision, "versions": versions(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed_from_step": start,
    }
    write_run_info(accelerator, run_dir, info)
    if accelerator.is_main_process:
        console.print(f"[bold]run[/] {run_dir}  ·  {recipe.method}  ·  {method.banner(prepared, recipe)}",
                      highlight=False, soft_wrap=True)
        for note in skipped_notes(run_dir, skipped):
            console.print(Text.assemble(("note:", "yellow"), f" {note}"), highlight=False, soft_wrap=True)
        if start:
            console.print(f"resuming from step {start} ({checkpoint})", highlight=False, soft_wrap=True)
        if previous.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
            console.print(f"[yellow]note:[/] this run was started with {previous['num_processes']} process(es) and "
                          f"continues with {accelerator.num_processes}: the recipe's resolved values are kept, the "
                          "global batch changes and the result is no longer bit-identical to one run",
                          soft_wrap=True)

    t0 = time.perf_counter()
    try:
        result = run_loop(accelerator, task, recipe.train, recipe.seed, run_dir, start_step=start,
                          description=recipe.method, console=console,
                          hooks=method.hooks(task, recipe, run_dir, accelerator))
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        last = latest_checkpoint(run_dir)
        info.update(status="interrupted" if interrupted else "failed",
                    last_checkpoint_step=checkpoint_step(last) if last else 0,
                    stopped=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if not interrupted:
            info["error"] = f"{type(err).__name__}: {first_line(err, 200)}"
        write_run_info(accelerator, run_dir, info)
        if interrupted and accelerator.is_main_process:
            print_interrupted(console, f"{run_dir} is kept at its last checkpoint (step "
                              f"{info['last_checkpoint_step']})", command_line([method.command, "--resume", run_dir]))
        raise
    seconds = time.perf_counter() - t0

    if accelerator.is_main_process:
        grid = grid_image(task.sample_images(), scale=2)
        save_png(grid, run_dir / "samples.png")
        log_image(accelerator, "samples", grid, recipe.train.steps)
        extra = method.finish(task, prepared, recipe, run_dir)
        info.update(status="trained", train_seconds=round(seconds + result.earlier_seconds, 1),
                    steps=recipe.train.steps,
                    images_seen=recipe.train.steps * info["images_per_step"],
                    flops=recipe.train.steps * info["flops_per_step"],
                    median_step_seconds=result.median_step_seconds,
                    median_step_cpu_seconds=result.median_step_cpu_seconds,
                    compute=f"{accelerator.num_processes} x {accelerator.device.type}, "
                            f"{seconds / 60:.1f} min for steps {start}-{recipe.train.steps}", **extra)
        write_run_info(accelerator, run_dir, info)
        if export and method.exports_backbone:
            from ..export import export_run

            export_run(run_dir)
            info["status"] = "exported"
            write_run_info(accelerator, run_dir, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


FLOPS_COUNTED = ("torch FlopCounterMode over one training step: forward and backward of everything the step runs "
                 "(generator, discriminator, momentum encoder included), all processes; matrix products and "
                 "convolutions only, 2 FLOPs per multiply-add")


def recorded_step_cost(info: dict, accelerator) -> StepCost | None:
    """A resumed run's step cost as run.json recorded it, when the process count is the same (else measured again)."""
    if info.get("num_processes") == accelerator.num_processes and info.get("flops_per_step") is not None \
            and info.get("images_per_step") is not None:
        return StepCost(images_per_step=info["images_per_step"], flops_per_step=info["flops_per_step"])
    return None


def measure_step_cost(method, prepared, recipe: Recipe, accelerator) -> StepCost:
    """Images and counted FLOPs of one training step, all processes (`loop.count_step_flops`).

    The step runs on a throwaway task built from copies of the prepared inputs, with
    the RNG states put back afterwards: the real task is built afterwards exactly as
    without the measurement, and is built once the budget has become its steps (its
    learning-rate schedule needs them). A step's cost does not depend on the run's
    length, so the copy's recipe may use a placeholder.
    """
    probe_recipe = copy.deepcopy(recipe)
    if probe_recipe.train.steps is None:
        probe_recipe.train.steps = 1
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            # what a step only reads (the frozen generator, the images, VGG) is shared, not copied
            shared = [getattr(prepared, name, None) for name in ("handle", "data", "vgg")]
            memo = {id(obj): obj for obj in shared if obj is not None}
            probe = method.build(copy.deepcopy(prepared, memo), probe_recipe, accelerator)
            flops = count_step_flops(accelerator, probe, probe_recipe.train, recipe.seed)
            images = probe.images_per_step
            del probe
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        accelerator.free_memory()
    n = accelerator.num_processes
    return StepCost(images_per_step=images * n, flops_per_step=flops * n)


def reopen(run_dir: Path, steps: int | None) -> tuple[Recipe, Path]:
    """The saved recipe of a run folder (with `steps` as the new total), to resume it."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no recipe.yaml); pass the folder a training command printed")
    recipe = load_recipe(run_dir / "recipe.yaml", [f"train.steps={steps}"] if steps else [])
    # verifying checkpoints reads their files: only when --steps needs the step (train() picks the one to load)
    done = latest_checkpoint(run_dir) if steps is not None else None
    if done is not None:
        step = checkpoint_step(done)
        if steps < step:
            raise UserError(f"--steps {steps} is below the {step} steps {run_dir} has already trained")
    return recipe, run_dir


@contextlib.contextmanager
def claim_run_dir(recipe: Recipe, output: Path | None) -> Iterator[Path]:
    """The new run's folder, locked for the block: `output` (new or empty), else runs/<name>-<time>[-N].

    Under torchrun every process runs this; only the main one (RANK 0) locks, the
    others write into the folder it claimed. With several processes and no
    `output`, a name taken by another command would make rank 0 add a suffix the
    others cannot know: pass -o then (docs/training.md).
    """
    main = os.environ.get("RANK", "0") == "0"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if output is None and not main:
        yield Path("runs") / f"{recipe.name}-{stamp}"
    elif output is None:
        with outputs.claim_new(Path("runs"), f"{recipe.name}-{stamp}") as run_dir:
            yield run_dir
    elif not main:
        yield Path(output)
    else:
        hint = f"pick another --output or continue it with --resume {shlex.quote(str(output))}"
        with outputs.claim(output, flag="--output", in_place=True, hint=hint) as run_dir:
            yield run_dir


def _lock_run(run_dir: Path):
    """The resumed run, locked for the block (by the main process; see `claim_run_dir`)."""
    return outputs.hold(run_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext(run_dir)


def write_run_info(accelerator, run_dir: Path, info: dict) -> None:
    if accelerator.is_main_process:
        atomic.write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def _read_run_info(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}
