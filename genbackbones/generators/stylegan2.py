"""StyleGAN2 generator and discriminator in pure PyTorch.

Module structure, constructor arguments and parameter names follow NVIDIA's
stylegan2-ada-pytorch `training/networks.py`, so that

    Generator(**nvidia_init_kwargs).load_state_dict(nvidia_state_dict)

just works, and the outputs agree with NVIDIA's code to float rounding (tested
against NVIDIA's own outputs in `../shared/fixtures/stylegan2`). stylegan3's
`networks_stylegan2` passes the synthesis arguments flat instead of nested in
`synthesis_kwargs`; both forms are accepted.

Differences, on purpose: everything runs in fp32 (NVIDIA's fp16 layers are a GPU
speed trick; `num_fp16_res` is accepted and ignored), and the synthesis network is
executed as an explicit list of named steps, which is what gives the methods
their taps (`trace`), `resume` from a substituted activation, and synthesis from
per-layer style vectors (see `SynthesisNetwork.run`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .ops import (
    ACTIVATION_GAINS,
    bias_act,
    conv2d_resample,
    downsample2d,
    epilogue,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------- layers


class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))
        self.act_gain = ACTIVATION_GAINS[activation]
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]),
                                   requires_grad=trainable)
        self.bias = nn.Parameter(torch.zeros([out_channels]), requires_grad=trainable) if bias else None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return epilogue(x, bias=b, act=self.activation, gain=self.act_gain * gain, clamp=clamp, fresh=True)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False, update_emas=None):
        x = None
        if self.z_dim > 0:
            _check_shape(z, [None, self.z_dim], "z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this network is conditional (c_dim={self.c_dim}); pass labels c of shape [N, {self.c_dim}]")
            _check_shape(c, [None, self.c_dim], "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        update = (self.training and not skip_w_avg_update) if update_emas is None else update_emas
        if self.w_avg_beta is not None and update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATION_GAINS[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def make_noise(self, batch: int, noise_mode: str, device) -> torch.Tensor | None:
        """The noise this layer adds for `noise_mode` (already scaled by noise_strength)."""
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random":
            return torch.randn([batch, 1, self.resolution, self.resolution], device=device) * self.noise_strength
        return self.noise_const * self.noise_strength

    def forward(self, x, w=None, noise_mode="random", fused_modconv=True, gain=1, styles=None, noise=...):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        styles = self.affine(w) if styles is None else styles
        if noise is ...:
            noise = self.make_noise(x.shape[0], noise_mode, x.device)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                                fused_modconv=fused_modconv, bias=self.bias.to(x.dtype), act=self.activation,
                                gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))

    def forward(self, x, w=None, fused_modconv=True, styles=None):
        """`styles` here is the affine output (the per-layer style code); weight_gain is applied inside."""
        styles = (self.affine(w) if styles is None else styles) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv,
                                bias=self.bias.to(x.dtype), clamp=self.conv_clamp)


# ----------------------------------------------------------------------------- synthesis


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels = resolution, img_channels
        self.is_last, self.architecture = is_last, architecture
        self.use_fp16 = False  # always fp32, see module docstring
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    @property
    def has_torgb(self) -> bool:
        return self.num_torgb > 0


@dataclass(frozen=True)
class Step:
    """One named operation of the synthesis network.

    `kind` is what it computes; `writes` is the state slot it sets; `taps` are the
    public names of its output; `layer` is the full name ('synthesis.b8.conv0') of
    the module it runs.
    """

    block: str
    kind: str  # const | skip | conv0 | conv1 | add | torgb | img
    writes: str  # x | y | rgb | img
    taps: tuple[str, ...]
    layer: str | None = None
    w_index: int | None = None


@dataclass
class SynthesisTrace:
    """Everything one synthesis pass computed, enough to resume it from any tap.

    `taps[name]` are activations; `styles[layer]` the per-layer style codes (affine
    outputs); `noise[layer]` the exact noise tensors added (so a resumed pass sees
    the same noise, also for noise_mode='random'); `states[i]` the state after step i.
    """

    img: torch.Tensor
    taps: dict[str, torch.Tensor]
    styles: dict[str, torch.Tensor]
    noise: dict[str, torch.Tensor | None]
    states: list[dict[str, torch.Tensor | None]] = field(repr=False)
    fused_modconv: bool = True


@dataclass(frozen=True)
class TapSpec:
    name: str
    channels: int
    resolution: int  # the activation's full size
    kind: str  # block | layer | img
    # pixels each side beyond the image-aligned region (StyleGAN3's layers extend past the image; StyleGAN2's
    # do not): the central `aligned_resolution` pixels cover the image exactly (base.crop_margin / paste_centre)
    margin: int = 0

    @property
    def aligned_resolution(self) -> int:
        """Size of the part of the activation that covers the image (its sampling rate, in StyleGAN3 terms)."""
        return self.resolution - 2 * self.margin


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=(res == img_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)
        self.steps = self._build_steps()
        self._tap_to_step = {tap: i for i, step in enumerate(self.steps) for tap in step.taps}

    # -- structure -----------------------------------------------------------

    def _build_steps(self) -> list[Step]:
        steps: list[Step] = []
        w_idx = 0
        for res in self.block_resolutions:
            b = f"b{res}"
            block: SynthesisBlock = getattr(self, b)
            p = f"synthesis.{b}"
            resnet = block.architecture == "resnet" and block.in_channels != 0
            if block.in_channels == 0:
                steps.append(Step(b, "const", "x", (f"{p}.const",)))
            if resnet:
                steps.append(Step(b, "skip", "y", (f"{p}.skip",), layer=f"{p}.skip"))
            if block.in_channels != 0:
                steps.append(Step(b, "conv0", "x", (f"{p}.conv0",), layer=f"{p}.conv0", w_index=w_idx))
                w_idx += 1
            conv1_taps = (f"{p}.conv1",) if resnet else (f"{p}.conv1", f"{p}.x")
            steps.append(Step(b, "conv1", "x", conv1_taps, layer=f"{p}.conv1", w_index=w_idx))
            w_idx += 1
            if resnet:
                steps.append(Step(b, "add", "x", (f"{p}.x",)))
            if block.has_torgb:
                steps.append(Step(b, "torgb", "rgb", (f"{p}.torgb",), layer=f"{p}.torgb", w_index=w_idx))
                steps.append(Step(b, "img", "img", (f"{p}.img",)))
        return steps

    def layer(self, name: str) -> nn.Module:
        """The module behind a full layer name such as 'synthesis.b8.conv0'."""
        return self.get_submodule(name.removeprefix("synthesis."))

    @property
    def style_layers(self) -> list[str]:
        """Names of every modulated layer, in the order its style code is used."""
        return [s.layer for s in self.steps if s.kind in ("conv0", "conv1", "torgb")]

    def style_dims(self) -> dict[str, int]:
        """Length of each modulated layer's style code (its input channels)."""
        return {name: self.layer(name).affine.weight.shape[0] for name in self.style_layers}

    def tap_specs(self) -> dict[str, TapSpec]:
        """Every tap's name, channels and resolution (computed from the architecture)."""
        specs: dict[str, TapSpec] = {}
        for step in self.steps:
            block: SynthesisBlock = getattr(self, step.block)
            if step.kind in ("torgb", "img"):
                ch = block.img_channels
            else:
                ch = block.out_channels
            res = block.resolution
            for tap in step.taps:
                kind = "img" if step.kind in ("torgb", "img") else ("block" if tap.endswith(".x") else "layer")
                specs[tap] = TapSpec(tap, ch, res, kind)
        return specs

    # -- execution -----------------------------------------------------------

    def compute_styles(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-layer style codes (each layer's affine output) for broadcast or per-layer ws."""
        _check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        return {s.layer: self.layer(s.layer).affine(ws[:, s.w_index]) for s in self.steps if s.w_index is not None}

    def _run_step(self, step: Step, state: dict, styles: dict, noise: dict, fused_modconv: bool) -> torch.Tensor:
        block: SynthesisBlock = getattr(self, step.block)
        resnet_gain = math.sqrt(0.5)
        if step.kind == "const":
            batch = next(iter(styles.values())).shape[0]
            return block.const.unsqueeze(0).repeat([batch, 1, 1, 1])
        if step.kind == "skip":
            return block.skip(state["x"], gain=resnet_gain)
        if step.kind in ("conv0", "conv1"):
            layer: SynthesisLayer = getattr(block, step.kind)
            resnet = block.architecture == "resnet" and block.in_channels != 0
            gain = resnet_gain if (step.kind == "conv1" and resnet) else 1
            return layer(state["x"], styles=styles[step.layer], noise=noise[step.layer],
                         fused_modconv=fused_modconv, gain=gain)
        if step.kind == "add":
            return state["y"] + state["x"]
        if step.kind == "torgb":
            return block.torgb(state["x"], styles=styles[step.layer], fused_modconv=fused_modconv)
        if step.kind == "img":
            rgb = state["rgb"].to(torch.float32)
            return rgb if state.get("img") is None else upsample2d(state["img"], block.resample_filter) + rgb
        raise AssertionError(step.kind)

    def _execute(self, start: int, state: dict, styles: dict, noise: dict, fused_modconv: bool,
                 record: bool) -> tuple[torch.Tensor, dict, list]:
        taps: dict[str, torch.Tensor] = {}
        states: list[dict] = []
        for step in self.steps[start:]:
            out = self._run_step(step, state, styles, noise, fused_modconv)
            state = {**state, step.writes: out}
            if record:
                for tap in step.taps:
                    taps[tap] = out
                states.append(state)
        return state["img"].contiguous(), taps, states  # NCHW, whatever layout the layers computed in

    def _noise_for(self, batch: int, noise_mode: str, device) -> dict[str, torch.Tensor | None]:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        noise = {}
        for s in self.steps:
            if s.kind in ("conv0", "conv1"):
                noise[s.layer] = self.layer(s.layer).make_noise(batch, noise_mode, device)
            elif s.kind == "torgb":
                noise[s.layer] = None
        return noise

    def _default_fused(self, fused_modconv: bool | None, device: torch.device) -> bool:
        """None picks the faster form: on CPU the unfused channels-last conv, which measured faster than
        the grouped (fused) one at every shape and batch tried (single layers at 8-256 px with 1-16 images, whole
        networks at 64 and 256 px with 8 and 32; benchmarks/README.md);
        elsewhere NVIDIA's default (fused in eval mode). True/False are obeyed. Both compute the same
        function; they differ by float rounding."""
        if fused_modconv is not None:
            return fused_modconv
        return False if torch.device(device).type == "cpu" else not self.training

    def trace(self, ws: torch.Tensor | None = None, styles: dict[str, torch.Tensor] | None = None,
              noise_mode: str = "const", fused_modconv: bool | None = None) -> SynthesisTrace:
        """Run synthesis from ws (or from per-layer styles) and keep every activation."""
        if styles is None:
            if ws is None:
                raise ValueError("trace needs ws or styles")
            styles = self.compute_styles(ws)
        self._check_styles(styles)
        batch = next(iter(styles.values())).shape[0]
        device = next(iter(styles.values())).device
        noise = self._noise_for(batch, noise_mode, device)
        fused = self._default_fused(fused_modconv, device)
        img, taps, states = self._execute(0, {}, styles, noise, fused, record=True)
        return SynthesisTrace(img=img, taps=taps, styles=styles, noise=noise, states=states, fused_modconv=fused)

    def resume(self, trace: SynthesisTrace, tap: str, value: torch.Tensor) -> torch.Tensor:
        """Re-run synthesis after `tap` with `value` substituted for that activation.

        Same styles and the same noise as the traced pass; gradients flow into `value`.
        With `value = trace.taps[tap]` the result equals `trace.img` exactly.
        """
        if tap not in self._tap_to_step:
            raise KeyError(f"unknown tap {tap!r}; known taps: {', '.join(self._tap_to_step)}")
        idx = self._tap_to_step[tap]
        expected = trace.taps[tap].shape
        if tuple(value.shape) != tuple(expected):
            raise ValueError(f"substitute for {tap} has shape {tuple(value.shape)}, expected {tuple(expected)}")
        state = {**trace.states[idx], self.steps[idx].writes: value}
        img, _, _ = self._execute(idx + 1, state, trace.styles, trace.noise, trace.fused_modconv, record=False)
        return img

    def _check_styles(self, styles: dict[str, torch.Tensor]) -> None:
        dims = self.style_dims()
        missing = [k for k in dims if k not in styles]
        if missing:
            raise ValueError(f"styles missing for layers: {', '.join(missing)}")
        for k, d in dims.items():
            if styles[k].ndim != 2 or styles[k].shape[1] != d:
                raise ValueError(f"style for {k} has shape {tuple(styles[k].shape)}, expected [N, {d}]")

    def forward(self, ws, noise_mode="random", force_fp32=True, fused_modconv=None, update_emas=False, **_ignored):
        """NVIDIA-compatible call: image from broadcast/per-layer ws."""
        styles = self.compute_styles(ws)
        noise = self._noise_for(ws.shape[0], noise_mode, ws.device)
        img, _, _ = self._execute(0, {}, styles, noise, self._default_fused(fused_modconv, ws.device), record=False)
        return img


class StyleGANGenerator:
    """The generator level both families share: construction from NVIDIA's init kwargs and the FrozenGenerator
    interface (base.py), for a generator whose `mapping` and `synthesis` do the work.

    StyleGAN2 and StyleGAN3 differ inside their mapping and synthesis networks (which
    produce the taps, traces and resumed passes); a family's `Generator` names them
    (`synthesis_class`, `mapping_class`) and inherits the rest from here. NVIDIA passes
    the synthesis arguments flat (StyleGAN3) or nested (StyleGAN2); both are accepted
    and `init_kwargs` records them nested.
    """

    synthesis_class: type
    mapping_class: type

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None,
                 synthesis_kwargs=None, **flat_synthesis_kwargs):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = {**dict(synthesis_kwargs or {}), **flat_synthesis_kwargs}
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                synthesis_kwargs=synthesis_kwargs)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = self.synthesis_class(w_dim=w_dim, img_resolution=img_resolution,
                                              img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = self.mapping_class(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                          **mapping_kwargs)


    @property
    def resolution(self) -> int:
        return self.img_resolution

    def sample_latents(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn([n, self.z_dim], generator=generator, device=device or "cpu")

    def sample_labels(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor | None:
        """Random one-hot labels for conditional networks, None for unconditional ones."""
        if self.c_dim == 0:
            return None
        idx = torch.randint(0, self.c_dim, [n], generator=generator, device=device or "cpu")
        return torch.nn.functional.one_hot(idx, self.c_dim).float()

    def tap_specs(self) -> dict[str, TapSpec]:
        return self.synthesis.tap_specs()

    def style_dims(self) -> dict[str, int]:
        return self.synthesis.style_dims()

    def trace(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
              truncation_cutoff: int | None = None, noise_mode: str = "const",
              fused_modconv: bool | None = None) -> SynthesisTrace:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=False)
        return self.synthesis.trace(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

    def resume(self, trace: SynthesisTrace, tap: str, value: torch.Tensor) -> torch.Tensor:
        return self.synthesis.resume(trace, tap, value)

    def synthesize_from_styles(self, styles: dict[str, torch.Tensor], noise_mode: str = "const",
                               fused_modconv: bool | None = None) -> torch.Tensor:
        return self.synthesis.trace(styles=styles, noise_mode=noise_mode, fused_modconv=fused_modconv).img


class Generator(StyleGANGenerator, nn.Module):
    """StyleGAN2 generator, NVIDIA-compatible (see module docstring), plus method hooks."""

    synthesis_class, mapping_class = SynthesisNetwork, MappingNetwork

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas or None)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------- discriminator


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        if in_channels not in (0, tmp_channels):
            raise ValueError("in_channels must be 0 or tmp_channels")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.first_layer_idx, self.architecture = first_layer_idx, architecture
        self.use_fp16 = False
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_layers = 0

        def trainable() -> bool:
            layer_idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return layer_idx >= freeze_layers

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter)

    def forward(self, x, img, force_fp32=False):
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img.to(torch.float32))
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise ValueError(f"minibatch-stddev group size {g} must divide the batch size {n}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution**2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        x = x.to(torch.float32)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs=None,
                 mapping_kwargs=None, epilogue_kwargs=None):
        super().__init__()
        block_kwargs, mapping_kwargs, epilogue_kwargs = (dict(k or {}) for k in (block_kwargs, mapping_kwargs,
                                                                                  epilogue_kwargs))
        self.init_kwargs = dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                                architecture=architecture, channel_base=channel_base, channel_max=channel_max,
                                num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, cmap_dim=cmap_dim,
                                block_kwargs=block_kwargs, mapping_kwargs=mapping_kwargs,
                                epilogue_kwargs=epilogue_kwargs)
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res],
                                       channels[res // 2], resolution=res, first_layer_idx=layer_idx,
                                       **block_kwargs, **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(self, img, c=None, update_emas=False, **block_kwargs):
        _check_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution], "img")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img)
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this discriminator is conditional (c_dim={self.c_dim}); pass labels c")
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)


# ----------------------------------------------------------------------------- helpers


def _check_shape(t: torch.Tensor, shape: list[int | None], name: str) -> None:
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {want}")
