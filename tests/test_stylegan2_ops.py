"""The fast forms of the StyleGAN2 ops against plain reference formulas, and their gradients.

The fixture tests (test_stylegan2_fixtures.py) judge whole networks against NVIDIA's outputs;
these pin down each shortcut on its own, including the cases the fixtures do not reach:
asymmetric filters and paddings, both memory layouts, autograd through the in-place layer
tails (first and second order), and the per-device choice of the modulated conv's form.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genbackbones.generators.ops import (
    conv2d_resample,
    demodulation_coefficients,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
)
from genbackbones.generators.open import RANDOM_PRESETS
from genbackbones.generators.stylegan2 import Conv2dLayer, Generator, SynthesisLayer

CL = torch.channels_last


def reference_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """The textbook definition: zero insertion, pad (negative = crop), true convolution with f, subsample."""
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


ASYMMETRIC = torch.tensor([[1.0, 2.0, 0.5, 0.25], [0.0, 1.0, 3.0, 1.0], [2.0, 0.5, 1.0, 0.0], [1.0, 1.0, 0.0, 2.0]])


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("up,down,pad", [
    (2, 1, (2, 1, 2, 1)),     # upsample2d: the transposed-conv path
    (2, 1, (1, 2, 2, 1)),     # odd paddings: general zero-insertion path on one axis
    (2, 1, (3, 0, 0, 3)),
    (1, 2, (1, 1, 1, 1)),     # downsample2d: strided conv
    (1, 1, (1, 1, 1, 1)),     # conv2d_resample's filter after a transposed conv
    (1, 1, (2, -1, 0, 1)),    # negative padding crops
    (1, 2, (0, 1, 2, 0)),
])
def test_upfirdn2d_matches_the_definition(up, down, pad, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 9, generator=g).contiguous(memory_format=layout)
    for f, gain in ((setup_filter([1, 3, 3, 1]), up * up), (ASYMMETRIC / ASYMMETRIC.sum(), 1.7)):
        got = upfirdn2d(x, f, up=up, down=down, padding=list(pad), gain=gain)
        ref = reference_upfirdn2d(x.contiguous(), f, up=up, down=down, pad=pad, gain=gain)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_upfirdn2d_without_filter_only_pads_and_subsamples():
    x = torch.randn(1, 2, 6, 6)
    got = upfirdn2d(x, None, down=2, padding=[1, -1, 0, 2])
    torch.testing.assert_close(got, reference_upfirdn2d(x, torch.ones(1, 1), down=2, pad=(1, -1, 0, 2)))


def test_demodulation_coefficients_are_nvidias_formula():
    g = torch.Generator().manual_seed(1)
    weight, styles = torch.randn(6, 5, 3, 3, generator=g), torch.randn(4, 5, generator=g)
    w = weight.unsqueeze(0) * styles.reshape(4, 1, -1, 1, 1)
    torch.testing.assert_close(demodulation_coefficients(weight, styles), (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt())


def reference_modulated_layer(x, weight, styles, noise, bias, up, f, demodulate, act, gain, clamp):
    """One image at a time: modulate and demodulate its weights, NVIDIA's conv2d_resample, then bias_act."""
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w * (w.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt().reshape(-1, 1, 1, 1)
        if up == 1:
            y = F.conv2d(x[i:i + 1], w, padding=weight.shape[-1] // 2)
        else:  # transposed conv (SynthesisLayer's up layers pass flip_weight=False), then the FIR filter x4
            y = F.conv_transpose2d(x[i:i + 1], w.transpose(0, 1), stride=2)
            y = reference_upfirdn2d(y, f, pad=(1, 1, 1, 1), gain=4)
        outs.append(y)
    y = torch.cat(outs)
    y = y + noise if noise is not None else y
    y = y + bias.reshape(1, -1, 1, 1)
    y = {"lrelu": lambda t: F.leaky_relu(t, 0.2), "linear": lambda t: t}[act](y) * gain
    return y.clamp(-clamp, clamp) if clamp is not None else y


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("layer", ["conv", "up", "torgb"])
def test_modulated_conv2d_every_form_matches_the_reference(layer, fused):
    g = torch.Generator().manual_seed(2)
    k, up, demodulate, act, gain, clamp = {"conv": (3, 1, True, "lrelu", 2**0.5, None),
                                            "up": (3, 2, True, "lrelu", 2**0.5 * 0.5**0.5, 0.8),
                                            "torgb": (1, 1, False, "linear", 1.0, None)}[layer]
    x = torch.randn(3, 6, 8, 8, generator=g)
    weight, styles = torch.randn(5, 6, k, k, generator=g), torch.randn(3, 6, generator=g)
    bias = torch.randn(5, generator=g)
    noise = None if layer == "torgb" else 0.3 * torch.randn(3, 1, 8 * up, 8 * up, generator=g)
    f = setup_filter([1, 3, 3, 1])
    ref = reference_modulated_layer(x, weight, styles, noise, bias, up, f, demodulate, act, gain, clamp)
    for layout in (torch.contiguous_format, CL):
        got = modulated_conv2d(x.contiguous(memory_format=layout), weight, styles, noise=noise, up=up,
                               padding=k // 2, resample_filter=f, demodulate=demodulate, flip_weight=(up == 1),
                               fused_modconv=fused, bias=bias, act=act, gain=gain, clamp=clamp)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _layer(up: int, clamp=None, seed: int = 0) -> SynthesisLayer:
    torch.manual_seed(seed)
    layer = SynthesisLayer(4, 5, w_dim=8, resolution=8, up=up, conv_clamp=clamp).double()
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("up,clamp", [(1, None), (2, None), (1, 0.7)])
def test_in_place_layer_tail_has_the_right_gradient(up, clamp):
    """LayerMatch's reconstruction: only the activation requires grad, so the tail runs in place."""
    layer = _layer(up, clamp).requires_grad_(False)
    x = torch.randn(2, 4, 8 // up, 8 // up, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(2, 4, dtype=torch.float64)
    noise = layer.make_noise(2, "const", "cpu")
    for fused in (False, True):
        assert torch.autograd.gradcheck(lambda t: layer(t, styles=styles, noise=noise, fused_modconv=fused), (x,))
        with torch.no_grad():  # the tail without any graph takes other in-place steps: same values
            expected = layer(x, styles=styles, noise=noise, fused_modconv=fused)
        torch.testing.assert_close(layer(x, styles=styles, noise=noise, fused_modconv=fused), expected,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("up", [1, 2])
def test_layer_second_order_gradients_for_gan_regularisers(up):
    """Path-length regularisation differentiates a gradient w.r.t. styles and weights: out-of-place tail."""
    layer = _layer(up)
    x = torch.randn(2, 4, 8 // up, 8 // up, dtype=torch.float64)
    styles = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    noise = layer.make_noise(2, "const", "cpu")

    def fn(s, w):
        return torch.func.functional_call(layer, {"weight": w}, (x,), dict(styles=s, noise=noise, fused_modconv=False))

    weight = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(fn, (styles, weight))


def test_discriminator_conv_second_order_gradients_for_r1():
    torch.manual_seed(0)
    conv = Conv2dLayer(3, 4, kernel_size=3, activation="lrelu", down=2).double()
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: conv(t), (img,))


@pytest.fixture(scope="module")
def small_g():
    torch.manual_seed(0)
    G = Generator(**RANDOM_PRESETS["tiny32"]).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.2)
    return G


def test_default_form_on_cpu_is_unfused_and_explicit_flags_are_obeyed(small_g):
    z = torch.randn(2, small_g.z_dim)
    with torch.no_grad():
        assert small_g.trace(z).fused_modconv is False
        assert small_g.trace(z, fused_modconv=True).fused_modconv is True
        fused, unfused = small_g(z, noise_mode="const", fused_modconv=True), small_g(z, noise_mode="const")
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_taps_are_channels_last_on_cpu_but_the_image_is_plain_nchw(small_g):
    with torch.no_grad():
        trace = small_g.trace(torch.randn(2, small_g.z_dim), noise_mode="random")
    assert trace.img.is_contiguous()
    assert trace.taps["synthesis.b16.x"].is_contiguous(memory_format=CL)
    # a substitute in either layout (a backbone head gives NCHW) resumes to the same image
    tap = "synthesis.b16.x"
    with torch.no_grad():
        a = small_g.resume(trace, tap, 1.1 * trace.taps[tap])
        b = small_g.resume(trace, tap, (1.1 * trace.taps[tap]).contiguous())
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, trace.img)


def test_conv2d_resample_keeps_grouped_calls_in_nchw():
    """The fused modulated conv is one grouped conv over the batch; NHWC was measured slower for it."""
    x = torch.randn(1, 12, 8, 8)
    w = torch.randn(12, 4, 3, 3)
    out = conv2d_resample(x, w, padding=1, groups=3)
    assert out.is_contiguous()
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1, groups=3))
