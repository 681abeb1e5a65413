"""Our generator format: a folder (a Hugging Face Hub repo can hold the same files).

    generator.json              what to build and where it came from (see `build_meta`); its
                                "class" names the family: "stylegan2" or "stylegan3"
    generator.safetensors       the generator's state dict, NVIDIA key names
    discriminator.safetensors   the discriminator's state dict, only if there is one

The discriminator sits in its own file so that the common case (a frozen generator)
reads only the generator's weights, and `generator.safetensors` is exactly
`G.state_dict()`. safetensors holds only tensors, so loading our format, like
loading the imported formats (nvidia_pickle.py, rosinality.py), runs no code from
the file. Every source kind is opened through `generators.open.open_generator`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import atomic
from ...errors import UserError
from ..base import GeneratorHandle
from ..stylegan2 import Discriminator, Generator
from ..stylegan3 import Generator as StyleGAN3Generator
from .nvidia_pickle import _one_line, to_plain

FORMAT = "genbackbones.generator/1"
META_FILE = "generator.json"
G_FILE = "generator.safetensors"
D_FILE = "discriminator.safetensors"
# generator.json "class" -> the generator class; the discriminator is StyleGAN2's for both (as NVIDIA pairs them)
GENERATOR_CLASSES: dict[str, type[nn.Module]] = {"stylegan2": Generator, "stylegan3": StyleGAN3Generator}


@dataclass
class Provenance:
    """Where a generator came from; recorded in `generator.json` and later in model cards."""

    source: str | None = None  # file name or hf-hub id of the original checkpoint
    source_sha256: str | None = None  # sha256 of that file
    network: str = "G_ema"  # which generator of the checkpoint this is
    license: str | None = None  # e.g. NVIDIA's FFHQ models: "Nvidia Source Code License-NC"
    w_avg: str = "source"  # where mapping.w_avg (the truncation centre) came from


# ----------------------------------------------------------------------------- our format


def generator_family(G: nn.Module) -> str:
    """'stylegan2' or 'stylegan3': what `generator.json` records so that the folder builds the same class."""
    for family, cls in GENERATOR_CLASSES.items():
        if type(G) is cls:
            return family
    raise TypeError(f"not a generator genbackbones can save: {type(G).__name__}")


def build_meta(G: nn.Module, D: Discriminator | None, provenance: Provenance) -> dict[str, Any]:
    """The content of `generator.json`."""
    from ...version import __version__

    return {
        "format": FORMAT,
        "class": generator_family(G),
        "G_init_kwargs": to_plain(G.init_kwargs),
        "D_init_kwargs": to_plain(D.init_kwargs) if D is not None else None,
        "w_avg": provenance.w_avg,
        "source": provenance.source,
        "source_sha256": provenance.source_sha256,
        "network": provenance.network,
        "license": provenance.license,
        "created_by": f"genbackbones {__version__}",
    }


def save_generator(path: str | Path, G: nn.Module, D: Discriminator | None = None,
                   provenance: Provenance | None = None, overwrite: bool = False) -> Path:
    """Write G (and D) in our format; the folder appears complete or not at all."""
    from safetensors.torch import save

    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    meta = build_meta(G, D, provenance or Provenance())
    with atomic.directory(path, overwrite=overwrite) as tmp:
        (tmp / G_FILE).write_bytes(save(_tensors(G), metadata={"format": "pt"}))
        if D is not None:
            (tmp / D_FILE).write_bytes(save(_tensors(D), metadata={"format": "pt"}))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def load_folder(folder: str | Path, network: str | None = None) -> GeneratorHandle:
    """Load a folder written by `save_generator`."""
    folder = Path(folder)
    meta = read_meta(folder)
    if network is not None and network != meta["network"]:
        raise UserError(f"{folder} holds the checkpoint's {meta['network']}, not {network}; convert the original "
                        f"checkpoint with --network {network}, or ask for network={meta['network']!r}")
    where = f"{folder / META_FILE}"
    G = build_network("Generator", meta["G_init_kwargs"], _read_safetensors(folder / G_FILE), where,
                      family=meta["class"])
    meta["sha256"] = sha256_file(folder / G_FILE)  # names the weights (a trained folder has no source_sha256)
    D = None
    if meta.get("D_init_kwargs") is not None:
        D = build_network("Discriminator", meta["D_init_kwargs"], _read_safetensors(folder / D_FILE), where)
    return GeneratorHandle(G, D, meta)


def read_meta(folder: Path) -> dict[str, Any]:
    """`generator.json`, checked; every problem is a UserError naming the file."""
    path = folder / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a genbackbones generator folder (no {META_FILE}); create one with "
                        f"`genbackbones generator convert CHECKPOINT {shlex.quote(str(folder))}`")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-create the folder with `genbackbones generator "
                        "convert`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path} has format {found!r}, expected {FORMAT!r}; re-create the folder with "
                        "`genbackbones generator convert` (or upgrade genbackbones)")
    if meta.get("class") not in GENERATOR_CLASSES or not isinstance(meta.get("G_init_kwargs"), dict):
        raise UserError(f"{path}: expected class {' or '.join(map(repr, GENERATOR_CLASSES))} and a G_init_kwargs "
                        "object; the file was edited or damaged, re-create the folder with `genbackbones generator "
                        "convert`")
    meta.setdefault("network", "G_ema")
    return meta


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing; re-download the folder or re-create it with `genbackbones generator "
                        "convert`")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is truncated or corrupt ({err}); re-download it or re-create the folder with "
                        "`genbackbones generator convert`") from None


# ----------------------------------------------------------------------------- building networks


def build_network(class_name: str, init_kwargs: dict, state_dict: dict[str, torch.Tensor], where: str,
                  family: str = "stylegan2") -> nn.Module:
    """Construct our Generator/Discriminator from kwargs, load the weights strictly, freeze it.

    `family` picks the generator ('stylegan2' or 'stylegan3'); discriminators are StyleGAN2's."""
    cls = GENERATOR_CLASSES[family] if class_name == "Generator" else Discriminator
    name = "StyleGAN3" if cls is StyleGAN3Generator else "StyleGAN2"
    resolution = init_kwargs.get("img_resolution")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4 \
            or (name == "StyleGAN2" and resolution & (resolution - 1)):
        need = "a power of two >= 4" if name == "StyleGAN2" else "an integer >= 4"
        raise UserError(f"{where}: the recorded img_resolution={resolution!r} is not {need}; the checkpoint is "
                        "damaged or was edited")
    for key, count in _layer_counts(init_kwargs):
        if count > len(state_dict):  # every layer holds at least one tensor; a million layers is a memory bomb too
            raise UserError(f"{where}: the recorded {key}={count} asks for more layers than the {len(state_dict)} "
                            "tensors of its weights; the checkpoint is damaged or was edited")
    # The file's kwargs size every layer before any weight is compared: built on the meta device first (no
    # memory), a channel_max of 2**15 beside small weights is one line here instead of ~38 GB per layer.
    with torch.device("meta"):
        skeleton = _construct(cls, init_kwargs, where, name, class_name)
    check_shapes(skeleton, state_dict, f"{where} ({class_name})")
    module = _construct(cls, init_kwargs, where, name, class_name)
    load_strict(module, state_dict, f"{where} ({class_name})")
    return module.eval().requires_grad_(False)


