"""NVIDIA StyleGAN3 network pickles, read as data: real layouts load and reproduce NVIDIA's outputs, hostile ones
are refused, and `generator convert / info / sample` work on them as typed.

The pickles are written the way NVIDIA's `torch_utils.persistence` writes them (helpers shared with
test_nvidia_pickle.py): each module's `__dict__` as state, with what StyleGAN3 layers keep there and
StyleGAN2's do not, numpy arrays (`size`, `in_size`, `out_size`, from `np.broadcast_to`) and numpy
float64 sampling rates and cutoffs; the networks_stylegan3 source is embedded as code that would
write a marker file if anyone executed it.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.errors import UserError
from genbackbones.generators.formats.folder import META_FILE, load_folder
from genbackbones.generators.formats.nvidia_pickle import read_network_pickle
from genbackbones.generators.open import open_generator
from genbackbones.generators.stylegan2 import Discriminator
from genbackbones.generators.stylegan3 import Generator

from .cli_runs import run_cli
from .conftest import assert_close_to_reference
from .test_nvidia_pickle import Persistent, Reduce, easydict_tree, nested, nvidia_module_names
from .test_stylegan3_fixtures import fixture

SG3_BUFFERS = ("w_avg", "transform", "freqs", "phases", "magnitude_ema", "up_filter", "down_filter",
               "resample_filter")
SG3_SRC = "import os\nopen({marker!r}, 'w').write('module_src was executed')\nclass SynthesisInput: pass\n" \
          "def filtered_lrelu(): pass\n"


def sg3_module_state(node: dict, names, init_kwargs, src: str, class_name: str, G: Generator | None,
                     path: str = "") -> Persistent:
    """A module's `__dict__` as torch + NVIDIA's persistence pickle it, with StyleGAN3's numpy attributes."""
    params, buffers, children = OrderedDict(), OrderedDict(), OrderedDict()
    for name, value in node.items():
        if isinstance(value, dict):
            children[name] = sg3_module_state(value, names, names.EasyDict(), src, "Layer", G, f"{path}{name}.")
        elif name in SG3_BUFFERS:
            buffers[name] = value.clone()
        else:
            params[name] = torch.nn.Parameter(value.clone(), requires_grad=False)
    state = {"training": False, "_parameters": params, "_buffers": buffers, "_non_persistent_buffers_set": set(),
             "_modules": children, "_init_args": (), "_init_kwargs": init_kwargs}
    module = G.get_submodule(path.rstrip(".")) if G is not None and path else None
    if module is not None and hasattr(module, "in_size"):  # a SynthesisLayer: what NVIDIA's keeps as attributes
        state.update(in_size=np.broadcast_to(np.asarray(int(module.in_size[0])), [2]),
                     out_size=np.broadcast_to(np.asarray(module.size), [2]),
                     in_sampling_rate=module.in_sampling_rate, tmp_sampling_rate=np.float64(module.tmp_sampling_rate),
                     in_cutoff=np.float64(2.0), padding=list(module.padding))
    if module is not None and hasattr(module, "bandwidth"):  # the SynthesisInput
        state.update(size=np.broadcast_to(np.asarray(module.size[0]), [2]), sampling_rate=np.float64(16.0),
                     bandwidth=np.float64(module.bandwidth), frequencies=np.arange(4, dtype=np.float32))
    return Persistent(names.reconstruct, class_name, state, src)


def write_sg3_pickle(path: Path, G_kwargs: dict, G_state: dict, D_kwargs: dict, D_state: dict, src: str,
                     protocol: int = 4, numpy1: bool = False, extra: dict | None = None) -> Path:
    """A network-snapshot-like pickle: G, D, G_ema (G = G_ema here), training_set_kwargs."""
    G = Generator(**G_kwargs)
    with nvidia_module_names() as names:
        g = sg3_module_state(nested(G_state), names, easydict_tree(names, G_kwargs), src, "Generator", G)
        d = sg3_module_state(nested(D_state), names, easydict_tree(names, D_kwargs), "", "Discriminator", None)
        data = {"G": g, "D": d, "G_ema": g, "training_set_kwargs": {"resolution": 32, "use_labels": False},
                **(extra or {})}
        raw = pickle.dumps(data, protocol=protocol)
    if numpy1:  # numpy 1.x writers name the array and scalar reconstructors numpy.core.multiarray
        assert protocol <= 3, "the byte rename below is only valid without pickle framing"
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)
    return path


@pytest.fixture(scope="module")
def t_small():
    fx = fixture("t_small")
    torch.manual_seed(0)
    D_kwargs = fx["kwargs"]["D"]
    return dict(fx, D_kwargs=D_kwargs, D_state=Discriminator(**D_kwargs).state_dict())


def sg3_pickle(tmp_path: Path, fx: dict, marker: Path, **kw) -> Path:
    return write_sg3_pickle(tmp_path / "stylegan3-t-tiny.pkl", fx["kwargs"]["G"], fx["G_ema"], fx["D_kwargs"],
                            fx["D_state"], SG3_SRC.format(marker=str(marker)), **kw)


