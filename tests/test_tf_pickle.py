"""NVIDIA's TensorFlow StyleGAN2 pickles, read without TensorFlow and without running anything from them.

The fixture `../shared/fixtures/stylegan2-tf/tf_skip` is a TF-layout pickle (G skip, D resnet) with NVIDIA's own
conversion of it (stylegan2-ada-pytorch's legacy.py) and that conversion's outputs. The other layouts (conditional
StyleGAN2-ADA, resnet and orig generators, a skip discriminator) are written here from a project network's
weights by the inverse of the documented conversion (transpose, flip the upsampling kernels, mod_bias - 1, ...),
so a converted network must compute what its source computed. Every file's `build_module_src` writes a marker
file if executed; none may appear.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.errors import UserError
from genbackbones.generators.formats.tf_pickle import read_tf_pickle
from genbackbones.generators.open import open_generator
from genbackbones.generators.stylegan2 import Discriminator, Generator

from .cli_runs import run_cli
from .conftest import SHARED, assert_close_to_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TF_FIXTURE = SHARED / "fixtures" / "stylegan2-tf" / "tf_skip"


@pytest.fixture(scope="module")
def tf_skip() -> Path:
    if not (TF_FIXTURE / "network-tf.pkl").exists():
        pytest.skip(f"NVIDIA TF reference fixture not found at {TF_FIXTURE} (it lives in ../shared beside the repo)")
    return TF_FIXTURE


# ----------------------------------------------------------------------------- the fixture: NVIDIA's conversion


def test_fixture_converts_to_nvidias_state_dict_key_for_key(tf_skip):
    networks = read_tf_pickle(tf_skip / "network-tf.pkl")
    reference = load_file(tf_skip / "G_ema.safetensors")
    converted = networks["G_ema"].state_dict
    assert sorted(converted) == sorted(reference)
    for key, tensor in reference.items():
        assert converted[key].shape == tensor.shape, key
        assert torch.equal(converted[key], tensor), key
    kwargs = json.loads((tf_skip / "init_kwargs.json").read_text())
    assert networks["G_ema"].init_kwargs == kwargs["G"] and networks["G"].init_kwargs == kwargs["G"]
    assert networks["D"].init_kwargs == kwargs["D"]  # fmap_base 1024 -> channel_base 2048


def test_fixture_outputs_match_nvidias_conversion(tf_skip, tmp_path, monkeypatch):
    marker = tmp_path / "build_module_src_ran"
    monkeypatch.setenv("TF_PKL_MARKER", str(marker))
    expected = load_file(tf_skip / "expected.safetensors")
    z = expected["z"]
    handle = open_generator(tf_skip / "network-tf.pkl")
    G, D = handle.G, handle.D
    with torch.no_grad():
        assert_close_to_reference("ws_psi1", G.mapping(z, None), expected["ws_psi1"])
        img = G(z, None, truncation_psi=1, noise_mode="const")
        assert_close_to_reference("img_psi1", img, expected["img_psi1"])
        assert_close_to_reference("img_psi0.7", G(z, None, truncation_psi=0.7, noise_mode="const"),
                                  expected["img_psi0.7"])
        assert_close_to_reference("D_logits_psi1", D(expected["img_psi1"], None), expected["D_logits_psi1"])
        G_raw = open_generator(tf_skip / "network-tf.pkl", network="G").G
        assert_close_to_reference("G_img_psi1", G_raw(z, None, noise_mode="const"), expected["G_img_psi1"])
    assert not torch.equal(G_raw.mapping.fc0.weight, G.mapping.fc0.weight)  # G and Gs are different networks
    assert handle.meta["source_format"] == "nvidia-tf-pickle" and handle.meta["w_avg"] == "source"
    assert not marker.exists(), "build_module_src was executed"


def test_cli_convert_then_info(tf_skip, tmp_path):
    """The user's lines: convert the TF pickle, then inspect the folder; build_module_src never runs."""
    marker = tmp_path / "build_module_src_ran"
    env = {"TF_PKL_MARKER": str(marker)}
    out = tmp_path / "generators" / "tf"
    converted = run_cli("generator", "convert", str(tf_skip / "network-tf.pkl"), str(out), "--license",
                        "Nvidia Source Code License-NC", cwd=tmp_path, env=env)
    assert converted.returncode == 0, converted.stderr
    assert f"(G_ema, with D) -> {out}" in converted.stdout
    info = run_cli("generator", "info", str(out), "--json", cwd=tmp_path, env=env)
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["resolution"] == 32 and facts["w_dim"] == 64 and facts["num_ws"] == 8
    assert facts["source"] == "network-tf.pkl" and facts["license"] == "Nvidia Source Code License-NC"
    reference = load_file(tf_skip / "G_ema.safetensors")
    written = load_file(out / "generator.safetensors")
    assert written.keys() == reference.keys() and all(torch.equal(written[k], reference[k]) for k in reference)
    assert not marker.exists(), "build_module_src was executed"


