"""YAML recipes -> typed, validated dataclasses.

A recipe is everything a run needs to be reproduced. Loading is strict: an unknown
key, a wrong type or malformed YAML is a `UserError` naming the key and the file,
because a silently ignored typo (`lr_rate: 1e-3`) wastes a GPU-day. `--set a.b=v`
overrides are parsed as YAML scalars and validated the same way; the resolved
recipe is saved with every run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"


@dataclass
class GeneratorCfg:
    """Which frozen generator, and how to sample it."""

    source: str = "bundled"  # bundled | random:<preset> | folder | .pkl | .pt | hf-hub:org/name
    network: str = "G_ema"  # for NVIDIA pickles: G_ema | G
    truncation_psi: float = 1.0
    noise_mode: Literal["random", "const", "none"] = "random"
    fused_modconv: bool = False  # grouped-conv modulation (NVIDIA's eval default); unfused is faster on CPU


@dataclass
class BackboneCfg:
    arch: str = "hrnet_w18_small"
    init: Literal["random", "imagenet"] = "random"
    feature_location: str | None = None  # HRNet: '' = segmentation branches (default), 'incre'
    out_indices: list[int] | None = None
    pretrained_tag: str | None = None


@dataclass
class LayerMatchCfg:
    taps: Union[list[str], str] = "auto"  # 'auto' = block outputs within the backbone's feature sizes
    head: Literal["linear", "conv"] = "conv"
    head_hidden: int = 128
    rec_weight: float = 1.0  # lambda of L_rec
    standardize: bool = True  # per-channel running standardisation of targets
    momentum: float = 0.99
    min_reduction: int = 4  # ignore backbone levels finer than this stride


@dataclass
class DataCfg:
    """Real (unlabelled) images, for the methods that train on them (StyleGAN2 trainer, GH-Feat)."""

    source: str = "faces"  # faces (bundled procedural domain) | image folder | datasets path or Hub id
    count: int = 0  # how many images (faces: the first N of the split; 0 = 50,000 / all)
    split: str = "train"
    column: str = "image"  # image column of a `datasets` dataset
    resolution: int | None = None  # default: the generator's resolution


@dataclass
class GanCfg:
    """StyleGAN2 training (non-saturating logistic loss, lazy R1, optional path length, EMA)."""

    preset: str = "small64"  # architecture (see generators.sources.RANDOM_PRESETS) ...
    init_kwargs: dict | None = None  # ... or explicit Generator init kwargs (NVIDIA names)
    r1_gamma: float = 0.05
    r1_every: int = 16
    pl_weight: float = 0.0  # 2.0 in NVIDIA's configs; off by default (expensive on CPU)
    pl_every: int = 4
    style_mixing_prob: float = 0.9
    ema_kimg: float | None = None  # EMA half-life in thousands of images (None = batch * 10 / 32)
    ema_rampup: float | None = 0.05
    mbstd_group: int = 4
    mirror: bool = False  # x-flip half the real images (NVIDIA's --mirror=1): doubles a small dataset of faces
    sample_every: int = 500  # write a sample grid every N steps (0 = only at the end)


@dataclass
class GHFeatCfg:
    """GH-Feat (paper 001): an encoder to the generator's per-layer styles, trained on real images.

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
    lr_decay_every: int = 0  # 0 = train.steps // 4 (official code)
    fpn_channels: int = 512  # width of the FPN / Spatial Alignment maps (paper 512)
    pool_size: int = 4  # each level is pooled to pool_size x pool_size before its FC (paper 4)
    noise_mode: Literal["const", "random", "none"] = "const"  # generator noise while reconstructing
    style_samples: int = 2048  # mapped latents for the per-layer style mean / std the encoder is centred on
    mbstd_group: int = 4  # minibatch-stddev group of a fresh discriminator (generator without D)


@dataclass
class TrainCfg:
    steps: int = 300
    batch_size: int = 16  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    num_threads: int | None = None  # torch intra-op threads per process (None = torch's default)


@dataclass
class Recipe:
    name: str = "quickstart"
    description: str = ""
    method: Literal["layermatch", "stylegan2", "ghfeat"] = "layermatch"
    seed: int = 0
    generator: GeneratorCfg = field(default_factory=GeneratorCfg)
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    layermatch: LayerMatchCfg = field(default_factory=LayerMatchCfg)
    data: DataCfg = field(default_factory=DataCfg)
    gan: GanCfg = field(default_factory=GanCfg)
    ghfeat: GHFeatCfg = field(default_factory=GHFeatCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    license: str | None = None  # licence of the exported weights (defaults to the generator's)


# ----------------------------------------------------------------------------- loading


def resolve_recipe_path(name_or_path: str | None) -> Path:
    """A path, or a name under recipes/ ('quickstart', 'layermatch/hrnet_w18-ffhq256')."""
    if name_or_path is None:
        name_or_path = "quickstart"
    p = Path(name_or_path)
    if p.exists():
        return p
    for candidate in (RECIPES_DIR / name_or_path, RECIPES_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    raise UserError(f"recipe {name_or_path!r} not found; give a YAML path or a name from `genbackbones recipes`")


def list_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.rglob("*.yaml")) if RECIPES_DIR.exists() else []


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe (no argument = the quickstart)."""
    path = resolve_recipe_path(None if path is None else str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: malformed YAML ({getattr(err, 'problem', err)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    apply_overrides(data, overrides or [])
    return from_dict(Recipe, data, str(path))


def apply_overrides(data: dict, overrides: list[str]) -> None:
    """Apply `a.b=value` strings in place (value parsed as a YAML scalar/list)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value (e.g. train.steps=100), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value


def from_dict(cls: type, data: dict, source: str, where: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}{unknown[0]}"
        raise UserError(f"{source}: unknown recipe key '{key}'; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{where}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' must be a section (mapping), got {value!r}")
        return from_dict(tp, value, source, f"{key}.")
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, source, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if len(errors) == 1 else f"{source}: '{key}' has the wrong type: {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(f"{source}: '{key}' must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads '1e-3' as a string
        except ValueError:
            pass
    if tp in (int, str, bool, float) and (type(value) is tp):
        return value
    if tp is Any or (tp is dict and isinstance(value, dict)):
        return value
    raise UserError(f"{source}: '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
