"""StyleGAN3 (alias-free) generator in pure PyTorch.

Module structure, constructor arguments and parameter/buffer names follow NVIDIA's
stylegan3 `training/networks_stylegan3.py`, so that

    Generator(**nvidia_init_kwargs).load_state_dict(nvidia_state_dict)

loads 1:1 (including each layer's `magnitude_ema`, its designed `up_filter` /
`down_filter` and the input's user `transform`), and the outputs agree with NVIDIA's
code to float rounding (tested, layer by layer, against NVIDIA's own outputs in
`../shared/fixtures/stylegan3`: configs t and r).

What the network computes (Karras et al. 2021, "Alias-Free GANs"):

* the mapping network is StyleGAN2's (same normalisation of z, same label embedding,
  truncation towards `w_avg`); only its defaults differ (2 layers, w_avg_beta 0.998);
* `SynthesisInput`: Fourier features of a fixed set of random frequencies, rotated and
  translated per sample by a 4-vector from w (its "style"), then a learned channel mix;
* `SynthesisLayer` (14 of them, then ToRGB): modulated conv scaled by the layer's
  tracked input magnitude (`magnitude_ema`), then the *filtered* leaky ReLU: upsample
  with a designed low-pass filter, leaky ReLU at the higher rate, low-pass and
  downsample. Cutoffs and sampling rates follow a geometric schedule; the layers carry
  a margin of extra pixels (a 32 px generator computes 36 and 52 px activations), and
  the last two layers are critically sampled at the image resolution.

As for StyleGAN2 (stylegan2.py), everything runs in fp32 (`num_fp16_res` is accepted
and ignored), and synthesis runs as a list of named steps, which gives the methods
their taps (`trace`), `resume` from a substituted activation and synthesis from
per-layer styles. `magnitude_ema` is a frozen buffer here: this generator is a fixed
teacher, never trained, so `update_emas` is accepted and ignored.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import epilogue, modulated_conv2d, upfirdn2d
from .stylegan2 import (NOISE_MODES, FullyConnectedLayer, Step, StyleGANGenerator, SynthesisTrace, TapSpec,
                        _check_shape)
from .stylegan2 import MappingNetwork as _StyleGAN2Mapping

FAMILY = "stylegan3"


# ----------------------------------------------------------------------------- filter design


def kaiser_atten(numtaps: int, width: float) -> float:
    """Stop-band attenuation (dB) of a Kaiser-window FIR filter of `numtaps` taps and transition `width`
    (as a fraction of the Nyquist rate): Kaiser's empirical formula (as scipy.signal.kaiser_atten)."""
    return 2.285 * (numtaps - 1) * np.pi * width + 7.95


def kaiser_beta(atten: float) -> float:
    """The Kaiser window's beta for a stop-band attenuation in dB (Kaiser's formula, as scipy.signal.kaiser_beta)."""
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


MAX_FILTER_TAPS = 1024


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """NVIDIA's low-pass filters: a separable windowed-sinc (Kaiser) FIR, or a radial jinc one; None for 1 tap.

    The separable filter is what `scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)` designs:
    the ideal low-pass impulse response times a Kaiser window whose beta follows from the
    transition width, scaled to unit gain at DC. It is written out here because scipy is not a
    dependency of genbackbones and this is all of it that StyleGAN3 uses; numpy has the window
    (`np.kaiser`) and torch the Bessel function J1 for the radial filter. The filters of a
    network pickle are loaded from its buffers anyway; the design matters for networks built
    from their arguments (the `random:` presets), and is tested against NVIDIA's buffers.
    """
    if not 1 <= numtaps <= MAX_FILTER_TAPS:
        # NVIDIA's layers use at most filter_size 6 x an up/down factor of 4; the bound keeps a checkpoint's
        # edited kwargs from designing a 20000x20000 radial filter in numpy before any weight is compared
        raise ValueError(f"a filter needs 1 to {MAX_FILTER_TAPS} taps, got {numtaps}")
    if numtaps == 1:
        return None
    nyquist = fs / 2
    beta = kaiser_beta(kaiser_atten(numtaps, width / nyquist))
    window = np.kaiser(numtaps, beta)
    if not radial:
        m = np.arange(numtaps) - (numtaps - 1) / 2
        c = cutoff / nyquist
        f = c * np.sinc(c * m) * window
        return torch.as_tensor(f / f.sum(), dtype=torch.float32)
    # radially symmetric: the 2-D ideal low-pass (a jinc) windowed by the outer product of the Kaiser window
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    j1 = torch.special.bessel_j1(torch.from_numpy(2 * cutoff * np.pi * r)).numpy()
    f = j1 / (np.pi * r) * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