@pytest.mark.parametrize("protocol,numpy1", [(3, True), (4, False), (5, False)])
def test_stylegan3_pickle_loads_and_reproduces_nvidia_outputs(tmp_path, t_small, protocol, numpy1):
    marker = tmp_path / "pwned"
    path = sg3_pickle(tmp_path, t_small, marker, protocol=protocol, numpy1=numpy1)
    raw = path.read_bytes()
    assert b"_reconstruct" in raw and b"numpy" in raw  # the arrays really are in the file
    if numpy1:
        assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    if protocol == 5:  # contiguous arrays: numpy's protocol-5 path
        assert b"_frombuffer" in raw
    nets = read_network_pickle(path)
    assert nets["G_ema"].architecture == "stylegan3" and nets["D"].architecture == "stylegan2"
    assert all(torch.equal(nets["G_ema"].state_dict[k], v) for k, v in t_small["G_ema"].items())
    handle = open_generator(path)
    assert isinstance(handle.G, Generator) and isinstance(handle.D, Discriminator)
    e = t_small["expected"]
    with torch.no_grad():
        assert_close_to_reference("img_psi0.7", handle.G(e["z"], None, truncation_psi=0.7), e["img_psi0.7"])
    assert not marker.exists(), "the embedded source must never run"


def test_convert_info_and_sample_as_typed(tmp_path, t_small):
    marker = tmp_path / "pwned"
    path = sg3_pickle(tmp_path, t_small, marker)
    out = tmp_path / "sg3"
    convert = run_cli("generator", "convert", str(path), str(out), cwd=tmp_path)
    assert convert.returncode == 0, convert.stderr[-2000:]
    assert f"converted {path} (G_ema, with D) -> {out}" in convert.stdout.replace("\n", "")
    meta = json.loads((out / META_FILE).read_text())
    assert meta["class"] == "stylegan3" and meta["G_init_kwargs"]["synthesis_kwargs"]["conv_kernel"] == 3
    G = load_folder(out).G
    assert isinstance(G, Generator)
    e = t_small["expected"]
    with torch.no_grad():
        assert_close_to_reference("img_psi1 (folder)", G(e["z"], None), e["img_psi1"])
    info = CliRunner().invoke(app, ["generator", "info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert [t["resolution"] for t in facts["taps"]] == [36] * 6 + [52] * 8 + [32] * 2
    assert facts["style_dims"]["synthesis.input"] == 4 and facts["num_ws"] == 16
    assert facts["architecture"] == "StyleGAN3 (stylegan3-t)"
    sample = run_cli("generator", "sample", str(out), "--n", "2", "--truncation", "0.7", "--out",
                     str(tmp_path / "grid.png"), cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not marker.exists()


def test_hostile_stylegan3_pickle_is_refused_with_one_line_exit_2(tmp_path, t_small):
    """A real-looking StyleGAN3 snapshot with a payload beside the networks: refused, nothing runs or is written."""
    marker = tmp_path / "pwned"
    path = sg3_pickle(tmp_path, t_small, tmp_path / "src-ran",
                      extra={"augment_pipe": Reduce(os.system, f"touch {marker}")})
    result = run_cli("generator", "convert", str(path), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip()
    assert message.startswith(f"error: refused to load global {os.system.__module__}.system from {path.name}")
    assert "\n" not in message and "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "src-ran").exists() and not (tmp_path / "out").exists()


def test_numpy_arrays_of_objects_or_other_classes_are_refused(tmp_path):
    """Arrays are rebuilt from raw bytes of plain numbers only: an object array could carry objects."""
    cases = {"objects.pkl": (np.array([1, None], dtype=object), "a numpy dtype 'O8' that is not a plain number"),
             "masked.pkl": (np.ma.masked_array([1.0]), "global numpy.ma.core._mareconstruct"),
             "records.pkl": (np.zeros(2, dtype=[("a", "f4")]), "a numpy dtype 'V4' that is not a plain number")}
    for name, (value, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"G_ema": value}, protocol=3))
        with pytest.raises(UserError, match=f"refused to load .*{expected}.* from {name}") as err:
            read_network_pickle(path)
        assert "\n" not in str(err.value)
    ok = tmp_path / "ok.pkl"  # plain arrays alone pass the reader (and then are not a network)
    ok.write_bytes(pickle.dumps({"G_ema": np.broadcast_to(np.asarray(36), [2])}, protocol=3))
    with pytest.raises(UserError, match="not an NVIDIA network pickle"):
        read_network_pickle(ok)


def test_damaged_folder_class_is_a_user_error(tmp_path):
    handle = open_generator("random:sg3-r32")
    from genbackbones.generators.formats.folder import save_generator

    out = save_generator(tmp_path / "g", handle.G)
    loaded = load_folder(out).G
    assert isinstance(loaded, Generator) and loaded.config == "stylegan3-r"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), handle.G.state_dict().values()))
    meta = json.loads((out / META_FILE).read_text())
    (out / META_FILE).write_text(json.dumps({**meta, "class": "stylegan4"}))
    with pytest.raises(UserError, match="expected class 'stylegan2' or 'stylegan3'"):
        load_folder(out)
