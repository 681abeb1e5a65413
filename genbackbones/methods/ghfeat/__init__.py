"""GH-Feat (paper 001): an encoder to the generator's per-layer styles, trained on real images.

`method: ghfeat` recipes run with `genbackbones pretrain`, like LayerMatch: every
input is checked before the run folder exists, and the run folder holds what every
run holds (engine/runs.py) with the timm trunk in export/. The modules:

    __init__.py     the recipe section (`ghfeat:`) and `METHOD`: how a run is prepared and built
    model.py        the encoder (trunk + res6 + SAM + FPN + style heads), its losses, the loop's task
    perceptual.py   VGG16 conv4_3 features for the perceptual loss
    use.py          what one does with a trained run: reconstruct, mix, extract features
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ...backbones import backbone_mean_std, check_resolution, create_backbone
from ...data.images import ImageSource, open_images
from ...errors import UserError, require
from ...generators.base import GeneratorHandle
from ...generators.open import open_generator
from ...generators.stylegan2 import Discriminator, Generator
from .. import Method
from ..stylegan2 import lazy_adam
from .model import GROUPS, GHFeatEncoder, GHFeatTask, StyleStats, style_statistics
from .perceptual import VGG_NAME, VGGConv4_3

if TYPE_CHECKING:
    from ...recipes import Recipe

SAMPLE_COUNT = 8


@dataclass
class GHFeatConfig:
    """The `ghfeat:` section of a recipe.

    Loss weights in the paper's notation: L_E = MSE + adv_weight (lambda1) * adversarial + perceptual_weight
    (lambda2) * VGG16 conv4_3 distance; D: logistic loss + R1. `r1_gamma` follows NVIDIA's convention (penalty
    times gamma/2), so gamma = 10 (official code) is the paper's lambda3 = 5. The learning rate (train.lr,
    Adam with train.betas) is multiplied by `lr_decay` every `lr_decay_every` steps; train.schedule and
    train.warmup_steps are not used by this method.
    """

    perceptual: Literal["vgg16", "none"] = "vgg16"  # 'none' must be explicit: no silent random VGG
    perceptual_weight: float = 5.0e-5  # lambda2 (paper and official code)
    adv_weight: float = 0.1  # lambda1 (paper 0.1; official code 0.08)
    r1_gamma: float = 10.0  # R1 gamma (= 2 * paper lambda3; official 10)
    r1_every: int = 16  # lazy R1: every N steps, scaled by N (0 = off)
    lr_decay: float = 0.8
    lr_decay_every: int = 0  # 0 = train.steps // 4 (official code); resolved when a run starts
    fpn_channels: int = 512  # width of the FPN / Spatial Alignment maps (paper 512)
    pool_size: int = 4  # each level is pooled to pool_size x pool_size before its FC (paper 4)
    noise_mode: Literal["const", "random", "none"] = "const"  # generator noise while reconstructing
    style_samples: int = 2048  # mapped latents for the per-layer style mean / std the encoder is centred on
    mbstd_group: int = 4  # minibatch-stddev group of a fresh discriminator (generator without D)

    def check(self) -> None:
        require(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        for key in ("lr_decay_every", "r1_every"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("fpn_channels", "pool_size", "style_samples", "mbstd_group"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("perceptual_weight", "adv_weight", "r1_gamma"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


# ----------------------------------------------------------------------------- building blocks


def build_encoder(recipe: Recipe, G: Generator, stats: StyleStats | None, init: str | None = None) -> GHFeatEncoder:
    """The encoder a run starts from: seeded by the recipe, so it can be rebuilt exactly (untrained baseline).

    `stats=None` leaves zero style statistics (they are then loaded from a checkpoint);
    `init='random'` builds the trunk without fetching ImageNet weights (also for loading).
    """
    spec = recipe.backbone if init is None else recipe.backbone.with_init(init)
    cfg = recipe.method_cfg
    dims = G.style_dims()
    if stats is None:
        stats = StyleStats({k: torch.zeros(d) for k, d in dims.items()}, {k: torch.ones(d) for k, d in dims.items()},
                           "placeholder")
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        backbone = create_backbone(spec)
        check_resolution(backbone, spec, G.img_resolution)
        mean_std = backbone_mean_std(recipe.backbone, backbone)
        return GHFeatEncoder(backbone, dims, stats, mean_std, cfg.fpn_channels, cfg.pool_size)


def make_discriminator(handle: GeneratorHandle, recipe: Recipe) -> tuple[Discriminator, str]:
    """A trainable copy of the checkpoint's D, or a fresh one of matching size; and which it is."""
    G = handle.G
    if handle.D is not None:
        D = copy.deepcopy(handle.D).train().requires_grad_(True)
        if D.img_resolution != G.img_resolution:
            raise UserError(f"the checkpoint's discriminator takes {D.img_resolution} px images but its generator "
                            f"makes {G.img_resolution} px; the checkpoint is inconsistent")
        return D, "from the generator checkpoint"
    syn = G.init_kwargs.get("synthesis_kwargs", {})
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed + 1)
        D = Discriminator(c_dim=0, img_resolution=G.img_resolution, img_channels=G.img_channels,
                          channel_base=syn.get("channel_base", 32768), channel_max=syn.get("channel_max", 512),
                          epilogue_kwargs={"mbstd_group_size": recipe.method_cfg.mbstd_group})
    return D, "fresh (randomly initialised: the generator checkpoint has no discriminator)"


