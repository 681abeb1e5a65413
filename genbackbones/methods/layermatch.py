"""LayerMatch (paper 000 §3.1): a backbone learns to predict a frozen generator's activations.

The generator draws an image I and keeps its activations phi_1..phi_n (a trace).
The backbone sees I and, through one small head per matched activation, predicts
phi_hat_1..phi_hat_n. The loss is

    L = L_match + rec_weight * L_rec
    L_match = mean_i ||phi_i - phi_hat_i||^2
    L_rec   = ||G(resume from phi_hat_m) - I||^2,   m drawn at random each step,

where the reconstruction substitutes phi_hat_m for phi_m and re-runs the rest of
the generator with the same styles and noise; gradients flow through the frozen
generator into phi_hat_m. The loop and the run folder are engine/'s: this module is the
model, the loss, the task the loop steps, and `METHOD` (how a `method: layermatch` recipe
is prepared and built).

Targets can be standardised per channel with running statistics (generator
activations differ in scale by orders of magnitude between layers); the head then
predicts standardised values and is un-standardised before substitution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..backbones import InputNormalizer, backbone_mean_std, check_resolution, create_backbone, feature_shapes
from ..engine.loop import Phase, adamw, cosine_schedule
from ..errors import UserError, require
from ..generators.base import FrozenGenerator, GeneratorHandle, crop_margin, paste_centre
from ..generators.open import open_generator
from . import Method


@dataclass(frozen=True)
class TapMatch:
    """One generator activation and the backbone level that predicts it."""

    tap: str
    channels: int
    resolution: int  # of the image-aligned region: what the head predicts (the whole activation for StyleGAN2)
    level: int  # index into the backbone's feature list
    level_channels: int
    level_size: int
    margin: int = 0  # the tap's pixels beyond that region each side (StyleGAN3), never predicted

    @property
    def key(self) -> str:
        """Unique name of this pairing (a tap may be predicted from two levels)."""
        return _tap_key(f"{self.tap}@{self.level}")


def choose_taps(generator: FrozenGenerator, backbone: nn.Module, resolution: int,
                taps: list[str] | str = "auto", min_reduction: int = 4) -> list[TapMatch]:
    """Match generator taps to backbone feature levels by spatial resolution.

    'auto' pairs every backbone level of stride >= `min_reduction` (the stride-2
    stem is too shallow to predict anything interesting) with the block output
    (`synthesis.b{R}.x`) nearest in resolution, and every block output within the
    levels' sizes with its nearest level; so each level is trained, the deepest
    included. A generator without block outputs (StyleGAN3: a chain of layers) offers
    instead, per resolution, its last layer at that resolution, the one that has
    refined it most. Explicit names are each predicted from their nearest level.
    Nearest is on a log scale; ties go to the larger size.

    A tap's resolution here is that of its image-aligned region (`TapSpec.aligned_resolution`):
    a StyleGAN3 layer of sampling rate 16 is 36 px with its margins, but it is the 16 px
    centre that sees what the backbone sees, so it is matched, predicted and substituted
    as a 16 px map (`TapMatch.margin` says what to crop).
    """
    specs = generator.tap_specs()
    reductions = backbone.feature_info.reduction()
    shapes = feature_shapes(backbone, resolution)
    levels = [(i, c, s) for i, ((c, s), r) in enumerate(zip(shapes, reductions)) if r >= min_reduction] \
        or [(i, c, s) for i, (c, s) in enumerate(shapes)]

    def nearest(options, size, key):
        return min(options, key=lambda o: (abs(math.log2(key(o) / size)), -key(o)))

    def res(name: str) -> int:
        return specs[name].aligned_resolution

    pairs: list[tuple[str, tuple[int, int, int]]] = []
    if taps == "auto":
        blocks = [n for n, sp in specs.items() if sp.kind == "block"]
        if not blocks:  # the last layer of each resolution (tap_specs lists them in execution order)
            blocks = list({res(n): n for n, sp in specs.items() if sp.kind == "layer"}.values())
        lo, hi = min(s for _, _, s in levels), max(s for _, _, s in levels)
        for name in blocks:
            if lo <= res(name) <= hi:
                pairs.append((name, nearest(levels, res(name), lambda l: l[2])))
        for level in levels:
            pairs.append((nearest(blocks, level[2], res), level))
    else:
        unknown = [n for n in taps if n not in specs]
        if unknown:
            raise UserError(f"unknown generator taps {unknown}; `genbackbones generator info` lists them")
        pairs = [(name, nearest(levels, res(name), lambda l: l[2])) for name in taps]
    seen, matches = set(), []
    for name, (level, ch, size) in sorted(pairs, key=lambda p: (res(p[0]), p[1][0])):
        if (name, level) not in seen:
            seen.add((name, level))
            sp = specs[name]
            matches.append(TapMatch(name, sp.channels, sp.aligned_resolution, level, ch, size, sp.margin))
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
        # two plain passes: torch.var_mean's one-pass (Welford) kernel took 4.0 ms a step on the quickstart's
        # three targets, this 0.5 ms (measured), and it is as exact (no E[x^2] - E[x]^2 cancellation);
        # in fp32 whatever the autocast dtype of the taps (bf16 under train.mixed_precision=bf16)
        x = x.float()
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square_().mean(dim=(0, 2, 3))
        mean = mean.flatten()
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


def _tap_key(tap: str) -> str:
    """A tap name as a ModuleDict key (no dots), as `TapMatch.key` makes them."""
    return tap.replace(".", "__")


class LayerMatchModel(nn.Module):
    """Backbone + one head per matched tap (+ target standardisers). Only this is trained."""

    def __init__(self, backbone: nn.Module, matches: list[TapMatch], mean_std: tuple, head: str = "conv",
                 head_hidden: int = 128, standardize: bool = True, momentum: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.normalize_input = InputNormalizer(*mean_std)
        self.matches = matches
        self.heads = nn.ModuleDict({m.key: _make_head(head, m.level_channels, m.channels, head_hidden)
                                    for m in matches})
        self.standardize = standardize
        taps = {m.tap: m.channels for m in matches}
        self.margins = {m.tap: m.margin for m in matches}
        self.standardizers = nn.ModuleDict({_tap_key(t): RunningStandardizer(ch, momentum)
                                            for t, ch in taps.items()}) if standardize else None

    @property
    def used_levels(self) -> set[int]:
        return {m.level for m in self.matches}

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted activations (in standardised units when standardising), keyed by `TapMatch.key`."""
        feats = self.backbone(self.normalize_input(img))
        out = {}
        for m in self.matches:
            f = feats[m.level]
            if f.shape[-1] != m.resolution:
                f = F.interpolate(f, size=(m.resolution, m.resolution), mode="bilinear", align_corners=False)
            out[m.key] = self.heads[m.key](f)
        return out

    def to_activation(self, tap: str, pred: torch.Tensor, traced: torch.Tensor | None = None) -> torch.Tensor:
        """A prediction in the generator's own units: what gets substituted for `tap`.

        For a tap with a margin (StyleGAN3) the prediction covers only the image-aligned centre; it is
        pasted into `traced` (the generator's own activation), whose margin stays the generator's: the
        image does not show what lies beyond it, so nothing could predict it, and the generator then
        continues from a full-size activation, as its filters and crops expect."""
        pred = self.standardizers[_tap_key(tap)].denormalize(pred) if self.standardize else pred
        margin = self.margins.get(tap, 0)
        if margin and traced is None:
            raise ValueError(f"{tap} has a {margin} px margin: pass the traced activation to paste the prediction into")
        return paste_centre(pred, traced, margin)

    def aligned(self, tap: str, act: torch.Tensor) -> torch.Tensor:
        """The image-aligned centre of a generator activation (all of it for StyleGAN2)."""
        return crop_margin(act, self.margins.get(tap, 0))

    def to_target(self, tap: str, act: torch.Tensor) -> torch.Tensor:
        """What the head's prediction is compared with: the aligned centre, standardised when standardising."""
        act = self.aligned(tap, act)
        return self.standardizers[_tap_key(tap)].normalize(act) if self.standardize else act

    def match_losses(self, preds: dict[str, torch.Tensor], taps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MSE of each prediction against its (standardised) target activation, keyed by `TapMatch.key`.

        The target is laid out in memory like the prediction: the generator computes in
        channels-last on CPU, most backbones in NCHW, and a mixed-layout loss made the heads'
        and backbone's backward 1.26x slower (measured, quickstart)."""
        out = {}
        for m in self.matches:
            pred = preds[m.key].float()
            target = self.to_target(m.tap, taps[m.tap])
            layout = torch.channels_last if not pred.is_contiguous() and pred.is_contiguous(
                memory_format=torch.channels_last) else torch.contiguous_format
            out[m.key] = F.mse_loss(pred, target.contiguous(memory_format=layout))
        return out

    def update_statistics(self, taps: dict[str, torch.Tensor]) -> None:
        if self.standardize:
            for tap in {m.tap for m in self.matches}:
                self.standardizers[_tap_key(tap)].update(self.aligned(tap, taps[tap]))


@dataclass
class LayerMatchLosses:
    total: torch.Tensor
    match: torch.Tensor
    rec: torch.Tensor
    per_tap: dict[str, torch.Tensor]
    rec_tap: str


def layermatch_loss(model: LayerMatchModel, generator: FrozenGenerator, z: torch.Tensor, c: torch.Tensor | None,
                    rec_tap_index: int, rec_weight: float = 1.0, truncation_psi: float = 1.0,
                    noise_mode: str = "random", update_statistics: bool = True,
                    fused_modconv: bool | None = None) -> LayerMatchLosses:
    """One LayerMatch loss evaluation for latents z (the generator pass is not differentiated)."""
    with torch.no_grad():
        trace = generator.trace(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode,
                                fused_modconv=fused_modconv)
    core = extract_model_from_parallel(model)
    if update_statistics and core.training:
        core.update_statistics(trace.taps)
    preds = model(trace.img)
    per_tap = core.match_losses(preds, trace.taps)
    match = torch.stack(list(per_tap.values())).mean()
    rec_match = core.matches[rec_tap_index]
    rec_tap = rec_match.tap
    rec = torch.zeros((), device=z.device)
    if rec_weight > 0:
        substitute = core.to_activation(rec_tap, preds[rec_match.key].float(), trace.taps[rec_tap])
        rec = F.mse_loss(generator.resume(trace, rec_tap, substitute), trace.img)
    return LayerMatchLosses(match + rec_weight * rec, match, rec, per_tap, rec_tap)


class LayerMatchTask:
    """LayerMatch bound to a generator, a model and an optimiser: one phase for the loop."""

    def __init__(self, model: nn.Module, generator: FrozenGenerator, optimizer: torch.optim.Optimizer,
                 scheduler, cfg: LayerMatchConfig, train_cfg, seed: int, device: torch.device,
                 truncation_psi: float = 1.0, noise_mode: str = "random", fused_modconv: bool | None = None):
        self.model, self.generator, self.optimizer, self.scheduler = model, generator, optimizer, scheduler
        self.cfg, self.train_cfg, self.seed, self.device = cfg, train_cfg, seed, device
        self.images_per_step = train_cfg.batch_size * train_cfg.grad_accum
        self.truncation_psi, self.noise_mode, self.fused_modconv = truncation_psi, noise_mode, fused_modconv

    def _loss(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        core = extract_model_from_parallel(self.model)
        n = self.train_cfg.batch_size
        z = self.generator.sample_latents(n, device=self.device)
        c = self.generator.sample_labels(n, device=self.device)
        m = int(torch.randint(0, len(core.matches), ()).item())
        out = layermatch_loss(self.model, self.generator, z, c, m, rec_weight=self.cfg.rec_weight,
                              truncation_psi=self.truncation_psi, noise_mode=self.noise_mode,
                              fused_modconv=self.fused_modconv)
        return {"loss": out.total, "match": out.match.detach(), "rec": out.rec.detach()}

    def phases(self) -> list[Phase]:
        return [Phase("layermatch", self.optimizer, self._loss, [p for p in self.model.parameters()],
                      self.scheduler, grad_accum=self.train_cfg.grad_accum)]

    def after_step(self, step: int) -> None:
        pass

    def state_objects(self) -> dict[str, object]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    @torch.no_grad()
    def sample_images(self, n: int | None = None, seed: int = 12345) -> dict[str, torch.Tensor]:
        """Generated images and, per matched tap, the reconstruction from the predicted activation.

        `n` defaults to 8 images up to 256 px and fewer above (2 at 512 px): a picture's cost grows with the
        pixels. They are traced `train.batch_size` at a time, what a training step already holds in memory: 8
        StyleGAN3 512 px traces at once (every layer kept, up to 532 px) ended a CPU run with SIGKILL (a 23 GiB
        machine shared with other jobs; memory the likely cause) after its training step had run."""
        core = extract_model_from_parallel(self.model)
        was_training = core.training
        core.eval()
        if n is None:
            n = max(2, min(8, int(8 * (256 / self.generator.img_resolution) ** 2)))
        g = torch.Generator().manual_seed(seed)
        z = self.generator.sample_latents(n, generator=g).to(self.device)
        c = self.generator.sample_labels(n, generator=g)
        c = c.to(self.device) if c is not None else None
        rows: dict[str, list[torch.Tensor]] = {}
        for start in range(0, n, self.train_cfg.batch_size):
            part = slice(start, start + self.train_cfg.batch_size)
            trace = self.generator.trace(z[part], None if c is None else c[part], truncation_psi=self.truncation_psi,
                                         noise_mode="const")
            preds = core(trace.img)
            rows.setdefault("generated", []).append(trace.img)
            for m in core.matches:
                rows.setdefault(f"rec {m.tap.removeprefix('synthesis.')} <- level {m.level}", []).append(
                    self.generator.resume(trace, m.tap,
                                          core.to_activation(m.tap, preds[m.key].float(), trace.taps[m.tap])))
            del trace, preds
        core.train(was_training)
        return {name: torch.cat(parts) for name, parts in rows.items()}


# ----------------------------------------------------------------------------- the method


@dataclass
class LayerMatchConfig:
    """The `layermatch:` section of a recipe."""

    taps: Union[list[str], str] = "auto"  # 'auto' = block outputs within the backbone's feature sizes
    head: Literal["linear", "conv"] = "conv"
    head_hidden: int = 128
    rec_weight: float = 1.0  # lambda of L_rec
    standardize: bool = True  # per-channel running standardisation of targets
    momentum: float = 0.99
    min_reduction: int = 4  # ignore backbone levels finer than this stride

    def check(self) -> None:
        require(self.taps == "auto" or isinstance(self.taps, list), "taps", "must be 'auto' or a list of tap names")
        require(self.head_hidden >= 1, "head_hidden", f"must be >= 1, got {self.head_hidden}")
        require(self.rec_weight >= 0, "rec_weight", f"must be >= 0, got {self.rec_weight}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.min_reduction >= 1, "min_reduction", f"must be >= 1, got {self.min_reduction}")


@dataclass
class LayerMatchInputs:
    """What `prepare` built: the generator, the backbone and its pairing with the generator's taps."""

    handle: GeneratorHandle
    backbone: nn.Module
    matches: list[TapMatch]
    mean_std: tuple
    find_unused_parameters: bool


class LayerMatch(Method):
    name = "layermatch"
    section = "layermatch"
    config = LayerMatchConfig
    uses = ("generator", "backbone", "train")
    display_name = "LayerMatch"
    reference = ("Galeev et al., Learning High-Resolution Domain-Specific Representations with a GAN "
                 "Generator, §3.1")
    # the family (StyleGAN2 / StyleGAN3) is in the card's generator row
    card_summary = ("learned to predict the activations of a frozen StyleGAN generator from the images it draws, "
                    "plus a reconstruction loss through the generator")
    bibtex = """@inproceedings{galeev2020layermatch,
  title     = {Learning High-Resolution Domain-Specific Representations with a {GAN} Generator},
  author    = {Galeev, Danil and Sofiiuk, Konstantin and Rukhovich, Danila and Romanov, Mikhail and
               Barinova, Olga and Konushin, Anton},
  booktitle = {Structural, Syntactic, and Statistical Pattern Recognition (S+SSPR)},
  year      = {2021}
}"""

    def prepare(self, recipe, num_processes: int) -> LayerMatchInputs:
        handle = open_generator(recipe.generator.source, recipe.generator.network, seed=recipe.seed)
        G = handle.G
        torch.manual_seed(recipe.seed)
        backbone = create_backbone(recipe.backbone)
        check_resolution(backbone, recipe.backbone, G.img_resolution)
        cfg = recipe.method_cfg
        matches = choose_taps(G, backbone, G.img_resolution, cfg.taps, cfg.min_reduction)
        all_levels = {i for i, r in enumerate(backbone.feature_info.reduction()) if r >= cfg.min_reduction}
        return LayerMatchInputs(handle, backbone, matches, backbone_mean_std(recipe.backbone, backbone),
                                find_unused_parameters=bool(all_levels - {m.level for m in matches}))

    def build(self, prepared: LayerMatchInputs, recipe, accelerator) -> LayerMatchTask:
        cfg, train = recipe.method_cfg, recipe.train
        model = LayerMatchModel(prepared.backbone, prepared.matches, prepared.mean_std, head=cfg.head,
                                head_hidden=cfg.head_hidden, standardize=cfg.standardize, momentum=cfg.momentum)
        optimizer = adamw(model.parameters(), train)
        model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = cosine_schedule(optimizer, train, train.steps)
        G = prepared.handle.G.to(accelerator.device)
        gen = recipe.generator
        return LayerMatchTask(model, G, optimizer, scheduler, cfg, train, recipe.seed, accelerator.device,
                              truncation_psi=gen.truncation_psi, noise_mode=gen.noise_mode,
                              fused_modconv=gen.fused_modconv)

    def describe(self, prepared: LayerMatchInputs, recipe) -> dict:
        return {"generator": prepared.handle.describe(), "taps": sorted({m.tap for m in prepared.matches}),
                "matches": [f"{m.tap} <- level {m.level}" for m in prepared.matches],
                "resolution": prepared.handle.G.img_resolution,
                "mean_std": [list(prepared.mean_std[0]), list(prepared.mean_std[1])]}

    def banner(self, prepared: LayerMatchInputs, recipe) -> str:
        b = recipe.backbone
        return f"{b.arch} ({b.init} init)  ·  generator {prepared.handle.describe()['description']}"


METHOD = LayerMatch()
