"""The StyleGAN2 trainer on tiny runs: kill-and-resume is bit-identical, the generator it writes loads back and
is its EMA network, image folders of any mode train, x-flips are deterministic, and bad settings are one line."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from genbackbones.generators.open import open_generator
from genbackbones.engine.checkpoints import latest_checkpoint
from genbackbones.engine.loop import STOP_AFTER_ENV, read_metrics

from .test_pretrain import run_cli

TINY = textwrap.dedent("""
    name: tiny-gan
    method: stylegan2
    seed: 3
    data: {source: faces, count: 64}
    gan: {preset: tiny32, r1_every: 2, mirror: true, sample_every: 3}
    train: {steps: 6, batch_size: 4, lr: 2.0e-3, betas: [0.0, 0.99], schedule: constant, checkpoint_every: 2,
            keep_checkpoints: 2, log_every: 1}
""")


def _train(tmp_path, name: str, *extra: str, env: dict | None = None):
    return run_cli("train-generator", str(tmp_path / "tiny.yaml"), "-o", str(tmp_path / name), *extra,
                   cwd=tmp_path, env=env)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan")
    (tmp / "tiny.yaml").write_text(TINY)
    proc = _train(tmp, "straight")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def test_kill_and_resume_is_bit_identical(straight):
    tmp = straight
    killed = _train(tmp, "killed", env={STOP_AFTER_ENV: "4"})
    assert killed.returncode == -9, "the run was meant to die by SIGKILL right after checkpoint 4"
    assert latest_checkpoint(tmp / "killed").name == "step-0000004"
    resumed = run_cli("train-generator", "--resume", str(tmp / "killed"), cwd=tmp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 4" in resumed.stderr
    for net in ("G", "D", "G_ema"):
        a = safetensors.torch.load_file(latest_checkpoint(tmp / "straight") / f"{net}.safetensors")
        b = safetensors.torch.load_file(latest_checkpoint(tmp / "killed") / f"{net}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{net}.{k} differs after kill+resume"
    keys = ("G/loss", "D/loss")
    history = lambda run: [[h.get(k) for k in keys] for h in read_metrics(tmp / run)]  # noqa: E731
    assert history("straight") == history("killed") and len(history("straight")) == 6


def test_the_generator_it_writes_is_the_ema_network(straight):
    run = straight / "straight"
    loaded = open_generator(str(run / "generator"))
    ema = safetensors.torch.load_file(latest_checkpoint(run) / "G_ema.safetensors")
    state = loaded.G.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ema.items())
    z = torch.randn(2, loaded.G.z_dim, generator=torch.Generator().manual_seed(0))
    img = loaded.G(z, noise_mode="const")
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()
    assert (run / "samples" / "step-0000003.png").is_file() and (run / "samples.png").is_file()
    # G_ema is a moving average of G, so after 6 steps it lags behind G
    g = safetensors.torch.load_file(latest_checkpoint(run) / "G.safetensors")
    assert any(not torch.equal(g[k], ema[k]) for k in g if k in ema and g[k].is_floating_point())


def test_mirror_flips_about_half_of_each_batch_deterministically():
    from types import SimpleNamespace

    from genbackbones.data.images import TensorImages
    from genbackbones.methods.stylegan2 import StyleGAN2Task

    images = torch.arange(8 * 3 * 4 * 4, dtype=torch.uint8).reshape(8, 3, 4, 4)
    task = StyleGAN2Task.__new__(StyleGAN2Task)
    task.data, task.batch, task.seed, task.device = TensorImages(images, [str(i) for i in range(8)]), 8, 0, "cpu"
    task.accelerator = SimpleNamespace(process_index=0, num_processes=1)
    task.cfg = SimpleNamespace(mirror=False)
    plain = task._reals(5)
    task.cfg.mirror = True
    flipped, again = task._reals(5), task._reals(5)
    assert torch.equal(flipped, again)
    same = [torch.equal(flipped[i], plain[i]) for i in range(8)]
    mirrored = [torch.equal(flipped[i], plain[i].flip(-1)) for i in range(8)]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 8


def test_trains_on_an_image_folder_of_any_mode(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, mode in enumerate(["RGB", "RGBA", "L", "RGB"] * 2):
        array = rng.integers(0, 255, (40, 50, {"RGB": 3, "RGBA": 4, "L": 1}[mode]), dtype=np.uint8)
        Image.fromarray(array.squeeze(-1) if mode == "L" else array, mode).save(folder / f"{i}.png")
    (tmp_path / "tiny.yaml").write_text(TINY.replace("source: faces, count: 64", f"source: {folder}")
                                        .replace("steps: 6", "steps: 2"))
    proc = _train(tmp_path, "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 images from" in proc.stderr
    assert (tmp_path / "run" / "generator" / "generator.safetensors").is_file()


@pytest.mark.parametrize("change, message", [
    (("batch_size: 4", "batch_size: 6"), "must be a multiple of gan.mbstd_group"),
    (("count: 64}", "count: 64, resolution: 64}"), "differs from the generator's 32"),
    (("preset: tiny32", "preset: huge"), "huge"),
])
def test_bad_settings_are_one_line_errors(tmp_path, change, message):
    (tmp_path / "tiny.yaml").write_text(TINY.replace(*change))
    proc = _train(tmp_path, "run")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()
