"""Pure-PyTorch versions of the few custom ops StyleGAN2 is built from.

NVIDIA's `torch_utils.ops` ships CUDA kernels with slow reference fallbacks; these
are the reference semantics (FIR filtering with `upfirdn2d`, resampling convolution,
bias + activation + clamp), written with standard PyTorch calls so they run on any
device without a compiler. The order of operations follows NVIDIA's so that outputs
agree to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Padding = tuple[int, int, int, int]

ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2)}


def setup_filter(taps: list[float] | torch.Tensor) -> torch.Tensor:
    """Separable taps -> normalised 2-D low-pass filter (NVIDIA's `setup_filter`)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1:
        f = f.ger(f)
    return f / f.sum()


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add bias, apply activation, scale by gain, clamp to +-clamp."""
    return epilogue(x, bias=b, act=act, gain=ACTIVATION_GAINS.get(act, 1.0) if gain is None else gain, clamp=clamp)


def _activation(x: torch.Tensor, act: str, inplace: bool) -> torch.Tensor:
    if act == "lrelu":
        return F.leaky_relu_(x, 0.2) if inplace else F.leaky_relu(x, 0.2)
    if act == "relu":
        return F.relu_(x) if inplace else F.relu(x)
    if act != "linear":
        raise ValueError(f"unsupported activation {act!r}")
    return x


def _requires_grad(*tensors: torch.Tensor | float | None) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def epilogue(
    y: torch.Tensor,
    scale: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    act: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
    fresh: bool = False,
) -> torch.Tensor:
    """clamp(act(y * scale + noise + bias) * gain): the tail of every StyleGAN2 layer, in few passes.

    `scale` is per (sample, channel) ([N, C, 1, 1]), `bias` per channel, `noise` broadcasts.
    The gain moves inside the activation (linear, relu and lrelu all satisfy
    act(v) * g == act(v * g) for g > 0) onto scale, noise and bias, which are small; that
    saves a pass over y. With `fresh` (y is a temporary nobody else holds, e.g. a conv
    output) the remaining passes run in place wherever autograd allows it: on this CPU a
    new activation-sized tensor costs more in page faults than the arithmetic on it (256 px,
    batch 8: 230 ms for `y * s` against 27 ms for `y.mul_(s)`; benchmarks/README.md).
    Values agree with the unfolded order to float rounding.
    """
    if gain > 0 and gain != 1:
        scale = gain if scale is None else scale * gain
        noise = None if noise is None else noise * gain
        bias = None if bias is None else bias * gain
        gain = 1.0
    bias = None if bias is None else bias.reshape([1, -1] + [1] * (y.ndim - 2))
    graph = _requires_grad(y, scale, noise, bias)
    if fresh and not _requires_grad(scale, noise, bias):
        # in place; with y in a graph only ops whose backward needs neither their input nor y's old
        # value (mul/add by constants, leaky_relu_ saves its output); clamp_ would need the input
        if scale is not None and bias is not None and isinstance(scale, torch.Tensor) and not graph:
            torch.addcmul(bias, y, scale, out=y)
            bias = None
        elif scale is not None:
            y.mul_(scale)
        if noise is not None:
            y.add_(noise)
        if bias is not None:
            y.add_(bias)
        y = _activation(y, act, inplace=True)
    else:
        if scale is not None and noise is not None and isinstance(scale, torch.Tensor):
            y = torch.addcmul(noise, y, scale)
        else:
            y = y if scale is None else y * scale
            y = y if noise is None else y + noise
        y = y if bias is None else y + bias
        y = _activation(y, act, inplace=False)
    if gain != 1:
        y = y * gain
    if clamp is not None and clamp >= 0:
        y = y.clamp_(-clamp, clamp) if fresh and not graph else y.clamp(-clamp, clamp)
    return y


def _padding4(padding: int | list[int] | tuple[int, ...]) -> Padding:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)  # type: ignore[return-value]


def preferred_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` in the memory layout the convolutions here run fastest in: channels-last (NHWC) on CPU.

    oneDNN, PyTorch's CPU convolution library, works in NHWC; given NCHW tensors it reorders
    them on the way in and out. Measured on the project's 2-core CPU (benchmarks/README.md):
    3x3 conv 1.3x, stride-2 transposed conv 2.2x, depthwise 4x4 FIR 2.6x faster in NHWC. Other
    devices keep the caller's layout (unmeasured there). Values are unchanged, only strides.
    """
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _depthwise(f: torch.Tensor, channels: int) -> torch.Tensor:
    return f[None, None].expand(channels, 1, *f.shape)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: int | list[int] | tuple[int, ...] = 0,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with FIR filter `f`, downsample.

    Computed without materialising what is thrown away: upsampling is a stride-`up`
    transposed depthwise convolution (no zero-filled tensor), symmetric padding is the
    convolution's own (no padded copy), downsampling is a stride-`down` convolution (no
    outputs computed only to be dropped). The general zero-insert / pad / crop path remains
    for paddings these cannot express. The memory layout of `x` is kept.
    """
    px0, px1, py0, py1 = _padding4(padding)
    c = x.shape[1]
    if f is None:  # padding / cropping / subsampling only
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
        return x[:, :, ::down, ::down]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    fh, fw = f.shape
    if up > 1 and down == 1:
        # zero insertion + padding (p0, p1) + filtering == transposed conv with the unflipped filter,
        # padding fw-1-p0 and output padding p1-p0+up-1, when those are valid
        qy, qx = fh - 1 - py0, fw - 1 - px0
        oy, ox = py1 - py0 + up - 1, px1 - px0 + up - 1
        if qy >= 0 and qx >= 0 and 0 <= oy < up and 0 <= ox < up:
            return F.conv_transpose2d(x, _depthwise(f, c), stride=up, padding=(qy, qx), output_padding=(oy, ox),
                                      groups=c)
    if up > 1:
        n, _, h, w = x.shape
        x = x.reshape([n, c, h, 1, w, 1])
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape([n, c, h * up, w * up])
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        pad = (py0, px0)
    else:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
        pad = (0, 0)
    return F.conv2d(x, _depthwise(f.flip([0, 1]), c), stride=down, padding=pad, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p = [(fw + up - 1) // 2, (fw - up) // 2]
    return upfirdn2d(preferred_layout(x), f, up=up, padding=[p[0], p[1], p[0], p[1]], gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    fw = f.shape[-1]
    p = [(fw - down + 1) // 2, (fw - down) // 2]
    return upfirdn2d(preferred_layout(x), f, down=down, padding=[p[0], p[1], p[0], p[1]])


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling (NVIDIA's `conv2d_resample`).

    The same fast paths as the original are taken (they decide float rounding):
    1x1 + down: filter then conv; 1x1 + up: conv then filter; down: filter then
    strided conv; up: transposed strided conv then filter; else plain conv.
    """
    out_ch, in_ch_per_group, kh, kw = w.shape
    if groups == 1:  # a grouped call is the fused modulated conv of a whole batch: NCHW measured faster
        x = preferred_layout(x)
    fw = fh = 1 if f is None else f.shape[-1]
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_ch_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_ch_per_group, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """[N, out] factors 1/sqrt(sum over in, kh, kw of (weight * style)^2 + eps) that demodulate a modulated conv.

    The sum factorises: sum_i style[n, i]^2 * (sum_kh,kw weight[o, i]^2), one [N, in] x [in, out]
    product. NVIDIA forms the [N, out, in, kh, kw] modulated weight and squares it; at 8x8 px
    that cost about three times the convolution itself (measured, benchmarks/README.md).
    """
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
    bias: torch.Tensor | None = None,
    act: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution, fp32 path only.

    Returns conv + noise, or with `bias`/`act`/`gain`/`clamp` the whole layer
    (`bias_act(conv + noise, bias, act, gain, clamp)`), which is computed in place on the
    conv output (see `epilogue`).
    """
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    dcoefs = demodulation_coefficients(weight, styles).reshape(batch, -1, 1, 1) if demodulate else None

    if kh == kw == 1 and up == 1 and padding == 0:
        # a 1x1 modulated conv (ToRGB) is one batched matmul with per-sample weights: x is read once,
        # no modulated copy of it is made, and the 3-channel output avoids oneDNN's slow narrow convs
        w = weight.reshape(1, out_ch, in_ch) * styles.reshape(batch, 1, in_ch)
        if demodulate:
            w = w * dcoefs.reshape(batch, out_ch, 1)
        n, _, h, wd = x.shape
        if x.is_contiguous():  # either layout works; keep the one x comes in
            y = torch.bmm(w, x.reshape(n, in_ch, h * wd)).reshape(n, out_ch, h, wd)
        else:  # channels-last: [N, H*W, in] @ [N, in, out], viewed back as channels-last NCHW
            y = torch.bmm(x.permute(0, 2, 3, 1).reshape(n, h * wd, in_ch), w.transpose(1, 2))
            y = y.reshape(n, h, wd, out_ch).permute(0, 3, 1, 2)
        return epilogue(y, None, noise, bias, act, gain, clamp, fresh=True)

    if not fused_modconv:
        x = preferred_layout(x) * styles.reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight, f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        return epilogue(x, dcoefs, noise, bias, act, gain, clamp, fresh=True)

    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        w = w * dcoefs.unsqueeze(-1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return epilogue(x, None, noise, bias, act, gain, clamp, fresh=True)
