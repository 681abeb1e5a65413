"""The restricted NVIDIA pickle reader: hostile files are refused, real layouts load exactly.

`write_nvidia_pickle` writes files with the structure of NVIDIA's network pickles
(persistent objects via `torch_utils.persistence._reconstruct_persistent_obj`,
kwargs as `dnnlib.util.EasyDict`, parameters through torch's own pickling, i.e.
`_rebuild_parameter` / `_rebuild_tensor_v2` / nested `torch.storage._load_from_bytes`
blobs, numpy scalars) without NVIDIA's code: stand-in modules under NVIDIA's names
exist only while the file is written. The embedded `module_src` is code that would
write a marker file if anyone executed it.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.errors import UserError
from genbackbones.generators.open import open_generator
from genbackbones.generators.formats.nvidia_pickle import (
    PersistentRecord,
    flatten_state,
    network_from_record,
    read_network_pickle,
)
from genbackbones.generators.stylegan2 import Discriminator, Generator

from .conftest import FIXTURE_VARIANTS, assert_close_to_reference, load_fixture

BUFFER_NAMES = ("resample_filter", "noise_const", "w_avg")
TINY_G = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
              synthesis_kwargs={"channel_base": 128, "channel_max": 16})
TINY_D = dict(c_dim=0, img_resolution=8, img_channels=3, channel_base=128, channel_max=16)


# ----------------------------------------------------------------------------- writing NVIDIA-style pickles


@contextlib.contextmanager
def nvidia_module_names():
    """Stand-in `torch_utils.persistence` and `dnnlib.util` modules, so pickle writes NVIDIA's global names."""

    def reconstruct(meta):  # never called: the reader maps this name to its own stand-in
        raise AssertionError("the reader must not call the writer's stand-in")

    reconstruct.__module__, reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    easydict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    modules = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib",
                                                           "dnnlib.util")}
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = reconstruct
    modules["torch_utils"].persistence = modules["torch_utils.persistence"]
    modules["dnnlib.util"].EasyDict = easydict
    modules["dnnlib"].util = modules["dnnlib.util"]
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield types.SimpleNamespace(reconstruct=reconstruct, EasyDict=easydict)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Persistent:
    """Pickles like an NVIDIA persistent object: `_reconstruct_persistent_obj(meta)`."""

    def __init__(self, reconstruct, class_name: str, state: dict, module_src: str):
        self.reconstruct, self.meta = reconstruct, dict(type="class", version=6, module_src=module_src,
                                                        class_name=class_name, state=state)

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def module_state(node: dict, names, init_kwargs, module_src: str, class_name: str) -> Persistent:
    """A module's `__dict__` the way torch + NVIDIA's persistence pickle it, from a nested dict of tensors."""
    params, buffers, children = OrderedDict(), OrderedDict(), OrderedDict()
    for name, value in node.items():
        if isinstance(value, dict):
            children[name] = module_state(value, names, names.EasyDict(), module_src, "Layer")
        elif name in BUFFER_NAMES:
            buffers[name] = value.clone()
        else:
            params[name] = torch.nn.Parameter(value.clone(), requires_grad=False)
    state = {
        "training": False,
        "_parameters": params, "_buffers": buffers, "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(), "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(), "_load_state_dict_pre_hooks": OrderedDict(), "_modules": children,
        "_init_args": (), "_init_kwargs": init_kwargs,
        "weight_gain": np.float64(1 / np.sqrt(3)), "lr_multiplier": np.float32(0.01), "activation": "lrelu",
    }
    return Persistent(names.reconstruct, class_name, state, module_src)


def nested(state_dict: dict[str, torch.Tensor]) -> dict:
    root: dict = {}
    for key, tensor in state_dict.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = tensor
    return root


def easydict_tree(names, value):
    if isinstance(value, dict):
        return names.EasyDict({k: easydict_tree(names, v) for k, v in value.items()})
    return value


