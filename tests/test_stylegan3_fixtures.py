"""Our StyleGAN3 against NVIDIA's own outputs (../shared/fixtures/stylegan3: configs t and r, 32 px).

Every synthesis layer's output is compared, so a divergence is located at the layer
where it starts. The fixture holds G_ema only (no G or D weights): G_img_psi1 and
D_logits_psi1 cannot be checked here.
"""

from __future__ import annotations

import json

import pytest
import torch

from genbackbones.generators.stylegan3 import Generator, design_lowpass_filter

from .conftest import SHARED, assert_close_to_reference

FIXTURES = SHARED / "fixtures" / "stylegan3"
VARIANTS = ["t_small", "r_small"]


def fixture(variant: str) -> dict:
    from safetensors.torch import load_file

    path = FIXTURES / variant
    if not (path / "expected.safetensors").exists():
        pytest.skip(f"NVIDIA StyleGAN3 reference fixtures not found at {path} (they live in ../shared)")
    return {"kwargs": json.loads((path / "init_kwargs.json").read_text()),
            "G_ema": load_file(path / "G_ema.safetensors"), "expected": load_file(path / "expected.safetensors")}


@pytest.fixture(scope="module", params=VARIANTS)
def net(request):
    fx = fixture(request.param)
    G = Generator(**fx["kwargs"]["G"]).eval().requires_grad_(False)
    designed = {k: v.clone() for k, v in G.state_dict().items()}
    G.load_state_dict(fx["G_ema"])
    return dict(variant=request.param, G=G, designed=designed, nvidia=fx["G_ema"], e=fx["expected"],
                z=fx["expected"]["z"], cfg=fx["kwargs"]["cfg"])


def test_state_dict_names_and_designed_filters_equal_nvidias(net):
    """Same keys and shapes as NVIDIA's state dict, and our filter design gives NVIDIA's (scipy-designed) filters."""
    designed, nvidia = net["designed"], net["nvidia"]
    assert sorted(designed) == sorted(nvidia)
    assert all(designed[k].shape == nvidia[k].shape for k in nvidia)
    filters = [k for k in nvidia if k.endswith("_filter")]
    assert len(filters) == 2 * 14  # every layer but ToRGB has an up- and a down-sampling filter
    radial = [k for k in filters if nvidia[k].ndim == 2]
    assert bool(radial) == (net["cfg"] == "stylegan3-r")  # config r: radial down filters, not the critical ones
    for key in filters:
        assert (designed[key] - nvidia[key]).abs().max().item() <= 1e-7, key
    assert net["G"].config == net["cfg"]


def test_lowpass_design_properties():
    """Unit gain at DC, symmetric, and 1 tap means no filter."""
    f = design_lowpass_filter(numtaps=12, cutoff=4.0, width=6.0, fs=32)
    assert f.shape == (12,) and abs(f.sum().item() - 1) < 1e-6 and torch.equal(f, f.flip(0))
    r = design_lowpass_filter(numtaps=12, cutoff=4.0, width=6.0, fs=32, radial=True)
    assert r.shape == (12, 12) and abs(r.sum().item() - 1) < 1e-6 and torch.allclose(r, r.t())
    assert design_lowpass_filter(numtaps=1, cutoff=4.0, width=6.0, fs=32) is None


@torch.no_grad()
def test_mapping_and_truncation(net):
    G, e, z = net["G"], net["e"], net["z"]
    assert_close_to_reference("ws_psi1", G.mapping(z, None), e["ws_psi1"])
    assert_close_to_reference("ws_psi0.7", G.mapping(z, None, truncation_psi=0.7), e["ws_psi0.7"])


@torch.no_grad()
def test_every_layer_and_the_image(net):
    """Every SynthesisInput / SynthesisLayer output (first sample, computed in the batch of 8) and the image."""
    G, e, z = net["G"], net["e"], net["z"]
    trace = G.trace(z, None, truncation_psi=1)
    layers = {k.removeprefix("layer."): ref for k, ref in e.items() if k.startswith("layer.")}
    assert sorted(layers) == sorted(G.tap_specs()), "every tap is a layer NVIDIA recorded, and vice versa"
    for name in [s.taps[0] for s in G.synthesis.steps]:  # in execution order: the first failure is the cause
        assert_close_to_reference(name, trace.taps[name][:1], layers[name])
    assert_close_to_reference("img_psi1 (trace)", trace.img, e["img_psi1"])
    assert_close_to_reference("img_psi1", G(z, None, truncation_psi=1, noise_mode="const"), e["img_psi1"])


@torch.no_grad()
def test_truncated_synthesis_and_grouped_conv(net):
    G, e, z = net["G"], net["e"], net["z"]
    assert_close_to_reference("img_psi0.7", G(z, None, truncation_psi=0.7), e["img_psi0.7"])
    # the default is the unfused conv on CPU; the grouped (fused) form must agree too
    assert_close_to_reference("img_synth_psi1 fused", G.synthesis(e["ws_psi1"], fused_modconv=True),
                              e["img_synth_psi1"])
