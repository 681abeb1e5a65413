"""`method: stylegan2` (`genbackbones train-generator`): train a small StyleGAN2 on real images.

Karras et al. 2020, as in stylegan2-ada-pytorch, without ADA: non-saturating
logistic loss for G and D, lazy R1 on reals every `r1_every` steps, optional lazy
path-length regularisation every `pl_every` steps, style mixing, and an exponential
moving average of G (the network one samples from). The loop and the run folder are
engine/'s; at the end `<run>/generator/` holds G_ema and D in our generator format,
ready for `generator.source`.

Meant for small generators (the bundled 64 px one, a domain of your own on a laptop
or one GPU). At large scale, train with NVIDIA's stylegan2-ada-pytorch (ADA
augmentation, fp16, tuned configs) and import its `.pkl` with
`genbackbones generator convert`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.grids import grid_image, save_png
from ..data.images import ImageSource, epoch_indices, open_images
from ..engine.loop import Phase, log_image
from ..errors import UserError, require
from ..generators.formats.folder import Provenance, save_generator
from ..generators.open import RANDOM_PRESETS
from ..generators.stylegan2 import Discriminator, Generator
from . import Method

GENERATOR_DIR = "generator"


def lazy_adam(params, lr: float, betas: list[float], every: int) -> torch.optim.Adam:
    """Adam with lr/betas rescaled for a regulariser applied every `every` steps (NVIDIA's mb_ratio)."""
    ratio = every / (every + 1) if every else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=tuple(b**ratio for b in betas), eps=1e-8)


