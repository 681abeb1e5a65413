"""Read rosinality/stylegan2-pytorch checkpoints into NVIDIA's layout.

rosinality's `.pt` files come in two shapes:

* converted from NVIDIA's TensorFlow release by its `convert_weight.py`:
  `{"g_ema": state_dict, "latent_avg": tensor}` (optionally also `g`, `d`);
* written by its `train.py`: `{"g", "d", "g_ema", "g_optim", "d_optim", "args", ...}`
  where `args` is an `argparse.Namespace`.

Both are read with `torch.load(weights_only=True)` (only `argparse.Namespace` is added
to torch's allowlist), so loading one runs no code from it.

The architecture is NVIDIA's StyleGAN2 config-f written differently, and every
weight has a place in our (NVIDIA-named) networks; `generator_state_dict` and
`discriminator_state_dict` are the key mapping. The computations agree up to float
rounding, with these differences in how the same numbers are stored or used:

* modulated conv weights carry a leading batch dim of 1 (dropped); noise strengths
  are shape [1] (NVIDIA: scalar); the const input is [1, C, 4, 4] (NVIDIA: [C, 4, 4]);
  ToRGB bias is [1, 3, 1, 1] (NVIDIA: [3]); noise buffers are [1, 1, R, R] (NVIDIA: [R, R]).
* the learnt bias of each styled conv lives in `activate.bias` (FusedLeakyReLU:
  leaky_relu(x + b, 0.2) * sqrt(2)), which is NVIDIA's `bias_act` with the same gain.
* EqualLinear scales weights by lr_mul/sqrt(fan_in) and the bias by lr_mul, like
  NVIDIA's FullyConnectedLayer; the mapping lr_mul is 0.01 in both.
* rosinality multiplies conv weights by 1/sqrt(fan_in) *before* demodulation, NVIDIA
  does not (the factor cancels in the demodulation). Only the 1e-8 epsilon inside the
  rsqrt sees the difference: in NVIDIA's units rosinality's epsilon is 1e-8 * fan_in,
  against a sum of squares of order fan_in, so outputs change by ~1e-8 relative,
  below float32 rounding. We use NVIDIA's form.
* upsampling convs are a transposed conv followed by a blur (kernel [1,3,3,1] outer
  product, x4): exactly what NVIDIA's `conv2d_resample(up=2)` computes, and both
  repositories store those weights already flipped, so they copy over unchanged.
  Blur kernels (stored x4 for upsampling) become NVIDIA's normalised `resample_filter`
  buffers; only the default [1,3,3,1] kernel is supported.
* the truncation centre: `latent_avg` of converted checkpoints (TensorFlow's
  `dlatent_avg`) becomes `mapping.w_avg`. Training checkpoints have none; we estimate
  it as the mean of mapping(z) over `W_AVG_SAMPLES` seeded z (rosinality's own
  `mean_latent` does the same with 4096 unseeded samples) and say so in the metadata.
* channel counts are read from the tensor shapes and expressed as NVIDIA's
  `channel_base` / `channel_max`; the mapping is 'skip' G and 'resnet' D, unconditional.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ...errors import UserError
from .nvidia_pickle import NvidiaNetwork
from ..stylegan2 import MappingNetwork
from ..ops import setup_filter

W_AVG_SAMPLES = 10_000
W_AVG_SEED = 0
_DEFAULT_BLUR = [1, 3, 3, 1]
# rosinality checkpoint key -> NVIDIA network name
_NETWORKS = {"g_ema": "G_ema", "g": "G", "d": "D"}


def is_rosinality_state_dict(state: Any) -> bool:
    return isinstance(state, dict) and "style.1.weight" in state and "input.input" in state


def read_rosinality_checkpoint(path: str | Path) -> dict[str, NvidiaNetwork]:
    """The networks (`G_ema`, `G`, `D`, whichever are present) of a rosinality `.pt` file."""
    path = Path(path)
    ckpt = _torch_load(path)
    if is_rosinality_state_dict(ckpt):  # a bare g_ema state dict
        ckpt = {"g_ema": ckpt}
    if not isinstance(ckpt, dict) or not any(k in ckpt for k in _NETWORKS):
        keys = ", ".join(map(str, list(ckpt)[:8])) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path.name} is not a rosinality/stylegan2-pytorch checkpoint (expected g_ema, g or d; "
                        f"found {keys})")
    args = vars(ckpt["args"]) if isinstance(ckpt.get("args"), argparse.Namespace) else {}
    networks: dict[str, NvidiaNetwork] = {}
    for key, name in _NETWORKS.items():
        state = ckpt.get(key)
        if state is None:
            continue
        where = f"{path.name}:{key}"
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{where} is not a state dict of tensors")
        if key == "d":
            networks[name] = discriminator_from_rosinality(state, where)
        else:
            latent_avg = ckpt.get("latent_avg") if key == "g_ema" else None
            networks[name] = generator_from_rosinality(state, where, latent_avg=latent_avg)
    _check_args(networks, args, path.name)
    return networks


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - torch raises several types for bad files
        match = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the global it refused
        if match and match.group(1).startswith(("torch_utils.", "dnnlib.")):
            raise UserError(f"{path.name} looks like an NVIDIA network pickle, not a torch checkpoint; give it a "
                            ".pkl suffix so that it is read as one") from None
        if match:
            raise UserError(f"refused to load global {match.group(1)} from {path.name}: only rosinality/"
                            "stylegan2-pytorch checkpoints of plain tensors (and argparse args) are supported, "
                            "and nothing from this file was run") from None
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path.name} is truncated or not a torch checkpoint ({type(err).__name__}: {first}); "
                        "download or copy it again") from None


# ----------------------------------------------------------------------------- generator


def generator_from_rosinality(state: dict[str, torch.Tensor], where: str,
                              latent_avg: torch.Tensor | None = None) -> NvidiaNetwork:
    """A rosinality `Generator` state dict as an NVIDIA-layout generator (kwargs inferred from shapes)."""
    kwargs = generator_kwargs(state, where)
    nv = generator_state_dict(state, where)
    if latent_avg is not None:
        nv["mapping.w_avg"] = latent_avg.detach().float().reshape(-1)
        w_avg = "source"
    else:
        nv["mapping.w_avg"] = estimate_w_avg(kwargs, nv)
        w_avg = f"estimated: mean of mapping(z) over {W_AVG_SAMPLES} z (seed {W_AVG_SEED})"
    return NvidiaNetwork("Generator", kwargs, nv, family="rosinality", w_avg=w_avg)


def generator_kwargs(state: dict[str, torch.Tensor], where: str) -> dict:
    """NVIDIA Generator kwargs for a rosinality generator, read from its tensor shapes."""
    style_dim = state["style.1.weight"].shape[1]
    n_mlp = _count(state, r"style\.(\d+)\.weight")
    num_upsampling_blocks = _count(state, r"to_rgbs\.(\d+)\.conv\.weight")
    size = 4 * 2**num_upsampling_blocks
    channels = {4: state["conv1.conv.weight"].shape[1]}
    for k in range(num_upsampling_blocks):
        channels[8 * 2**k] = state[f"convs.{2 * k}.conv.weight"].shape[1]
    base, cmax = channel_layout(channels, where)
    return dict(z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=size,
                img_channels=state["to_rgb1.conv.weight"].shape[1],
                mapping_kwargs=dict(num_layers=n_mlp),
                synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=0, conv_clamp=None))


def generator_state_dict(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Rename (and reshape) every rosinality generator weight to NVIDIA's key; unknown keys are an error."""
    src = _Source(state, where)
    out: dict[str, torch.Tensor] = {}
    for i in range(1, _count(state, r"style\.(\d+)\.weight") + 1):
        out[f"mapping.fc{i - 1}.weight"] = src.take(f"style.{i}.weight")
        out[f"mapping.fc{i - 1}.bias"] = src.take(f"style.{i}.bias")
    out["synthesis.b4.const"] = src.take("input.input")[0]
    out.update(_styled_conv(src, "conv1", "synthesis.b4.conv1", noise="noises.noise_0"))
    out.update(_to_rgb(src, "to_rgb1", "synthesis.b4.torgb"))
    out.update(_filters(src, "synthesis.b4", []))
    for k in range(_count(state, r"to_rgbs\.(\d+)\.conv\.weight")):
        block = f"synthesis.b{8 * 2**k}"
        out.update(_styled_conv(src, f"convs.{2 * k}", f"{block}.conv0", noise=f"noises.noise_{2 * k + 1}"))
        out.update(_styled_conv(src, f"convs.{2 * k + 1}", f"{block}.conv1", noise=f"noises.noise_{2 * k + 2}"))
        out.update(_to_rgb(src, f"to_rgbs.{k}", f"{block}.torgb"))
        out.update(_filters(src, block, [f"to_rgbs.{k}.upsample.kernel", f"convs.{2 * k}.conv.blur.kernel"]))
    src.check_all_used()
    return out


