"""Self-supervised pretraining (SimCLR, BYOL, VICReg) with lightly: what a practitioner would run instead.

The strong comparator for a GAN-derived backbone is not random init but plain
self-supervised learning on the same unlabelled images. `method: ssl` trains the
same timm backbone (`create_backbone(recipe.backbone)`, HRNet as its segmentation
representation) through the same loop, run folder, export, card and evaluator as
LayerMatch and GH-Feat, so the comparison differs only in the method.

    images --lightly's view transforms--> view 1, view 2 --backbone--> pooled features
           --lightly's projection head (BYOL: + prediction head)--> embeddings --lightly's loss

What comes from lightly (`pip install genbackbones[ssl]`): the losses (NTXentLoss,
NegativeCosineSimilarity, VICRegLoss), the heads (SimCLR/BYOL/VICReg projection, BYOL
prediction), the view transforms (SimCLRTransform, BYOLView1/View2Transform,
VICRegTransform), BYOL's momentum update and its cosine schedule. What is ours: which
features feed the head, where the images come from, and the loop around it.

Features. The head sees global-average-pooled backbone features: `ssl.features: last`
pools the deepest level (what a classifier would see); `all` pools and concatenates
every level of stride >= `min_reduction` (HRNet: the four branches, so every branch
and the last fusion are trained, as the segmentation decoder reads them all);
`auto` (default) is `all` for HRNet, `last` otherwise, and is resolved into the saved
recipe.

Images. `data.source` as for GH-Feat (the bundled faces, a folder, a `datasets`
dataset; at `data.resolution`, default 64 px), or `data.source: generator`: a fresh
batch drawn from the recipe's frozen generator at every step (then the `generator:`
section is read), so one backbone can be trained by SSL on real images, SSL on
generated images, LayerMatch and GH-Feat and compared. Views are made image by image
on the CPU from uint8 pixels (what a saved image holds), with lightly's transforms
fed PIL images as it documents; their random draws come from torch's and numpy's
global RNGs, which the loop re-seeds every step, so a resumed run draws the same views.

The trained online network is the module's `backbone` (what export reads); BYOL's
momentum copies live under `momentum_backbone` / `momentum_projection`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..errors import UserError, first_line, require

try:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, VICRegLoss
    from lightly.models.modules.heads import (BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead,
                                              VICRegProjectionHead)
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import (BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform,
                                    SimCLRViewTransform, VICRegTransform, VICRegViewTransform)
    from lightly.utils.scheduler import cosine_schedule as momentum_schedule
except ModuleNotFoundError as err:
    if (err.name or "").split(".")[0] != "lightly":
        raise
    raise UserError("method ssl needs lightly, which is not installed; install it with "
                    "`pip install genbackbones[ssl]`") from None
except ImportError as err:  # an older lightly without one of these names
    raise UserError(f"method ssl needs lightly>=1.6 ({err}); upgrade with `pip install -U genbackbones[ssl]`") from None

from ..backbones import backbone_mean_std, check_resolution, create_backbone, is_hrnet
from ..data.images import GENERATOR_SOURCE, ImageSource, epoch_indices, open_images
from ..engine.loop import Phase, adamw, cosine_schedule
from ..generators.base import GeneratorHandle
from ..generators.open import open_generator
from ..generators.sampling import nvidia_uint8
from . import Method

ALGORITHMS = ("simclr", "byol", "vicreg")
DEFAULT_RESOLUTION = 64  # real images without data.resolution: the bundled domain's and the benchmarks' size
# Head sizes of lightly's ResNet-18 examples (input 512): SimCLR 512 -> 128, BYOL 1024 -> 256, VICReg 2048 -> 2048
HEAD_SIZES = {"simclr": (512, 128), "byol": (1024, 256), "vicreg": (2048, 2048)}
SAMPLE_COUNT = 8

REFERENCES = {
    "simclr": ("SimCLR", "contrastive",
               "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020",
               """@inproceedings{chen2020simclr,
  title     = {A Simple Framework for Contrastive Learning of Visual Representations},
  author    = {Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2020}
}"""),
    "byol": ("BYOL", "non-contrastive",
             "Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning, NeurIPS 2020",
             """@inproceedings{grill2020byol,
  title     = {Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning},
  author    = {Grill, Jean-Bastien and Strub, Florian and Altch{\\'e}, Florent and Tallec, Corentin and
               Richemond, Pierre H. and Buchatskaya, Elena and Doersch, Carl and Pires, Bernardo Avila and
               Guo, Zhaohan Daniel and Azar, Mohammad Gheshlaghi and Piot, Bilal and Kavukcuoglu, Koray and
               Munos, R{\\'e}mi and Valko, Michal},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020}
}"""),
    "vicreg": ("VICReg", "non-contrastive",
               "Bardes, Ponce and LeCun, VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised "
               "Learning, ICLR 2022",
               """@inproceedings{bardes2022vicreg,
  title     = {{VICReg}: Variance-Invariance-Covariance Regularization for Self-Supervised Learning},
  author    = {Bardes, Adrien and Ponce, Jean and LeCun, Yann},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}"""),
}
LIGHTLY_BIBTEX = """@misc{lightly,
  title        = {Lightly: a computer vision framework for self-supervised learning},
  howpublished = {\\url{https://github.com/lightly-ai/lightly}}
}"""


@dataclass
class SSLConfig:
    """The `ssl:` section of a recipe.

    The optimiser is AdamW with the `train:` settings and its cosine schedule, as
    LayerMatch's (not the papers' LARS/SGD at batch 4096: these runs see 16 images a step).
    """

    algorithm: Literal["simclr", "byol", "vicreg"] = "simclr"
    features: Literal["auto", "last", "all"] = "auto"  # what the head sees (module docstring); auto resolved
    min_reduction: int = 4  # features 'all': levels of at least this stride (the stride-2 stem is left out)
    hidden_dim: int = 0  # projection (and BYOL prediction) hidden width; 0 = HEAD_SIZES, resolved
    output_dim: int = 0  # embedding size; 0 = HEAD_SIZES, resolved
    temperature: float = 0.5  # SimCLR: NT-Xent temperature (lightly's default)
    momentum: float = 0.99  # BYOL: EMA of the momentum network, cosine-scheduled to 1 over the run
    vicreg_weights: list[float] = field(default_factory=lambda: [25.0, 25.0, 1.0])  # invariance, variance, covariance
    transform: dict = field(default_factory=dict)  # keyword arguments of lightly's view transform (input_size and
    #                                                normalize are set from the recipe)

    def check(self) -> None:
        require(self.min_reduction >= 1, "min_reduction", f"must be >= 1, got {self.min_reduction}")
        for key in ("hidden_dim", "output_dim"):
            require(getattr(self, key) >= 0, key, f"must be >= 0 (0 = the algorithm's usual), got {getattr(self, key)}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(0 <= self.momentum <= 1, "momentum", f"must be in [0, 1], got {self.momentum}")
        require(len(self.vicreg_weights) == 3 and all(w >= 0 for w in self.vicreg_weights), "vicreg_weights",
                f"must be three weights >= 0 (invariance, variance, covariance), got {self.vicreg_weights}")


# ----------------------------------------------------------------------------- views


def view_transform_classes(algorithm: str) -> tuple[type, ...]:
    """lightly's per-view transform classes of an algorithm (BYOL's two views differ: blur, solarisation)."""
    return {"simclr": (SimCLRViewTransform,), "byol": (BYOLView1Transform, BYOLView2Transform),
            "vicreg": (VICRegViewTransform,)}[algorithm]


def make_transform(algorithm: str, resolution: int, mean, std, options: Mapping[str, Any]) -> Callable:
    """lightly's two-view transform for `algorithm`; `options` are its keyword arguments (checked by name)."""
    fixed = {"input_size": resolution, "normalize": {"mean": list(mean), "std": list(std)}}
    for cls in view_transform_classes(algorithm):
        valid = sorted(set(inspect.signature(cls.__init__).parameters) - {"self", *fixed})
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise UserError(f"ssl.transform: {unknown[0]!r} is not an option of lightly's {cls.__name__}; "
                            f"valid: {', '.join(valid)}")
    kwargs = {**options, **fixed}
    try:
        if algorithm == "byol":
            return BYOLTransform(view_1_transform=BYOLView1Transform(**kwargs),
                                 view_2_transform=BYOLView2Transform(**kwargs))
        return {"simclr": SimCLRTransform, "vicreg": VICRegTransform}[algorithm](**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"ssl.transform {dict(options)}: lightly refused it ({err})") from None


class ViewMaker:
    """Two augmented views of every image of a batch, image by image, as lightly's transforms work.

    Images in [-1, 1] become uint8 pixels (NVIDIA's conversion, exact for real images
    read from files), then PIL images, then lightly's transform; the views come back
    normalised with the backbone's mean/std. View k of image i is row i of the k-th tensor.
    """

    def __init__(self, transform: Callable, mean, std):
        self.transform = transform
        self.mean = torch.tensor(mean).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std).reshape(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        pixels = nvidia_uint8(images.detach().float().cpu()).numpy()
        pairs = [self.transform(Image.fromarray(p)) for p in pixels]
        return torch.stack([v[0] for v in pairs]), torch.stack([v[1] for v in pairs])

    def to_image(self, view: torch.Tensor) -> torch.Tensor:
        """A normalised view back in [-1, 1] (for samples.png)."""
        return (view.cpu() * self.std + self.mean) * 2 - 1


def check_transform(views: ViewMaker, resolution: int) -> None:
    """Run the transform once on a grey image: a bad option fails here, before the run folder exists."""
    try:
        v0, v1 = views(torch.zeros(1, 3, resolution, resolution))
    except Exception as err:
        raise UserError(f"ssl.transform: lightly's transform fails on a {resolution} px image "
                        f"({type(err).__name__}: {first_line(err, 150)})") from None
    if v0.shape != (1, 3, resolution, resolution) or v1.shape != v0.shape:
        raise UserError(f"ssl.transform: views of {tuple(v0.shape[1:])} instead of 3x{resolution}x{resolution}")


# ----------------------------------------------------------------------------- the model


def pooled_features(backbone: nn.Module, x: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """Global-average-pooled backbone levels, concatenated: what the projection head sees."""
    feats = backbone(x)
    return torch.cat([F.adaptive_avg_pool2d(feats[i], 1).flatten(1) for i in levels], dim=1)


class SSLModel(nn.Module):
    """The online network (`backbone` + heads) and, for BYOL, its momentum copy; `forward` is the loss.

    forward(view0, view1), with views of the same images row by row:
      simclr  NTXentLoss(z0, z1)                                    z = projection(pool(backbone(view)))
      byol    (NegCos(prediction(z0), zm1) + NegCos(prediction(z1), zm0)) / 2
                                                                    zm = momentum projection of the momentum backbone
      vicreg  VICRegLoss(z0, z1)
    """

    def __init__(self, backbone: nn.Module, levels: list[int], cfg: SSLConfig, distributed: bool = False):
        super().__init__()
        self.backbone = backbone
        self.levels = list(levels)
        self.algorithm = cfg.algorithm
        in_dim = sum(backbone.feature_info.channels()[i] for i in self.levels)
        hidden, out = cfg.hidden_dim, cfg.output_dim
        if cfg.algorithm == "simclr":
            self.projection = SimCLRProjectionHead(in_dim, hidden, out)
            self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=distributed)
        elif cfg.algorithm == "byol":
            self.projection = BYOLProjectionHead(in_dim, hidden, out)
            self.prediction = BYOLPredictionHead(out, hidden, out)
            self.momentum_backbone = copy.deepcopy(backbone)
            self.momentum_projection = copy.deepcopy(self.projection)
            deactivate_requires_grad(self.momentum_backbone)
            deactivate_requires_grad(self.momentum_projection)
            self.criterion = NegativeCosineSimilarity()
        else:
            self.projection = VICRegProjectionHead(in_dim, hidden, out, num_layers=2)
            lam, mu, nu = cfg.vicreg_weights
            self.criterion = VICRegLoss(lambda_param=lam, mu_param=mu, nu_param=nu, gather_distributed=distributed)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The online embedding z of a batch of (normalised) views."""
        return self.projection(pooled_features(self.backbone, x, self.levels))

    @torch.no_grad()
    def momentum_embed(self, x: torch.Tensor) -> torch.Tensor:
        """BYOL's target: the momentum network's embedding (no gradient)."""
        return self.momentum_projection(pooled_features(self.momentum_backbone, x, self.levels))

    def forward(self, view0: torch.Tensor, view1: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.embed(view0), self.embed(view1)
        if self.algorithm == "byol":
            p0, p1 = self.prediction(z0), self.prediction(z1)
            target0, target1 = self.momentum_embed(view0), self.momentum_embed(view1)
            return 0.5 * (self.criterion(p0, target1) + self.criterion(p1, target0))
        return self.criterion(z0, z1)

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """BYOL: momentum network <- m * momentum network + (1 - m) * online network (parameters)."""
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projection, self.momentum_projection, m)


# ----------------------------------------------------------------------------- the task


class SSLTask:
    """One phase for the loop: draw the step's images, make two views, the lightly loss."""

    def __init__(self, model: nn.Module, optimizer, scheduler, views: ViewMaker,
                 images: Callable[[int, int], torch.Tensor], sample_inputs: torch.Tensor, cfg: SSLConfig, train_cfg,
                 device: torch.device):
        self.model, self.optimizer, self.scheduler, self.views = model, optimizer, scheduler, views
        self.images, self.sample_inputs, self.cfg, self.train_cfg, self.device = (images, sample_inputs, cfg,
                                                                                  train_cfg, device)
        self.images_per_step = train_cfg.batch_size * train_cfg.grad_accum

    def _loss(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        view0, view1 = self.views(self.images(step, micro))
        return {"loss": self.model(view0.to(self.device), view1.to(self.device))}

    def phases(self) -> list[Phase]:
        trained = [p for p in self.model.parameters() if p.requires_grad]
        return [Phase("ssl", self.optimizer, self._loss, trained, self.scheduler, grad_accum=self.train_cfg.grad_accum)]

    def after_step(self, step: int) -> None:
        if self.cfg.algorithm == "byol":  # lightly's schedule: momentum from its base value to 1 over the run
            m = momentum_schedule(step, self.train_cfg.steps, self.cfg.momentum, 1.0)
            extract_model_from_parallel(self.model).update_momentum(m)

    def state_objects(self) -> dict[str, object]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    @torch.no_grad()
    def sample_images(self) -> dict[str, torch.Tensor]:
        """Training images and the two views the transform makes of them (fixed seed)."""
        with torch.random.fork_rng():
            torch.manual_seed(12345)
            view0, view1 = self.views(self.sample_inputs)
        return {"image": self.sample_inputs.cpu(), "view 1": self.views.to_image(view0),
                "view 2": self.views.to_image(view1)}


def real_batches(data: ImageSource, train_cfg, seed: int, accelerator) -> Callable[[int, int], torch.Tensor]:
    """The images of (step, micro-batch): positions from `epoch_indices`, a function of the step."""

    def images(step: int, micro: int) -> torch.Tensor:
        idx = epoch_indices(len(data), step * train_cfg.grad_accum + micro, train_cfg.batch_size,
                            accelerator.process_index, accelerator.num_processes, seed)
        return data.batch(idx)

    return images


def generated_batches(G, gen_cfg, batch_size: int, device) -> Callable[[int, int], torch.Tensor]:
    """A fresh batch from the frozen generator, drawn with the RNG the loop re-seeds every step."""

    @torch.no_grad()
    def images(step: int, micro: int) -> torch.Tensor:
        z = G.sample_latents(batch_size, device=device)
        c = G.sample_labels(batch_size, device=device)
        return G(z, c, truncation_psi=gen_cfg.truncation_psi, noise_mode=gen_cfg.noise_mode,
                 fused_modconv=gen_cfg.fused_modconv)

    return images


# ----------------------------------------------------------------------------- the method


@dataclass
class SSLInputs:
    """What `prepare` built and checked before the run folder exists."""

    handle: GeneratorHandle | None  # data.source: generator
    data: ImageSource | None  # real images
    backbone: nn.Module
    levels: list[int]
    mean_std: tuple
    views: ViewMaker
    resolution: int
    find_unused_parameters: bool


def _algorithm(recipe: Mapping[str, Any]) -> str:
    return str((recipe.get("ssl") or {}).get("algorithm", SSLConfig.algorithm))


def _from_generator(recipe: Mapping[str, Any]) -> bool:
    return (recipe.get("data") or {}).get("source") == GENERATOR_SOURCE


class SSL(Method):
    name = "ssl"
    section = "ssl"
    config = SSLConfig
    uses = ("backbone", "data", "train")  # + generator with data.source: generator (uses_for)
    display_name = "self-supervised (lightly)"

    def uses_for(self, recipe: Mapping[str, Any]) -> tuple[str, ...]:
        return ("generator", *self.uses) if _from_generator(recipe) else self.uses

    def card_text(self, recipe: Mapping[str, Any]) -> dict[str, str]:
        algorithm = _algorithm(recipe)
        name, kind, reference, bibtex = REFERENCES.get(algorithm, REFERENCES["simclr"])
        images = ("images drawn from a frozen StyleGAN generator (the generator supplied images only, none of its "
                  "activations)" if _from_generator(recipe) else "the real images named below")
        return {
            "display_name": f"{name} (self-supervised)",
            "reference": f"{reference}; with lightly's implementation",
            "bibtex": f"{bibtex}\n\n{LIGHTLY_BIBTEX}",
            "card_summary": (f"was trained with {name}, a {kind} self-supervised method (lightly's loss, heads and "
                             f"view transforms), on two augmented views of each of {images}. It is a "
                             "self-supervised baseline, not a LayerMatch or GH-Feat backbone"),
        }

    def prepare(self, recipe, num_processes: int) -> SSLInputs:
        cfg, train = recipe.method_cfg, recipe.train
        if train.batch_size < 2:
            raise UserError(f"train.batch_size {train.batch_size}: self-supervised losses compare the images of a "
                            "batch (and the heads use batch norm); use at least 2")
        handle, data = None, None
        if recipe.data.source == GENERATOR_SOURCE:
            handle = open_generator(recipe.generator.source, recipe.generator.network, seed=recipe.seed)
            resolution = handle.G.img_resolution
            if recipe.data.resolution not in (None, resolution):
                raise UserError(f"data.resolution {recipe.data.resolution} differs from the generator's {resolution}; "
                                "drop data.resolution (generated images are used at the generator's resolution)")
        else:
            resolution = recipe.data.resolution or DEFAULT_RESOLUTION
            data = open_images(recipe.data.source, resolution, recipe.data.count, recipe.seed, recipe.data.split,
                               recipe.data.column)
            if len(data) < train.batch_size:
                raise UserError(f"only {len(data)} training images for batch size {train.batch_size}")
        recipe.data.resolution = resolution  # resolved values, saved in recipe.yaml
        torch.manual_seed(recipe.seed)
        backbone = create_backbone(recipe.backbone)
        check_resolution(backbone, recipe.backbone, resolution)
        if cfg.features == "auto":
            cfg.features = "all" if is_hrnet(recipe.backbone.arch) else "last"
        reductions = backbone.feature_info.reduction()
        levels = [len(reductions) - 1] if cfg.features == "last" else \
            [i for i, r in enumerate(reductions) if r >= cfg.min_reduction]
        if not levels:
            raise UserError(f"ssl.min_reduction {cfg.min_reduction}: {recipe.backbone.arch} has no level of that "
                            f"stride (its strides: {reductions})")
        hidden, out = HEAD_SIZES[cfg.algorithm]
        cfg.hidden_dim, cfg.output_dim = cfg.hidden_dim or hidden, cfg.output_dim or out
        mean_std = backbone_mean_std(recipe.backbone, backbone)
        views = ViewMaker(make_transform(cfg.algorithm, resolution, *mean_std, cfg.transform), *mean_std)
        check_transform(views, resolution)
        # HRNet read at its last level only leaves the other branches' last fusion without gradient
        unused = is_hrnet(recipe.backbone.arch) and cfg.features == "last"
        return SSLInputs(handle, data, backbone, levels, mean_std, views, resolution, unused)

    def build(self, prepared: SSLInputs, recipe, accelerator) -> SSLTask:
        cfg, train, device = recipe.method_cfg, recipe.train, accelerator.device
        model = SSLModel(prepared.backbone, prepared.levels, cfg, distributed=accelerator.num_processes > 1)
        optimizer = adamw(model.parameters(), train)
        model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = cosine_schedule(optimizer, train, train.steps)
        if prepared.handle is not None:
            G = prepared.handle.G.to(device)
            images = generated_batches(G, recipe.generator, train.batch_size, device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(recipe.seed + 12345)
                samples = images(0, 0)[:SAMPLE_COUNT].cpu()
        else:
            images = real_batches(prepared.data, train, recipe.seed, accelerator)
            samples = prepared.data.batch(list(range(min(SAMPLE_COUNT, len(prepared.data)))))
        return SSLTask(model, optimizer, scheduler, prepared.views, images, samples, cfg, train, device)

    def describe(self, prepared: SSLInputs, recipe) -> dict:
        cfg = recipe.method_cfg
        channels = prepared.backbone.feature_info.channels()
        transform = "BYOLView1Transform / BYOLView2Transform" if cfg.algorithm == "byol" else \
            view_transform_classes(cfg.algorithm)[0].__name__
        info = {
            "algorithm": cfg.algorithm,
            "features": (f"global average pool of level(s) {prepared.levels} ({sum(channels[i] for i in prepared.levels)}"
                         f" channels) -> projection {cfg.hidden_dim} -> {cfg.output_dim}"),
            "views": f"lightly {transform} at {prepared.resolution} px, options {cfg.transform or 'lightly defaults'}",
            "resolution": prepared.resolution, "mean_std": [list(m) for m in prepared.mean_std],
        }
        if prepared.handle is not None:
            return {**info, "generator": prepared.handle.describe(),
                    "data": "images drawn from the generator at every step"}
        return {**info, "data": {"source": recipe.data.source, "images": len(prepared.data)}}

    def banner(self, prepared: SSLInputs, recipe) -> str:
        b, cfg = recipe.backbone, recipe.method_cfg
        source = (f"generated by {prepared.handle.describe()['description']}" if prepared.handle is not None
                  else f"{len(prepared.data)} images from {recipe.data.source}")
        return f"{REFERENCES[cfg.algorithm][0]}  ·  {b.arch} ({b.init} init)  ·  {source}"


METHOD = SSL()