def _layer_counts(kwargs: dict, prefix: str = "") -> list[tuple[str, int]]:
    """Every `num_layers` in the (nested) kwargs, as (dotted key, value)."""
    found = []
    for key, value in kwargs.items():
        if isinstance(value, dict):
            found += _layer_counts(value, f"{prefix}{key}.")
        elif key == "num_layers" and isinstance(value, int):
            found.append((f"{prefix}{key}", value))
    return found


def _construct(cls: type[nn.Module], init_kwargs: dict, where: str, name: str, class_name: str) -> nn.Module:
    """`cls(**init_kwargs)`; what impossible kwargs raise inside the constructor (numpy, torch, arithmetic) is one
    line."""
    try:
        return cls(**init_kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, ZeroDivisionError, OverflowError,
            MemoryError) as err:
        raise UserError(f"{where}: cannot build a {name} {class_name} from its recorded arguments "
                        f"({_one_line(err)}); the checkpoint may come from a modified {name} fork, which is not "
                        "supported") from None


def check_shapes(module: nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Every name and shape of `module.state_dict()` against `state_dict`; a mismatch is one line naming it."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)}!={tuple(v.shape)}" for k, v in expected.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if items]
    if problems:
        raise UserError(f"{where}: weights do not match the architecture ({'; '.join(problems)}); the file is "
                        "damaged or comes from a modified StyleGAN2, which is not supported")


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """`load_state_dict(strict=True)` with a one-line explanation of any mismatch."""
    check_shapes(module, state_dict, where)
    module.load_state_dict(state_dict, strict=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