def check_ghfeat_recipe(recipe: Recipe, G: Generator) -> None:
    """Recipe values that would only fail mid-run, checked up front."""
    if G.c_dim > 0:
        raise UserError(f"the generator is conditional (c_dim={G.c_dim}); GH-Feat needs an unconditional generator "
                        "(its discriminator would need labels for the real images)")
    if recipe.data.resolution not in (None, G.img_resolution):
        raise UserError(f"data.resolution {recipe.data.resolution} differs from the generator's {G.img_resolution}; "
                        "drop data.resolution (images are resized to the generator's resolution)")


def check_batch_for(D: Discriminator, batch_size: int) -> None:
    """The minibatch-stddev layer splits every batch into groups; a remainder would crash mid-run."""
    if D.b4.mbstd is not None:
        group = min(D.b4.mbstd.group_size or batch_size, batch_size)
        if batch_size % group:
            raise UserError(f"train.batch_size {batch_size} must be a multiple of the discriminator's "
                            f"minibatch-stddev group ({group})")


def held_out_images(recipe: Recipe, data: ImageSource, resolution: int) -> torch.Tensor:
    """Images for samples.png: test faces for the bundled domain, else the first training images."""
    if recipe.data.source == "faces":
        return open_images("faces", resolution, SAMPLE_COUNT, recipe.seed, "test").batch(list(range(SAMPLE_COUNT)))
    return data.batch(list(range(min(SAMPLE_COUNT, len(data)))))



@dataclass
class GHFeatInputs:
    """Everything a run needs, built (and so validated) before its folder exists."""

    handle: GeneratorHandle
    D: Discriminator
    d_origin: str
    data: ImageSource
    vgg: VGGConv4_3 | None
    stats: StyleStats
    encoder: GHFeatEncoder
    find_unused_parameters: bool


