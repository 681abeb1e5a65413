"""YAML recipes -> typed, validated dataclasses.

A recipe is everything a run needs to be reproduced. Loading is strict: an unknown
key, a wrong type, an impossible value (zero steps, a negative batch) or malformed
YAML is a `UserError` naming the key and the file, because a silently ignored typo
(`lr_rate: 1e-3`) wastes a GPU-day. `--set a.b=v` overrides are parsed as YAML
scalars and validated the same way.

A recipe has the sections every method shares (`generator`, `backbone`, `data`,
`train`) and one section of its own method (`layermatch:`, `ghfeat:`, `gan:` ...),
whose type the method registry (`genbackbones.methods`) provides. A method reads
only some of the shared sections; a recipe that sets one it does not read is an
error rather than a setting that silently does nothing, and a run saves only the
sections its method reads (`dump_recipe`).

Paths. Bundled recipes (found by name, shipped in `genbackbones/assets/recipes/`)
are templates: their relative paths, like `--set` values, are relative to the
current folder. In a recipe *file* you pass by path, a relative path that exists
next to the file is taken from there, so `benchmarks/recipes/*.yaml` work from any
folder. Local paths that exist are saved absolute in a run's recipe.yaml, so
`--resume` works from anywhere too.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import RecipeValueError, UserError, require
from .methods import get_method, method_names

RECIPES_DIR = Path(__file__).resolve().parent / "assets" / "recipes"
SHARED_SECTIONS = ("generator", "backbone", "data", "train")
GENERATOR_KEYWORDS = ("bundled",)  # generator.source values that are not paths (nor random:/hf-hub: prefixes)
BUDGETS = ("steps", "images_seen", "flops")  # a run's length: exactly one of these in `train:`
DEFAULT_STEPS = 300  # when `train:` gives none of them
DATA_KEYWORDS = ("faces", "generator")  # data.source values that are not paths (generator: SSL's drawn images)


@dataclass
class GeneratorCfg:
    """Which frozen generator, and how to sample it."""

    source: str = "bundled"  # bundled | random:<preset> | folder | .pkl | .pt | hf-hub:org/name
    network: str = "G_ema"  # for NVIDIA pickles: G_ema | G
    truncation_psi: float = 1.0
    noise_mode: Literal["random", "const", "none"] = "random"
    fused_modconv: bool | None = None  # grouped-conv modulation; None = the faster form for the device (unfused
    # on CPU, measured in docs/generator-speed.md; grouped on GPUs, NVIDIA's default)

    def check(self) -> None:
        require(math.isfinite(self.truncation_psi), "truncation_psi", f"must be a finite number, got {self.truncation_psi}")


@dataclass
class DataCfg:
    """Unlabelled images, for the methods that train on them (StyleGAN2 trainer, GH-Feat, SSL).

    Real images (the bundled faces, a folder, a dataset); method ssl also takes `generator`: a fresh batch
    drawn from the recipe's frozen generator every step (its `generator:` section is then read).
    """

    source: str = "faces"  # faces (bundled procedural domain) | image folder | datasets path or Hub id
    #                        | generator (method ssl: images drawn from the recipe's frozen generator)
    count: int = 0  # how many images (faces: the first N of the split; 0 = 50,000 / all)
    split: str = "train"
    column: str = "image"  # image column of a `datasets` dataset
    resolution: int | None = None  # default: the generator's resolution

    def check(self) -> None:
        require(self.count >= 0, "count", f"must be >= 0 (0 = all), got {self.count}")
        require(self.resolution is None or self.resolution >= 1, "resolution", f"must be >= 1, got {self.resolution}")


def is_hrnet(arch: str) -> bool:
    """timm's HRNet family (feature locations, a classification head that LayerMatch does not train)."""
    return arch.split(".")[0].startswith("hrnet")


@dataclass
class BackboneSpec:
    """What to build: a timm architecture, its init, and feature options (a recipe's `backbone:` section)."""

    arch: str = "hrnet_w18_small"
    init: Literal["random", "imagenet"] = "random"
    feature_location: str | None = None  # HRNet only: '' (default, segmentation branches) or 'incre'
    out_indices: tuple[int, ...] | None = None
    pretrained_tag: str | None = None  # e.g. 'ms_in1k'; None = timm's default tag for the arch

    def __post_init__(self) -> None:
        # resolved here, once: HRNet is trained through its segmentation branches unless a recipe says 'incre';
        # other architectures have no feature locations (a recipe switched from HRNet with --set may carry one)
        if is_hrnet(self.arch):
            self.feature_location = "" if self.feature_location is None else self.feature_location
        else:
            self.feature_location = None

    def check(self) -> None:
        require(self.feature_location in (None, "", "incre"), "feature_location",
                f"must be '' or 'incre' (HRNet only), got {self.feature_location!r}")
        # the levels in the order timm returns them (a features model outputs them in network order), so the
        # trained channels line up with the list; the number of levels is checked with timm (`backbones.py`)
        indices = list(self.out_indices or [])
        require(self.out_indices is None or (indices and indices == sorted(set(indices)) and indices[0] >= 0),
                "out_indices", f"must list feature levels as increasing integers >= 0, e.g. [1, 2, 3], or null "
                               f"for the architecture's default, got {indices}")

    def with_init(self, init: str) -> "BackboneSpec":
        """The same architecture with another init (e.g. 'random' to build it before loading weights)."""
        return replace(self, init=init)


@dataclass
class TrainCfg:
    """A recipe's `train:` section: the settings of this loop, shared by every method.

    The length of a run is given one way: `steps`, or a budget of `images_seen`
    (images through the training step, all processes together) or of `flops` (the
    counted FLOPs of a step times the steps, see `count_step_flops`). A budget is
    turned into `steps` when a run starts, before anything is written
    (`resolve_budget`); the saved recipe holds the steps, run.json the budget.
    With none of the three, `steps` is 300.
    """

    steps: int | None = None
    images_seen: int | None = None  # budget: images seen, all processes
    flops: float | None = None  # budget: FLOPs (forward + backward of everything a step runs)
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
    log_with: Literal["tensorboard", "wandb", "all", "none"] = "tensorboard"  # Accelerate trackers
    num_threads: int | None = None  # torch intra-op threads per process (None = torch's default)
    compile: bool = False  # torch.compile the trained model (Accelerate's dynamo plugin); the frozen generator not
    channels_last: bool = False  # trained modules in NHWC memory format (faster convolutions on recent GPUs)

    def __post_init__(self) -> None:
        if self.steps is None and self.images_seen is None and self.flops is None:
            self.steps = DEFAULT_STEPS

    def check(self) -> None:
        given = [key for key in BUDGETS if getattr(self, key) is not None]
        if len(given) > 1:
            require(False, given[-1], f"and train.{given[0]} both give the run's length; keep one "
                                      f"(e.g. --set train.{given[0]}=null)")
        for key in ("steps", "images_seen", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be >= 1, got {value}")
        require(self.flops is None or (self.flops > 0 and math.isfinite(self.flops)), "flops",
                f"must be a positive number, got {self.flops}")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be a positive number, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                f"must be two numbers in [0, 1), got {self.betas}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.keep_checkpoints >= 0, "keep_checkpoints", f"must be >= 0 (0 = keep all), got {self.keep_checkpoints}")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm",
                f"must be > 0 (or null for none), got {self.max_grad_norm}")
        require(self.num_threads is None or self.num_threads >= 1, "num_threads", f"must be >= 1, got {self.num_threads}")


@dataclass
class Recipe:
    name: str = "quickstart"
    description: str = ""
    method: str = "layermatch"  # a name from `genbackbones.methods` (layermatch, ghfeat, stylegan2, ...)
    seed: int = 0
    generator: GeneratorCfg = field(default_factory=GeneratorCfg)
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    license: str | None = None  # licence of the exported weights (defaults to the generator's)
    method_cfg: Any = None  # the method's own section, typed by the method (e.g. LayerMatchConfig)

    def __post_init__(self) -> None:
        if self.method_cfg is None:  # `Recipe(method="ghfeat")` is complete: its section takes its defaults
            config = get_method(self.method).config
            self.method_cfg = config() if config is not None else None

    def check(self) -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


# ----------------------------------------------------------------------------- loading


def resolve_recipe_path(name_or_path: str | None) -> tuple[Path, bool]:
    """A path, or a bundled recipe name ('quickstart', 'layermatch/hrnet_w18-ffhq256'); and whether it is bundled."""
    if name_or_path is None:
        name_or_path = "quickstart"
    p = Path(name_or_path)
    if p.is_file():
        return p, False
    for candidate in (RECIPES_DIR / name_or_path, RECIPES_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate, True
    if p.exists():
        raise UserError(f"recipe {name_or_path!r} is a folder; give a YAML file or a name from `genbackbones recipes`")
    raise UserError(f"recipe {name_or_path!r} not found; give a YAML path or a name from `genbackbones recipes`")


def list_recipes() -> list[Path]:
    """The bundled recipes."""
    return sorted(RECIPES_DIR.rglob("*.yaml")) if RECIPES_DIR.exists() else []


def bundled_name(path: Path) -> str:
    """'layermatch/hrnet_w18-ffhq256' for a bundled recipe file."""
    return str(Path(path).resolve().relative_to(RECIPES_DIR).with_suffix(""))


def read_yaml(path: Path) -> Any:
    """A YAML file's content; unreadable, binary or malformed files are a one-line UserError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (not UTF-8); give a YAML recipe") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror}); check the path and permissions") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise UserError(f"{path}{where}: malformed YAML ({problem}); fix the syntax") from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe (no argument = the quickstart).

    An error is blamed on what caused it: the file when the file alone is wrong, else the first `--set`
    item after which the recipe no longer validates (a typo in `--set` is not the bundled file's fault).
    """
    path, bundled = resolve_recipe_path(None if path is None else str(path))
    data = read_yaml(path)
    if data is None:
        raise UserError(f"{path} is empty; a recipe names its method and the settings it changes, e.g. "
                        "`method: layermatch` (start from one of `genbackbones recipes`)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    if not bundled:
        _resolve_paths_next_to(data, Path(path).resolve().parent)
    overrides = list(overrides or [])
    try:
        return from_data(_overridden(data, overrides), str(path))
    except UserError:
        culprit = _blame_overrides(data, overrides, str(path))
        if culprit is None:
            raise
        raise culprit from None


def _overridden(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    apply_overrides(data, overrides)
    return data


def _blame_overrides(data: dict, overrides: list[str], source: str) -> UserError | None:
    """The error of the first `--set` item that breaks a valid file, named by that item; None when the file
    alone is already wrong (its own error stands). Only on the error path: each try is a validation."""
    try:
        from_data(copy.deepcopy(data), source)
    except UserError:
        return None
    for i, item in enumerate(overrides):
        try:
            from_data(_overridden(data, overrides[:i + 1]), f"--set {item}")
        except UserError as err:
            return err
    return None


def from_data(data: dict, source: str) -> Recipe:
    """A typed recipe from a plain mapping (a parsed YAML file with its overrides applied).

    The method registry gives the type of the method's own section (it imports the method's module).
    """
    data = dict(data)
    if "method" not in data:
        data["method"] = _method_from_section(data, source)
    method_name = data["method"]
    if not isinstance(method_name, str):
        raise UserError(f"{source}: 'method' must be a method name, got {method_name!r}")
    method = get_method(method_name, source)
    own = data.pop(method.section, None) if method.section else None
    uses = method.uses_for(data)
    unused = [k for k in SHARED_SECTIONS if k in data and k not in uses]
    if unused:
        raise UserError(f"{source}: method {method_name} does not read the '{unused[0]}' section; remove it "
                        f"(it reads: {', '.join(uses)}{', ' + method.section if method.section else ''})")
    if "method_cfg" in data:
        raise UserError(f"{source}: unknown recipe key 'method_cfg'")
    recipe = from_dict(Recipe, data, source, extra_hint=method.section)
    if method.config is not None:
        if own is not None and not isinstance(own, dict):
            raise UserError(f"{source}: '{method.section}' must be a section (mapping), got {own!r}")
        recipe.method_cfg = from_dict(method.config, own or {}, source, f"{method.section}.")
    _make_paths_absolute(recipe)
    return recipe


def _method_from_section(data: dict, source: str) -> str:
    """A recipe without `method:` names its method by its one method section (`layermatch: {...}`); with
    neither it is refused, not silently run as the default method."""
    named = [name for name in method_names() if get_method(name).section in data]
    if len(named) == 1:
        return named[0]
    raise UserError(f"{source}: the recipe names no method; add `method: <name>` (one of "
                    f"{', '.join(method_names())}), e.g. `method: layermatch`")


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


def from_dict(cls: type, data: dict, source: str, where: str = "", extra_hint: str | None = None) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys, wrong types and impossible values."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"method_cfg"}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{where}{unknown[0]}"
        valid = sorted(names | ({extra_hint} if extra_hint else set()))
        raise UserError(f"{source}: unknown recipe key '{key}'; valid keys here: {', '.join(valid)}")
    kwargs = {name: _coerce(hints[name], value, source, f"{where}{name}") for name, value in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        try:
            obj.check()
        except RecipeValueError as err:
            raise UserError(f"{source}: '{where}{err.key}' {err.message}") from None
    return obj


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
    if origin in (list, tuple):
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: '{key}' must be a list, got {value!r}")
        items = [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
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


# ----------------------------------------------------------------------------- paths


def _is_local_path(section: str, value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    if section == "generator":
        return value not in GENERATOR_KEYWORDS and not value.startswith(("random:", "hf-hub:"))
    return value not in DATA_KEYWORDS


def _resolve_paths_next_to(data: dict, folder: Path) -> None:
    """Relative paths in a recipe file that exist next to the file are taken from there."""
    for section in ("generator", "data"):
        node = data.get(section)
        if isinstance(node, dict) and _is_local_path(section, node.get("source")):
            candidate = folder / node["source"]
            if not Path(node["source"]).is_absolute() and candidate.exists():
                node["source"] = str(candidate.resolve())


def _make_paths_absolute(recipe: Recipe) -> None:
    """Local sources that exist (relative to the current folder) become absolute: a run can resume anywhere."""
    for section, cfg in (("generator", recipe.generator), ("data", recipe.data)):
        if _is_local_path(section, cfg.source) and Path(cfg.source).exists():
            cfg.source = str(Path(cfg.source).resolve())


# ----------------------------------------------------------------------------- saving


def sections_read(recipe: Recipe) -> tuple[str, ...]:
    """The shared sections the recipe's method reads in this recipe."""
    shared = {section: dataclasses.asdict(getattr(recipe, section)) for section in SHARED_SECTIONS}
    return get_method(recipe.method).uses_for(shared)


def to_dict(recipe: Recipe) -> dict:
    """The sections the recipe's method reads, as plain YAML-able data (tuples as lists)."""
    method = get_method(recipe.method)
    data: dict[str, Any] = {"name": recipe.name, "description": recipe.description, "method": recipe.method,
                            "seed": recipe.seed}
    uses = sections_read(recipe)
    for section in SHARED_SECTIONS:
        if section in uses:
            data[section] = _plain(dataclasses.asdict(getattr(recipe, section)))
    if method.section and recipe.method_cfg is not None:
        data[method.section] = _plain(dataclasses.asdict(recipe.method_cfg))
    data["license"] = recipe.license
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
