"""The one Accelerate training loop: steps, phases, checkpoints, resume, logging, progress.

Every method (LayerMatch, GH-Feat, the StyleGAN2 trainer) is a `Task` made of
`Phase`s, each an optimiser and a loss: LayerMatch has one phase, a GAN has
generator, discriminator and regularisation phases at their own intervals. The
loop owns everything else, identically for all of them:

* determinism: the RNGs are re-seeded from (seed, step, process) at every step and
  data positions are a function of the step, so a run killed and resumed from a
  checkpoint ends bit-identical (on CPU) to one that never stopped;
* checkpoints every N steps (safetensors + weights-only state dicts, no pickle),
  written to a temporary folder and renamed (a kill mid-save never leaves a
  broken checkpoint);
* TensorBoard logs, a `metrics.jsonl` with every step's losses, a rich progress
  bar with loss and img/s;
* one code path for one CPU, `accelerate launch`/`torchrun` multi-process, GPUs
  and mixed precision.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import safetensors.torch
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import atomic
from .errors import UserError
from .recipes import TrainCfg

CHECKPOINTS = "checkpoints"
STOP_AFTER_ENV = "GENBACKBONES_KILL_AFTER_CHECKPOINT"  # tests: SIGKILL self right after saving this step


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

    def after_step(self, step: int) -> None: ...

    def finish(self, run_dir: Path) -> None:
        """Work at the end of training (sample grids, ...); runs on the main process."""
        ...


@dataclass
class LoopResult:
    steps_done: int
    seconds: float
    history: list[dict] = field(default_factory=list)


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


def seed_step(seed: int, step: int, process_index: int) -> None:
    """Re-seed every RNG from (seed, step, process): resume needs no RNG state."""
    torch.manual_seed((seed * 1_000_003 + step * 7919 + process_index * 104_729) % (2**63 - 1))


def make_accelerator(cfg: TrainCfg, run_dir: Path, find_unused_parameters: bool = False) -> Accelerator:
    """`find_unused_parameters` for DDP when part of the model gets no gradient (e.g. an unmatched level)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    # cpu=True on CPU-only machines: it is what makes accelerate honour torchrun/MULTI_CPU (gloo) there
    return Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(run_dir),
                       cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").exists()] if root.exists() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def _unwrap(obj):
    return getattr(obj, "module", obj)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int,
                    objects: dict[str, object]) -> Path:
    """Every stateful object of the task, atomically, in formats that load without pickle.

    Modules go to `<name>.safetensors`; optimisers, schedulers and other state dicts
    to `<name>.pt` (read back with `torch.load(weights_only=True)`, which runs no
    code). RNG state is not saved: the loop re-seeds from the step.
    """
    final = Path(run_dir) / CHECKPOINTS / f"step-{step:07d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic.directory(final, overwrite=True) as tmp:
            for name, obj in objects.items():
                obj = _unwrap(obj)
                if isinstance(obj, torch.nn.Module):
                    state = {k: v.detach().cpu().contiguous().clone() for k, v in obj.state_dict().items()}
                    safetensors.torch.save_file(state, str(tmp / f"{name}.safetensors"))
                else:
                    torch.save(obj.state_dict(), tmp / f"{name}.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "objects": list(objects)}))
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(checkpoint: Path, objects: dict[str, object], device: torch.device | str = "cpu") -> int:
    """Restore `objects` from a checkpoint folder; returns the step it was saved at."""
    checkpoint = Path(checkpoint)
    for name, obj in objects.items():
        obj = _unwrap(obj)
        try:
            if isinstance(obj, torch.nn.Module):
                obj.load_state_dict(safetensors.torch.load_file(str(checkpoint / f"{name}.safetensors"),
                                                                device=str(device)))
            else:
                obj.load_state_dict(torch.load(checkpoint / f"{name}.pt", map_location=device, weights_only=True))
        except FileNotFoundError:
            raise UserError(f"checkpoint {checkpoint} has no state for {name!r}; it was written by another "
                            "method or version — start a new run") from None
        except (RuntimeError, OSError, ValueError) as err:
            raise UserError(f"checkpoint {checkpoint} cannot be restored ({name}: {str(err).splitlines()[0][:150]}); "
                            "delete that step folder to fall back to the previous one") from None
    return json.loads((checkpoint / "trainer_state.json").read_text())["step"]


def _progress(console: Console, disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=disable, transient=False,
    )


def run_loop(accelerator: Accelerator, task: Task, cfg: TrainCfg, seed: int, run_dir: Path,
             start_step: int = 0, description: str = "training", console: Console | None = None) -> LoopResult:
    """Train `task` from `start_step` to `cfg.steps`, checkpointing and logging on the way.

    The caller ends with `accelerator.end_training()` (it tears down the process group).
    """
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if accelerator.is_main_process and start_step == 0 and metrics_path.exists():
        metrics_path.unlink()
    _truncate_metrics(metrics_path, start_step, accelerator.is_main_process)
    accelerator.init_trackers("logs")
    phases = task.phases()
    kill_after = os.environ.get(STOP_AFTER_ENV)
    t0 = time.perf_counter()
    history: list[dict] = []
    window: list[tuple[float, float]] = []
    with _progress(console, disable=not accelerator.is_main_process) as bar:
        bar_task = bar.add_task(description, total=cfg.steps, completed=start_step, status="")
        for step in range(start_step, cfg.steps):
            seed_step(seed, step, accelerator.process_index)
            t_step = time.perf_counter()
            logs = _train_step(accelerator, phases, step, cfg)
            task.after_step(step)
            logs = {k: float(v) for k, v in logs.items()}
            dt = time.perf_counter() - t_step
            headline = logs.get("loss", next(iter(logs.values()), math.nan))
            window = (window + [(headline, dt)])[-20:]
            img_s = task.images_per_step * accelerator.num_processes / max(1e-9, sum(d for _, d in window) / len(window))
            record = {"step": step + 1, **logs, "img_per_s": img_s}
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
                              highlight=False)
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
        phase.optimizer.step()
        if phase.scheduler is not None:
            phase.scheduler.step()
        prefix = "" if len(phases) == 1 else f"{phase.name}/"
        logs.update({f"{prefix}{k}": v.detach() for k, v in out.items()})
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
