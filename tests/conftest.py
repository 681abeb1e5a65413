"""Shared test helpers: where `../shared` lives, and skipping cleanly without it."""

from __future__ import annotations

import json
import os
from pathlib import Path

# before torch loads: OpenMP threads that spin while a busy machine deschedules their peers slowed the
# quickstart test 30-fold (0.8 img/s instead of 26) when another job shared the 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GENBACKBONES_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "stylegan2"
FIXTURE_VARIANTS = sorted(p.name for p in FIXTURES.glob("*") if (p / "expected.safetensors").exists()) if FIXTURES.exists() else []

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread (on a loaded 2-core machine two are many times slower); restored after.

    Opt in per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tolerance(ref: torch.Tensor) -> float:
    """The fixtures' documented tolerance: 1e-5 * max(1, max|ref|)."""
    return 1e-5 * max(1.0, ref.abs().max().item())


def assert_close_to_reference(name: str, got: torch.Tensor, ref: torch.Tensor) -> None:
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = (got.detach().float() - ref).abs().max().item()
    assert err <= tolerance(ref), f"{name}: max|diff| {err:.3e} > tolerance {tolerance(ref):.3e}"


@pytest.fixture(scope="session")
def fixture_dir():
    def get(variant: str) -> Path:
        path = FIXTURES / variant
        if not (path / "expected.safetensors").exists():
            pytest.skip(f"NVIDIA reference fixtures not found at {path} (they live in ../shared beside the repo)")
        return path

    return get


def load_fixture(path: Path) -> dict:
    from safetensors.torch import load_file

    return {
        "kwargs": json.loads((path / "init_kwargs.json").read_text()),
        "G_ema": load_file(path / "G_ema.safetensors"),
        "G": load_file(path / "G.safetensors"),
        "D": load_file(path / "D.safetensors"),
        "expected": load_file(path / "expected.safetensors"),
    }


def _whole_file_slow(item: pytest.Item) -> bool:
    marks = getattr(item.module, "pytestmark", []) if item.module is not None else []
    return any(m.name == "slow" for m in (marks if isinstance(marks, list) else [marks]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files marked slow as a whole (test_real_scale.py: minutes of 256 px bf16 steps) run first. With
    `--dist loadfile --no-loadscope-reorder` (pyproject.toml) pytest-xdist hands files to the workers in
    collection order; by default it reorders them by their number of tests, and test_real_scale.py's two
    tests ran last, one worker alone with them for minutes after the other had finished. The sort is stable:
    the order inside a file (the docs blocks') and of the other files is kept."""
    items.sort(key=lambda item: not _whole_file_slow(item))