# ----------------------------------------------------------------------------- ops


def fir(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
        padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """NVIDIA's `upfirdn2d` for StyleGAN3's filters: 2-D, separable 1-D taps, or None (pad/crop only).

    A separable filter runs as its 2-D outer product, which lets `ops.upfirdn2d` upsample with one
    strided transposed convolution (no zero-filled tensor) and downsample with one strided
    convolution. Measured on this CPU (a 52 px layer of random:sg3-t32, batch 2): 17 ms up and
    14 ms down, against 84 and 24 ms for NVIDIA's order of two 1-D passes through the same op
    (whose zero insertion and padding cannot be split by axis). Equal to float rounding.
    """
    if f is None:
        if up != 1:
            raise ValueError("upsampling needs a filter")
        return upfirdn2d(x, None, down=down, padding=padding)
    if f.ndim == 1:
        f = f.outer(f)
    return upfirdn2d(x, f, up=up, down=down, padding=padding, gain=gain)


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None, b: torch.Tensor,
                   up: int, down: int, padding: tuple[int, int, int, int], gain: float, slope: float,
                   clamp: float | None) -> torch.Tensor:
    """Bias, upsample + low-pass, leaky ReLU (x gain, clamped), low-pass + downsample: NVIDIA's
    `filtered_lrelu` in the order of its reference implementation `_filtered_lrelu_ref`.

    The nonlinearity runs at the higher sampling rate so that the high frequencies it creates
    can be filtered out before downsampling; that is what makes the layer alias-free.
    `slope` is 0.2 (leaky ReLU) or 1 (linear: ToRGB).
    """
    if slope not in (0.2, 1):
        raise ValueError(f"slope must be 0.2 or 1, got {slope}")
    x = x + b.reshape(1, -1, 1, 1).to(x.dtype)
    # leaky ReLU commutes with a positive gain, and the up-sampling filter is linear: the gain goes into the
    # filter's taps (a few numbers) instead of a pass over the up-sampled tensor, the largest in the layer
    # (measured: docs/generator-speed.md, StyleGAN3)
    filter_gain = gain if fu is not None and gain > 0 else 1.0
    x = fir(x, fu, up=up, padding=padding, gain=up**2 * filter_gain)
    x = epilogue(x, act="lrelu" if slope == 0.2 else "linear", gain=gain / filter_gain, clamp=clamp, fresh=True)
    return fir(x, fd, down=down)


# ----------------------------------------------------------------------------- mapping


class MappingNetwork(_StyleGAN2Mapping):
    """StyleGAN3's mapping network: StyleGAN2's computation with StyleGAN3's defaults and arguments.

    Checked against networks_stylegan3.MappingNetwork: z is normalised to unit second moment, a
    label is embedded to w_dim, normalised and concatenated, every layer is w_dim wide, w_avg is
    always tracked, and truncation lerps towards it (all ws, or the first `truncation_cutoff`).
    The freezing options only matter to training and are accepted for NVIDIA's kwargs.
    """

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998,
                 freeze_layers=0, freeze_embed=False):
        super().__init__(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers,
                         lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta)


# ----------------------------------------------------------------------------- synthesis layers


