"""What the methods need from a generator: taps, resume, synthesis from styles."""

from __future__ import annotations

import pytest
import torch

from genbackbones.generators.base import FrozenGenerator, freeze
from genbackbones.generators.stylegan2 import Generator


def small_generator(architecture: str = "skip", c_dim: int = 0, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(z_dim=32, c_dim=c_dim, w_dim=32, img_resolution=32, img_channels=3,
                  mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 512, "channel_max": 64, "architecture": architecture})
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return freeze(G)


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
def test_resume_with_original_tap_reproduces_image_exactly(architecture):
    G = small_generator(architecture)
    assert isinstance(G, FrozenGenerator)
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    trace = G.trace(z, noise_mode="random")
    assert len(trace.taps) == len(G.tap_specs())
    for tap, spec in G.tap_specs().items():
        t = trace.taps[tap]
        assert t.shape[1:] == (spec.channels, spec.resolution, spec.resolution), tap
        if spec.name.endswith(".const"):
            continue
        img = G.resume(trace, tap, t.clone())
        assert torch.equal(img, trace.img), f"resume from {tap} changed the image"


def test_resume_is_differentiable_and_changes_image():
    G = small_generator("skip")
    z = torch.randn(2, G.z_dim)
    trace = G.trace(z, noise_mode="random")
    tap = "synthesis.b8.x"
    sub = (trace.taps[tap] + 0.5 * torch.randn_like(trace.taps[tap])).requires_grad_(True)
    img = G.resume(trace, tap, sub)
    assert not torch.equal(img, trace.img)
    ((img - trace.img) ** 2).mean().backward()
    assert sub.grad is not None and sub.grad.abs().sum() > 0
    assert all(p.grad is None for p in G.parameters()), "the frozen generator must not collect gradients"


def test_random_noise_is_kept_in_the_trace():
    G = small_generator("skip")
    z = torch.randn(2, G.z_dim)
    trace = G.trace(z, noise_mode="random")
    torch.manual_seed(123)  # a different global RNG state must not matter to resume
    assert torch.equal(G.resume(trace, "synthesis.b16.conv0", trace.taps["synthesis.b16.conv0"]), trace.img)


def test_synthesis_from_true_styles_matches_ws_path():
    G = small_generator("resnet", c_dim=3)
    z = torch.randn(3, G.z_dim)
    c = G.sample_labels(3, torch.Generator().manual_seed(0))
    ws = G.mapping(z, c)
    styles = G.synthesis.compute_styles(ws)
    assert {k: v.shape[1] for k, v in styles.items()} == G.style_dims()
    img_ws = G.synthesis(ws, noise_mode="const")
    img_styles = G.synthesize_from_styles(styles, noise_mode="const")
    assert torch.equal(img_ws, img_styles)


def test_bad_substitute_shape_and_unknown_tap_are_clear_errors():
    G = small_generator()
    trace = G.trace(torch.randn(2, G.z_dim))
    with pytest.raises(ValueError, match="expected"):
        G.resume(trace, "synthesis.b8.x", torch.zeros(2, 1, 8, 8))
    with pytest.raises(KeyError, match="unknown tap"):
        G.resume(trace, "synthesis.b9.x", torch.zeros(1))


# ----------------------------------------------------------------------------- StyleGAN3 (alias-free)


@pytest.fixture(scope="module", params=["sg3-t32", "sg3-r32"])
def stylegan3(request):
    from genbackbones.generators.open import open_generator

    return open_generator(f"random:{request.param}").G


def test_stylegan3_taps_resume_exactly_and_are_larger_than_the_image(stylegan3):
    G = stylegan3
    assert isinstance(G, FrozenGenerator)
    trace = G.trace(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1)), truncation_psi=0.7)
    specs = G.tap_specs()
    assert list(specs) == ["synthesis.input", *(f"synthesis.{n}" for n in G.synthesis.layer_names)]
    assert [specs[n].resolution for n in specs] == [36] * 6 + [52] * 8 + [32] * 2  # margins, then critical layers
    assert specs[list(specs)[-1]].kind == "img" and specs[list(specs)[-1]].channels == 3
    for tap, spec in specs.items():
        t = trace.taps[tap]
        assert t.shape[1:] == (spec.channels, spec.resolution, spec.resolution), tap
        assert torch.equal(G.resume(trace, tap, t.clone()), trace.img), f"resume from {tap} changed the image"


def test_stylegan3_resume_is_differentiable_and_changes_image(stylegan3):
    G = stylegan3
    trace = G.trace(torch.randn(2, G.z_dim))
    tap = "synthesis.L5_52_64" if "synthesis.L5_52_64" in trace.taps else "synthesis.L5_52_128"
    sub = (trace.taps[tap] + 0.5 * torch.randn_like(trace.taps[tap])).requires_grad_(True)
    img = G.resume(trace, tap, sub)
    assert not torch.equal(img, trace.img)
    ((img - trace.img) ** 2).mean().backward()
    assert sub.grad is not None and sub.grad.abs().sum() > 0
    assert all(p.grad is None for p in G.parameters()), "the frozen generator must not collect gradients"


def test_stylegan3_styles_path_equals_ws_path_and_truncation_moves_towards_w_avg(stylegan3):
    G = stylegan3
    z = torch.randn(3, G.z_dim)
    ws = G.mapping(z, None)
    styles = G.synthesis.compute_styles(ws)
    assert {k: v.shape[1] for k, v in styles.items()} == G.style_dims()
    assert G.style_dims()["synthesis.input"] == 4  # rotation (cos, sin) and translation of the Fourier features
    assert torch.equal(G.synthesis(ws), G.synthesize_from_styles(styles))
    # a different style for one layer changes the image: every layer is driven by its own style
    other = {**styles, G.synthesis.style_layers[3]: styles[G.synthesis.style_layers[3]].flip(0)}
    assert not torch.equal(G.synthesize_from_styles(other), G.synthesize_from_styles(styles))
    centre = ws[:, 0].mean(0)
    saved = G.mapping.w_avg.clone()
    with torch.no_grad():
        G.mapping.w_avg.copy_(centre)
        half = G.mapping(z, None, truncation_psi=0.5)
        G.mapping.w_avg.copy_(saved)
    assert torch.allclose(half, (ws + centre) / 2, atol=1e-6)


def test_stylegan3_bad_substitute_and_unknown_tap_are_clear_errors(stylegan3):
    G = stylegan3
    trace = G.trace(torch.randn(2, G.z_dim))
    with pytest.raises(ValueError, match="expected"):
        G.resume(trace, "synthesis.input", torch.zeros(2, 1, 36, 36))
    with pytest.raises(KeyError, match="unknown tap"):
        G.resume(trace, "synthesis.b8.x", torch.zeros(1))
    with pytest.raises(ValueError, match="styles missing"):
        G.synthesize_from_styles({})
