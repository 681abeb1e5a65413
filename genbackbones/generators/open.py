"""Open any generator source: one function, one vocabulary, one handle type.

    bundled                 the small generator trained on the procedural faces, shipped in
                            `genbackbones/assets/faces64` (docs/generators.md)
    random:<preset>         a seeded, randomly initialised StyleGAN2 (or StyleGAN3: sg3-* presets): a
                            real generator function (structured, multi-scale activations) but not a
                            trained one; for smoke tests and speed measurements, not for a backbone
                            worth using
    a folder                our format (formats/folder.py; `convert` writes these)
    NVIDIA `.pkl`           stylegan2-ada-pytorch / stylegan3 (formats/nvidia_pickle.py, no code runs)
    NVIDIA TensorFlow `.pkl`  NVlabs/stylegan2 config-e/f, stylegan2-ada (formats/tf_pickle.py, no code runs)
    rosinality `.pt`        rosinality/stylegan2-pytorch (formats/rosinality.py)
    hf-hub:org/name[@rev]   a Hub repo in our format (works offline from the HF cache)

Every command and API that takes a generator takes these (`open_generator`), and
`convert` writes any of them as a folder in our format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import UserError
from ..offline import HUB_PREFIX
from .base import GeneratorHandle, freeze
from .formats.folder import D_FILE, G_FILE, META_FILE, Provenance, build_meta, build_network, load_folder, \
    save_generator, sha256_file
from .formats.nvidia_pickle import NvidiaNetwork, read_network_pickle
from .formats.rosinality import read_rosinality_checkpoint
from .formats.tf_pickle import is_tf_pickle, read_tf_pickle
from .stylegan2 import Generator
from .stylegan3 import Generator as StyleGAN3Generator

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_DIR = ASSETS / "faces64"
GENERATOR_NETWORKS = ("G_ema", "G")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")

RANDOM_PRESETS: dict[str, dict] = {
    # 64 px, 1.1 M parameters (32 channels at 64 px, 128 at <= 16 px): the bundled generator
    "small64": dict(z_dim=128, c_dim=0, w_dim=128, img_resolution=64, img_channels=3,
                    mapping_kwargs={"num_layers": 4},
                    synthesis_kwargs={"channel_base": 2048, "channel_max": 128}),
    # 256 px, 24 M parameters in G: the configuration of NVIDIA's stylegan2-ffhq-256x256.pkl (stylegan3
    # repository, --cfg=stylegan2 --cbase=16384, 8 mapping layers). Random weights: for throughput and for
    # checking that the real-scale recipes run, not for features
    "ffhq256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                    mapping_kwargs={"num_layers": 8},
                    synthesis_kwargs={"channel_base": 16384, "channel_max": 512, "num_fp16_res": 4,
                                      "conv_clamp": 256}),
    # 256 px / 512 px, 30 M parameters in G: NVIDIA's TensorFlow config-f LSUN networks as tf_pickle.py converts
    # them (stylegan2-church-config-f.pkl, stylegan2-car-config-f.pkl: fmap_base 16384 -> channel_base 32768,
    # fp32, no clamping); the car network draws 512x384 pictures inside 512x512 squares. Random weights: for
    # checking that the LSUN recipes run, not for features
    "church256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                      mapping_kwargs={"num_layers": 8},
                      synthesis_kwargs={"channel_base": 32768, "channel_max": 512}),
    "car512": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=512, img_channels=3,
                   mapping_kwargs={"num_layers": 8},
                   synthesis_kwargs={"channel_base": 32768, "channel_max": 512}),
    # 32 px, tiny: for tests
    "tiny32": dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                   mapping_kwargs={"num_layers": 2},
                   synthesis_kwargs={"channel_base": 1024, "channel_max": 64}),
}

# StyleGAN3 architectures for `random:` (a separate table: RANDOM_PRESETS are also StyleGAN2 training presets)
RANDOM_STYLEGAN3_PRESETS: dict[str, dict] = {
    # 32 px, tiny, --cfg=stylegan3-t (3x3 convs, separable filters): layers of 36 and 52 px, 64 channels
    "sg3-t32": dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                    mapping_kwargs={"num_layers": 2},
                    synthesis_kwargs={"channel_base": 1024, "channel_max": 64, "magnitude_ema_beta": 0.999}),
    # 32 px, tiny, --cfg=stylegan3-r (1x1 convs, radial down-sampling filters), channels doubled as train.py does
    "sg3-r32": dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                    mapping_kwargs={"num_layers": 2},
                    synthesis_kwargs={"channel_base": 2048, "channel_max": 128, "conv_kernel": 1,
                                      "use_radial_filters": True, "magnitude_ema_beta": 0.999}),
    # 64 px, config t, 128 channels throughout (layers of 36..84 px): smoke runs and the speed benchmark
    "sg3-t64": dict(z_dim=128, c_dim=0, w_dim=128, img_resolution=64, img_channels=3,
                    mapping_kwargs={"num_layers": 2},
                    synthesis_kwargs={"channel_base": 8192, "channel_max": 128}),
    # NVIDIA's release configurations (train.py defaults: z/w 512, 2 mapping layers; --cbase as in the StyleGAN3
    # repository's configs.md). Random weights: for throughput and for checking that recipes run, not features.
    # stylegan3-t-ffhqu-256x256.pkl: --cfg=stylegan3-t --cbase=16384
    "sg3-t-ffhqu-256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                            mapping_kwargs={"num_layers": 2},
                            synthesis_kwargs={"channel_base": 16384, "channel_max": 512}),
    # stylegan3-t-afhqv2-512x512.pkl: --cfg=stylegan3-t (channel_base 32768, channel_max 512)
    "sg3-t-afhqv2-512": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=512, img_channels=3,
                             mapping_kwargs={"num_layers": 2},
                             synthesis_kwargs={"channel_base": 32768, "channel_max": 512}),
}


def open_generator(source: str | Path, network: str | None = "G_ema", seed: int = 0,
                   device: str | torch.device = "cpu") -> GeneratorHandle:
    """A frozen generator (and its discriminator, when the source has one) from any source above.

    `network` picks the generator of a checkpoint: 'G_ema' (the one to use) or 'G'.
    A folder in our format holds one generator; asking it for another is an error,
    and `network=None` means "whatever the source holds". `seed` seeds `random:`.
    """
    text = str(source)
    if text.startswith("random:"):
        handle = random_generator(text.split(":", 1)[1], seed)
    elif text == "bundled":
        if not (BUNDLED_DIR / META_FILE).exists():
            raise UserError(f"the bundled generator is missing from {BUNDLED_DIR}; reinstall genbackbones or set "
                            "generator.source to a checkpoint (or random:small64 for a smoke test)")
        handle = load_folder(BUNDLED_DIR, network=network)
    elif text.startswith(HUB_PREFIX):
        handle = load_folder(download_from_hub(text), network=network)
    else:
        handle = _open_local(Path(source), network)
    freeze(handle.G).to(device)
    if handle.D is not None:
        handle.D.to(device)
    return handle


def random_generator(preset: str, seed: int) -> GeneratorHandle:
    presets = {**RANDOM_PRESETS, **RANDOM_STYLEGAN3_PRESETS}
    if preset not in presets:
        raise UserError(f"unknown random generator preset {preset!r}; choose from {', '.join(presets)}")
    kwargs = presets[preset]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = StyleGAN3Generator(**kwargs) if preset in RANDOM_STYLEGAN3_PRESETS else Generator(**kwargs)
        with torch.no_grad():  # untrained noise strengths are 0; give the noise inputs a role
            for name, p in G.named_parameters():
                if name.endswith("noise_strength"):
                    p.fill_(0.1)
    digest = hashlib.sha256(json.dumps({"preset": preset, "seed": seed}).encode()).hexdigest()
    meta = {"source": f"random:{preset}", "seed": seed, "trained": False, "sha256": digest,
            "license": "Apache-2.0", "init_kwargs": kwargs}
    return GeneratorHandle(G, None, meta)


def convert(source: str | Path, dest: str | Path, network: str | None = "G_ema", license: str | None = None,
            overwrite: bool = False) -> Path:
    """Write any source `open_generator` takes as a folder in our format."""
    dest = Path(dest)
    if dest.exists() and not overwrite:  # check before the (possibly long) load
        raise UserError(f"{dest} already exists; pass --overwrite to replace it")
    handle = open_generator(source, network=network)
    meta = handle.meta
    provenance = Provenance(source=meta.get("source"), source_sha256=meta.get("source_sha256"),
                            network=meta.get("network", "G_ema"), license=license or meta.get("license"),
                            w_avg=meta.get("w_avg", "source"))
    return save_generator(dest, handle.G, handle.D, provenance, overwrite=overwrite)


def _open_local(path: Path, network: str | None) -> GeneratorHandle:
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if path.is_dir():
        return load_folder(path, network)
    if path.suffix == ".safetensors" or path.name == META_FILE:
        raise UserError(f"{path} is part of a generator folder; pass the folder {path.parent} instead")
    if path.suffix in _TORCH_SUFFIXES or _is_zip(path):
        return _from_networks(read_rosinality_checkpoint(path), network, path, "rosinality")
    if is_tf_pickle(path):
        return _from_networks(read_tf_pickle(path), network, path, "nvidia-tf-pickle")
    return _from_networks(read_network_pickle(path), network, path, "nvidia-pickle")


def _from_networks(networks: dict[str, NvidiaNetwork], network: str | None, source: Path,
                   kind: str) -> GeneratorHandle:
    network = network or "G_ema"
    if network not in GENERATOR_NETWORKS:
        raise UserError(f"network (--network) must be one of {', '.join(GENERATOR_NETWORKS)}, got {network!r}; "
                        "the discriminator D is always kept alongside the generator when the checkpoint has one")
    if network not in networks:
        raise UserError(f"{source.name} has no {network} network (it has: {', '.join(networks) or 'none'})")
    g = networks[network]
    where = f"{source.name}:{network}"
    G = build_network("Generator", g.init_kwargs, g.state_dict, where, family=g.architecture)
    D = None
    if "D" in networks:
        D = build_network("Discriminator", networks["D"].init_kwargs, networks["D"].state_dict, f"{source.name}:D")
    provenance = Provenance(source=source.name, source_sha256=sha256_file(source), network=network, w_avg=g.w_avg)
    meta = build_meta(G, D, provenance)
    meta["source_format"] = kind
    return GeneratorHandle(G, D, meta)


def download_from_hub(spec: str) -> Path:
    """`hf-hub:org/name[@revision]` -> local snapshot folder (from the cache when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, \
        RevisionNotFoundError

    repo_id, _, revision = spec[len(HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1:
        raise UserError(f"{spec}: expected hf-hub:org/name or hf-hub:org/name@revision")
    from ..offline import cache_only_when_offline

    try:
        with cache_only_when_offline():
            folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=[META_FILE, G_FILE, D_FILE])
    except LocalEntryNotFoundError:
        raise UserError(f"{spec} is not in the local Hugging Face cache and the Hub cannot be reached (offline or "
                        "HF_HUB_OFFLINE=1); download it once with network access or point HF_HOME at a cache "
                        "that has it") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"{spec}: {first}") from None
    return Path(folder)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