class SynthesisInput(nn.Module):
    """Fourier features, rotated and translated by the first w; `transform` is the user's inverse transform
    (identity in trained networks; set it to rotate/translate every image)."""

    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = [int(s) for s in np.broadcast_to(np.asarray(size), [2])]  # [width, height]
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([channels, 2])  # uniform on a disc of radius `bandwidth`
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():  # starts as the identity rotation and no translation
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3, 3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand([channels]) - 0.5)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """`t` is this layer's style, the affine output (cos, sin, tx, ty) before normalisation."""
        batch, device = t.shape[0], t.device
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=device).unsqueeze(0).repeat([batch, 1, 1])  # inverse rotation
        m_r[:, 0, 0] = t[:, 0]
        m_r[:, 0, 1] = -t[:, 1]
        m_r[:, 1, 0] = t[:, 1]
        m_r[:, 1, 1] = t[:, 0]
        m_t = torch.eye(3, device=device).unsqueeze(0).repeat([batch, 1, 1])  # inverse translation
        m_t[:, 0, 2] = -t[:, 2]
        m_t[:, 1, 2] = -t[:, 3]
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)
        freqs, phases = self.freqs.unsqueeze(0), self.phases.unsqueeze(0)
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # dampen frequencies the user transform pushed out of band
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        width, height = self.size
        theta = torch.eye(2, 3, device=device)
        theta[0, 0] = 0.5 * width / self.sampling_rate
        theta[1, 1] = 0.5 * height / self.sampling_rate
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, height, width], align_corners=False)  # [1, H, W, 2]
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = torch.sin((x + phases.unsqueeze(1).unsqueeze(2)) * (2 * np.pi))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # [N, C, H, W] (channels-last in memory, which the convs prefer on CPU)


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU; the last one (is_torgb) is ToRGB. Arguments as NVIDIA's."""

    def __init__(self, w_dim, is_torgb, is_critically_sampled, use_fp16, in_channels, out_channels, in_size,
                 out_size, in_sampling_rate, out_sampling_rate, in_cutoff, out_cutoff, in_half_width,
                 out_half_width, conv_kernel=3, filter_size=6, lrelu_upsampling=2, use_radial_filters=False,
                 conv_clamp=256, magnitude_ema_beta=0.999):
        super().__init__()
        self.w_dim, self.is_torgb, self.is_critically_sampled = w_dim, is_torgb, is_critically_sampled
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size), [2])
        self.out_size = np.broadcast_to(np.asarray(out_size), [2])
        self.in_sampling_rate, self.out_sampling_rate = in_sampling_rate, out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        if in_sampling_rate * self.up_factor != self.tmp_sampling_rate or \
                out_sampling_rate * self.down_factor != self.tmp_sampling_rate:
            raise ValueError("sampling rates must divide the leaky ReLU's sampling rate")
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("up_filter", design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2,
                                                                self.tmp_sampling_rate))
        self.register_buffer("down_filter", design_lowpass_filter(self.down_taps, out_cutoff, out_half_width * 2,
                                                                  self.tmp_sampling_rate, radial=self.down_radial))
        # pad so that the output has out_size pixels, centred (the symmetric interpretation, paper appendix C.3)
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = (int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1]))

    @property
    def size(self) -> int:
        """Output width = height (StyleGAN3's layers are square)."""
        return int(self.out_size[0])

    def forward(self, x: torch.Tensor, styles: torch.Tensor, fused_modconv: bool = False) -> torch.Tensor:
        """`styles` is the affine output of this layer's w (the per-layer style code)."""
        input_gain = float(self.magnitude_ema.rsqrt())  # normalises the input to unit mean square
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel**2))
            weight = self.weight
        else:
            # NVIDIA pre-normalises weight (per output channel) and styles before demodulating; demodulation
            # cancels both scales except against its epsilon, which this keeps as in the original. The styles
            # are normalised per sample (NVIDIA: over the whole batch), so that a sample's image does not
            # depend on its batch-mates; the two differ only in that epsilon's weight (< 1e-9 relative).
            weight = self.weight * self.weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
        # the input gain scales the (demodulated) weights, i.e. the conv output: folded into the conv's epilogue
        x = modulated_conv2d(x, weight, styles, padding=self.conv_kernel - 1, demodulate=not self.is_torgb,
                             fused_modconv=fused_modconv, gain=input_gain)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, up=self.up_factor,
                              down=self.down_factor, padding=self.padding, gain=1 if self.is_torgb else np.sqrt(2),
                              slope=1 if self.is_torgb else 0.2, clamp=self.conv_clamp)


