"""Checkpoints of a run: every stateful object of a task, atomically, in formats that load without pickle.

A checkpoint is a folder `checkpoints/step-NNNNNNN/`: modules as `<name>.safetensors`,
optimisers, schedulers and other state dicts as `<name>.pt` (read back with
`torch.load(weights_only=True)`, which runs no code), and `trainer_state.json`
written last, so a folder without it is incomplete and ignored. RNG state is not
saved: the loop re-seeds from the step, which is what makes resume bit-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel

from .. import atomic
from ..errors import UserError, first_line

CHECKPOINTS = "checkpoints"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").exists()] if root.exists() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_step(checkpoint: Path) -> int:
    """The step a complete checkpoint folder was saved at."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())["step"]


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def _unwrap(obj):
    """A module as it was built (DDP / compiled wrappers removed); other objects unchanged."""
    return extract_model_from_parallel(obj, keep_torch_compile=False) if isinstance(obj, torch.nn.Module) else obj


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
            raise UserError(f"checkpoint {checkpoint} cannot be restored ({name}: {first_line(err, 150)}); "
                            "delete that step folder to fall back to the previous one") from None
    return checkpoint_step(checkpoint)