def test_cli_sample_and_network_g_read_the_pickle_itself(tf_skip, tmp_path):
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["generator", "sample", str(tf_skip / "network-tf.pkl"), "--n", "4",
                                      "--truncation", "0.7", "--out", str(grid)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(grid) as image:
        assert image.size[0] >= 2 * 32 and image.size[1] >= 2 * 32
    info = CliRunner().invoke(app, ["generator", "info", str(tf_skip / "network-tf.pkl"), "--network", "G", "--json"])
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["network"] == "G" and facts["resolution"] == 32


@pytest.mark.slow  # a pretrain process: ~20 s on 2 idle cores
def test_pretrain_takes_the_tf_pickle_as_generator_source(tf_skip, tmp_path):
    """`--set generator.source=<TF pickle>`: a 2-step LayerMatch run whose teacher is the converted Gs."""
    marker = tmp_path / "build_module_src_ran"
    run = run_cli("pretrain", "-o", str(tmp_path / "run"), "--no-export",
                  "--set", f"generator.source={tf_skip / 'network-tf.pkl'}", "--set", "backbone.arch=resnet18",
                  "--set", "train.steps=2", "--set", "train.batch_size=4", cwd=tmp_path,
                  env={"TF_PKL_MARKER": str(marker)})
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "trained" and info["resolution"] == 32
    assert info["generator"]["source"] == "network-tf.pkl" and info["generator"]["network"] == "G_ema"
    assert not marker.exists(), "build_module_src was executed"


def test_numpy1_and_numpy2_array_names_read_the_same(tf_skip, tmp_path):
    raw = (tf_skip / "network-tf.pkl").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    renamed = tmp_path / "numpy2.pkl"  # GLOBAL is newline-terminated text: the rename keeps the pickle valid
    renamed.write_bytes(raw.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    a, b = read_tf_pickle(tf_skip / "network-tf.pkl"), read_tf_pickle(renamed)
    assert all(torch.equal(a["D"].state_dict[k], v) for k, v in b["D"].state_dict.items())


# ----------------------------------------------------------------------------- writing TF-layout pickles


class Network:
    """Pickles like `dnnlib.tflib.network.Network` (NEWOBJ + BUILD with the state dict) while `tflib_names` is on."""

    def __init__(self, state: dict):
        self.tf_state = state

    def __getstate__(self):
        return self.tf_state

    def __setstate__(self, state):
        self.tf_state = state


Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"


@contextlib.contextmanager
def tflib_names():
    """NVIDIA's module names, registered while a file is written, so pickle writes the global a TF pickle has."""
    names = ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network")
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    modules["dnnlib.tflib.network"].Network = Network
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def marker_src(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('build_module_src was executed')\n"


def tf_state(name: str, func: str, static: dict, variables: dict, src: str, components: dict | None = None) -> dict:
    return {"version": 4, "name": name, "static_kwargs": static, "components": components or {},
            "build_module_src": src, "build_func_name": func,
            "variables": [(k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in variables.items()]}


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def tf_conv(w: torch.Tensor, flip: bool = False) -> np.ndarray:
    """PyTorch [out, in, kh, kw] -> TF [kh, kw, in, out] (flipped for TF's upsampling convs)."""
    k = np_(w).transpose(2, 3, 1, 0)
    return k[::-1, ::-1] if flip else k


def generator_variables(G: Generator) -> tuple[dict, dict, dict]:
    """(G_main's own, mapping's, synthesis's) TF variables for a project generator: the inverse conversion."""
    sd = G.state_dict()
    arch = G.init_kwargs["synthesis_kwargs"].get("architecture", "skip")
    top = {"dlatent_avg": np_(sd["mapping.w_avg"])}
    mapping = {}
    if G.c_dim:
        mapping["LabelEmbed/weight"] = np_(sd["mapping.embed.weight"]).T
        mapping["LabelEmbed/bias"] = np_(sd["mapping.embed.bias"])
    for i in range(G.mapping.num_layers):
        mapping[f"Dense{i}/weight"] = np_(sd[f"mapping.fc{i}.weight"]).T
        mapping[f"Dense{i}/bias"] = np_(sd[f"mapping.fc{i}.bias"])
    syn = {}
    for r in G.synthesis.block_resolutions:
        b, log2 = f"synthesis.b{r}", int(np.log2(r))
        layers = {"Conv": ("conv1", 0)} if r == 4 else {"Conv0_up": ("conv0", 2 * log2 - 5),
                                                        "Conv1": ("conv1", 2 * log2 - 4)}
        if r == 4:
            syn["4x4/Const/const"] = np_(sd[f"{b}.const"])[None]
        for scope, (layer, noise_idx) in layers.items():
            p = f"{b}.{layer}"
            syn[f"{r}x{r}/{scope}/weight"] = tf_conv(sd[f"{p}.weight"], flip=(layer == "conv0"))
            syn[f"{r}x{r}/{scope}/mod_weight"] = np_(sd[f"{p}.affine.weight"]).T
            syn[f"{r}x{r}/{scope}/mod_bias"] = np_(sd[f"{p}.affine.bias"]) - 1  # TF stores it without the +1
            syn[f"{r}x{r}/{scope}/noise_strength"] = np_(sd[f"{p}.noise_strength"])
            syn[f"{r}x{r}/{scope}/bias"] = np_(sd[f"{p}.bias"])
            syn[f"noise{noise_idx}"] = np_(sd[f"{p}.noise_const"])[None, None]
        if f"{b}.torgb.weight" in sd:
            syn[f"{r}x{r}/ToRGB/weight"] = tf_conv(sd[f"{b}.torgb.weight"])
            syn[f"{r}x{r}/ToRGB/mod_weight"] = np_(sd[f"{b}.torgb.affine.weight"]).T
            syn[f"{r}x{r}/ToRGB/mod_bias"] = np_(sd[f"{b}.torgb.affine.bias"]) - 1
            syn[f"{r}x{r}/ToRGB/bias"] = np_(sd[f"{b}.torgb.bias"])
        if arch == "resnet" and r > 4:
            syn[f"{r}x{r}/Skip/weight"] = tf_conv(sd[f"{b}.skip.weight"], flip=True)
    return top, mapping, syn


def discriminator_variables(D: Discriminator) -> dict:
    sd, out = D.state_dict(), {}
    for r in [*D.block_resolutions, 4]:
        b = f"b{r}"
        for scope, layer in (("FromRGB", "fromrgb"), ("Conv0", "conv0"), ("Conv1_down", "conv1"), ("Skip", "skip"),
                             ("Conv", "conv")):
            if f"{b}.{layer}.weight" in sd:
                out[f"{r}x{r}/{scope}/weight"] = tf_conv(sd[f"{b}.{layer}.weight"])
                if f"{b}.{layer}.bias" in sd:
                    out[f"{r}x{r}/{scope}/bias"] = np_(sd[f"{b}.{layer}.bias"])
    out["4x4/Dense0/weight"], out["4x4/Dense0/bias"] = np_(sd["b4.fc.weight"]).T, np_(sd["b4.fc.bias"])
    out["Output/weight"], out["Output/bias"] = np_(sd["b4.out.weight"]).T, np_(sd["b4.out.bias"])
    if D.c_dim:
        out["LabelEmbed/weight"] = np_(sd["mapping.embed.weight"]).T
        out["LabelEmbed/bias"] = np_(sd["mapping.embed.bias"])
        for i in range(D.mapping.num_layers):
            out[f"Mapping{i}/weight"] = np_(sd[f"mapping.fc{i}.weight"]).T
            out[f"Mapping{i}/bias"] = np_(sd[f"mapping.fc{i}.bias"])
    return out


def randomized(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight, bias, noise strength and w_avg random (fresh networks have zero biases and noise strengths)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
        for name, buf in net.named_buffers():
            if name.endswith("w_avg"):
                buf.copy_(torch.randn(buf.shape, generator=gen))
    return net.eval()


G_KWARGS = dict(z_dim=16, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2},
                synthesis_kwargs={"channel_base": 256, "channel_max": 32})


def variant(arch: str, c_dim: int = 0, d_arch: str = "resnet", seed: int = 0) -> tuple[Generator, Discriminator]:
    syn = {**G_KWARGS["synthesis_kwargs"], "architecture": arch}
    G = randomized(Generator(**{**G_KWARGS, "c_dim": c_dim, "synthesis_kwargs": syn}), seed)
    d_kwargs = dict(c_dim=c_dim, img_resolution=16, img_channels=3, architecture=d_arch, channel_base=256,
                    channel_max=32, epilogue_kwargs={"mbstd_group_size": 4 if c_dim == 0 else None})
    if c_dim:
        d_kwargs["mapping_kwargs"] = {"num_layers": 1}
    return G, randomized(Discriminator(**d_kwargs), seed + 1)


def write_tf_pickle(path: Path, G: Generator, D: Discriminator, src: str = "", ada: bool = False,
                    extra_static: dict | None = None) -> Path:
    """(G, D, Gs) as NVIDIA's tflib pickles them; Gs = G here. `ada`: StyleGAN2-ADA's build functions."""
    syn = G.init_kwargs["synthesis_kwargs"]
    static_g = dict(num_channels=3, resolution=G.img_resolution, label_size=G.c_dim, latent_size=G.z_dim,
                    dlatent_size=G.w_dim, mapping_layers=G.mapping.num_layers, fmap_base=syn["channel_base"] // 2,
                    fmap_max=syn["channel_max"], architecture=syn.get("architecture", "skip"),
                    resample_kernel=[1, 3, 3, 1], truncation_psi=0.5, mapping_lrmul=0.01, **(extra_static or {}))
    static_d = dict(num_channels=3, resolution=D.img_resolution, label_size=D.c_dim,
                    fmap_base=D.init_kwargs["channel_base"] // 2, fmap_max=D.init_kwargs["channel_max"],
                    architecture=D.init_kwargs["architecture"], resample_kernel=[1, 3, 3, 1])
    if D.c_dim:
        # PyTorch's mapping lr multiplier defaults to 0.01, TF's D to 0.1; ADA's D default (no mbstd_group_size):
        # the whole batch in one minibatch-stddev group
        static_d.update(mapping_layers=D.mapping.num_layers, mapping_lrmul=0.01)
    else:
        static_d["mbstd_group_size"] = 4
    top, mapping, synthesis = generator_variables(G)
    with tflib_names():
        def g_main(name):
            comps = {"mapping": Network(tf_state("G_mapping", "G_mapping", static_g, mapping, src)),
                     "synthesis": Network(tf_state("G_synthesis", "G_synthesis" if ada else "G_synthesis_stylegan2",
                                                   static_g, synthesis, src))}
            return Network(tf_state(name, "G_main", static_g, top, src, comps))

        d = Network(tf_state("D", "D_main" if ada else "D_stylegan2", static_d, discriminator_variables(D), src))
        path.write_bytes(pickle.dumps((g_main("G"), d, g_main("Gs")), protocol=3))
    return path


@pytest.mark.parametrize("arch,c_dim,d_arch", [("resnet", 0, "resnet"), ("orig", 0, "skip"), ("skip", 4, "orig")],
                         ids=["resnet-G", "orig-G-skip-D", "conditional-ada"])
def test_written_variants_compute_what_their_source_computes(tmp_path, monkeypatch, arch, c_dim, d_arch):
    marker = tmp_path / "build_module_src_ran"
    G, D = variant(arch, c_dim, d_arch)
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D, src=marker_src(marker), ada=c_dim > 0)
    handle = open_generator(path)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn([4, G.z_dim], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(4) % 4, 4).float() if c_dim else None
    with torch.no_grad():
        for psi in (1.0, 0.7):
            want = G(z, c, truncation_psi=psi, noise_mode="const")
            assert_close_to_reference(f"img psi {psi}", handle.G(z, c, truncation_psi=psi, noise_mode="const"), want)
        assert_close_to_reference("D logits", handle.D(want, c), D(want, c))
    assert handle.G.init_kwargs["synthesis_kwargs"]["architecture"] == arch
    assert handle.D.init_kwargs["architecture"] == d_arch and handle.G.c_dim == c_dim
    assert not marker.exists(), "build_module_src was executed"


def test_build_module_src_is_never_executed(tmp_path, monkeypatch):
    """The fixture's build_module_src writes $TF_PKL_MARKER when executed: loading leaves no file."""
    marker = tmp_path / "marker"
    monkeypatch.setenv("TF_PKL_MARKER", str(marker))
    src = "import os\nopen(os.environ['TF_PKL_MARKER'], 'w').write('ran')\n"
    exec(compile(src, "probe", "exec"), {})  # the probe itself works: executed, it writes the file
    assert marker.exists()
    marker.unlink()
    G, D = variant("skip")
    handle = open_generator(write_tf_pickle(tmp_path / "network-tf.pkl", G, D, src=src))
    assert handle.G is not None and handle.D is not None
    assert not marker.exists()


# ----------------------------------------------------------------------------- refused


class Reduce:
    """An object whose unpickling calls `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def hostile(tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    """A TF-layout pickle with one hostile object inside: (path, marker, what the error must name)."""
    marker = tmp_path / "pwned"
    G, D = variant("skip")
    with tflib_names():
        payloads = {
            "os.system": (Reduce(os.system, f"touch {marker}"), f"global {os.system.__module__}.system"),
            "builtins.exec": (Reduce(exec, marker_src(marker)), "global builtins.exec"),
            "network-with-args": (Reduce(Network, f"touch {marker}"), "a Network constructed with arguments"),
            "reconstruct-of-network": (Reduce(np._core.multiarray._reconstruct, Network, (0,), b"b"),
                                       "numpy's _reconstruct called with something other than a plain ndarray"),
            "object-dtype": (Reduce(np.dtype, "O", False, True), "a numpy dtype 'O' that is not a plain number"),
        }
    payload, named = payloads[kind]
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D, extra_static={"note": payload})
    return path, marker, named


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "network-with-args", "reconstruct-of-network",
                                  "object-dtype"])
def test_hostile_tf_pickles_are_refused_with_one_line_exit_2(tmp_path, kind):
    path, marker, named = hostile(tmp_path, kind)
    result = CliRunner().invoke(app, ["generator", "convert", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith(f"error: refused to load {named} from network-tf.pkl"), message
    assert "nothing from this file was run" in message
    assert "\n" not in message and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_hostile_tf_pickle_refused_by_the_cli_process(tmp_path):
    path, marker, _ = hostile(tmp_path, "os.system")
    proc = run_cli("generator", "info", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: refused to load global {os.system.__module__}.system from network-tf.pkl: "
                                   "only NVIDIA StyleGAN2 TensorFlow network pickles (NVlabs/stylegan2 config-e/f, "
                                   "NVlabs/stylegan2-ada) are supported, and nothing from this file was run")
    assert not marker.exists()


def single_network_pickle(path: Path, func: str, version: int = 4, components: dict | None = None) -> Path:
    with tflib_names():
        comps = {k: Network(tf_state(k, f, {}, {}, "")) for k, f in (components or {}).items()}
        net = Network({**tf_state("G", func, {"resolution": 1024}, {}, "", comps), "version": version})
        path.write_bytes(pickle.dumps((net, net, net), protocol=3))
    return path


@pytest.mark.parametrize("func,components,found", [
    ("G_style", {"mapping": "G_mapping", "synthesis": "G_synthesis"},
     "a StyleGAN (v1) or StyleGAN2 config-a TensorFlow pickle (G_style)"),
    ("G_paper", {}, "a progressive GAN TensorFlow pickle (G_paper)"),
    ("G_main", {"mapping": "G_mapping", "synthesis": "G_synthesis_stylegan_revised"},
     "a StyleGAN2 config-b..d TensorFlow pickle (G_synthesis_stylegan_revised)"),
])
def test_other_tf_families_are_refused_naming_what_was_found(tmp_path, func, components, found):
    path = single_network_pickle(tmp_path / "old.pkl", func, components=components)
    result = CliRunner().invoke(app, ["generator", "info", str(path)])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert found in message and message.startswith("error: old.pkl:Gs") and "\n" not in message
    assert "only StyleGAN2 config-e/f (NVlabs/stylegan2) and StyleGAN2-ADA" in message


def test_progressive_gan_release_pickle_is_refused_naming_it(tmp_path):
    """Progressive GAN's own pickles (karras2018iclr-*.pkl) name its `tfutil.Network`; refused at that global."""
    path = tmp_path / "karras2018iclr-celebahq-1024x1024.pkl"
    path.write_bytes(b"\x80\x03ctfutil\nNetwork\nq\x00)\x81q\x01}q\x02b.")
    result = CliRunner().invoke(app, ["generator", "convert", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "error: karras2018iclr-celebahq-1024x1024.pkl is a progressive GAN TensorFlow pickle (tfutil.Network); only "
        "StyleGAN2 config-e/f (NVlabs/stylegan2) and StyleGAN2-ADA (NVlabs/stylegan2-ada) TensorFlow networks are "
        "supported")
    assert not (tmp_path / "out").exists()


def test_unknown_static_kwarg_is_refused_naming_it(tmp_path):
    G, D = variant("skip")
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D, extra_static={"use_attention": True})
    with pytest.raises(UserError, match=r"network-tf\.pkl:Gs: unknown static kwargs use_attention"):
        open_generator(path)


def test_variable_of_an_impossible_shape_is_one_line(tmp_path):
    G, D = variant("skip")
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D)
    with tflib_names():
        nets = pickle.loads(path.read_bytes())
        synthesis = nets[2].tf_state["components"]["synthesis"].tf_state
        synthesis["variables"] = [(k, np.zeros([3], np.float32) if k == "noise0" else v)
                                  for k, v in synthesis["variables"]]
        path.write_bytes(pickle.dumps(nets, protocol=3))
    result = CliRunner().invoke(app, ["generator", "info", str(path)])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: network-tf.pkl:Gs: a variable or static kwarg has an unexpected shape or type")
    assert "\n" not in message


def test_label_concat_of_the_original_release_is_refused(tmp_path):
    """StyleGAN2 (not ADA) normalises [z, labels @ W] together: a mapping the PyTorch code does not compute."""
    G, D = variant("skip")
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D)
    with tflib_names():
        G_tf, D_tf, Gs_tf = pickle.loads(path.read_bytes())
        for net in (G_tf, Gs_tf):
            net.tf_state["components"]["mapping"].tf_state["variables"].append(
                ("LabelConcat/weight", np.zeros([4, 16], np.float32)))
            net.tf_state["static_kwargs"]["label_size"] = 4
        path.write_bytes(pickle.dumps((G_tf, D_tf, Gs_tf), protocol=3))
    with pytest.raises(UserError, match="LabelConcat"):
        open_generator(path)


# ----------------------------------------------------------------------------- issue 26: real files, damaged files


def test_noise_strengths_pickled_as_numpy_scalars_convert_like_nvidias(tf_skip, tmp_path):
    """TF1's session.run returns 0-d variables as numpy scalars: every noise_strength of NVIDIA's real releases is a
    pickled np.float32 (numpy's multiarray.scalar), not an array. Such a file converts to the same network."""
    with tflib_names():
        nets = pickle.loads((tf_skip / "network-tf.pkl").read_bytes())
        scalars = 0
        for net in nets:
            for comp in [net, *net.tf_state["components"].values()]:
                variables = comp.tf_state["variables"]
                for i, (name, value) in enumerate(variables):
                    if name.endswith("noise_strength"):
                        variables[i] = (name, np.float32(np.asarray(value).reshape(())))
                        scalars += 1
        path = tmp_path / "network-tf.pkl"
        path.write_bytes(pickle.dumps(nets, protocol=3))
    assert scalars > 0 and path.read_bytes().count(b"multiarray\nscalar\n") == 1  # one GLOBAL, memoised
    reference = load_file(tf_skip / "G_ema.safetensors")
    converted = read_tf_pickle(path)["G_ema"].state_dict
    assert converted.keys() == reference.keys() and all(torch.equal(converted[k], reference[k]) for k in reference)
    expected = load_file(tf_skip / "expected.safetensors")
    with torch.no_grad():
        img = open_generator(path).G(expected["z"], None, truncation_psi=1, noise_mode="const")
    assert_close_to_reference("img_psi1", img, expected["img_psi1"])


def test_resolution_zero_is_one_line_exit_2(tmp_path):
    """A damaged resolution (0: log2 overflows) is refused naming it, by the CLI process, without a traceback."""
    G, D = variant("skip")
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D)
    with tflib_names():
        nets = pickle.loads(path.read_bytes())
        for net in nets:
            net.tf_state["static_kwargs"]["resolution"] = 0
        path.write_bytes(pickle.dumps(nets, protocol=3))
    proc = run_cli("generator", "info", str(path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: network-tf.pkl:Gs: static kwarg resolution=0 is not a power of two >= 4; "
                                   "the file is damaged or not a StyleGAN2 network")


def test_one_bytes_object_built_into_many_arrays_stays_small(tmp_path):
    """Arrays are read-only views of the file's bytes: a 4 MB bytes object memoised and BUILT into 300 arrays
    (as a hostile file can) takes its 4 MB once, not 1.2 GB, before the file is refused as unlike StyleGAN2."""
    import tracemalloc

    class SharedBytesArray:
        """Pickles as numpy does (_reconstruct, then BUILD with raw bytes), every one with the same bytes object."""

        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (1 << 20,), np.dtype("<f4"), False, SHARED))

    SHARED = bytes(4 << 20)
    G, D = variant("skip")
    path = write_tf_pickle(tmp_path / "network-tf.pkl", G, D)
    with tflib_names():
        nets = pickle.loads(path.read_bytes())
        nets[2].tf_state["variables"] += [(f"extra{i}", SharedBytesArray()) for i in range(300)]
        data = pickle.dumps(nets, protocol=3)
    assert len(data) < 6 << 20 and data.count(b"cnumpy._core.multiarray\n_reconstruct\n") == 1  # memoised
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="300 variables have no place in StyleGAN2"):
            read_tf_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"
