"""The one Accelerate training loop: steps, phases, logging, progress; checkpoints at intervals.

Every method (LayerMatch, GH-Feat, the StyleGAN2 trainer, ...) is a `Task` made of
`Phase`s, each an optimiser and a loss: LayerMatch has one phase, a GAN has
generator, discriminator and regularisation phases at their own intervals. The
loop owns everything else, identically for all of them:

* determinism: the RNGs (torch's, and numpy's and Python's global ones, which some
  augmentation libraries draw from) are re-seeded from (seed, step, process) at
  every step and data positions are a function of the step, so a run killed and
  resumed from a checkpoint ends bit-identical (on CPU) to one that never stopped;
* compute: a run's length is given as steps, or as a budget of images seen or of
  FLOPs (`resolve_budget`), so methods can be compared at equal compute; the FLOPs
  of one step are counted, not estimated (`count_step_flops`);
* checkpoints every N steps (engine/checkpoints.py);
* trackers chosen by `train.log_with` (TensorBoard by default, Weights & Biases),
  a `metrics.jsonl` with every step's losses and learning rates, a rich progress
  bar with loss and img/s;
* one code path for one CPU, `accelerate launch`/`torchrun` multi-process, GPUs
  and mixed precision.

The run folder around the loop (recipe.yaml, run.json, resume) is engine/runs.py's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import atomic
from ..errors import UserError
from ..recipes import TrainCfg
from .checkpoints import save_checkpoint

STOP_AFTER_ENV = "GENBACKBONES_KILL_AFTER_CHECKPOINT"  # tests: SIGKILL self right after saving this step
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
@dataclass
class Phase:
    """One optimiser step per `every` steps, on the loss `loss(step, micro) -> {'loss': tensor, ...}`."""

    name: str
    optimizer: torch.optim.Optimizer
    loss: Callable[[int, int], dict[str, torch.Tensor]]
    parameters: list[torch.nn.Parameter]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    every: int = 1
    grad_accum: int = 1
    sync_grads: bool = False  # all-reduce gradients here (modules not wrapped in DDP)


class Task(Protocol):
    """A method bound to its models, ready for the loop."""

    images_per_step: int

    def state_objects(self) -> dict[str, object]:
        """Everything a checkpoint must hold (modules, optimisers, schedulers, other state dicts)."""
        ...

    def phases(self) -> list[Phase]: ...

    def after_step(self, step: int) -> None:
        """The task's own work after each step (an EMA update, dropping a per-step cache)."""
        ...

    def sample_images(self) -> dict[str, torch.Tensor]:
        """Rows of images in [-1, 1] for the run's samples.png (settings fixed at construction)."""
        ...


@dataclass
class LoopResult:
    steps_done: int
    seconds: float  # this call's wall time: the steps since `start_step`
    history: list[dict] = field(default_factory=list)  # every step of the run, earlier sessions' included

    @property
    def earlier_seconds(self) -> float:
        """The step times logged before this call started (a resumed run's earlier sessions)."""
        return sum(h.get("seconds", 0.0) for h in self.history[:len(self.history) - self.steps_done])

    @property
    def median_step_seconds(self) -> float | None:
        """The typical step (the median: the first step's warm-up and checkpoint saves do not count)."""
        times = [h["seconds"] for h in self.history if "seconds" in h]  # lines of older versions may lack it
        return statistics.median(times) if times else None

    @property
    def median_step_cpu_seconds(self) -> float | None:
        """The typical step in CPU time of this process: on a machine shared with other jobs, what the step
        costs rather than how long it waited (with one torch thread, the wall time of an idle machine)."""
        times = [h["cpu_seconds"] for h in self.history if "cpu_seconds" in h]
        return statistics.median(times) if times else None


