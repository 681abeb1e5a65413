"""Checkpoints of a run: every stateful object of a task, atomically, in formats that load without pickle.

A checkpoint is a folder `checkpoints/step-NNNNNNN/`: modules as `<name>.safetensors`,
optimisers, schedulers and other state dicts as `<name>.pt` (read back with
`torch.load(weights_only=True)`, which runs no code), and `trainer_state.json`
written last, so a folder without it is incomplete and ignored. RNG state is not
saved: the loop re-seeds from the step, which is what makes resume bit-identical.

Why every checkpoint is verified before it is used: the folder is renamed into place
whole, yet a disk that fills, a copy cut short or a bit of rot can still damage a
file later, and resuming from it used to end in a safetensors traceback. `verify_checkpoint`
checks what can be checked without loading the model (the step `trainer_state.json`
records against the folder's name, each object's file present at the size recorded at
save time, safetensors headers that cover the whole file, `.pt` files that load), and
`latest_intact_checkpoint` walks back from the newest to the first intact one, saying
which it skipped and why, so `--resume` and `export` continue from the previous
checkpoint instead of failing on the newest.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import NamedTuple

import safetensors
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel

from .. import atomic
from ..errors import UserError, first_line

CHECKPOINTS = "checkpoints"


STATE_FILE = "trainer_state.json"


class Skipped(NamedTuple):
    """A damaged checkpoint that was passed over, and why (one phrase, for a `note:` line)."""

    checkpoint: Path
    reason: str


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The complete checkpoint folders (those with trainer_state.json), oldest first; not yet verified."""
    root = Path(run_dir) / CHECKPOINTS
    done = [p for p in root.glob("step-*") if _folder_step(p) is not None and (p / STATE_FILE).exists()] \
        if root.exists() else []
    return sorted(done, key=_folder_step)


def _folder_step(checkpoint: Path) -> int | None:
    number = checkpoint.name.split("-", 1)[1] if "-" in checkpoint.name else ""
    return int(number) if number.isdigit() else None


def checkpoint_step(checkpoint: Path) -> int:
    """The step a complete checkpoint folder was saved at."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())["step"]


def verify_checkpoint(checkpoint: Path) -> str | None:
    """Why this checkpoint cannot be restored (one phrase), or None when it is intact.

    Cheap for the model: safetensors files are checked through their header (`safe_open`
    maps the file and refuses one whose header does not cover it exactly, which is
    what a truncated file looks like), not loaded. `.pt` files (optimiser and scheduler
    state, small next to the model) are loaded with weights_only=True, which runs no code.
    """
    checkpoint = Path(checkpoint)
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        step, objects = state["step"], state["objects"]
        sizes = state.get("files", {})  # recorded since checkpoints were verified; older ones lack it
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{STATE_FILE} unreadable ({first_line(err, 80)})"
    if step != _folder_step(checkpoint):
        return f"{STATE_FILE} records step {step}, not the folder's {_folder_step(checkpoint)}"
    for name in objects:
        found = [checkpoint / f"{name}{suffix}" for suffix in (".safetensors", ".pt")
                 if (checkpoint / f"{name}{suffix}").is_file()]
        if not found:
            return f"{name}.safetensors / {name}.pt missing"
        path = found[0]
        size, expected = path.stat().st_size, sizes.get(path.name)
        if expected is not None and size != expected:
            return f"{path.name} {'truncated' if size < expected else 'damaged'} ({size:,} of {expected:,} bytes)"
        try:
            if path.suffix == ".safetensors":
                with safetensors.safe_open(str(path), framework="pt"):
                    pass
            else:
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # safetensors, zip and unpickling errors have no common base
            return f"{path.name} damaged ({first_line(err, 100)})"
    return None


def latest_intact_checkpoint(run_dir: Path) -> tuple[Path | None, list[Skipped]]:
    """The newest checkpoint that verifies, and the newer ones skipped because they did not (newest first)."""
    skipped = []
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        reason = verify_checkpoint(checkpoint)
        if reason is None:
            return checkpoint, skipped
        skipped.append(Skipped(checkpoint, reason))
    return None, skipped


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint (`latest_intact_checkpoint` without the list of skipped ones)."""
    return latest_intact_checkpoint(run_dir)[0]


def skipped_notes(run_dir: Path, skipped: list[Skipped]) -> list[str]:
    """One line per skipped checkpoint, its folder relative to the run: `skipped checkpoints/step-0000008: ...`."""
    run_dir = Path(run_dir)
    return [f"skipped {_shown(s.checkpoint, run_dir)}: {s.reason}" for s in skipped]


def _shown(checkpoint: Path, run_dir: Path) -> str:
    return checkpoint.relative_to(run_dir).as_posix() if checkpoint.is_relative_to(run_dir) else str(checkpoint)


def no_intact_checkpoint(run_dir: Path, skipped: list[Skipped], command: str) -> UserError:
    """The one-line error for a run whose every checkpoint is damaged: what was found, and how to start again."""
    newest = skipped[0]
    return UserError(f"{run_dir} has no intact checkpoint ({len(skipped)} damaged; the newest, "
                     f"{newest.checkpoint.name}: {newest.reason}); train it again from its saved recipe: "
                     f"`genbackbones {command} {shlex.quote(str(Path(run_dir) / 'recipe.yaml'))} -o NEW_FOLDER`")


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
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}  # verify_checkpoint checks them
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "objects": list(objects), "files": files}))
        # the last `keep` up to this step: a newer folder can only be a damaged one that the resume skipped
        # (it is replaced when training reaches its step), and must not push an intact one out
        upto = [d for d in checkpoint_dirs(run_dir) if _folder_step(d) <= step]
        for old in upto[:-keep] if keep > 0 else []:
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
        except (RuntimeError, OSError, ValueError) as err:  # intact files (verified) that do not fit the task
            raise UserError(f"checkpoint {checkpoint} does not fit this run ({name}: {first_line(err, 150)}); it "
                            "was written by another recipe or version — start a new run") from None
    return checkpoint_step(checkpoint)