def _styled_conv(src: _Source, name: str, dst: str, noise: str) -> dict[str, torch.Tensor]:
    return {
        f"{dst}.weight": src.take(f"{name}.conv.weight")[0],
        f"{dst}.affine.weight": src.take(f"{name}.conv.modulation.weight"),
        f"{dst}.affine.bias": src.take(f"{name}.conv.modulation.bias"),
        f"{dst}.noise_strength": src.take(f"{name}.noise.weight").reshape([]),
        f"{dst}.noise_const": src.take(noise)[0, 0],
        f"{dst}.bias": src.take(f"{name}.activate.bias"),
    }


def _to_rgb(src: _Source, name: str, dst: str) -> dict[str, torch.Tensor]:
    return {
        f"{dst}.weight": src.take(f"{name}.conv.weight")[0],
        f"{dst}.affine.weight": src.take(f"{name}.conv.modulation.weight"),
        f"{dst}.affine.bias": src.take(f"{name}.conv.modulation.bias"),
        f"{dst}.bias": src.take(f"{name}.bias").reshape(-1),
    }


def _filters(src: _Source, block: str, blur_keys: list[str]) -> dict[str, torch.Tensor]:
    """NVIDIA's `resample_filter` buffers of one synthesis block, after checking rosinality's blur kernels."""
    for key in blur_keys:
        src.check_blur_kernel(key)
    layers = ["", ".conv1"] if block.endswith(".b4") else ["", ".conv0", ".conv1"]
    return {f"{block}{layer}.resample_filter": setup_filter(_DEFAULT_BLUR) for layer in layers}


