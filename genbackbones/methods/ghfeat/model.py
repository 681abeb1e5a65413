"""GH-Feat (paper 001 §3, appendix A) on StyleGAN2's per-layer style space.

An encoder maps a real image x to one style code per modulated layer of a frozen
StyleGAN2 (each layer's affine output, the "Y space"); the generator renders the
codes back, and the reconstruction trains the encoder:

    L_E = ||x - G(E(x))||^2 + lambda2 ||F(x) - F(G(E(x)))||^2 + lambda1 softplus(-D(G(E(x))))
    L_D = softplus(D(G(E(x)))) + softplus(-D(x)) + gamma/2 ||grad_x D(x)||^2      (lazy R1)

F is VGG16 conv4_3 (perceptual.py); D starts from the generator checkpoint's
discriminator. The encoder (Table 7 of the paper, for any timm trunk):

    trunk levels res4, res5 (strides 16, 32)  + an extra residual stage res6 (stride 64)
    FPN over (res4, res5, res6)                -> P4, P5, P6
    Spatial Alignment:  S6 = W6 P6,  S_i = W_i down(P_i) + S6   (i = 4, 5; down = to P6's size)
    heads: S_i -> pool to 4x4 -> flatten -> FC -> the style codes of a group of layers

The generator's synthesis blocks are split coarse / middle / fine in the paper's
proportion (2 : 2 : 3 blocks at 256 px: 4-8 | 16-32 | 64-256); coarse codes come
from S6, middle from S5, fine from S4. Each code is predicted as an offset from
the mean style, in units of the style's standard deviation over mapped latents, so
an untrained encoder already renders roughly the mean image.

Heads, losses and the task only; the loop and run folder are engine/'s, the method
(how a recipe is prepared and built) is in this package's __init__.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from accelerate.utils import extract_model_from_parallel

from ...backbones import InputNormalizer
from ...data.images import ImageSource, epoch_indices
from ...engine.loop import Phase
from ...errors import UserError
from .perceptual import VGGConv4_3, perceptual_distance

GROUPS = ("coarse", "middle", "fine")  # encoder head groups, coarse first
GROUP_SOURCE = {"coarse": "res6", "middle": "res5", "fine": "res4"}
GROUP_WEIGHTS = (2, 2, 3)  # the paper's split of a 256 px StyleGAN: blocks 4-8 | 16-32 | 64-256
HEAD_INIT_SCALE = 0.1  # heads start with small weights: an untrained encoder renders near the mean image


# ----------------------------------------------------------------------------- how styles are grouped


def block_of(layer: str) -> str:
    """'synthesis.b16.conv0' -> 'b16' (the synthesis block a style layer belongs to)."""
    return layer.split(".")[1]


def split_layers(style_layers: list[str]) -> dict[str, list[str]]:
    """Style layers (synthesis order) -> coarse / middle / fine groups of whole blocks, in proportion 2:2:3.

    Boundaries are rounded cumulative proportions of the number of blocks, so 7 blocks
    (256 px) give the paper's 2/2/3; a group may be empty for generators of < 3 blocks.
    """
    blocks = list(dict.fromkeys(block_of(name) for name in style_layers))
    n, total = len(blocks), sum(GROUP_WEIGHTS)
    cuts = [0] + [math.floor(n * sum(GROUP_WEIGHTS[: i + 1]) / total + 0.5) for i in range(len(GROUPS) - 1)] + [n]
    if n >= len(GROUPS):  # every group gets at least one block
        for i in range(1, len(GROUPS)):
            cuts[i] = min(max(cuts[i], cuts[i - 1] + 1), n - (len(GROUPS) - i))
    owner = {b: GROUPS[i] for i in range(len(GROUPS)) for b in blocks[cuts[i]:cuts[i + 1]]}
    return {g: [name for name in style_layers if owner[block_of(name)] == g] for g in GROUPS}


def style_levels(generator) -> list[list[str]]:
    """Style layers grouped by the W index that drives them (NVIDIA's `--styles` numbering, 0 = coarsest).

    A toRGB layer shares its index with the next block's first conv, as in StyleGAN2's
    own style mixing; these are the "levels" of `mix --levels` and `features`.
    """
    levels: dict[int, list[str]] = {}
    for step in generator.synthesis.steps:
        if step.w_index is not None:
            levels.setdefault(step.w_index, []).append(step.layer)
    return [levels[i] for i in sorted(levels)]


@dataclass
class StyleStats:
    """Per-layer mean style (the styles of the mean W) and per-channel standard deviation."""

    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    origin: str  # where the mean W came from (for run.json)


@torch.no_grad()
def style_statistics(generator, samples: int = 2048, seed: int = 0, batch: int = 256) -> StyleStats:
    """Styles of the mapping's w_avg, and their spread over `samples` mapped latents.

    A randomly initialised mapping network has w_avg = 0 (it was never tracked); then
    the mean of the sampled W is used instead, and `origin` says so.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(generator.parameters()).device
    ws, sums, squares = [], {}, {}
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        z = generator.sample_latents(n, generator=gen).to(device)
        c = generator.sample_labels(n, generator=gen)
        w = generator.mapping(z, None if c is None else c.to(device), update_emas=False)
        ws.append(w[:, 0].double().sum(0))
        for name, s in generator.synthesis.compute_styles(w).items():
            sums[name] = sums.get(name, 0) + s.double().sum(0)
            squares[name] = squares.get(name, 0) + s.double().square().sum(0)
    w_avg = generator.mapping.w_avg.double()
    if torch.count_nonzero(w_avg) == 0:
        w_mean = torch.stack(ws).sum(0) / samples
        origin = f"mean of {samples} mapped latents (w_avg is zero: untrained mapping)"
    else:
        w_mean, origin = w_avg, "w_avg of the mapping network"
    mean_ws = w_mean.float().reshape(1, 1, -1).repeat(1, generator.num_ws, 1)
    mean = {k: v[0] for k, v in generator.synthesis.compute_styles(mean_ws).items()}
    std = {k: (squares[k] / samples - (sums[k] / samples).square()).clamp_min(1e-12).sqrt().float() for k in sums}
    return StyleStats(mean, std, origin)


# ----------------------------------------------------------------------------- encoder


class ExtraStage(nn.Module):
    """res6: one bottleneck residual block at stride 2 (paper Table 7), channels kept."""

    def __init__(self, channels: int):
        super().__init__()
        width = max(1, channels // 4)
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential(nn.Conv2d(channels, channels, 1, stride=2, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class FeaturePyramid(nn.Module):
    """FPN (Lin et al. 2017) over res4..res6: 1x1 laterals, top-down nearest upsampling, 3x3 smoothing."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        return [conv(p) for conv, p in zip(self.smooth, laterals)]


class SpatialAlignment(nn.Module):
    """SAM (paper eq. in §3.2): S_i = W_i down(P_i) + W_6 P_6 for the finer levels; W = 1x1 convs."""

    def __init__(self, channels: int, levels: int = 3):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(levels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        coarsest = self.project[-1](feats[-1])
        size = coarsest.shape[-2:]
        aligned = [proj(F.adaptive_avg_pool2d(f, size)) + coarsest for proj, f in zip(self.project[:-1], feats[:-1])]
        return aligned + [coarsest]


class StyleHead(nn.Module):
    """Pool a level to pool x pool, flatten, one FC to the concatenated style offsets of its layers."""

    def __init__(self, channels: int, pool: int, out_features: int):
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(channels * pool * pool, out_features)
        with torch.no_grad():
            self.fc.weight.mul_(HEAD_INIT_SCALE)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, self.pool).flatten(1))


def trunk_levels(backbone: nn.Module) -> tuple[int, int]:
    """Indices of the trunk's res4 / res5 (its last two levels), which must differ by stride 2."""
    reductions = backbone.feature_info.reduction()
    if len(reductions) < 2 or reductions[-1] != 2 * reductions[-2]:
        raise UserError(f"GH-Feat needs a trunk whose last two feature levels have strides s and 2s (a ResNet: "
                        f"16, 32); this one has strides {reductions}; use a timm ResNet or drop backbone.out_indices")
    return len(reductions) - 2, len(reductions) - 1


class GHFeatEncoder(nn.Module):
    """timm trunk (`backbone`, the exported part) + res6 + FPN + SAM + per-group style heads.

    `forward(img in [-1, 1])` returns {layer name: style code [N, dim]} for every
    modulated layer of the generator, ready for `synthesize_from_styles`.
    """

    def __init__(self, backbone: nn.Module, style_dims: dict[str, int], stats: StyleStats,
                 mean_std: tuple, fpn_channels: int = 512, pool_size: int = 4):
        super().__init__()
        self.backbone = backbone
        self.mean_std = (tuple(mean_std[0]), tuple(mean_std[1]))  # what the trunk is fed (for its export)
        self.normalize_input = InputNormalizer(*mean_std)
        self.levels = trunk_levels(backbone)
        channels = backbone.feature_info.channels()
        c4, c5 = channels[self.levels[0]], channels[self.levels[1]]
        self.res6 = ExtraStage(c5)
        self.fpn = FeaturePyramid([c4, c5, c5], fpn_channels)
        self.sam = SpatialAlignment(fpn_channels)
        self.style_dims = dict(style_dims)
        self.groups = {g: layers for g, layers in split_layers(list(style_dims)).items() if layers}
        self.heads = nn.ModuleDict({g: StyleHead(fpn_channels, pool_size, sum(style_dims[n] for n in layers))
                                    for g, layers in self.groups.items()})
        self.register_buffer("style_mean", torch.cat([stats.mean[n].float() for n in style_dims]))
        self.register_buffer("style_std", torch.cat([stats.std[n].float() for n in style_dims]))

    def pyramid(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """The aligned maps S4, S5, S6 the heads read."""
        feats = self.backbone(self.normalize_input(img))
        r4, r5 = feats[self.levels[0]], feats[self.levels[1]]
        s4, s5, s6 = self.sam(self.fpn([r4, r5, self.res6(r5)]))
        return {"res4": s4, "res5": s5, "res6": s6}

    def offsets(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-layer offsets from the mean style, in standard deviations."""
        maps = self.pyramid(img)
        out: dict[str, torch.Tensor] = {}
        for group, layers in self.groups.items():
            flat = self.heads[group](maps[GROUP_SOURCE[group]])
            out.update(zip(layers, flat.split([self.style_dims[n] for n in layers], dim=1)))
        return out

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        offsets = self.offsets(img)
        means = self.style_mean.split(list(self.style_dims.values()))
        stds = self.style_std.split(list(self.style_dims.values()))
        return {name: mean + std * offsets[name] for name, mean, std in zip(self.style_dims, means, stds)}

    def mean_styles(self, n: int) -> dict[str, torch.Tensor]:
        """The mean style of every layer, repeated n times (renders the generator's mean image)."""
        means = self.style_mean.split(list(self.style_dims.values()))
        return {name: m.unsqueeze(0).repeat(n, 1) for name, m in zip(self.style_dims, means)}


# ----------------------------------------------------------------------------- losses


@dataclass
class EncoderLosses:
    total: torch.Tensor
    pixel: torch.Tensor
    perceptual: torch.Tensor
    adversarial: torch.Tensor
    fake: torch.Tensor  # the reconstruction (with graph)


def encoder_loss(encoder: nn.Module, generator, D: nn.Module, real: torch.Tensor, vgg: VGGConv4_3 | None,
                 perceptual_weight: float, adv_weight: float, noise_mode: str = "const",
                 fused_modconv: bool | None = None) -> EncoderLosses:
    """Paper eq. 2 with the non-saturating adversarial term; gradients reach only the encoder's parameters."""
    fake = generator.synthesize_from_styles(encoder(real), noise_mode=noise_mode, fused_modconv=fused_modconv)
    pixel = F.mse_loss(fake, real)
    zero = torch.zeros((), device=real.device)
    perceptual = perceptual_distance(vgg, fake, real) if vgg is not None and perceptual_weight > 0 else zero
    adversarial = zero
    if adv_weight > 0:
        D.requires_grad_(False)  # only the image gradient is needed here
        try:
            adversarial = F.softplus(-D(fake, None)).mean()
        finally:
            D.requires_grad_(True)
    total = pixel + perceptual_weight * perceptual + adv_weight * adversarial
    return EncoderLosses(total, pixel, perceptual, adversarial, fake)


def discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic loss (official code's form of paper eq. 3); returns (loss, mean real logit)."""
    real_logits = D(real, None)
    loss = F.softplus(D(fake.detach(), None)).mean() + F.softplus(-real_logits).mean()
    return loss, real_logits.detach().mean()


def r1_penalty(D: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 on real images (weighted by gamma/2 by the caller)."""
    real = real.detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(D(real, None).sum(), real, create_graph=True)
    return grads.square().sum([1, 2, 3]).mean()


# ----------------------------------------------------------------------------- the task


class GHFeatTask:
    """Encoder and discriminator phases for the loop (engine/loop.py): E, D, and lazy R1.

    The D phase reuses the reconstructions of the E phase of the same step (detached),
    which halves the generator passes; both are a function of the step, so resume stays exact.
    """

    def __init__(self, encoder: nn.Module, D: nn.Module, generator, vgg: VGGConv4_3 | None,
                 opt_E: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, sched_E, sched_D,
                 data: ImageSource, cfg, train_cfg, seed: int, accelerator, fused_modconv: bool | None = None,
                 sample_inputs: torch.Tensor | None = None):
        self.encoder, self.D, self.generator, self.vgg = encoder, D, generator, vgg
        self.sample_inputs = sample_inputs  # the images samples.png shows with their reconstructions
        self.fused_modconv = fused_modconv  # generator.fused_modconv of the recipe (None: the faster form here)
        self.opt_E, self.opt_D, self.sched_E, self.sched_D = opt_E, opt_D, sched_E, sched_D
        self.data, self.cfg, self.train_cfg, self.seed = data, cfg, train_cfg, seed
        self.accelerator = accelerator
        self.device = accelerator.device
        self.images_per_step = train_cfg.batch_size * train_cfg.grad_accum
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def render(self, styles: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.generator.synthesize_from_styles(styles, noise_mode=self.cfg.noise_mode,
                                                     fused_modconv=self.fused_modconv)

    def _reals(self, step: int, micro: int) -> torch.Tensor:
        position = step * self.train_cfg.grad_accum + micro
        idx = epoch_indices(len(self.data), position, self.train_cfg.batch_size, self.accelerator.process_index,
                            self.accelerator.num_processes, self.seed)
        return self.data.batch(idx).to(self.device)

    def _encoder_phase(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        if micro == 0:
            self._cache.clear()
        real = self._reals(step, micro)
        out = encoder_loss(self.encoder, self.generator, self.D, real, self.vgg, self.cfg.perceptual_weight,
                           self.cfg.adv_weight, self.cfg.noise_mode, self.fused_modconv)
        self._cache[(step, micro)] = (real, out.fake.detach())
        return {"loss": out.total, "mse": out.pixel.detach(), "perceptual": out.perceptual.detach(),
                "adv": out.adversarial.detach()}

    def _pair(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if (step, micro) in self._cache:
            return self._cache[(step, micro)]
        real = self._reals(step, micro)
        with torch.no_grad():
            fake = self.render(self.encoder(real))
        return real, fake

    def _discriminator_phase(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        real, fake = self._pair(step, micro)
        loss, real_score = discriminator_loss(self.D, real, fake)
        return {"loss": loss, "D": loss.detach(), "real_score": real_score}

    def _r1_phase(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        real, _ = self._pair(step, micro)
        penalty = r1_penalty(self.D, real)
        return {"loss": penalty * (self.cfg.r1_gamma / 2) * self.cfg.r1_every, "r1": penalty.detach()}

    def phases(self) -> list[Phase]:
        accum = self.train_cfg.grad_accum
        d_params = [p for p in self.D.parameters() if p.requires_grad]
        phases = [Phase("E", self.opt_E, self._encoder_phase, list(self.encoder.parameters()), self.sched_E,
                        grad_accum=accum)]
        if self.cfg.adv_weight > 0:  # without the adversarial term D would be trained for nothing
            phases.append(Phase("D", self.opt_D, self._discriminator_phase, d_params, self.sched_D,
                                grad_accum=accum, sync_grads=True))
            if self.cfg.r1_gamma > 0 and self.cfg.r1_every > 0:
                phases.append(Phase("Dr1", self.opt_D, self._r1_phase, d_params, every=self.cfg.r1_every,
                                    grad_accum=accum, sync_grads=True))
        return phases

    def after_step(self, step: int) -> None:
        self._cache.clear()

    def state_objects(self) -> dict[str, object]:
        return {"model": self.encoder, "D": self.D, "opt_E": self.opt_E, "opt_D": self.opt_D,
                "sched_E": self.sched_E, "sched_D": self.sched_D}

    @torch.no_grad()
    def sample_images(self) -> dict[str, torch.Tensor]:
        """The sample inputs, their reconstructions and the mean image (rows of samples.png)."""
        core = extract_model_from_parallel(self.encoder)
        was_training = core.training
        core.eval()
        images = self.sample_inputs.to(self.device)
        rows = {"input": images, "reconstruction": self.render(core(images)),
                "mean image": self.render(core.mean_styles(1))}
        core.train(was_training)
        return rows