def write_nvidia_pickle(path: Path, nets: dict[str, tuple[str, dict, dict]], module_src: str = "",
                        protocol: int = 3, numpy1: bool = False) -> Path:
    """nets: key -> (class_name, init_kwargs, NVIDIA-named state dict). Written like training_loop.py snapshots."""
    with nvidia_module_names() as names:
        data = {"training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "x.zip",
                                        "resolution": 32, "use_labels": False, "max_size": None},
                "augment_pipe": module_state({"p": torch.zeros([])}, names, names.EasyDict(xflip=1), module_src,
                                             "AugmentPipe")}
        for key, (class_name, kwargs, state_dict) in nets.items():
            data[key] = module_state(nested(state_dict), names, easydict_tree(names, kwargs), module_src, class_name)
        raw = pickle.dumps(data, protocol=protocol)
    if numpy1:  # numpy 1.x writers name the scalar reconstructor numpy.core.multiarray.scalar
        assert protocol <= 3, "the byte rename below is only valid without pickle framing"
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)
    return path


def marker_src(marker: Path) -> str:
    """Module source that writes `marker` if executed (NVIDIA's persistence would exec it)."""
    return f"open({str(marker)!r}, 'w').write('module_src was executed')\nclass Generator:\n    pass\n"


def tiny_nets(seed: int = 0) -> tuple[Generator, Generator, Discriminator]:
    torch.manual_seed(seed)
    G_ema, G, D = Generator(**TINY_G).eval(), Generator(**TINY_G).eval(), Discriminator(**TINY_D).eval()
    with torch.no_grad():
        for p in [*G_ema.parameters(), *G.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
        G_ema.mapping.w_avg.normal_()
    return G_ema, G, D


def tiny_pickle(path: Path, module_src: str = "", **kw) -> Path:
    G_ema, G, D = tiny_nets()
    return write_nvidia_pickle(path, {"G": ("Generator", TINY_G, G.state_dict()),
                                      "D": ("Discriminator", TINY_D, D.state_dict()),
                                      "G_ema": ("Generator", TINY_G, G_ema.state_dict())}, module_src, **kw)


# ----------------------------------------------------------------------------- hostile files


def call_pickle(module: str, name: str, *args) -> bytes:
    """A protocol-3 pickle whose payload is `module.name(*args)`, naming the global exactly."""
    body = pickle.dumps(args, protocol=3)[2:-1]  # the argument tuple without PROTO and STOP
    return b"\x80\x03c" + f"{module}\n{name}\n".encode() + body + b"R."


class Reduce:
    """An object whose unpickling calls `fn(*args)` (the classic malicious pickle)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def hostile_payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes, the global the error must name)."""
    touch = f"touch {marker}"
    return {
        "os.system-reduce": (pickle.dumps({"G_ema": Reduce(os.system, touch)}), f"{os.system.__module__}.system"),
        "os.system-exact": (call_pickle("os", "system", touch), "os.system"),
        "builtins.eval": (pickle.dumps(Reduce(eval, f"open({str(marker)!r}, 'w')")), "builtins.eval"),
        "subprocess.Popen": (pickle.dumps(Reduce(subprocess.Popen, ["touch", str(marker)])), "subprocess.Popen"),
        "subprocess.check_call": (pickle.dumps(Reduce(subprocess.check_call, ["touch", str(marker)])),
                                  "subprocess.check_call"),
        "evil_module.run": (call_pickle("evil_module", "run", str(marker)), "evil_module.run"),
    }


@pytest.mark.parametrize("kind", ["os.system-reduce", "os.system-exact", "builtins.eval", "subprocess.Popen",
                                  "subprocess.check_call", "evil_module.run"])
def test_hostile_pickles_are_refused_before_anything_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    data, global_name = hostile_payloads(marker)[kind]
    path = tmp_path / "network.pkl"
    path.write_bytes(data)
    with pytest.raises(UserError) as err:
        read_network_pickle(path)
    assert f"refused to load global {global_name} from network.pkl" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_hostile_object_inside_a_real_looking_network_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    G_ema, _, _ = tiny_nets()
    kwargs = {**TINY_G, "mapping_kwargs": {"num_layers": 2, "note": Reduce(os.system, f"touch {marker}")}}
    path = write_nvidia_pickle(tmp_path / "network.pkl", {"G_ema": ("Generator", kwargs, G_ema.state_dict())})
    with pytest.raises(UserError, match=r"refused to load global \w+\.system"):
        read_network_pickle(path)
    assert not marker.exists()


def test_hostile_nested_tensor_blob_is_refused(tmp_path):
    """The nested torch.save blobs are read by torch.load(weights_only=True), which refuses code too."""
    marker = tmp_path / "pwned"
    blob = pickle.dumps(Reduce(os.system, f"touch {marker}"), protocol=3)
    path = tmp_path / "network.pkl"
    path.write_bytes(call_pickle("torch.storage", "_load_from_bytes", blob))
    with pytest.raises(UserError, match=r"refused to load a nested tensor blob .*system.* from network\.pkl"):
        read_network_pickle(path)
    assert not marker.exists()


def test_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tiny_pickle(tmp_path / "network.pkl", module_src=marker_src(marker))
    loaded = open_generator(path)
    assert loaded.G is not None and loaded.D is not None
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["os.system-exact", "evil_module.run"])
def test_cli_refuses_hostile_pickle_with_one_line_and_exit_2(tmp_path, kind):
    marker = tmp_path / "pwned"
    data, global_name = hostile_payloads(marker)[kind]
    path = tmp_path / "network.pkl"
    path.write_bytes(data)
    result = CliRunner().invoke(app, ["generator", "convert", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith(f"error: refused to load global {global_name} from network.pkl")
    assert "\n" not in message and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_subprocess_refuses_hostile_pickle(tmp_path):
    """The same through a real process: exit code 2, one line on stderr, no traceback."""
    marker = tmp_path / "pwned"
    path = tmp_path / "network.pkl"
    path.write_bytes(call_pickle("os", "system", f"touch {marker}"))
    code = "import sys; from genbackbones.cli import app; app(['generator', *sys.argv[1:]])"
    proc = subprocess.run([sys.executable, "-c", code, "info", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: refused to load global os.system from network.pkl: only NVIDIA "
                                   "StyleGAN2 / StyleGAN3 network pickles (stylegan2-ada-pytorch, stylegan3) "
                                   "are supported, and nothing from this file was run")
    assert not marker.exists()


def test_tensorflow_pickle_given_to_the_pytorch_reader_points_at_open_generator(tmp_path):
    # open_generator routes TF pickles to tf_pickle.py; a direct call of this reader names the way that reads it
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    path.write_bytes(call_pickle("dnnlib.tflib.network", "Network"))
    with pytest.raises(UserError, match=r"TensorFlow StyleGAN2 pickle.*open_generator.*generator convert"):
        read_network_pickle(path)


def test_truncated_pickle_is_a_user_error(tmp_path):
    path = tiny_pickle(tmp_path / "network.pkl")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"network\.pkl is truncated or not a network pickle"):
        read_network_pickle(path)


def test_plain_pickle_without_networks_is_a_user_error(tmp_path):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="not an NVIDIA network pickle"):
        read_network_pickle(path)


# ----------------------------------------------------------------------------- records -> networks


def record(class_name: str, kwargs: dict, module_src: str = "", children: dict | None = None,
           params: dict | None = None) -> PersistentRecord:
    state = {"_parameters": params or {}, "_buffers": {}, "_modules": children or {}, "_init_kwargs": kwargs,
             "_init_args": ()}
    return PersistentRecord(class_name, state, module_src)


def test_stylegan3_alias_free_generator_is_recognised():
    """networks_stylegan3's generator (test_stylegan3_pickle.py loads whole ones): no StyleGAN2 defaults added."""
    rec = record("Generator", {"z_dim": 512}, module_src="class SynthesisInput(torch.nn.Module): ...")
    net = network_from_record(rec, "stylegan3-t-ffhq.pkl:G_ema", "Generator")
    assert net.architecture == "stylegan3" and net.family == "stylegan3" and net.init_kwargs == {"z_dim": 512}
    assert network_from_record(record("Generator", {}), "x", "Generator").architecture == "stylegan2"


def test_wrong_class_is_refused():
    with pytest.raises(UserError, match="is a AugmentPipe, expected a StyleGAN2 Generator"):
        network_from_record(record("AugmentPipe", {}), "x.pkl:G_ema", "Generator")


def test_stylegan3_flat_kwargs_get_stylegan3_defaults():
    """stylegan3's networks_stylegan2 defaults conv_clamp=256 (ada: None); kwargs it did not record take those."""
    src = "def __init__(self, fused_modconv_default=True): ..."  # only stylegan3's networks_stylegan2 has this
    kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3, channel_base=128, channel_max=16,
                  mapping_kwargs={"num_layers": 2}, fused_modconv_default="inference_only")
    net = network_from_record(record("Generator", kwargs, src), "x.pkl:G_ema", "Generator")
    assert net.family == "stylegan3"
    assert net.init_kwargs["conv_clamp"] == 256 and "fused_modconv_default" not in net.init_kwargs
    assert net.init_kwargs["mapping_kwargs"] == {"w_avg_beta": 0.998, "num_layers": 2}
    G = Generator(**net.init_kwargs)
    assert G.synthesis.b8.conv0.conv_clamp == 256
    explicit = network_from_record(record("Generator", {**kwargs, "conv_clamp": None}, src), "x", "Generator")
    assert explicit.init_kwargs["conv_clamp"] is None
    ada = network_from_record(record("Generator", {k: v for k, v in kwargs.items() if k != "fused_modconv_default"}),
                              "x", "Generator")
    assert ada.family == "stylegan2-ada" and "conv_clamp" not in ada.init_kwargs