# ----------------------------------------------------------------------------- synthesis network


class SynthesisNetwork(nn.Module):
    """The input and `num_layers + 1` layers (the last one ToRGB), with NVIDIA's names `L{i}_{size}_{channels}`.

    Executed as named steps (`steps`): `trace` keeps every activation, `resume` re-runs from a
    substituted one, and synthesis can start from per-layer styles (see stylegan2.py, same interface).
    """

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_layers=14,
                 num_critical=2, first_cutoff=2, first_stopband=2**2.1, last_stopband_rel=2**0.3, margin_size=10,
                 output_scale=0.25, num_fp16_res=4, **layer_kwargs):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_ws = num_layers + 2
        self.num_layers, self.num_critical, self.margin_size = num_layers, num_critical, margin_size
        self.output_scale = output_scale

        # geometric progression of cutoffs and minimum stop-bands, first layer to last (paper, section 3.2)
        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(w_dim=w_dim, channels=int(channels[0]), size=int(sizes[0]),
                                    sampling_rate=sampling_rates[0], bandwidth=cutoffs[0])
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim, is_torgb=(idx == num_layers), is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=False, in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]), in_sampling_rate=int(sampling_rates[prev]),
                out_sampling_rate=int(sampling_rates[idx]), in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx], **layer_kwargs)
            name = f"L{idx}_{layer.size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)
        self.steps = [Step("input", "input", "x", ("synthesis.input",), layer="synthesis.input", w_index=0)]
        for idx, name in enumerate(self.layer_names):
            kind = "torgb" if idx == num_layers else "layer"
            self.steps.append(Step(name, kind, "x", (f"synthesis.{name}",), layer=f"synthesis.{name}",
                                   w_index=idx + 1))
        self._tap_to_step = {step.taps[0]: i for i, step in enumerate(self.steps)}

    # -- structure -----------------------------------------------------------

    def layer(self, name: str) -> nn.Module:
        """The module behind a full layer name such as 'synthesis.L3_36_64'."""
        return self.get_submodule(name.removeprefix("synthesis."))

    @property
    def style_layers(self) -> list[str]:
        """The input and every layer: each is driven by one w through its own affine."""
        return [step.layer for step in self.steps]

    def style_dims(self) -> dict[str, int]:
        """Length of each style code: 4 for the input (rotation, translation), else the layer's input channels."""
        return {name: self.layer(name).affine.weight.shape[0] for name in self.style_layers}

    def tap_specs(self) -> dict[str, TapSpec]:
        """The input's and every layer's output. Kind 'layer', except ToRGB's ('img'); sizes include the margin.

        Each layer samples the image on a grid of its sampling rate, extended by the margin each side
        (`margin_size`, 10 px; none for the last two, sampled at the image size): `margin` says how much, so
        that a method can take the image-aligned centre (`TapSpec.crop`) and put one back (`TapSpec.paste`).
        """
        size, rate = self.input.size[0], int(self.input.sampling_rate)
        specs = {"synthesis.input": TapSpec("synthesis.input", self.input.channels, size, "layer",
                                            margin=(size - rate) // 2)}
        for step in self.steps[1:]:
            layer: SynthesisLayer = getattr(self, step.block)
            tap = step.taps[0]
            specs[tap] = TapSpec(tap, layer.out_channels, layer.size, "img" if step.kind == "torgb" else "layer",
                                 margin=(layer.size - int(layer.out_sampling_rate)) // 2)
        return specs

    # -- execution -----------------------------------------------------------

    def compute_styles(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-layer style codes (each affine output) for per-layer ws [N, num_ws, w_dim]."""
        _check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        ws = ws.to(torch.float32)
        return {s.layer: self.layer(s.layer).affine(ws[:, s.w_index]) for s in self.steps}

    def _check_styles(self, styles: dict[str, torch.Tensor]) -> None:
        for name, dim in self.style_dims().items():
            if name not in styles:
                raise ValueError(f"styles missing for layer {name}")
            if styles[name].ndim != 2 or styles[name].shape[1] != dim:
                raise ValueError(f"style for {name} has shape {tuple(styles[name].shape)}, expected [N, {dim}]")

    def _execute(self, start: int, x: torch.Tensor | None, styles: dict[str, torch.Tensor], fused_modconv: bool,
                 record: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps: dict[str, torch.Tensor] = {}
        for step in self.steps[start:]:
            if step.kind == "input":
                x = self.input(styles[step.layer])
            else:
                x = getattr(self, step.block)(x, styles[step.layer], fused_modconv=fused_modconv)
            if record:
                taps[step.taps[0]] = x
        img = x * self.output_scale if self.output_scale != 1 else x
        return img.to(torch.float32).contiguous(), taps

    @staticmethod
    def _default_fused(fused_modconv: bool | None, device) -> bool:
        """None: unfused on CPU (measured faster for StyleGAN2's convs, see stylegan2.py), grouped elsewhere."""
        if fused_modconv is not None:
            return fused_modconv
        return torch.device(device).type != "cpu"

    def trace(self, ws: torch.Tensor | None = None, styles: dict[str, torch.Tensor] | None = None,
              noise_mode: str = "const", fused_modconv: bool | None = None) -> SynthesisTrace:
        """Run synthesis from ws (or from per-layer styles) and keep every activation.

        StyleGAN3 has no noise inputs: `noise_mode` is checked and otherwise unused (as in NVIDIA's code).
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if styles is None:
            if ws is None:
                raise ValueError("trace needs ws or styles")
            styles = self.compute_styles(ws)
        self._check_styles(styles)
        fused = self._default_fused(fused_modconv, next(iter(styles.values())).device)
        img, taps = self._execute(0, None, styles, fused, record=True)
        states = [{"x": taps[step.taps[0]]} for step in self.steps]
        return SynthesisTrace(img=img, taps=taps, styles=styles, noise={}, states=states, fused_modconv=fused)

    def resume(self, trace: SynthesisTrace, tap: str, value: torch.Tensor) -> torch.Tensor:
        """The image when `value` replaces activation `tap` of `trace` (same styles); gradients flow into `value`.

        With `value = trace.taps[tap]` the result equals `trace.img` exactly.
        """
        if tap not in self._tap_to_step:
            raise KeyError(f"unknown tap {tap!r}; known taps: {', '.join(self._tap_to_step)}")
        expected = trace.taps[tap].shape
        if tuple(value.shape) != tuple(expected):
            raise ValueError(f"substitute for {tap} has shape {tuple(value.shape)}, expected {tuple(expected)}")
        img, _ = self._execute(self._tap_to_step[tap] + 1, value, trace.styles, trace.fused_modconv, record=False)
        return img

    def forward(self, ws, noise_mode="random", force_fp32=True, fused_modconv=None, update_emas=False, **_ignored):
        """NVIDIA-compatible call: image from per-layer ws [N, num_ws, w_dim]."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        img, _ = self._execute(0, None, self.compute_styles(ws), self._default_fused(fused_modconv, ws.device),
                               record=False)
        return img


# ----------------------------------------------------------------------------- generator


class Generator(StyleGANGenerator, nn.Module):
    """StyleGAN3 generator, NVIDIA-compatible (see module docstring), with the FrozenGenerator interface (base.py).

    NVIDIA passes the synthesis arguments flat (`Generator(z_dim, ..., channel_base=...)`); a nested
    `synthesis_kwargs` is accepted too, and `init_kwargs` records them nested, as StyleGAN2's does.
    """

    family = FAMILY
    synthesis_class, mapping_class = SynthesisNetwork, MappingNetwork

    @property
    def config(self) -> str:
        """'stylegan3-r' (radial filters, 1x1 convs) or 'stylegan3-t', as NVIDIA's train.py --cfg names them."""
        radial = self.init_kwargs["synthesis_kwargs"].get("use_radial_filters", False)
        return "stylegan3-r" if radial else "stylegan3-t"

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=False)
        return self.synthesis(ws, **synthesis_kwargs)