class GHFeat(Method):
    name = "ghfeat"
    section = "ghfeat"
    config = GHFeatConfig
    uses = ("generator", "backbone", "data", "train")
    display_name = "GH-Feat"
    reference = "Xu et al., Generative Hierarchical Features from Synthesizing Images, CVPR 2021"
    card_summary = ("the trunk of an encoder trained on real images to produce the per-layer styles of a frozen "
                    "StyleGAN generator, so that the generator reconstructs each image")
    bibtex = """@inproceedings{xu2021ghfeat,
  title     = {Generative Hierarchical Features from Synthesizing Images},
  author    = {Xu, Yinghao and Shen, Yujun and Zhu, Jiapeng and Yang, Ceyuan and Zhou, Bolei},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""

    def prepare(self, recipe, num_processes: int) -> GHFeatInputs:
        handle = open_generator(recipe.generator.source, recipe.generator.network, seed=recipe.seed)
        G, cfg = handle.G, recipe.method_cfg
        check_ghfeat_recipe(recipe, G)
        D, d_origin = make_discriminator(handle, recipe)
        check_batch_for(D, recipe.train.batch_size)
        data = open_images(recipe.data.source, G.img_resolution, recipe.data.count, recipe.seed, recipe.data.split,
                           recipe.data.column)
        if len(data) < recipe.train.batch_size:
            raise UserError(f"only {len(data)} training images for batch size {recipe.train.batch_size}")
        vgg = VGGConv4_3() if cfg.perceptual == "vgg16" else None
        stats = style_statistics(G, cfg.style_samples, recipe.seed)
        encoder = build_encoder(recipe, G, stats)
        recipe.data.resolution = G.img_resolution
        return GHFeatInputs(handle, D, d_origin, data, vgg, stats, encoder,
                            find_unused_parameters=len(encoder.groups) < len(GROUPS))

    def build(self, prepared: GHFeatInputs, recipe, accelerator) -> GHFeatTask:
        """Optimisers (Adam; D's rescaled for lazy R1), step decay, models on the device."""
        cfg, train, device = recipe.method_cfg, recipe.train, accelerator.device
        if cfg.lr_decay_every == 0:  # resolved here (train.steps is known once a budget is resolved), saved
            cfg.lr_decay_every = max(1, train.steps // 4)  # in recipe.yaml, so that resume keeps it
        G, D = prepared.handle.G.to(device), prepared.D.to(device)
        vgg = prepared.vgg.to(device) if prepared.vgg is not None else None
        opt_E = torch.optim.Adam(prepared.encoder.parameters(), lr=train.lr, betas=tuple(train.betas), eps=1e-8)
        opt_D = lazy_adam(D.parameters(), train.lr, train.betas, cfg.r1_every if cfg.r1_gamma > 0 else 0)
        encoder, opt_E, opt_D = accelerator.prepare(prepared.encoder, opt_E, opt_D)
        sched_E = torch.optim.lr_scheduler.StepLR(opt_E, cfg.lr_decay_every, cfg.lr_decay)
        sched_D = torch.optim.lr_scheduler.StepLR(opt_D, cfg.lr_decay_every, cfg.lr_decay)
        return GHFeatTask(encoder, D, G, vgg, opt_E, opt_D, sched_E, sched_D, prepared.data, cfg, train,
                          recipe.seed, accelerator, fused_modconv=recipe.generator.fused_modconv,
                          sample_inputs=held_out_images(recipe, prepared.data, G.img_resolution))

    def describe(self, prepared: GHFeatInputs, recipe) -> dict:
        cfg, G, encoder = recipe.method_cfg, prepared.handle.G, prepared.encoder
        return {
            "generator": prepared.handle.describe(), "discriminator": prepared.d_origin,
            "perceptual": f"{VGG_NAME} conv4_3" if prepared.vgg is not None else "none (ghfeat.perceptual: none)",
            "style_mean": prepared.stats.origin, "groups": {g: encoder.groups.get(g, []) for g in GROUPS},
            "taps": list(G.style_dims()), "data": {"source": recipe.data.source, "images": len(prepared.data)},
            "lr_schedule": f"x{cfg.lr_decay} every {cfg.lr_decay_every} steps (StepLR)",
            "resolution": G.img_resolution, "mean_std": [list(m) for m in encoder.mean_std],
        }

    def banner(self, prepared: GHFeatInputs, recipe) -> str:
        b = recipe.backbone
        perceptual = f"{VGG_NAME} conv4_3" if prepared.vgg is not None else "none"
        return (f"{b.arch} ({b.init} init)  ·  generator {prepared.handle.describe()['description']}  ·  "
                f"D {prepared.d_origin}  ·  perceptual {perceptual}")


METHOD = GHFeat()