def test_flatten_state_skips_non_persistent_buffers():
    child = record("Layer", {}, params={"weight": torch.ones(2)})
    child.state["_buffers"] = {"kept": torch.zeros(1), "scratch": torch.zeros(1), "unset": None}
    child.state["_non_persistent_buffers_set"] = {"scratch"}
    root = record("Generator", {}, children={"fc0": child, "empty": None})
    assert sorted(flatten_state(root, "x")) == ["fc0.kept", "fc0.weight"]


# ----------------------------------------------------------------------------- round trip against NVIDIA's outputs


@pytest.mark.parametrize("protocol,numpy1", [(3, True), (4, False)])
def test_tiny_round_trip_is_exact(tmp_path, protocol, numpy1):
    """Without the shared fixtures: pickled weights come back bit-identical (all three networks)."""
    G_ema, G, D = tiny_nets()
    path = tiny_pickle(tmp_path / "network.pkl", protocol=protocol, numpy1=numpy1)
    nets = read_network_pickle(path)
    assert set(nets) == {"G_ema", "G", "D"}
    for key, module in (("G_ema", G_ema), ("G", G), ("D", D)):
        expected = module.state_dict()
        got = nets[key].state_dict
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    if numpy1:
        assert b"cnumpy.core.multiarray\nscalar" in path.read_bytes()