def cosine_schedule(optimizer: torch.optim.Optimizer, cfg: TrainCfg, total_steps: int):
    """Linear warm-up then cosine decay to 0 (or constant), stepped once per optimiser step."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(parameters, cfg: TrainCfg) -> torch.optim.AdamW:
    """AdamW with the `train:` settings, in torch's fused form (one kernel for all tensors) when it can be.

    The default form loops over every parameter tensor with a handful of ops each: 7.7 ms a step on CPU for
    the ~230 tensors of an HRNet against 2.2 ms fused (hrnet_w18_small, measured), 1-2 % of a quickstart step.
    """
    params = [p for p in parameters if p.requires_grad]
    fused = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=fused or None)


def seed_step(seed: int, step: int, process_index: int) -> None:
    """Re-seed every RNG from (seed, step, process): resume needs no RNG state.

    numpy's and Python's global RNGs too: lightly's view transforms (GaussianBlur,
    RandomSolarization) draw from numpy's, and a resumed run must draw the same views.
    """
    value = (seed * 1_000_003 + step * 7919 + process_index * 104_729) % (2**63 - 1)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


@dataclass
class StepCost:
    """What one training step costs, over all processes: images and counted FLOPs."""

    images_per_step: int
    flops_per_step: float

    def as_dict(self) -> dict:
        return {"images_per_step": self.images_per_step, "flops_per_step": self.flops_per_step}


def count_step_flops(accelerator: Accelerator, task: Task, cfg: TrainCfg, seed: int) -> float:
    """FLOPs of one average training step of `task` on this process, counted by torch's FlopCounterMode.

    Counted: forward and backward of everything each phase's loss runs (a frozen
    generator's forward and the reconstruction through it, discriminators, perceptual
    networks, momentum encoders), every micro-batch; a phase that runs every N steps
    counts 1/N. FlopCounterMode counts matrix products and convolutions (2 FLOPs per
    multiply-add), not elementwise work, optimiser updates or data augmentation on
    the CPU. The task is really stepped: give a throwaway copy (`engine.runs` does).
    """
    from torch.utils.flop_counter import FlopCounterMode

    total = 0.0
    seed_step(seed, 0, accelerator.process_index)
    for phase in task.phases():
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _TotalsOnly()
        with counter:
            _train_step(accelerator, [phase], 0, cfg)
        total += counter.get_total_flops() / phase.every
    return total


class _TotalsOnly:
    """FlopCounterMode's module tracker, reduced to the total it always keeps.

    The tracker installs global module hooks to split counts by module, and autograd
    cannot run `autograd.grad(..., create_graph=True)` (R1 and path-length penalties)
    under them; only the total ('Global') is needed here.
    """

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        return None


def resolve_budget(cfg: TrainCfg, cost: StepCost) -> dict | None:
    """Turn an images-seen or FLOPs budget into `cfg.steps` (rounded up: at least the budget).

    Returns what run.json records about the budget (None when the recipe gave steps).
    """
    if cfg.images_seen is not None:
        asked = {"images_seen": cfg.images_seen}
        cfg.steps = max(1, math.ceil(cfg.images_seen / cost.images_per_step))
    elif cfg.flops is not None:
        if cost.flops_per_step <= 0:
            raise UserError("train.flops: no FLOPs were counted in a training step of this method; give "
                            "train.steps or train.images_seen instead")
        asked = {"flops": cfg.flops}
        cfg.steps = max(1, math.ceil(cfg.flops / cost.flops_per_step))
    else:
        return None
    cfg.images_seen = cfg.flops = None
    return {**asked, "steps": cfg.steps, **cost.as_dict()}


def trackers(cfg: TrainCfg) -> list[str]:
    """The Accelerate trackers `train.log_with` asks for; a missing package is a UserError (before any write)."""
    names = {"none": [], "all": ["tensorboard", "wandb"]}.get(cfg.log_with, [cfg.log_with])
    for name in names:
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise UserError(f"train.log_with={cfg.log_with} needs the {TRACKER_PACKAGES[name]} package; "
                            f"`pip install {TRACKER_PACKAGES[name]}` or set train.log_with=none")
    return names


def make_accelerator(cfg: TrainCfg, run_dir: Path, find_unused_parameters: bool = False) -> Accelerator:
    """`find_unused_parameters` for DDP when part of the model gets no gradient (e.g. an unmatched level)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    # cpu=True on CPU-only machines: it is what makes accelerate honour torchrun/MULTI_CPU (gloo) there
    return Accelerator(mixed_precision=cfg.mixed_precision, log_with=trackers(cfg) or None,
                       project_dir=str(run_dir), cpu=not torch.cuda.is_available(), kwargs_handlers=handlers,
                       dynamo_backend="inductor" if cfg.compile else None)