class StyleGAN2Task:
    """G, D and G_ema with their phases: Gmain, Greg (pl), Dmain, Dreg (R1)."""

    def __init__(self, G: Generator, D: Discriminator, G_ema: Generator, opt_G, opt_D, data: ImageSource, cfg,
                 train_cfg, seed: int, accelerator):
        self.G, self.D, self.G_ema = G, D, G_ema
        self.opt_G, self.opt_D = opt_G, opt_D
        self.data, self.cfg, self.train_cfg, self.seed = data, cfg, train_cfg, seed
        self.accelerator = accelerator
        self.device = accelerator.device
        self.batch = train_cfg.batch_size
        self.images_per_step = self.batch
        self.stats = torch.nn.Module()  # a module so that it checkpoints as safetensors
        self.stats.register_buffer("pl_mean", torch.zeros([], device=self.device))
        self.num_ws, self.z_dim = G.num_ws, G.z_dim

    # -- sampling --------------------------------------------------------------

    def _reals(self, step: int) -> torch.Tensor:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        idx = epoch_indices(len(self.data), step, self.batch, rank, world, self.seed)
        reals = self.data.batch(idx)
        if self.cfg.mirror:  # which images flip is a function of (seed, step, rank): resume stays bit-identical
            flip = np.random.default_rng([self.seed, step, rank, 7]).random(len(idx)) < 0.5
            reals[flip] = reals[flip].flip(-1)
        return reals.to(self.device)

    def _ws(self, n: int) -> torch.Tensor:
        """Mapped latents with style mixing (a random crossover layer with probability p)."""
        mapping = self.G.mapping
        z = torch.randn(n, self.z_dim, device=self.device)
        ws = mapping(z, None)
        if self.cfg.style_mixing_prob > 0 and torch.rand(()) < self.cfg.style_mixing_prob:
            cutoff = int(torch.randint(1, self.num_ws, ()).item())
            ws2 = mapping(torch.randn_like(z), None, skip_w_avg_update=True)
            ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def _fake(self, n: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(grad):
            ws = self._ws(n)
            return self.G.synthesis(ws, noise_mode="random"), ws

    # -- phases ---------------------------------------------------------------

    def _g_main(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        img, _ = self._fake(self.batch, grad=True)
        self.D.requires_grad_(False)  # D's weight gradients are not needed here
        try:
            logits = self.D(img, None)
        finally:
            self.D.requires_grad_(True)
        loss = F.softplus(-logits).mean()
        return {"loss": loss, "G": loss.detach(), "fake_score": logits.detach().mean()}

    def _g_pl(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        n = max(1, self.batch // 2)
        img, ws = self._fake(n, grad=True)
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grads.square().sum(2).mean(1).sqrt()
        self.stats.pl_mean.copy_(self.stats.pl_mean.lerp(lengths.mean().detach(), 0.01))
        penalty = (lengths - self.stats.pl_mean).square().mean()
        return {"loss": penalty * self.cfg.pl_weight * self.cfg.pl_every, "pl": penalty.detach()}

    def _d_main(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        fake, _ = self._fake(self.batch, grad=False)
        real = self._reals(step)
        fake_logits = self.D(fake.detach(), None)
        real_logits = self.D(real, None)
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        return {"loss": loss, "D": loss.detach(), "real_score": real_logits.detach().mean()}

    def _d_r1(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        real = self._reals(step).detach().requires_grad_(True)
        logits = self.D(real, None)
        (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grads.square().sum([1, 2, 3]).mean()
        return {"loss": penalty * (self.cfg.r1_gamma / 2) * self.cfg.r1_every, "r1": penalty.detach()}

    def phases(self) -> list[Phase]:
        g_params = [p for p in self.G.parameters() if p.requires_grad]
        d_params = [p for p in self.D.parameters() if p.requires_grad]
        sync = dict(sync_grads=True)  # G and D are used unwrapped (G's ws are needed), so sync here
        phases = [Phase("G", self.opt_G, self._g_main, g_params, **sync)]
        if self.cfg.pl_weight > 0:
            phases.append(Phase("Gpl", self.opt_G, self._g_pl, g_params, every=self.cfg.pl_every, **sync))
        phases.append(Phase("D", self.opt_D, self._d_main, d_params, **sync))
        if self.cfg.r1_gamma > 0:
            phases.append(Phase("Dr1", self.opt_D, self._d_r1, d_params, every=self.cfg.r1_every, **sync))
        return phases

    def state_objects(self) -> dict[str, object]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema, "opt_G": self.opt_G, "opt_D": self.opt_D,
                "stats": self.stats}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """EMA of G with NVIDIA's half-life in images and ramp-up; buffers copied."""
        seen = (step + 1) * self.batch * self.accelerator.num_processes
        ema_nimg = self.cfg.ema_kimg * 1000
        if self.cfg.ema_rampup:
            ema_nimg = min(ema_nimg, seen * self.cfg.ema_rampup)
        beta = 0.5 ** (self.batch * self.accelerator.num_processes / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample_images(self, n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
        z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        # reals spread over the whole dataset: folders sorted by name (UTKFace: by age) start unrepresentative
        spread = sorted({i * len(self.data) // n for i in range(n)})
        return {"G_ema": self.G_ema(z, None, noise_mode="const"),
                "real": self.data.batch(spread).to(self.device)}


def make_pair(init_kwargs: dict, seed: int, mbstd_group: int) -> tuple[Generator, Discriminator, Generator]:
    """A fresh G, D (same channel settings as G) and G_ema = copy of G."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = Generator(**init_kwargs)
        syn = init_kwargs.get("synthesis_kwargs", {})
        D = Discriminator(c_dim=init_kwargs["c_dim"], img_resolution=init_kwargs["img_resolution"],
                          img_channels=init_kwargs["img_channels"],
                          channel_base=syn.get("channel_base", 32768), channel_max=syn.get("channel_max", 512),
                          epilogue_kwargs={"mbstd_group_size": mbstd_group})
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    return G, D, G_ema


def default_ema_kimg(batch: int) -> float:
    """NVIDIA's auto config: half-life of batch * 10 / 32 kimg."""
    return float(np.round(batch * 10 / 32, 4))


# ----------------------------------------------------------------------------- the method


@dataclass
class GanConfig:
    """The `gan:` section: StyleGAN2 training (non-saturating logistic loss, lazy R1, optional path length, EMA)."""

    preset: str = "small64"  # architecture (see generators.open.RANDOM_PRESETS) ...
    init_kwargs: dict | None = None  # ... or explicit Generator init kwargs (NVIDIA names)
    r1_gamma: float = 0.05
    r1_every: int = 16
    pl_weight: float = 0.0  # 2.0 in NVIDIA's configs; off by default (expensive on CPU)
    pl_every: int = 4
    style_mixing_prob: float = 0.9
    ema_kimg: float | None = None  # EMA half-life in thousands of images (None = global batch * 10 / 32)
    ema_rampup: float | None = 0.05
    mbstd_group: int = 4
    mirror: bool = False  # x-flip half the real images (NVIDIA's --mirror=1): doubles a small dataset of faces
    sample_every: int = 500  # write a sample grid every N steps (0 = only at the end)

    def check(self) -> None:
        for key in ("r1_every", "pl_every", "mbstd_group"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("r1_gamma", "pl_weight", "sample_every"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        require(0 <= self.style_mixing_prob <= 1, "style_mixing_prob", f"must be in [0, 1], got {self.style_mixing_prob}")
        require(self.ema_kimg is None or self.ema_kimg > 0, "ema_kimg", f"must be > 0, got {self.ema_kimg}")


def generator_kwargs(cfg: GanConfig) -> dict:
    if cfg.init_kwargs is not None:
        return dict(cfg.init_kwargs)
    if cfg.preset not in RANDOM_PRESETS:
        raise UserError(f"unknown gan.preset {cfg.preset!r}; choose from {', '.join(RANDOM_PRESETS)} "
                        "or give gan.init_kwargs")
    return dict(RANDOM_PRESETS[cfg.preset])


@dataclass
class GanInputs:
    """What `prepare` built: the architecture and the real images."""

    kwargs: dict
    data: ImageSource
    find_unused_parameters: bool = False


class StyleGAN2(Method):
    name = "stylegan2"
    section = "gan"
    config = GanConfig
    uses = ("data", "train")
    command = "train-generator"
    exports_backbone = False
    display_name = "StyleGAN2"

    def prepare(self, recipe, num_processes: int) -> GanInputs:
        cfg, train = recipe.method_cfg, recipe.train
        kwargs = generator_kwargs(cfg)
        resolution = kwargs["img_resolution"]
        if recipe.data.resolution not in (None, resolution):
            raise UserError(f"data.resolution {recipe.data.resolution} differs from the generator's {resolution}; "
                            "drop data.resolution or change the generator")
        if train.grad_accum != 1:  # the GAN phases draw one batch per step; accumulating would change the losses
            raise UserError(f"train.grad_accum {train.grad_accum}: the StyleGAN2 trainer does not accumulate "
                            "gradients; set train.grad_accum=1 and choose train.batch_size")
        if train.batch_size % cfg.mbstd_group:
            raise UserError(f"train.batch_size {train.batch_size} must be a multiple of gan.mbstd_group "
                            f"{cfg.mbstd_group}")
        data = open_images(recipe.data.source, resolution, recipe.data.count, recipe.seed, recipe.data.split,
                           recipe.data.column)
        if len(data) < train.batch_size:
            raise UserError(f"only {len(data)} training images for batch size {train.batch_size}")
        recipe.data.resolution = resolution  # resolved values, saved in recipe.yaml
        if cfg.ema_kimg is None:
            cfg.ema_kimg = default_ema_kimg(train.batch_size * num_processes)
        return GanInputs(kwargs, data)

    def build(self, prepared: GanInputs, recipe, accelerator) -> StyleGAN2Task:
        cfg, train = recipe.method_cfg, recipe.train
        G, D, G_ema = (m.to(accelerator.device) for m in make_pair(prepared.kwargs, recipe.seed, cfg.mbstd_group))
        opt_G = lazy_adam(G.parameters(), train.lr, train.betas, cfg.pl_every if cfg.pl_weight else 0)
        opt_D = lazy_adam(D.parameters(), train.lr, train.betas, cfg.r1_every if cfg.r1_gamma else 0)
        opt_G, opt_D = accelerator.prepare(opt_G, opt_D)
        return StyleGAN2Task(G, D, G_ema, opt_G, opt_D, prepared.data, cfg, train, recipe.seed, accelerator)

    def describe(self, prepared: GanInputs, recipe) -> dict:
        return {"generator_kwargs": prepared.kwargs, "data": recipe.data.source, "num_images": len(prepared.data),
                "resolution": prepared.kwargs["img_resolution"]}

    def banner(self, prepared: GanInputs, recipe) -> str:
        return (f"StyleGAN2 {prepared.kwargs['img_resolution']}px  ·  {len(prepared.data)} images from "
                f"{recipe.data.source}  ·  batch {recipe.train.batch_size} per process")

    def hooks(self, task: StyleGAN2Task, recipe, run_dir: Path, accelerator) -> list:
        every = recipe.method_cfg.sample_every

        def sample_grid(step: int) -> None:
            if accelerator.is_main_process and every and (step + 1) % every == 0:
                grid = grid_image(task.sample_images(), scale=2)
                save_png(grid, run_dir / "samples" / f"step-{step + 1:07d}.png")
                log_image(accelerator, "samples", grid, step + 1)

        return [sample_grid]

    def finish(self, task: StyleGAN2Task, prepared: GanInputs, recipe, run_dir: Path) -> dict:
        provenance = Provenance(source=f"genbackbones train-generator ({recipe.name}, {recipe.train.steps} steps, "
                                       f"data {recipe.data.source})", network="G_ema",
                                license=recipe.license, w_avg="trained")
        save_generator(run_dir / GENERATOR_DIR, task.G_ema.cpu(), task.D.cpu(),
                       provenance, overwrite=True)
        return {"kimg": round(recipe.train.steps * task.images_per_step * task.accelerator.num_processes / 1000, 1)}


METHOD = StyleGAN2()
