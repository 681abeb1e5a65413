"""rosinality/stylegan2-pytorch checkpoints: the key mapping reproduces rosinality's computation.

We do not run rosinality's code. Instead `rosinality_state_dicts` builds random
tensors with rosinality's key names and shapes (small channel counts, as in a fork
with a smaller channel table), and the `ros_*` functions below are rosinality's
forward pass written out from its definitions (EqualLinear, PixelNorm,
ModulatedConv2d with transposed-conv upsampling + blur, NoiseInjection,
FusedLeakyReLU, ToRGB with upsampled skip, ResBlock discriminator). Our networks,
loaded through the mapping, must agree with those formulas.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.errors import UserError
from genbackbones.generators.open import open_generator
from genbackbones.generators.formats.rosinality import W_AVG_SAMPLES, read_rosinality_checkpoint

SIZE, LATENT, N_MLP = 16, 32, 3
CHANNELS = {4: 64, 8: 64, 16: 32}
SQRT2 = math.sqrt(2)


# ----------------------------------------------------------------------------- a checkpoint in rosinality's layout


def make_kernel(k=(1, 3, 3, 1)) -> torch.Tensor:
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def generator_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    sd = {}
    for i in range(1, N_MLP + 1):
        sd[f"style.{i}.weight"] = randn(LATENT, LATENT, scale=100.0)  # stored / lr_mul, as rosinality initialises
        sd[f"style.{i}.bias"] = randn(LATENT, scale=10.0)
    sd["input.input"] = randn(1, CHANNELS[4], 4, 4)

    def styled(name, cin, cout, res, noise_index):
        sd[f"{name}.conv.weight"] = randn(1, cout, cin, 3, 3)
        sd[f"{name}.conv.modulation.weight"] = randn(cin, LATENT)
        sd[f"{name}.conv.modulation.bias"] = 1 + randn(cin, scale=0.1)
        sd[f"{name}.noise.weight"] = randn(1, scale=0.2)
        sd[f"{name}.activate.bias"] = randn(cout, scale=0.1)
        sd[f"noises.noise_{noise_index}"] = randn(1, 1, res, res)

    def to_rgb(name, cin, upsample):
        sd[f"{name}.conv.weight"] = randn(1, 3, cin, 1, 1)
        sd[f"{name}.conv.modulation.weight"] = randn(cin, LATENT)
        sd[f"{name}.conv.modulation.bias"] = 1 + randn(cin, scale=0.1)
        sd[f"{name}.bias"] = randn(1, 3, 1, 1, scale=0.1)
        if upsample:
            sd[f"{name}.upsample.kernel"] = make_kernel() * 4

    styled("conv1", CHANNELS[4], CHANNELS[4], 4, 0)
    to_rgb("to_rgb1", CHANNELS[4], upsample=False)
    cin = CHANNELS[4]
    for k, res in enumerate([8, 16]):
        styled(f"convs.{2 * k}", cin, CHANNELS[res], res, 2 * k + 1)
        sd[f"convs.{2 * k}.conv.blur.kernel"] = make_kernel() * 4
        styled(f"convs.{2 * k + 1}", CHANNELS[res], CHANNELS[res], res, 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", CHANNELS[res], upsample=True)
        cin = CHANNELS[res]
    return sd


def discriminator_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    sd = {"convs.0.0.weight": randn(CHANNELS[SIZE], 3, 1, 1), "convs.0.1.bias": randn(CHANNELS[SIZE], scale=0.1)}
    for i, res in enumerate([16, 8], start=1):
        cin, cout = CHANNELS[res], CHANNELS[res // 2]
        sd[f"convs.{i}.conv1.0.weight"] = randn(cin, cin, 3, 3)
        sd[f"convs.{i}.conv1.1.bias"] = randn(cin, scale=0.1)
        sd[f"convs.{i}.conv2.0.kernel"] = make_kernel()
        sd[f"convs.{i}.conv2.1.weight"] = randn(cout, cin, 3, 3)
        sd[f"convs.{i}.conv2.2.bias"] = randn(cout, scale=0.1)
        sd[f"convs.{i}.skip.0.kernel"] = make_kernel()
        sd[f"convs.{i}.skip.1.weight"] = randn(cout, cin, 1, 1)
    sd["final_conv.0.weight"] = randn(CHANNELS[4], CHANNELS[4] + 1, 3, 3)
    sd["final_conv.1.bias"] = randn(CHANNELS[4], scale=0.1)
    sd["final_linear.0.weight"] = randn(CHANNELS[4], CHANNELS[4] * 16)
    sd["final_linear.0.bias"] = randn(CHANNELS[4], scale=0.1)
    sd["final_linear.1.weight"] = randn(1, CHANNELS[4])
    sd["final_linear.1.bias"] = randn(1, scale=0.1)
    return sd


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    g_ema, g, d = generator_state(gen), generator_state(gen), discriminator_state(gen)
    latent_avg = torch.randn(LATENT, generator=gen)
    folder = tmp_path_factory.mktemp("rosinality")
    converted = folder / "converted.pt"
    torch.save({"g_ema": g_ema, "latent_avg": latent_avg}, converted)
    adam = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
            "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "eps": 1e-8, "params": [0]}]}
    args = argparse.Namespace(path="lmdb", size=SIZE, latent=LATENT, n_mlp=N_MLP, channel_multiplier=2, iter=800000,
                              batch=16, r1=10.0, augment=False, augment_p=0.0, wandb=False, local_rank=0)
    training = folder / "100000.pt"
    torch.save({"g": g, "d": d, "g_ema": g_ema, "g_optim": adam, "d_optim": adam, "args": args,
                "ada_aug_p": 0.0}, training)
    return dict(g_ema=g_ema, g=g, d=d, latent_avg=latent_avg, converted=converted, training=training,
                folder=folder)


# ----------------------------------------------------------------------------- rosinality's forward, from its formulas


def ros_linear(x, weight, bias, lr_mul=1.0, activate=False):
    """EqualLinear: weight * lr_mul / sqrt(in), bias * lr_mul; fused_lrelu = leaky_relu(x + b, 0.2) * sqrt(2)."""
    out = F.linear(x, weight * (lr_mul / math.sqrt(weight.shape[1])))
    if activate:
        return F.leaky_relu(out + bias * lr_mul, 0.2) * SQRT2
    return out + bias * lr_mul


def ros_mapping(sd, z):
    x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # PixelNorm
    for i in range(1, N_MLP + 1):
        x = ros_linear(x, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], lr_mul=0.01, activate=True)
    return x


def upfirdn(x, kernel, up=1, down=1, pad=(0, 0)):
    """upfirdn2d: zero-insertion upsampling, padding (pad0, pad1) on both axes, FIR filter, subsampling."""
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    x = F.conv2d(x, kernel.flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def ros_modconv(sd, name, x, w, demodulate=True, upsample=False):
    weight = sd[f"{name}.conv.weight"]  # [1, out, in, k, k]
    _, cout, cin, k, _ = weight.shape
    style = ros_linear(w, sd[f"{name}.conv.modulation.weight"], sd[f"{name}.conv.modulation.bias"])
    weight = weight / math.sqrt(cin * k * k) * style.view(-1, 1, cin, 1, 1)
    if demodulate:
        weight = weight * torch.rsqrt(weight.square().sum([2, 3, 4]) + 1e-8).view(-1, cout, 1, 1, 1)
    outs = []
    for i in range(x.shape[0]):
        if upsample:  # transposed conv, then blur with pad (1, 1)
            out = F.conv_transpose2d(x[i:i + 1], weight[i].transpose(0, 1), stride=2)
            outs.append(upfirdn(out, sd[f"{name}.conv.blur.kernel"], pad=(1, 1)))
        else:
            outs.append(F.conv2d(x[i:i + 1], weight[i], padding=k // 2))
    return torch.cat(outs)


def ros_styled_conv(sd, name, x, w, noise, upsample=False):
    out = ros_modconv(sd, name, x, w, upsample=upsample)
    out = out + sd[f"{name}.noise.weight"] * noise
    return F.leaky_relu(out + sd[f"{name}.activate.bias"].view(1, -1, 1, 1), 0.2) * SQRT2


def ros_to_rgb(sd, name, x, w, skip=None):
    out = ros_modconv(sd, name, x, w, demodulate=False) + sd[f"{name}.bias"]
    if skip is not None:
        out = out + upfirdn(skip, sd[f"{name}.upsample.kernel"], up=2, pad=(2, 1))
    return out


def ros_generator(sd, z, truncation=1.0, truncation_latent=None):
    """rosinality Generator.forward with randomize_noise=False and one style for every layer."""
    w = ros_mapping(sd, z)
    if truncation < 1:
        w = truncation_latent + truncation * (w - truncation_latent)
    out = sd["input.input"].repeat(z.shape[0], 1, 1, 1)
    out = ros_styled_conv(sd, "conv1", out, w, sd["noises.noise_0"])
    skip = ros_to_rgb(sd, "to_rgb1", out, w)
    for k in range(2):
        out = ros_styled_conv(sd, f"convs.{2 * k}", out, w, sd[f"noises.noise_{2 * k + 1}"], upsample=True)
        out = ros_styled_conv(sd, f"convs.{2 * k + 1}", out, w, sd[f"noises.noise_{2 * k + 2}"])
        skip = ros_to_rgb(sd, f"to_rgbs.{k}", out, w, skip)
    return skip


def ros_conv_layer(sd, prefix, x, downsample=False, activate=True):
    """ConvLayer: [Blur] EqualConv2d [FusedLeakyReLU]."""
    i = 0
    weight = sd[f"{prefix}.{1 if downsample else 0}.weight"]
    k = weight.shape[-1]
    if downsample:
        p = 2 + (k - 1)
        x = upfirdn(x, sd[f"{prefix}.0.kernel"], pad=((p + 1) // 2, p // 2))
        i = 1
    x = F.conv2d(x, weight / math.sqrt(weight.shape[1] * k * k), stride=2 if downsample else 1,
                 padding=0 if downsample else k // 2)
    if activate:
        x = F.leaky_relu(x + sd[f"{prefix}.{i + 1}.bias"].view(1, -1, 1, 1), 0.2) * SQRT2
    return x


def ros_discriminator(sd, img):
    out = ros_conv_layer(sd, "convs.0", img)
    for i in (1, 2):
        main = ros_conv_layer(sd, f"convs.{i}.conv2", ros_conv_layer(sd, f"convs.{i}.conv1", out), downsample=True)
        skip = ros_conv_layer(sd, f"convs.{i}.skip", out, downsample=True, activate=False)
        out = (main + skip) / SQRT2
    batch, channel, height, width = out.shape
    group = min(batch, 4)
    std = out.view(group, -1, 1, channel, height, width)
    std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
    out = torch.cat([out, std.repeat(group, 1, height, width)], 1)
    out = ros_conv_layer(sd, "final_conv", out).view(batch, -1)
    out = ros_linear(out, sd["final_linear.0.weight"], sd["final_linear.0.bias"], activate=True)
    return ros_linear(out, sd["final_linear.1.weight"], sd["final_linear.1.bias"])


def assert_close(got, ref, rel=1e-5):
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = (got - ref).abs().max().item()
    assert err <= rel * max(1.0, ref.abs().max().item()), f"max|diff| {err:.3e}"


# ----------------------------------------------------------------------------- the mapping


@pytest.fixture(scope="module")
def converted(ckpts):
    return open_generator(ckpts["converted"])


def test_shapes_and_kwargs_are_inferred(converted):
    G = converted.G
    assert (G.z_dim, G.w_dim, G.img_resolution, G.c_dim) == (LATENT, LATENT, SIZE, 0)
    assert G.init_kwargs["mapping_kwargs"]["num_layers"] == N_MLP
    assert {r: getattr(G.synthesis, f"b{r}").out_channels for r in CHANNELS} == CHANNELS
    assert converted.D is None and converted.meta["source_format"] == "rosinality"


@torch.no_grad()
def test_mapping_network_matches_rosinality_formula(ckpts, converted):
    z = torch.randn(5, LATENT, generator=torch.Generator().manual_seed(1))
    ws = converted.G.mapping(z, None)
    assert ws.shape == (5, converted.G.num_ws, LATENT)
    assert_close(ws[:, 0], ros_mapping(ckpts["g_ema"], z))


@torch.no_grad()
def test_first_block_matches_rosinality_formula(ckpts, converted):
    sd, G = ckpts["g_ema"], converted.G
    z = torch.randn(3, LATENT, generator=torch.Generator().manual_seed(2))
    w = ros_mapping(sd, z)
    trace = G.trace(z, None, noise_mode="const")
    const = sd["input.input"].repeat(3, 1, 1, 1)
    assert torch.equal(G.synthesis.b4.const, sd["input.input"][0])
    conv1 = ros_styled_conv(sd, "conv1", const, w, sd["noises.noise_0"])
    assert_close(trace.taps["synthesis.b4.conv1"], conv1)
    assert_close(trace.taps["synthesis.b4.torgb"], ros_to_rgb(sd, "to_rgb1", conv1, w))


@torch.no_grad()
def test_whole_generator_matches_rosinality_formula(ckpts, converted):
    """Also checks the up-convolution (weights copied unflipped) and the upsampled ToRGB skip."""
    sd = ckpts["g_ema"]
    z = torch.randn(3, LATENT, generator=torch.Generator().manual_seed(3))
    assert_close(converted.G(z, None, noise_mode="const"), ros_generator(sd, z))
    psi = 0.5
    assert torch.equal(converted.G.mapping.w_avg, ckpts["latent_avg"])
    assert_close(converted.G(z, None, truncation_psi=psi, noise_mode="const"),
                 ros_generator(sd, z, truncation=psi, truncation_latent=ckpts["latent_avg"]))
    assert converted.meta["w_avg"] == "source"


@torch.no_grad()
def test_training_checkpoint_with_args_g_and_d(ckpts):
    loaded = open_generator(ckpts["training"], network="G")
    z = torch.randn(2, LATENT, generator=torch.Generator().manual_seed(4))
    assert_close(loaded.G(z, None, noise_mode="const"), ros_generator(ckpts["g"], z))
    img = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    assert_close(loaded.D(img), ros_discriminator(ckpts["d"], img))
    # no latent_avg in training checkpoints: the truncation centre is estimated, and says so
    assert loaded.meta["w_avg"].startswith("estimated")
    gen = torch.Generator().manual_seed(0)
    expected = ros_mapping(ckpts["g"], torch.randn(W_AVG_SAMPLES, LATENT, generator=gen)).mean(0)
    assert_close(loaded.G.mapping.w_avg, expected)


def test_args_that_contradict_the_weights_are_refused(ckpts, tmp_path):
    args = argparse.Namespace(size=256, latent=LATENT, n_mlp=N_MLP, channel_multiplier=2)
    path = tmp_path / "bad.pt"
    torch.save({"g_ema": ckpts["g_ema"], "args": args}, path)
    with pytest.raises(UserError, match=r"args.size=256 but the weights say 16"):
        read_rosinality_checkpoint(path)


def test_unknown_weights_are_refused(ckpts, tmp_path):
    path = tmp_path / "fork.pt"
    torch.save({"g_ema": {**ckpts["g_ema"], "extra.weight": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match=r"1 weights have no place in StyleGAN2 \(extra.weight\)"):
        read_rosinality_checkpoint(path)


def test_bare_state_dict_loads(ckpts, tmp_path):
    path = tmp_path / "g_ema_only.pth"
    torch.save(ckpts["g_ema"], path)
    assert read_rosinality_checkpoint(path)["G_ema"].w_avg.startswith("estimated")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_torch_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "args": Evil(marker)}, path)
    with pytest.raises(UserError, match=r"refused to load global \w+\.system from evil\.pt"):
        open_generator(path)
    assert not marker.exists()
    path2 = tmp_path / "evil2.pt"
    path2.write_bytes(pickle.dumps(Evil(marker)))  # legacy (non-zip) torch format is a pickle too
    with pytest.raises(UserError, match="refused to load global|truncated or not a torch checkpoint"):
        open_generator(path2)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_user_error(ckpts, tmp_path):
    data = ckpts["converted"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.pt is truncated or not a torch checkpoint"):
        open_generator(path)


@torch.no_grad()
def test_convert_rosinality_then_load_is_identical(ckpts, tmp_path):
    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["generator", "convert", str(ckpts["training"]), str(out)])
    assert result.exit_code == 0, result.output
    folder, direct = open_generator(out), open_generator(ckpts["training"])
    z = torch.randn(2, LATENT, generator=torch.Generator().manual_seed(6))
    assert torch.equal(folder.G(z, None, noise_mode="const"), direct.G(z, None, noise_mode="const"))
    assert folder.D is not None and folder.meta["w_avg"] == direct.meta["w_avg"]