def tracker_config(recipe_dict: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """The resolved recipe as flat `section.key` scalars: what TensorBoard's hparams and W&B's config take."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in recipe_dict.items():
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


def log_image(accelerator: Accelerator, name: str, image, step: int) -> None:
    """A PIL image (a sample grid) to every tracker that takes images."""
    array = np.asarray(image.convert("RGB"))[None]  # [1, H, W, 3] uint8
    for tracker in accelerator.trackers:
        kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
        if hasattr(tracker, "log_images"):
            tracker.log_images({name: array}, step=step, **kwargs)


def _progress(console: Console, disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=disable, transient=False,
    )


def run_loop(accelerator: Accelerator, task: Task, cfg: TrainCfg, seed: int, run_dir: Path,
             start_step: int = 0, description: str = "training", console: Console | None = None,
             hooks: list[Callable[[int], None]] = ()) -> LoopResult:
    """Train `task` from `start_step` to `cfg.steps`, checkpointing and logging on the way.

    `hooks` run after each step (after the task's own `after_step`) with the step
    index: a method's run-level work (StyleGAN2's periodic sample grids, `Method.hooks`). Trackers must have
    been started (`accelerator.init_trackers`); the caller ends with
    `accelerator.end_training()` (it tears down the process group).
    """
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if accelerator.is_main_process and start_step == 0 and metrics_path.exists():
        metrics_path.unlink()
    _truncate_metrics(metrics_path, start_step, accelerator.is_main_process)
    phases = task.phases()
    kill_after = os.environ.get(STOP_AFTER_ENV)
    t0 = time.perf_counter()
    # a resumed run's earlier steps, so its median step and training time are the whole run's, not the last
    # session's (metrics.jsonl holds every step up to the checkpoint; the main process writes it)
    history: list[dict] = read_metrics(run_dir) if start_step and accelerator.is_main_process else []
    window: list[tuple[float, float]] = []
    with _progress(console, disable=not accelerator.is_main_process) as bar:
        bar_task = bar.add_task(description, total=cfg.steps, completed=start_step, status="")
        for step in range(start_step, cfg.steps):
            seed_step(seed, step, accelerator.process_index)
            t_step, cpu_step = time.perf_counter(), time.process_time()
            logs = _train_step(accelerator, phases, step, cfg)
            task.after_step(step)
            for hook in hooks:
                hook(step)
            logs = {k: float(v) for k, v in logs.items()}
            dt, cpu = time.perf_counter() - t_step, time.process_time() - cpu_step
            headline = logs.get("loss", next(iter(logs.values()), math.nan))
            window = (window + [(headline, dt)])[-20:]
            img_s = task.images_per_step * accelerator.num_processes / max(1e-9, sum(d for _, d in window) / len(window))
            record = {"step": step + 1, **logs, "img_per_s": img_s, "seconds": dt, "cpu_seconds": cpu}
            history.append(record)
            if accelerator.is_main_process:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                accelerator.log({**logs, "img_per_s": img_s}, step=step + 1)
            mean_loss = sum(l for l, _ in window) / len(window)
            bar.update(bar_task, advance=1, status=f"loss {mean_loss:.4g}  {img_s:.0f} img/s")
            if not console.is_terminal and accelerator.is_main_process and (step + 1) % cfg.log_every == 0:
                shown = "  ".join(f"{k} {v:.4g}" for k, v in list(logs.items())[:6])
                console.print(f"{description} step {step + 1}/{cfg.steps}  {shown}  {img_s:.0f} img/s",
                              highlight=False, soft_wrap=True)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_checkpoint(accelerator, run_dir, step + 1, cfg.keep_checkpoints, task.state_objects())
                if kill_after and int(kill_after) == step + 1:
                    os.kill(os.getpid(), signal.SIGKILL)
    return LoopResult(cfg.steps - start_step, time.perf_counter() - t0, history)


def _train_step(accelerator: Accelerator, phases: list[Phase], step: int, cfg: TrainCfg) -> dict[str, torch.Tensor]:
    logs: dict[str, torch.Tensor] = {}
    for phase in phases:
        if step % phase.every:
            continue
        phase.optimizer.zero_grad(set_to_none=True)
        for micro in range(phase.grad_accum):
            with accelerator.autocast():
                out = phase.loss(step, micro)
            accelerator.backward(out["loss"] / phase.grad_accum)
        if phase.sync_grads and accelerator.num_processes > 1:
            _all_reduce_gradients(accelerator, phase.parameters)
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(phase.parameters, cfg.max_grad_norm)
        lr = phase.optimizer.param_groups[0]["lr"]  # the rate this step used
        phase.optimizer.step()
        if phase.scheduler is not None:
            phase.scheduler.step()
        prefix = "" if len(phases) == 1 else f"{phase.name}/"
        logs.update({f"{prefix}{k}": v.detach() for k, v in out.items()})
        logs[f"{prefix}lr"] = torch.tensor(lr)
    return logs


def _all_reduce_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> None:
    """Average gradients over processes, for modules used outside a DDP wrapper."""
    for p in params:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))


def _truncate_metrics(path: Path, start_step: int, is_main: bool) -> None:
    """On resume, drop metric lines past the checkpoint (they will be recomputed)."""
    if not is_main or start_step == 0 or not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
    atomic.write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
