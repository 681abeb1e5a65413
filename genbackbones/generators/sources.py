"""Where a recipe's generator comes from: `bundled`, `random:<preset>`, or a checkpoint.

`random:<preset>` builds a seeded, randomly initialised StyleGAN2. It is a real
generator function (structured, multi-scale activations), but not a trained one:
useful for smoke tests and for measuring speed, not for a backbone worth using.
`bundled` is the small generator trained on the procedural domain and shipped in
`genbackbones/assets/` (see README). Everything else (folder in our format,
NVIDIA `.pkl`, rosinality `.pt`, `hf-hub:org/name`) goes to `checkpoints.load_generator`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .base import freeze
from .stylegan2 import Discriminator, Generator

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_DIR = ASSETS / "faces64"

RANDOM_PRESETS: dict[str, dict] = {
    # 64 px, 1.1 M parameters (32 channels at 64 px, 128 at <= 16 px): the bundled generator
    "small64": dict(z_dim=128, c_dim=0, w_dim=128, img_resolution=64, img_channels=3,
                    mapping_kwargs={"num_layers": 4},
                    synthesis_kwargs={"channel_base": 2048, "channel_max": 128}),
    # 32 px, tiny: for tests
    "tiny32": dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                   mapping_kwargs={"num_layers": 2},
                   synthesis_kwargs={"channel_base": 1024, "channel_max": 64}),
}


@dataclass
class GeneratorHandle:
    """A loaded frozen generator with its discriminator (if any) and provenance."""

    G: Generator
    D: Discriminator | None = None
    meta: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        return self.meta.get("source_sha256") or self.meta.get("sha256")

    @property
    def license(self) -> str | None:
        return self.meta.get("license")


def random_generator(preset: str, seed: int) -> GeneratorHandle:
    if preset not in RANDOM_PRESETS:
        raise UserError(f"unknown random generator preset {preset!r}; choose from {', '.join(RANDOM_PRESETS)}")
    kwargs = RANDOM_PRESETS[preset]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = Generator(**kwargs)
        with torch.no_grad():  # untrained noise strengths are 0; give the noise inputs a role
            for name, p in G.named_parameters():
                if name.endswith("noise_strength"):
                    p.fill_(0.1)
    digest = hashlib.sha256(json.dumps({"preset": preset, "seed": seed}).encode()).hexdigest()
    meta = {"source": f"random:{preset}", "seed": seed, "trained": False, "sha256": digest,
            "license": "Apache-2.0", "init_kwargs": kwargs}
    return GeneratorHandle(freeze(G), None, meta)


def open_generator(source: str, network: str | None = "G_ema", seed: int = 0) -> GeneratorHandle:
    """Resolve a recipe's `generator.source` to a frozen generator."""
    if source.startswith("random:"):
        return random_generator(source.split(":", 1)[1], seed)
    if source == "bundled":
        if not (BUNDLED_DIR / "generator.json").exists():
            raise UserError(f"the bundled generator is missing from {BUNDLED_DIR}; reinstall genbackbones or set "
                            "generator.source to a checkpoint (or random:small64 for a smoke test)")
        source = str(BUNDLED_DIR)
    from .checkpoints import load_generator  # the import formats live there

    loaded = load_generator(source, network=network)
    return GeneratorHandle(freeze(loaded.G), loaded.D, dict(loaded.meta))
