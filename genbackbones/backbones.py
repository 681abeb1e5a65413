"""timm backbones as multi-scale feature extractors, and how images are fed to them.

Every method trains a timm model created with `features_only=True`, so any timm
architecture with `feature_info` works (HRNet, ResNet, ConvNeXt, ...). For HRNet
the segmentation representation is used (`feature_location=''`: the raw branches
at strides 4/8/16/32, plus the stride-2 stem); `'incre'` would give the
classifier's bottleneck features instead.

Generator images live in [-1, 1]. `InputNormalizer` maps them to what the backbone
expects, and the same mean/std is written into the export's `pretrained_cfg`, so a
user feeding [0, 1] images through timm's usual transforms sees what training saw.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import timm
import torch
from torch import nn

from .errors import UserError, first_line
from .recipes import BackboneSpec, is_hrnet  # noqa: F401  (is_hrnet: used here and re-exported)

GENERATOR_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [0,1] -> [-1,1], the generator's range


def feature_kwargs(spec: BackboneSpec) -> dict:
    """Keyword arguments for `timm.create_model(..., features_only=True)`."""
    kwargs: dict = {"features_only": True}
    if is_hrnet(spec.arch):
        kwargs["feature_location"] = spec.feature_location  # resolved by BackboneSpec ('' unless 'incre')
    if spec.out_indices is not None:
        kwargs["out_indices"] = tuple(spec.out_indices)
    return kwargs


def create_backbone(spec: BackboneSpec) -> nn.Module:
    """A timm features_only model; `init='imagenet'` requires timm's weights to be present locally."""
    if not timm.is_model(spec.arch.split(".")[0]):
        raise UserError(f"unknown timm architecture {spec.arch!r}; see `timm.list_models()` for valid names")
    if spec.init not in ("random", "imagenet"):
        raise UserError(f"backbone.init must be 'random' or 'imagenet', got {spec.init!r}")
    check_feature_options(spec)
    name = spec.arch if spec.pretrained_tag is None else f"{spec.arch.split('.')[0]}.{spec.pretrained_tag}"
    if spec.init == "random":
        return _build(spec, name, feature_kwargs(spec))
    return create_pretrained(name, **feature_kwargs(spec))


def check_feature_options(spec: BackboneSpec) -> None:
    """`backbone.out_indices` against the architecture's feature levels, as one line naming the key and the
    valid levels (timm answers an index past the last level with an IndexError deep in its builder).

    The recipe checks the form (increasing integers >= 0, `BackboneSpec.check`) without timm; the number of
    levels needs the architecture itself, so it is checked here, where every method builds its backbone
    before a run folder exists. Only recipes that set `out_indices` pay for the extra (random-init) build.
    """
    if spec.out_indices is None:
        return
    plain = {k: v for k, v in feature_kwargs(spec).items() if k != "out_indices"}
    levels = len(_build(spec, spec.arch.split(".")[0], plain).feature_info)
    wanted = list(spec.out_indices)
    if max(wanted) >= levels:
        raise UserError(f"backbone.out_indices={wanted}: {spec.arch} has feature levels 0-{levels - 1}; "
                        "choose among them, or null for timm's default")


def _build(spec: BackboneSpec, name: str, kwargs: dict) -> nn.Module:
    """timm.create_model with random weights; a failure of the recipe's feature options is a UserError."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as err:  # timm's builders raise IndexError, AssertionError, TypeError, RuntimeError ...
        options = ", ".join(f"backbone.{k}={v!r}" for k, v in (("feature_location", spec.feature_location),
                                                                 ("out_indices", spec.out_indices)) if v is not None)
        raise UserError(f"timm cannot build {spec.arch} as a feature extractor (features_only=True"
                        f"{', ' + options if options else ''}): {type(err).__name__}: {first_line(err, 120)}; "
                        "choose other backbone options or another architecture") from None


@contextmanager
def quiet_timm():
    """Silence timm's builder warnings while loading weights we check ourselves (a full checkpoint loaded into an
    HRNet `features_only` model has classifier weights it does not use, and timm says so at WARNING)."""
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def create_pretrained(name: str, **kwargs) -> nn.Module:
    """timm's pretrained weights for `name`, or a UserError saying how to provide them offline."""
    from .offline import cache_only_when_offline

    try:
        with cache_only_when_offline():
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # no network, not in the HF cache, or no weights for this tag
        hub_id = _hub_id_for(name)
        raise UserError(
            f"ImageNet weights for {name} are not available ({type(err).__name__}); put them in the Hugging Face "
            f"cache (e.g. `huggingface-cli download {hub_id}` on a machine with internet, then copy ~/.cache/huggingface) "
            f"or set backbone.init=random"
        ) from None


def _hub_id_for(name: str) -> str:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        return getattr(cfg, "hf_hub_id", None) or f"timm/{name}"
    except Exception:
        return f"timm/{name}"


def backbone_mean_std(spec: BackboneSpec, model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the backbone is trained with: ImageNet's for imagenet init, else the generator's."""
    if spec.init == "imagenet":
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return GENERATOR_MEAN_STD


class InputNormalizer(nn.Module):
    """Maps generator images in [-1, 1] to backbone input normalised with mean/std (of [0, 1] images)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return ((img + 1) / 2 - self.mean) / self.std


def feature_shapes(model: nn.Module, resolution: int) -> list[tuple[int, int]]:
    """(channels, spatial size) of every feature level for a square input of `resolution`."""
    info = model.feature_info
    return [(c, max(1, resolution // r)) for c, r in zip(info.channels(), info.reduction())]


def check_resolution(backbone: nn.Module, spec: BackboneSpec, resolution: int) -> None:
    """A backbone that cannot take the generator's images is a recipe error, not a crash mid-run."""
    fixed = (getattr(backbone, "pretrained_cfg", {}) or {}).get("fixed_input_size")
    size = (getattr(backbone, "pretrained_cfg", {}) or {}).get("input_size", [3, resolution, resolution])[-1]
    if fixed and size != resolution:
        raise UserError(f"backbone {spec.arch} needs {size}x{size} inputs but the generator makes "
                        f"{resolution}x{resolution} images; choose a backbone without a fixed input size")
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, resolution, resolution))
    except Exception as err:
        raise UserError(f"backbone {spec.arch} cannot take the generator's {resolution}x{resolution} images "
                        f"({first_line(err, 120)}); use a larger generator or another backbone") from None
    finally:
        backbone.train()
    if min(s for _, s in feature_shapes(backbone, resolution)) < 1:
        raise UserError(f"generator resolution {resolution} is too small for {spec.arch}")
