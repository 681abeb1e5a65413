"""Our generator format, and `load_generator`: one entry point for every checkpoint kind.

Our format is a folder (a Hugging Face Hub repo can hold the same files):

    generator.json              what to build and where it came from (see `build_meta`)
    generator.safetensors       the generator's state dict, NVIDIA key names
    discriminator.safetensors   the discriminator's state dict, only if there is one

The discriminator sits in its own file so that the common case (a frozen generator)
reads only the generator's weights, and `generator.safetensors` is exactly
`G.state_dict()`. safetensors holds only tensors, so loading our format, like
loading the imported formats below, runs no code from the file.

`load_generator(source)` accepts:
    a folder in our format               (`convert` writes these)
    NVIDIA `.pkl`                        stylegan2-ada-pytorch / stylegan3 (`nvidia_pickle.py`)
    rosinality `.pt` / `.pth`            rosinality/stylegan2-pytorch (`rosinality.py`)
    `hf-hub:org/name[@revision]`         a Hub repo in our format (works offline from the HF cache)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import atomic
from ..errors import UserError
from .nvidia_pickle import NvidiaNetwork, read_network_pickle, to_plain
from .rosinality import read_rosinality_checkpoint
from .stylegan2 import Discriminator, Generator

FORMAT = "genbackbones.generator/1"
META_FILE = "generator.json"
G_FILE = "generator.safetensors"
D_FILE = "discriminator.safetensors"
HUB_PREFIX = "hf-hub:"
GENERATOR_NETWORKS = ("G_ema", "G")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class LoadedGenerator:
    """A frozen generator (eval mode, no gradients), its discriminator if any, and `generator.json`-style meta."""

    G: Generator
    D: Discriminator | None
    meta: dict[str, Any]


@dataclass
class Provenance:
    """Where a generator came from; recorded in `generator.json` and later in model cards."""

    source: str | None = None  # file name or hf-hub id of the original checkpoint
    source_sha256: str | None = None  # sha256 of that file
    network: str = "G_ema"  # which generator of the checkpoint this is
    license: str | None = None  # e.g. NVIDIA's FFHQ models: "Nvidia Source Code License-NC"
    w_avg: str = "source"  # where mapping.w_avg (the truncation centre) came from


# ----------------------------------------------------------------------------- our format


def build_meta(G: Generator, D: Discriminator | None, provenance: Provenance) -> dict[str, Any]:
    """The content of `generator.json`."""
    from .. import __version__

    return {
        "format": FORMAT,
        "class": "stylegan2",
        "G_init_kwargs": to_plain(G.init_kwargs),
        "D_init_kwargs": to_plain(D.init_kwargs) if D is not None else None,
        "w_avg": provenance.w_avg,
        "source": provenance.source,
        "source_sha256": provenance.source_sha256,
        "network": provenance.network,
        "license": provenance.license,
        "created_by": f"genbackbones {__version__}",
    }


def save_generator(path: str | Path, G: Generator, D: Discriminator | None = None,
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


def load_folder(folder: str | Path, network: str | None = None) -> LoadedGenerator:
    """Load a folder written by `save_generator`."""
    folder = Path(folder)
    meta = read_meta(folder)
    if network is not None and network != meta["network"]:
        raise UserError(f"{folder} holds the checkpoint's {meta['network']}, not {network}; convert the original "
                        f"checkpoint with --network {network}, or ask for network={meta['network']!r}")
    where = f"{folder / META_FILE}"
    G = build_network("Generator", meta["G_init_kwargs"], _read_safetensors(folder / G_FILE), where)
    meta["sha256"] = sha256_file(folder / G_FILE)  # names the weights (a trained folder has no source_sha256)
    D = None
    if meta.get("D_init_kwargs") is not None:
        D = build_network("Discriminator", meta["D_init_kwargs"], _read_safetensors(folder / D_FILE), where)
    return LoadedGenerator(G, D, meta)


def read_meta(folder: Path) -> dict[str, Any]:
    """`generator.json`, checked; every problem is a UserError naming the file."""
    path = folder / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a genbackbones generator folder (no {META_FILE}); create one with "
                        f"`genbackbones generator convert CHECKPOINT {folder}`")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); re-create the folder with `genbackbones generator "
                        "convert`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path} has format {found!r}, expected {FORMAT!r}; re-create the folder with "
                        "`genbackbones generator convert` (or upgrade genbackbones)")
    if meta.get("class") != "stylegan2" or not isinstance(meta.get("G_init_kwargs"), dict):
        raise UserError(f"{path}: expected class 'stylegan2' and a G_init_kwargs object; the file was edited or "
                        "damaged, re-create the folder with `genbackbones generator convert`")
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


def build_network(class_name: str, init_kwargs: dict, state_dict: dict[str, torch.Tensor], where: str) -> nn.Module:
    """Construct our Generator/Discriminator from kwargs, load the weights strictly, freeze it."""
    cls = {"Generator": Generator, "Discriminator": Discriminator}[class_name]
    try:
        module = cls(**init_kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise UserError(f"{where}: cannot build a StyleGAN2 {class_name} from its recorded arguments ({err}); "
                        "the checkpoint may come from a modified StyleGAN2 fork, which is not supported") from None
    load_strict(module, state_dict, f"{where} ({class_name})")
    return module.eval().requires_grad_(False)


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """`load_state_dict(strict=True)` with a one-line explanation of any mismatch."""
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
    module.load_state_dict(state_dict, strict=True)


def _from_networks(networks: dict[str, NvidiaNetwork], network: str | None, source: Path,
                   kind: str) -> LoadedGenerator:
    network = network or "G_ema"
    if network not in GENERATOR_NETWORKS:
        raise UserError(f"network (--network) must be one of {', '.join(GENERATOR_NETWORKS)}, got {network!r}; "
                        "the discriminator D is always kept alongside the generator when the checkpoint has one")
    if network not in networks:
        raise UserError(f"{source.name} has no {network} network (it has: {', '.join(networks) or 'none'})")
    g = networks[network]
    where = f"{source.name}:{network}"
    G = build_network("Generator", g.init_kwargs, g.state_dict, where)
    D = None
    if "D" in networks:
        D = build_network("Discriminator", networks["D"].init_kwargs, networks["D"].state_dict, f"{source.name}:D")
    provenance = Provenance(source=source.name, source_sha256=sha256_file(source), network=network, w_avg=g.w_avg)
    meta = build_meta(G, D, provenance)
    meta["source_format"] = kind
    return LoadedGenerator(G, D, meta)


# ----------------------------------------------------------------------------- dispatch


def load_generator(source: str | Path, network: str | None = "G_ema", device: str | torch.device = "cpu"
                   ) -> LoadedGenerator:
    """Load a frozen generator (and its discriminator) from any supported source.

    `network` picks the generator of a checkpoint: 'G_ema' (the one to use) or 'G'.
    A folder in our format holds one generator; asking it for another is an error,
    and `network=None` means "whatever the source holds" (G_ema for checkpoints).
    """
    text = str(source)
    if text.startswith(HUB_PREFIX):
        loaded = load_folder(download_from_hub(text), network=network)
    else:
        loaded = _load_local(Path(source), network)
    loaded.G.to(device)
    if loaded.D is not None:
        loaded.D.to(device)
    return loaded


def _load_local(path: Path, network: str | None) -> LoadedGenerator:
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if path.is_dir():
        return load_folder(path, network)
    if path.suffix == ".safetensors" or path.name == META_FILE:
        raise UserError(f"{path} is part of a generator folder; pass the folder {path.parent} instead")
    if path.suffix in _TORCH_SUFFIXES or _is_zip(path):
        return _from_networks(read_rosinality_checkpoint(path), network, path, "rosinality")
    return _from_networks(read_network_pickle(path), network, path, "nvidia-pickle")


def convert(source: str | Path, dest: str | Path, network: str | None = "G_ema", license: str | None = None,
            overwrite: bool = False) -> Path:
    """Import a checkpoint (any `load_generator` source) into a folder in our format."""
    dest = Path(dest)
    if dest.exists() and not overwrite:  # check before the (possibly long) load
        raise UserError(f"{dest} already exists; pass --overwrite to replace it")
    loaded = load_generator(source, network=network)
    meta = loaded.meta
    provenance = Provenance(source=meta.get("source"), source_sha256=meta.get("source_sha256"),
                            network=meta.get("network", "G_ema"), license=license or meta.get("license"),
                            w_avg=meta.get("w_avg", "source"))
    return save_generator(dest, loaded.G, loaded.D, provenance, overwrite=overwrite)


def download_from_hub(spec: str) -> Path:
    """`hf-hub:org/name[@revision]` -> local snapshot folder (from the cache when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, \
        RevisionNotFoundError

    repo_id, _, revision = spec[len(HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1:
        raise UserError(f"{spec}: expected hf-hub:org/name or hf-hub:org/name@revision")
    try:
        folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=[META_FILE, G_FILE, D_FILE])
    except LocalEntryNotFoundError:
        raise UserError(f"{spec} is not in the local Hugging Face cache and the Hub cannot be reached (offline or "
                        "HF_HUB_OFFLINE=1); download it once with network access or point HF_HOME at a cache "
                        "that has it") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"{spec}: {first}") from None
    return Path(folder)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
