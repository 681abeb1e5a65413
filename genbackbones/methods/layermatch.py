"""LayerMatch (paper 000 §3.1): a backbone learns to predict a frozen generator's activations.

The generator draws an image I and keeps its activations phi_1..phi_n (a trace).
The backbone sees I and, through one small head per matched activation, predicts
phi_hat_1..phi_hat_n. The loss is

    L = L_match + rec_weight * L_rec
    L_match = mean_i ||phi_i - phi_hat_i||^2
    L_rec   = ||G(resume from phi_hat_m) - I||^2,   m drawn at random each step,

where the reconstruction substitutes phi_hat_m for phi_m and re-runs the rest of
the generator with the same styles and noise; gradients flow through the frozen
generator into phi_hat_m. Heads and losses only: the loop lives in training.py.

Targets can be standardised per channel with running statistics (generator
activations differ in scale by orders of magnitude between layers); the head then
predicts standardised values and is un-standardised before substitution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import InputNormalizer, feature_shapes
from ..errors import UserError
from ..generators.base import FrozenGenerator


@dataclass(frozen=True)
class TapMatch:
    """One generator activation and the backbone level that predicts it."""

    tap: str
    channels: int
    resolution: int
    level: int  # index into the backbone's feature list
    level_channels: int
    level_size: int


def choose_taps(generator: FrozenGenerator, backbone: nn.Module, resolution: int,
                taps: list[str] | str = "auto", min_reduction: int = 4) -> list[TapMatch]:
    """Match generator taps to backbone feature levels by spatial resolution.

    'auto' takes every block output (`synthesis.b{R}.x`) whose resolution lies
    within the sizes of the backbone levels of stride >= `min_reduction` (the
    stride-2 stem is too shallow to predict anything interesting). Each tap is
    predicted from the level whose size is nearest on a log scale (ties: larger).
    """
    specs = generator.tap_specs()
    reductions = backbone.feature_info.reduction()
    levels = [(i, c, s) for i, ((c, s), r) in enumerate(zip(feature_shapes(backbone, resolution), reductions))
              if r >= min_reduction] or [(i, c, s) for i, (c, s) in enumerate(feature_shapes(backbone, resolution))]
    if taps == "auto":
        lo, hi = min(s for _, _, s in levels), max(s for _, _, s in levels)
        names = [n for n, sp in specs.items() if sp.kind == "block" and lo <= sp.resolution <= hi]
        if not names:
            raise UserError(
                f"no generator block has a resolution between the backbone's feature sizes {lo}..{hi} px "
                f"(generator {resolution} px); list layermatch.taps explicitly or use a backbone with other strides"
            )
    else:
        unknown = [n for n in taps if n not in specs]
        if unknown:
            raise UserError(f"unknown generator taps {unknown}; `genbackbones generator info` lists them")
        names = list(taps)
    matches = []
    for name in names:
        sp = specs[name]
        level, ch, size = min(levels, key=lambda l: (abs(math.log2(l[2] / sp.resolution)), -l[2]))
        matches.append(TapMatch(name, sp.channels, sp.resolution, level, ch, size))
    return matches


def _make_head(kind: str, in_ch: int, out_ch: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Conv2d(in_ch, out_ch, 1)
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, out_ch, 1))
    raise UserError(f"layermatch.head must be 'linear' or 'conv', got {kind!r}")


class RunningStandardizer(nn.Module):
    """Per-channel running mean/std of one target activation (EMA, saved with the model)."""

    def __init__(self, channels: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        if self.count == 0:
            self.mean.copy_(mean)
            self.var.copy_(var)
        else:
            self.mean.lerp_(mean, 1 - self.momentum)
            self.var.lerp_(var, 1 - self.momentum)
        self.count += 1

    def scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.reshape(1, -1, 1, 1), (self.var + 1e-5).sqrt().reshape(1, -1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.scale()
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.scale()
        return x * std + mean


def _key(tap: str) -> str:
    return tap.replace(".", "__")


class LayerMatchModel(nn.Module):
    """Backbone + one head per matched tap (+ target standardisers). Only this is trained."""

    def __init__(self, backbone: nn.Module, matches: list[TapMatch], mean_std: tuple, head: str = "conv",
                 head_hidden: int = 128, standardize: bool = True, momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.normalize_input = InputNormalizer(*mean_std)
        self.matches = matches
        self.heads = nn.ModuleDict({_key(m.tap): _make_head(head, m.level_channels, m.channels, head_hidden)
                                    for m in matches})
        self.standardize = standardize
        self.standardizers = nn.ModuleDict({_key(m.tap): RunningStandardizer(m.channels, momentum)
                                            for m in matches}) if standardize else None

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted activations (in standardised units when standardising), one per tap."""
        feats = self.backbone(self.normalize_input(img))
        out = {}
        for m in self.matches:
            f = feats[m.level]
            if f.shape[-1] != m.resolution:
                f = F.interpolate(f, size=(m.resolution, m.resolution), mode="bilinear", align_corners=False)
            out[m.tap] = self.heads[_key(m.tap)](f)
        return out

    def to_activation(self, tap: str, pred: torch.Tensor) -> torch.Tensor:
        """A prediction in the generator's own units (what gets substituted)."""
        return self.standardizers[_key(tap)].denormalize(pred) if self.standardize else pred

    def to_target(self, tap: str, act: torch.Tensor) -> torch.Tensor:
        return self.standardizers[_key(tap)].normalize(act) if self.standardize else act

    def update_statistics(self, taps: dict[str, torch.Tensor]) -> None:
        if self.standardize:
            for m in self.matches:
                self.standardizers[_key(m.tap)].update(taps[m.tap])


@dataclass
class LayerMatchLosses:
    total: torch.Tensor
    match: torch.Tensor
    rec: torch.Tensor
    per_tap: dict[str, torch.Tensor]
    rec_tap: str


def layermatch_loss(model: LayerMatchModel, generator: FrozenGenerator, z: torch.Tensor, c: torch.Tensor | None,
                    rec_tap_index: int, rec_weight: float = 1.0, truncation_psi: float = 1.0,
                    noise_mode: str = "random", update_statistics: bool = True) -> LayerMatchLosses:
    """One LayerMatch loss evaluation for latents z (the generator pass is not differentiated)."""
    with torch.no_grad():
        trace = generator.trace(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode)
    core = getattr(model, "module", model)  # unwrap DDP
    if update_statistics and core.training:
        core.update_statistics(trace.taps)
    preds = model(trace.img)
    per_tap = {m.tap: F.mse_loss(preds[m.tap].float(), core.to_target(m.tap, trace.taps[m.tap]))
               for m in core.matches}
    match = torch.stack(list(per_tap.values())).mean()
    rec_tap = core.matches[rec_tap_index].tap
    rec = torch.zeros((), device=z.device)
    if rec_weight > 0:
        substitute = core.to_activation(rec_tap, preds[rec_tap].float())
        rec = F.mse_loss(generator.resume(trace, rec_tap, substitute), trace.img)
    return LayerMatchLosses(match + rec_weight * rec, match, rec, per_tap, rec_tap)