VARIANTS = FIXTURE_VARIANTS or ["small_skip"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixture_pickle_reproduces_nvidia_outputs(tmp_path, fixture_dir, variant):
    fx = load_fixture(fixture_dir(variant))
    marker = tmp_path / "pwned"
    kw = fx["kwargs"]
    path = write_nvidia_pickle(tmp_path / "network.pkl", {
        "G": ("Generator", kw["G"], fx["G"]), "D": ("Discriminator", kw["D"], fx["D"]),
        "G_ema": ("Generator", kw["G"], fx["G_ema"])}, module_src=marker_src(marker), protocol=3, numpy1=True)
    e = fx["expected"]
    z, c = e["z"], e.get("c")
    with torch.no_grad():
        ema = open_generator(path, network="G_ema")
        assert_close_to_reference("img_psi1", ema.G(z, c, truncation_psi=1, noise_mode="const"), e["img_psi1"])
        assert_close_to_reference("D_logits_psi1", ema.D(e["img_psi1"], c), e["D_logits_psi1"])
        G = open_generator(path, network="G").G
        assert_close_to_reference("G_img_psi1", G(z, c, truncation_psi=1, noise_mode="const"), e["G_img_psi1"])
    assert ema.meta["network"] == "G_ema" and ema.meta["w_avg"] == "source"
    assert not any(p.requires_grad for p in ema.G.parameters()) and not ema.G.training
    assert not marker.exists()


def test_numpy_object_dtype_is_refused(tmp_path):
    """numpy scalars are rebuilt from raw bytes of numeric dtypes only; an object dtype could carry objects."""
    path = tmp_path / "scalar.pkl"
    path.write_bytes(call_pickle("numpy", "dtype", "O8", False, True))
    with pytest.raises(UserError, match="refused to load a numpy dtype 'O8' that is not a plain number from scalar"):
        read_network_pickle(path)


def test_restricted_loader_reads_tensor_blobs_like_torch(tmp_path):
    """The nested-blob path gives the same values as pickle's own reconstruction."""
    t = torch.randn(3, 4)[:, 1:]  # a non-contiguous view: offset and strides matter
    buf = io.BytesIO()
    pickle.dump({"t": t}, buf, protocol=3)
    path = tmp_path / "t.pkl"
    path.write_bytes(buf.getvalue())
    from genbackbones.generators.formats.nvidia_pickle import load_pickle

    assert torch.equal(load_pickle(path)["t"], t)


# ----------------------------------------------------------------------------- issue 26: checks that stay checked


def rebuilt_dtype_pickle(path: Path) -> Path:
    """[array] whose memoised '<f8' dtype is BUILT again after the array used it, with a sub-array state:
    numpy's own dtype.__setstate__ would turn the array's dtype into ('<f8', (10000000,)) behind the check."""
    import pickletools

    body = pickle.dumps([np.arange(4, dtype="<f8")], protocol=3)
    ops = list(pickletools.genops(body))
    start = next(i for i, (op, arg, _) in enumerate(ops) if op.name == "GLOBAL" and arg == "numpy dtype")
    reduce = next(i for i in range(start, len(ops)) if ops[i][0].name == "REDUCE")
    memo = ops[reduce + 1][1]  # the BINPUT right after the dtype is made
    state = pickle.dumps((3, "|", (np.dtype("<f8"), (10000000,)), None, None, 80000000, 8, 0), protocol=3)[2:-1]
    path.write_bytes(body[:-1] + b"h" + bytes([memo]) + state + b"b0.")  # BINGET, state, BUILD, POP, STOP
    assert pickle.loads(path.read_bytes())[0].dtype.shape == (10000000,)  # what it does to numpy itself
    return path


def test_a_dtype_built_again_after_its_array_cannot_change_the_array(tmp_path):
    from genbackbones.generators.formats.nvidia_pickle import load_pickle

    path = rebuilt_dtype_pickle(tmp_path / "rebuilt.pkl")
    try:
        arrays = load_pickle(path)
    except UserError as err:
        assert str(err).startswith("refused to load a numpy dtype built twice") and "\n" not in str(err)
    else:
        dtype = arrays[0].dtype  # compared by its parts: a rewritten dtype still compares == '<f8'
        assert dtype.shape == () and dtype.subdtype is None and repr(dtype) == "dtype('float64')"
        assert arrays[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    proc = subprocess.run([sys.executable, "-m", "genbackbones", "generator", "info", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def hostile_kwargs_folder(tmp_path: Path, source: str, **changes) -> Path:
    """A saved generator folder whose generator.json kwargs were edited (weights unchanged, small)."""
    import json

    from genbackbones.generators.formats.folder import META_FILE, save_generator

    out = save_generator(tmp_path / "g", open_generator(source).G)
    meta = json.loads((out / META_FILE).read_text())
    for key, value in changes.items():
        target = meta["G_init_kwargs"]
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    (out / META_FILE).write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("source,changes,named", [
    ("random:tiny32", {"synthesis_kwargs.channel_base": 2**25, "synthesis_kwargs.channel_max": 2**15},
     "weights do not match the architecture (wrong shape: "),
    ("random:tiny32", {"synthesis_kwargs.channel_base": 2**60, "synthesis_kwargs.channel_max": 2**60},
     "cannot build a StyleGAN2 Generator from its recorded arguments (RuntimeError: "),
    ("random:tiny32", {"img_resolution": 0}, "the recorded img_resolution=0 is not a power of two >= 4"),
    ("random:sg3-r32", {"img_resolution": 0}, "the recorded img_resolution=0 is not an integer >= 4"),
    ("random:sg3-r32", {"synthesis_kwargs.filter_size": 10**4}, "(ValueError: a filter needs 1 to 1024 taps, got "),
    ("random:tiny32", {"mapping_kwargs.num_layers": 10**7}, "the recorded mapping_kwargs.num_layers=10000000 asks for"),
], ids=["channel_max-2**15", "channel_max-2**60", "stylegan2-resolution-0", "stylegan3-resolution-0",
        "stylegan3-filter_size-10**4", "mapping-num_layers-10**7"])
def test_hostile_kwargs_are_one_line_before_any_layer_is_allocated(tmp_path, source, changes, named):
    """The file's kwargs size the network before its weights are compared: built on the meta device first, a
    channel_max of 2**15 (~38 GB a layer) is one line in seconds, not a killed process or a traceback."""
    import time

    folder = hostile_kwargs_folder(tmp_path, source, **changes)
    peak_file = tmp_path / "peak_rss_kib"
    # the CLI as `python -m genbackbones` runs it, reporting its own peak memory: RUSAGE_CHILDREN of this test
    # process would be the largest of every child any earlier test of this worker ran (a real-scale step's GiB)
    measured = ("import resource, sys\npeak = sys.argv.pop(1)\nfrom genbackbones.cli import main\ntry:\n    main()\n"
                "finally:\n    open(peak, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", measured, str(peak_file), "generator", "info", str(folder)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip()
    assert message.startswith(f"error: {folder / 'generator.json'}") and named in message, message
    assert "\n" not in message and "Traceback" not in proc.stderr
    assert time.monotonic() - began < 60
    assert int(peak_file.read_text()) < 3 * 2**20  # KiB: the command stayed under 3 GiB


@pytest.mark.parametrize("form", ["reconstruct", "frombuffer"])
def test_one_bytes_object_made_into_many_arrays_stays_small(tmp_path, form):
    """A 4 MB bytes object memoised and made into 100 arrays (numpy's protocol 3 and protocol 5 forms) takes its
    4 MB once, not 400 MB: arrays are views of the file's bytes."""
    import tracemalloc

    from genbackbones.generators.formats.nvidia_pickle import load_pickle

    shared = bytes(4 << 20)

    class SharedBytesArray:
        def __reduce__(self):
            if form == "reconstruct":
                return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                        (1, (1 << 20,), np.dtype("<f4"), False, shared))
            return np._core.numeric._frombuffer, (shared, np.dtype("<f4"), (1 << 20,), "C")

    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps({"G_ema": [SharedBytesArray() for _ in range(100)]}, protocol=3))
    assert path.stat().st_size < 5 << 20
    tracemalloc.start()
    try:
        arrays = load_pickle(path)["G_ema"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(arrays) == 100 and all(a.shape == (1 << 20,) and a.dtype == np.float32 for a in arrays)
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"