def estimate_w_avg(kwargs: dict, nv_state: dict[str, torch.Tensor], n: int = W_AVG_SAMPLES,
                   seed: int = W_AVG_SEED) -> torch.Tensor:
    """Mean of mapping(z) over `n` seeded z: the truncation centre when a checkpoint has none."""
    mapping = MappingNetwork(z_dim=kwargs["z_dim"], c_dim=0, w_dim=kwargs["w_dim"], num_ws=None,
                             **kwargs["mapping_kwargs"])
    mapping.load_state_dict({k.removeprefix("mapping."): v for k, v in nv_state.items()
                             if k.startswith("mapping.fc")})
    z = torch.randn([n, kwargs["z_dim"]], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return mapping.eval()(z, None).mean(dim=0)


# ----------------------------------------------------------------------------- discriminator


def discriminator_from_rosinality(state: dict[str, torch.Tensor], where: str) -> NvidiaNetwork:
    """A rosinality `Discriminator` state dict as an NVIDIA-layout (resnet) discriminator."""
    num_blocks = _count(state, r"convs\.(\d+)\.conv1\.0\.weight")
    size = 4 * 2**num_blocks
    channels = {size: state["convs.0.0.weight"].shape[0]}
    for i in range(1, num_blocks + 1):
        channels[size >> i] = state[f"convs.{i}.conv2.1.weight"].shape[0]
    base, cmax = channel_layout(channels, where)
    kwargs = dict(c_dim=0, img_resolution=size, img_channels=state["convs.0.0.weight"].shape[1],
                  architecture="resnet", channel_base=base, channel_max=cmax, num_fp16_res=0, conv_clamp=None,
                  epilogue_kwargs=dict(mbstd_group_size=4, mbstd_num_channels=1))
    return NvidiaNetwork("Discriminator", kwargs, discriminator_state_dict(state, where), family="rosinality",
                         w_avg=None)


def discriminator_state_dict(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    src = _Source(state, where)
    num_blocks = _count(state, r"convs\.(\d+)\.conv1\.0\.weight")
    size = 4 * 2**num_blocks
    filt = setup_filter(_DEFAULT_BLUR)
    out = {
        f"b{size}.fromrgb.weight": src.take("convs.0.0.weight"),
        f"b{size}.fromrgb.bias": src.take("convs.0.1.bias"),
        f"b{size}.fromrgb.resample_filter": filt,
    }
    for i in range(1, num_blocks + 1):
        b = f"b{size >> (i - 1)}"
        src.check_blur_kernel(f"convs.{i}.conv2.0.kernel")
        src.check_blur_kernel(f"convs.{i}.skip.0.kernel")
        out.update({
            f"{b}.conv0.weight": src.take(f"convs.{i}.conv1.0.weight"),
            f"{b}.conv0.bias": src.take(f"convs.{i}.conv1.1.bias"),
            f"{b}.conv1.weight": src.take(f"convs.{i}.conv2.1.weight"),
            f"{b}.conv1.bias": src.take(f"convs.{i}.conv2.2.bias"),
            f"{b}.skip.weight": src.take(f"convs.{i}.skip.1.weight"),
        })
        out.update({f"{b}{layer}.resample_filter": filt for layer in ("", ".conv0", ".conv1", ".skip")})
    out.update({
        "b4.conv.weight": src.take("final_conv.0.weight"),
        "b4.conv.bias": src.take("final_conv.1.bias"),
        "b4.conv.resample_filter": filt,
        "b4.fc.weight": src.take("final_linear.0.weight"),
        "b4.fc.bias": src.take("final_linear.0.bias"),
        "b4.out.weight": src.take("final_linear.1.weight"),
        "b4.out.bias": src.take("final_linear.1.bias"),
    })
    src.check_all_used()
    return out


# ----------------------------------------------------------------------------- helpers


class _Source:
    """A rosinality state dict that remembers which keys were used, to catch unmapped weights."""

    def __init__(self, state: dict[str, torch.Tensor], where: str):
        self.state, self.where, self.used = state, where, set()

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise UserError(f"{self.where}: missing weight {key}; the file is not a complete rosinality "
                            "stylegan2-pytorch network")
        self.used.add(key)
        return self.state[key].detach().float()

    def check_blur_kernel(self, key: str) -> None:
        kernel = self.take(key)
        expected = setup_filter(_DEFAULT_BLUR)
        if kernel.shape != expected.shape or not torch.allclose(kernel / kernel.sum(), expected, atol=1e-6):
            raise UserError(f"{self.where}: {key} is not the default [1,3,3,1] blur kernel; custom blur kernels "
                            "are not supported")

    def check_all_used(self) -> None:
        unused = sorted(set(self.state) - self.used)
        if unused:
            shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
            raise UserError(f"{self.where}: {len(unused)} weights have no place in StyleGAN2 ({shown}); the "
                            "checkpoint comes from a modified architecture, which is not supported")


def _count(state: dict, pattern: str) -> int:
    """Number of distinct indices i in keys matching `pattern` (missing ones surface as missing weights)."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))}
    return len(found)


def channel_layout(channels: dict[int, int], where: str) -> tuple[int, int]:
    """(channel_base, channel_max) such that min(base // res, max) reproduces `channels` at every res."""
    top = max(channels)
    base, cmax = channels[top] * top, max(channels.values())
    if any(min(base // res, cmax) != ch for res, ch in channels.items()):
        raise UserError(f"{where}: channel counts {dict(sorted(channels.items()))} cannot be expressed as "
                        "NVIDIA's channel_base/channel_max (channels must halve as resolution doubles, up to a cap)")
    return base, cmax


def _check_args(networks: dict[str, NvidiaNetwork], args: dict, name: str) -> None:
    """Cross-check train.py's recorded args against the shapes (the shapes are what we use)."""
    for net in networks.values():
        if net.class_name != "Generator":
            continue
        inferred = {"size": net.init_kwargs["img_resolution"], "latent": net.init_kwargs["z_dim"],
                    "n_mlp": net.init_kwargs["mapping_kwargs"]["num_layers"]}
        for key, value in inferred.items():
            if key in args and args[key] != value:
                raise UserError(f"{name}: args.{key}={args[key]} but the weights say {value}; the checkpoint "
                                "is inconsistent")
