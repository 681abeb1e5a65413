"""Our StyleGAN2 against NVIDIA's own outputs (../shared/fixtures/stylegan2)."""

from __future__ import annotations

import pytest
import torch

from genbackbones.generators.stylegan2 import Discriminator, Generator

from .conftest import FIXTURE_VARIANTS, assert_close_to_reference, load_fixture

VARIANTS = FIXTURE_VARIANTS or ["small_skip"]


@pytest.fixture(scope="module", params=VARIANTS)
def nets(request, fixture_dir):
    fx = load_fixture(fixture_dir(request.param))
    kw = fx["kwargs"]
    G_ema = Generator(**kw["G"]).eval()
    G_ema.load_state_dict(fx["G_ema"])
    G = Generator(**kw["G"]).eval()
    G.load_state_dict(fx["G"])
    D = Discriminator(**kw["D"]).eval()
    D.load_state_dict(fx["D"])
    e = fx["expected"]
    return dict(G_ema=G_ema, G=G, D=D, e=e, z=e["z"], c=e.get("c"))


@torch.no_grad()
def test_mapping_and_truncation(nets):
    G, e, z, c = nets["G_ema"], nets["e"], nets["z"], nets["c"]
    assert_close_to_reference("ws_psi1", G.mapping(z, c), e["ws_psi1"])
    assert_close_to_reference("ws_psi0.7", G.mapping(z, c, truncation_psi=0.7), e["ws_psi0.7"])
    assert_close_to_reference("ws_psi0.7_cutoff4", G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=4),
                              e["ws_psi0.7_cutoff4"])


@torch.no_grad()
def test_images_every_noise_mode_and_fusing(nets):
    G, e, z, c = nets["G_ema"], nets["e"], nets["z"], nets["c"]
    assert_close_to_reference("img_psi1", G(z, c, truncation_psi=1, noise_mode="const"), e["img_psi1"])
    assert_close_to_reference("img_psi0.7", G(z, c, truncation_psi=0.7, noise_mode="const"), e["img_psi0.7"])
    assert_close_to_reference("img_synth_psi1", G.synthesis(e["ws_psi1"], noise_mode="const"), e["img_synth_psi1"])
    assert_close_to_reference("img_synth_psi0.7", G.synthesis(e["ws_psi0.7"], noise_mode="const"),
                              e["img_synth_psi0.7"])
    assert_close_to_reference("img_psi1_noise_none", G(z, c, noise_mode="none"), e["img_psi1_noise_none"])
    assert_close_to_reference("img_psi1_unfused", G(z, c, noise_mode="const", fused_modconv=False),
                              e["img_psi1_unfused"])
    # the default picks a form per device (unfused on CPU); the grouped one must stay right when asked for
    assert_close_to_reference("img_psi1 fused", G(z, c, noise_mode="const", fused_modconv=True), e["img_psi1"])
    assert_close_to_reference("G_img_psi1", nets["G"](z, c, noise_mode="const"), e["G_img_psi1"])


@torch.no_grad()
def test_every_intermediate_tap(nets):
    G, e, z, c = nets["G_ema"], nets["e"], nets["z"], nets["c"]
    trace = G.trace(z, c, noise_mode="const")
    checked = 0
    for key, ref in e.items():
        kind, _, name = key.partition(".")
        if kind in ("block", "layer") and name.startswith("synthesis."):
            assert_close_to_reference(key, trace.taps[name], ref)
        elif kind == "affine":
            assert_close_to_reference(key, trace.styles[name], ref)
        elif kind == "styles":
            gain = G.synthesis.layer(name).weight_gain if name.endswith("torgb") else 1.0
            assert_close_to_reference(key, trace.styles[name] * gain, ref)
        elif kind == "map":
            continue
        else:
            continue
        checked += 1
    assert checked >= 30
    assert_close_to_reference("trace.img", trace.img, e["img_psi1"])


@torch.no_grad()
def test_mapping_layer_outputs(nets):
    G, e, z, c = nets["G_ema"], nets["e"], nets["z"], nets["c"]
    seen = {}
    hooks = [getattr(G.mapping, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
             for n in ("fc0", "fc1") + (("embed",) if c is not None else ())]
    G.mapping(z, c)
    for h in hooks:
        h.remove()
    for n, out in seen.items():
        assert_close_to_reference(f"map.mapping.{n}", out, e[f"map.mapping.{n}"])


@torch.no_grad()
def test_discriminator_blocks_and_logits(nets):
    D, e, c = nets["D"], nets["e"], nets["c"]
    seen = {}
    hooks = [getattr(D, f"b{r}").register_forward_hook(lambda m, i, o, r=r: seen.__setitem__(r, o))
             for r in D.block_resolutions]
    if c is not None:
        hooks.append(D.mapping.register_forward_hook(lambda m, i, o: seen.__setitem__("mapping", o)))
    assert_close_to_reference("D_logits_psi1", D(e["img_psi1"], c), e["D_logits_psi1"])
    for h in hooks:
        h.remove()
    assert_close_to_reference("D_logits_psi0.7", D(e["img_psi0.7"], c), e["D_logits_psi0.7"])
    for r in D.block_resolutions:
        assert_close_to_reference(f"D.block.b{r}.x", seen[r][0], e[f"D.block.b{r}.x"])
    if c is not None:
        assert_close_to_reference("D.mapping", seen["mapping"], e["D.mapping"])
