"""`train-generator`: train a StyleGAN2 on real images with the same loop as pretraining.

Meant for small generators (the bundled 64 px one, a domain of your own on a
laptop or one GPU). At large scale, train with NVIDIA's stylegan2-ada-pytorch
(ADA augmentation, fp16, tuned configs) and import its `.pkl` with
`genbackbones generator convert`.

The run folder is laid out like a pretraining run; at the end `generator/` holds
G_ema and D in our generator format, ready for `generator.source`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from . import atomic
from .data.images import open_images
from .errors import UserError
from .export import versions
from .generators.checkpoints import Provenance, save_generator
from .generators.sources import RANDOM_PRESETS
from .images import save_grid
from .methods.gan import StyleGAN2Task, default_ema_kimg, lazy_adam, make_pair
from .recipes import Recipe, dump_recipe
from .runs import new_run_dir, reopen_or_new, write_run_info
from .training import latest_checkpoint, load_checkpoint, make_accelerator, run_loop

GENERATOR_DIR = "generator"


def generator_kwargs(recipe: Recipe) -> dict:
    if recipe.gan.init_kwargs is not None:
        return dict(recipe.gan.init_kwargs)
    if recipe.gan.preset not in RANDOM_PRESETS:
        raise UserError(f"unknown gan.preset {recipe.gan.preset!r}; choose from {', '.join(RANDOM_PRESETS)} "
                        "or give gan.init_kwargs")
    return dict(RANDOM_PRESETS[recipe.gan.preset])


class _SampleEvery:
    """Writes `samples/step-N.png` every N steps (main process)."""

    def __init__(self, task: StyleGAN2Task, run_dir: Path, every: int, is_main: bool):
        self.task, self.run_dir, self.every, self.is_main = task, run_dir, every, is_main
        self.inner_after_step = task.after_step

    def __call__(self, step: int) -> None:
        self.inner_after_step(step)
        if self.is_main and self.every and (step + 1) % self.every == 0:
            save_grid(self.task.sample_images(), self.run_dir / "samples" / f"step-{step + 1:07d}.png", scale=2)


def train_generator(recipe: Recipe | None = None, output: Path | None = None, resume: Path | None = None,
                    console: Console | None = None, steps: int | None = None) -> Path:
    """Train (or resume) a StyleGAN2; returns the run folder (the generator is in `<run>/generator`)."""
    console = console or Console(stderr=True)
    recipe, run_dir = reopen_or_new(recipe, resume, steps, "generators/faces64", "train-generator")
    if recipe.method != "stylegan2":
        raise UserError(f"train-generator needs a recipe with method: stylegan2, got {recipe.method!r}")

    kwargs = generator_kwargs(recipe)
    resolution = kwargs["img_resolution"]
    if recipe.data.resolution not in (None, resolution):
        raise UserError(f"data.resolution {recipe.data.resolution} differs from the generator's {resolution}; "
                        "drop data.resolution or change the generator")
    data = open_images(recipe.data.source, resolution, recipe.data.count, recipe.seed, recipe.data.split,
                       recipe.data.column)
    if len(data) < recipe.train.batch_size:
        raise UserError(f"only {len(data)} training images for batch size {recipe.train.batch_size}")
    if recipe.train.batch_size % recipe.gan.mbstd_group:
        raise UserError(f"train.batch_size {recipe.train.batch_size} must be a multiple of gan.mbstd_group "
                        f"{recipe.gan.mbstd_group}")

    checkpoint = None
    if run_dir is None:
        run_dir = new_run_dir(recipe, output)
    else:
        checkpoint = latest_checkpoint(run_dir)
    accelerator = make_accelerator(recipe.train, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    accelerator.wait_for_everyone()

    cfg = recipe.gan
    if cfg.ema_kimg is None:
        cfg.ema_kimg = default_ema_kimg(recipe.train.batch_size * accelerator.num_processes)
    G, D, G_ema = (m.to(accelerator.device) for m in make_pair(kwargs, recipe.seed, cfg.mbstd_group))
    opt_G = lazy_adam(G.parameters(), recipe.train.lr, recipe.train.betas, cfg.pl_every if cfg.pl_weight else 0)
    opt_D = lazy_adam(D.parameters(), recipe.train.lr, recipe.train.betas, cfg.r1_every if cfg.r1_gamma else 0)
    opt_G, opt_D = accelerator.prepare(opt_G, opt_D)
    task = StyleGAN2Task(G, D, G_ema, opt_G, opt_D, data, cfg, recipe.train, recipe.seed, accelerator)
    task.after_step = _SampleEvery(task, run_dir, cfg.sample_every, accelerator.is_main_process)
    start = load_checkpoint(checkpoint, task.state_objects(), accelerator.device) if checkpoint is not None else 0

    info = {"status": "running", "method": "stylegan2", "generator_kwargs": kwargs, "data": recipe.data.source,
            "num_images": len(data), "resolution": resolution, "num_processes": accelerator.num_processes,
            "device": str(accelerator.device), "versions": versions(), "resumed_from_step": start,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_run_info(accelerator, run_dir, info)
    if accelerator.is_main_process:
        console.print(f"[bold]run[/] {run_dir}  ·  StyleGAN2 {resolution}px  ·  {len(data)} images from "
                      f"{recipe.data.source}  ·  batch {recipe.train.batch_size} x {accelerator.num_processes}")
        if start:
            console.print(f"resuming from step {start} ({checkpoint})")
    t0 = time.perf_counter()
    run_loop(accelerator, task, recipe.train, recipe.seed, run_dir, start_step=start, description="stylegan2",
             console=console)
    if accelerator.is_main_process:
        save_grid(task.sample_images(), run_dir / "samples.png", scale=2)
        provenance = Provenance(source=f"genbackbones train-generator ({recipe.name}, {recipe.train.steps} steps, "
                                       f"data {recipe.data.source})", network="G_ema",
                                license=recipe.license, w_avg="trained")
        save_generator(run_dir / GENERATOR_DIR, G_ema.cpu(), D.cpu(), provenance, overwrite=True)
        info.update(status="trained", train_seconds=round(time.perf_counter() - t0, 1), steps=recipe.train.steps,
                    kimg=round(recipe.train.steps * recipe.train.batch_size * accelerator.num_processes / 1000, 1))
        write_run_info(accelerator, run_dir, info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir
