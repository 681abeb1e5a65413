"""BACKBONE references and baselines -> timm feature extractors, with how to feed each one.

A reference is one of (first match wins):

- a run folder of `genbackbones pretrain` (has `export/config.json`): its export;
- an export folder (`config.json` + weights), or `local-dir:PATH`;
- `hf-hub:org/name`: a timm checkpoint on the Hub (from the local cache when present);
- a timm model name, optionally with a tag (`resnet50`, `resnet50.a1_in1k`): *timm's
  pretrained weights* for it, which must be in the Hugging Face cache (or downloadable).

Baselines mirror each architecture among the backbones (with the feature options of its
first backbone), so a ResNet-18 is never compared only with a random HRNet; the architecture
is appended to a baseline's name when the backbones have more than one:

- `random`: the same architecture, randomly initialised (the init varies with the seed),
  fed with that backbone's normalisation;
- `imagenet`: timm's ImageNet weights for the architecture (the default tag when it is
  trained on ImageNet only, else the first ImageNet-only tag timm lists). If they are
  neither in the cache nor downloadable, the baseline is reported as unavailable with
  how to provide them; nothing else is ever evaluated under that name.

Each backbone is fed with its own `pretrained_cfg` mean/std (the truth written by the
export, or timm's cfg for timm weights).
"""

from __future__ import annotations

import copy
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from ..backbones import BackboneSpec, feature_kwargs, quiet_timm
from ..errors import UserError, first_line
from ..offline import hub_reachable

IMAGENET_DATA = {"in1k", "in12k", "in21k", "in22k"}
OTHER_DATA = ("laion", "openai", "clip", "dfn", "datacomp", "metaclip", "siglip", "webli", "jft", "ig", "swsl",
              "ssl", "lvd", "merged", "cc12m", "yfcc", "wit", "mim")  # tag tokens naming other pretraining data
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class ResolvedBackbone:
    """One backbone to evaluate: where its weights come from and how to feed it."""

    name: str  # label in tables and plots
    reference: str  # what the user typed, or the baseline name
    kind: str  # run | export | hf-hub | timm | imagenet | random
    arch: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None = None
    feature_kwargs: dict = field(default_factory=dict)
    load: dict | None = None  # timm.create_model kwargs for pretrained weights; None = random init
    provenance: dict = field(default_factory=dict)
    _template: nn.Module | None = field(default=None, repr=False, compare=False)

    def build(self, seed: int) -> nn.Module:
        """A fresh features_only model: a copy of the loaded weights, or a seeded random init."""
        if self.load is None:
            torch.manual_seed(seed)
            return timm.create_model(self.arch, pretrained=False, **self.feature_kwargs)
        if self._template is None:
            with quiet_timm():
                self._template = timm.create_model(**self.load, **self.feature_kwargs).eval()
        return copy.deepcopy(self._template)

    def describe(self) -> dict:
        """What the results record about this backbone."""
        return {"name": self.name, "reference": self.reference, "kind": self.kind, "arch": self.arch,
                "weights": _weights_description(self), "mean": list(self.mean), "std": list(self.std),
                "input_size": self.input_size, "feature_kwargs": self.feature_kwargs, "provenance": self.provenance}


@dataclass
class Unavailable:
    """A baseline that could not be evaluated, and why (shown in the report)."""

    name: str
    reason: str


def resolve_backbone(reference: str) -> ResolvedBackbone:
    """A BACKBONE argument -> ResolvedBackbone; a UserError says what is wrong with it."""
    if reference.startswith("hf-hub:"):
        return _hub(reference)
    folder = Path(reference[len("local-dir:"):] if reference.startswith("local-dir:") else reference)
    if folder.is_dir():
        if (folder / "export" / "config.json").exists():
            return _export(folder / "export", reference, kind="run", name=folder.resolve().name)
        if (folder / "config.json").exists():
            return _export(folder, reference, kind="export", name=_folder_name(folder))
        if (folder / "recipe.yaml").exists():
            raise UserError(f"run {folder} has no export yet; run `genbackbones export {shlex.quote(str(folder))}` first")
        raise UserError(f"{folder} is neither a run folder (with export/) nor an export folder (with config.json)")
    if reference.startswith("local-dir:") or "/" in reference or reference.startswith("."):
        raise UserError(f"backbone {reference!r}: folder {folder} does not exist")
    if timm.is_model(reference.split(".")[0]):
        return _timm_pretrained(reference)
    raise UserError(f"backbone {reference!r} is not a run folder, an export folder, hf-hub:org/name or a timm "
                    "model name")


def resolve_baselines(names: list[str], backbones: list[ResolvedBackbone]) -> tuple[list[ResolvedBackbone],
                                                                                  list[Unavailable]]:
    """The requested baselines for each architecture among `backbones` (its first backbone is the template)."""
    for name in names:
        if name not in ("random", "imagenet"):
            raise UserError(f"unknown baseline {name!r}; use imagenet, random or none")
    templates: dict[str, ResolvedBackbone] = {}
    for backbone in backbones:
        templates.setdefault(backbone.arch.split(".")[0], backbone)
    found, missing = [], []
    for arch, first in templates.items():
        suffix = f" ({arch})" if len(templates) > 1 else ""
        for name in names:
            result = random_baseline(first, suffix) if name == "random" else imagenet_baseline(first)
            if isinstance(result, Unavailable):
                result.name += suffix
            (found if isinstance(result, ResolvedBackbone) else missing).append(result)
    return found, missing


def random_baseline(first: ResolvedBackbone, suffix: str = "") -> ResolvedBackbone:
    return ResolvedBackbone(name=f"random init{suffix}", reference="random", kind="random", arch=first.arch,
                            mean=first.mean, std=first.std, input_size=first.input_size,
                            feature_kwargs=dict(first.feature_kwargs),
                            provenance={"init": "random (timm default init, seeded by the evaluation seed)",
                                        "normalisation": f"same as {first.name}"})


def imagenet_baseline(first: ResolvedBackbone) -> ResolvedBackbone | Unavailable:
    """timm's ImageNet weights for the first backbone's architecture, from the cache (or the Hub when online)."""
    arch = first.arch.split(".")[0]
    tag = imagenet_tag(arch)
    if tag is None:
        return Unavailable("imagenet",
                           f"weights not available: timm has no ImageNet-only pretrained weights for {arch}")
    try:
        resolved = _timm_pretrained(f"{arch}.{tag}", feature_options=first.feature_kwargs)
    except UserError as err:
        return Unavailable("imagenet", f"weights not available: {err}")
    resolved.name, resolved.reference, resolved.kind = f"imagenet ({arch}.{tag})", "imagenet", "imagenet"
    return resolved


def imagenet_tag(arch: str) -> str | None:
    """The pretrained tag of `arch` trained on ImageNet only: timm's default if it is, else the first listed."""
    default = timm.models.get_pretrained_cfg(arch)
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{arch}.*") if "." in name]
    if default is not None and default.tag:
        tags.insert(0, default.tag)
    return next((t for t in tags if is_imagenet_only(t)), None)


def is_imagenet_only(tag: str) -> bool:
    """`a1_in1k`, `in12k_ft_in1k` yes; `laion2b_ft_in12k_in1k`, `fb_swsl_ig1b_ft_in1k` no."""
    tokens = tag.lower().split("_")
    return bool(IMAGENET_DATA & set(tokens)) and not any(t.startswith(OTHER_DATA) for t in tokens)


def check_input(backbone: ResolvedBackbone, resolution: int) -> None:
    """Every backbone must accept the evaluation resolution; find out before any training."""
    model = backbone.build(seed=0).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution))
    except Exception as err:
        raise UserError(f"backbone {backbone.name} cannot take {resolution}x{resolution} images "
                        f"({first_line(err, 100)}); choose another --resolution") from None


def unique_names(backbones: list[ResolvedBackbone]) -> None:
    """Two references with the same display name get #2, #3 suffixes."""
    seen: dict[str, int] = {}
    for b in backbones:
        seen[b.name] = seen.get(b.name, 0) + 1
        if seen[b.name] > 1:
            b.name = f"{b.name} #{seen[b.name]}"


# ---------------------------------------------------------------------------


def _folder_name(folder: Path) -> str:
    folder = folder.resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.name == "export" else folder.name


def _export(folder: Path, reference: str, kind: str, name: str) -> ResolvedBackbone:
    """An export folder: config.json says the architecture, the normalisation and our provenance."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except Exception as err:
        raise UserError(f"{folder / 'config.json'} is unreadable ({type(err).__name__}); re-export the run") from None
    if not any((folder / f).exists() for f in WEIGHT_FILES):
        raise UserError(f"{folder} has no model.safetensors; re-export the run (`genbackbones export RUN`)")
    arch = config.get("architecture")
    if not arch or not timm.is_model(arch.split(".")[0]):
        raise UserError(f"{folder / 'config.json'}: unknown timm architecture {arch!r}")
    pcfg = config.get("pretrained_cfg", {})
    provenance = config.get("genbackbones", {})
    spec = provenance.get("backbone", {})
    kwargs = feature_kwargs(BackboneSpec(arch=arch, feature_location=spec.get("feature_location"),
                                         out_indices=tuple(spec["out_indices"]) if spec.get("out_indices") else None))
    summary = {k: provenance.get(k) for k in ("method", "steps", "images_per_step", "generator", "versions")
               if k in provenance}
    summary["folder"] = str(folder.resolve())
    return ResolvedBackbone(name=name, reference=reference, kind=kind, arch=arch,
                            mean=tuple(pcfg.get("mean", (0.485, 0.456, 0.406))),
                            std=tuple(pcfg.get("std", (0.229, 0.224, 0.225))),
                            input_size=(pcfg.get("input_size") or [None])[-1], feature_kwargs=kwargs,
                            load={"model_name": f"local-dir:{folder.resolve()}", "pretrained": True},
                            provenance=summary)


def _hub(reference: str) -> ResolvedBackbone:
    """hf-hub:org/name: the cached snapshot when present (no network), else timm downloads it."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo = reference[len("hf-hub:"):]
    config = try_to_load_from_cache(repo, "config.json")
    weights = next((w for w in WEIGHT_FILES if isinstance(try_to_load_from_cache(repo, w), str)), None)
    if isinstance(config, str) and weights:
        resolved = _export(Path(config).parent, reference, kind="hf-hub", name=repo)
        resolved.provenance["hub_repo"] = repo
        return resolved
    if not hub_reachable():
        raise UserError(f"{reference} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub is "
                        f"offline; download it on a machine with internet (`hf download {repo}`) and copy the cache")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, allow_patterns=["config.json", *WEIGHT_FILES])
    except Exception as err:
        raise UserError(f"cannot get {reference} ({type(err).__name__}); check the repo id, or download it on a "
                        f"machine with internet and copy the Hugging Face cache") from None
    resolved = _export(Path(folder), reference, kind="hf-hub", name=repo)
    resolved.provenance["hub_repo"] = repo
    return resolved


def _timm_pretrained(reference: str, feature_options: dict | None = None) -> ResolvedBackbone:
    """timm's own pretrained weights for `arch[.tag]`: from the cache without network, or downloaded."""
    from huggingface_hub import constants, try_to_load_from_cache

    arch = reference.split(".")[0]
    cfg = timm.models.get_pretrained_cfg(reference)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"timm has no pretrained weights for {reference!r}")
    name = f"{arch}.{cfg.tag}" if cfg.tag else arch
    kwargs = feature_options if feature_options is not None else feature_kwargs(BackboneSpec(arch=arch))
    hub_id = cfg.hf_hub_id or name
    cached = next((p for p in (try_to_load_from_cache(hub_id, f) for f in WEIGHT_FILES) if isinstance(p, str)), None)
    if cached:
        load = {"model_name": name, "pretrained": True, "pretrained_cfg_overlay": {"file": cached}}
    elif not hub_reachable():
        raise UserError(f"{hub_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub is "
                        f"offline; on a machine with "
                        f"internet run `hf download {hub_id}` (or `huggingface-cli download {hub_id}`) and copy the "
                        "cache here, or set HF_HOME to a cache that has it")
    else:
        load = {"model_name": name, "pretrained": True}
    resolved = ResolvedBackbone(name=name, reference=reference, kind="timm", arch=arch, mean=tuple(cfg.mean),
                                std=tuple(cfg.std), input_size=cfg.input_size[-1], feature_kwargs=dict(kwargs),
                                load=load, provenance={"timm_weights": name, "hf_hub_id": hub_id,
                                                       "weights_file": cached or "(downloaded by timm)"})
    try:
        resolved.build(seed=0)
    except Exception as err:
        raise UserError(f"{name} weights could not be loaded ({type(err).__name__}: {first_line(err, 100)})"
                        f"; put {hub_id} in the Hugging Face cache (`hf download {hub_id}` on a machine with "
                        "internet, then copy the cache)") from None
    return resolved


def _weights_description(b: ResolvedBackbone) -> str:
    if b.kind == "random":
        return f"{b.arch}, random init"
    if b.kind in ("timm", "imagenet"):
        return f"timm {b.provenance.get('timm_weights')} from {b.provenance.get('weights_file')}"
    return f"{b.kind} {b.provenance.get('folder', b.reference)}"
