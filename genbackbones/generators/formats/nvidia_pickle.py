"""Read NVIDIA StyleGAN2 and StyleGAN3 network pickles as data, without running code from them.

NVIDIA's stylegan2-ada-pytorch and stylegan3 save their networks with plain
`pickle`. Loading such a file the usual way imports whatever modules it names and
executes the Python source embedded in it by `torch_utils.persistence`: a
downloaded `.pkl` is a program, not a file of weights. This module reads the same
files as pure data:

* `RestrictedUnpickler.find_class` resolves only the globals that real NVIDIA
  network pickles contain (listed in `ALLOWED_GLOBALS`), each to a harmless
  stand-in. Any other global is refused with a `UserError` naming it, before
  anything from it is called.
* A persistent network object becomes a `PersistentRecord` (class name plus the
  module's attribute dict). Its embedded `module_src` is kept as text and only
  searched for marker strings; it is never executed.
* Tensors nested as legacy `torch.save` blobs are read with
  `torch.load(weights_only=True)`, which is restricted in the same spirit.
* numpy arrays (StyleGAN3 layers keep their sizes as arrays in their attributes) are
  rebuilt from raw bytes of plain numeric dtypes only, never from pickled objects.
* The snapshot's `augment_pipe` (also a persistent object) and `training_set_kwargs`
  pass through the same allowlist as inert data and are ignored.
* `read_network_pickle` turns the records into `NvidiaNetwork`s: the constructor
  arguments and a state dict with NVIDIA's key names, ready for our `Generator` /
  `Discriminator` (which `formats/folder.py`'s `build_network` builds and loads strictly);
  `NvidiaNetwork.architecture` says whether the generator is a StyleGAN2 or a StyleGAN3
  (alias-free, `training.networks_stylegan3`) one.

Legacy TensorFlow pickles are recognised and refused with a message saying what to do
instead (formats/tf_pickle.py reads them).
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import torch

from ...errors import UserError

NETWORK_KEYS = ("G_ema", "G", "D")
_CLASS_FOR_KEY = {"G_ema": "Generator", "G": "Generator", "D": "Discriminator"}

# Positional constructor arguments, in NVIDIA's order (in case a file records `_init_args`).
_POSITIONAL_ARGS = {
    "Generator": ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"),
    "Discriminator": ("c_dim", "img_resolution", "img_channels"),
}

# stylegan3's `networks_stylegan2` changed a few defaults relative to stylegan2-ada-pytorch
# (whose defaults our classes use). A kwarg that a stylegan3 file does not record takes these.
_STYLEGAN3_DEFAULTS = {
    "Generator": {"conv_clamp": 256, "num_fp16_res": 4},
    "Generator.mapping_kwargs": {"w_avg_beta": 0.998},
    "Discriminator": {"conv_clamp": 256, "num_fp16_res": 4},
}
# Generator kwargs stylegan3 added that only pick a GPU speed path; our networks ignore them.
_DROPPED_GENERATOR_KWARGS = ("fused_modconv_default",)

_ADVICE = ("only NVIDIA StyleGAN2 / StyleGAN3 network pickles (stylegan2-ada-pytorch, stylegan3) are supported, "
           "and nothing from this file was run")


class Refused(Exception):
    """Something in the pickle is not plain network data; `load_pickle` adds the file name."""


class LegacyTensorFlowPickle(Exception):
    """The pickle references NVIDIA's TensorFlow code (`dnnlib.tflib`)."""


# ----------------------------------------------------------------------------- stand-ins


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict (attribute access is not needed to read data)."""


@dataclass
class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj` would have built, as inert data.

    `state` is the pickled module's `__dict__` (`_parameters`, `_buffers`, `_modules`,
    `_init_kwargs`, ...). `module_src` is the Python source NVIDIA embedded: text only.
    """

    class_name: str
    state: dict
    module_src: str = field(default="", repr=False)
    version: Any = None


def _persistent_record(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise Refused("a persistent object that is not a class instance")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise Refused("a malformed persistent object")
    module_src = meta.get("module_src")
    return PersistentRecord(class_name, dict(state), module_src if isinstance(module_src, str) else "",
                            meta.get("version"))


def _load_storage_from_bytes(data: Any) -> torch.storage.TypedStorage:
    """Stand-in for `torch.storage._load_from_bytes`: the nested blob is read by the restricted torch.load."""
    if not isinstance(data, (bytes, bytearray)):
        raise Refused("a tensor blob that is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notices
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types; all mean "not plain tensor data"
        match = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the global it refused
        what = f"global {match.group(1)}" if match else _one_line(err)
        raise Refused(f"a nested tensor blob ({what})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise Refused(f"a nested tensor blob holding {type(storage).__name__}, not a tensor storage")
    return storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    """Stand-in for `torch._utils._rebuild_tensor_v2`; the file's backward hooks and metadata are ignored."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise Refused("a tensor whose storage is not tensor data")
    if not isinstance(storage_offset, int) or not _int_tuple(size) or not _int_tuple(stride):
        raise Refused("a tensor with a malformed shape")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                               collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> torch.Tensor:
    """Stand-in for `torch._utils._rebuild_parameter`: we only need the values."""
    if not isinstance(data, torch.Tensor):
        raise Refused("a parameter that is not a tensor")
    return data


class PlainDtype:
    """numpy's `dtype(spec, align, copy)` then BUILD(state), for plain numeric dtypes only.

    Not a numpy dtype on purpose: numpy's own `dtype.__setstate__` rewrites a dtype in place, so a file that
    BUILDs a memoised dtype again after an array used it could turn a checked '<f8' into a sub-array or
    record dtype behind the check. This holder takes the one BUILD a real pickle has, refuses a second,
    and every array is made with a fresh dtype (`fresh`) that the pickle never sees."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False):
        if not isinstance(spec, str):
            raise Refused("a numpy dtype that is not given by name")
        try:
            dtype = np.dtype(spec, bool(align), False)
        except TypeError:
            raise Refused(f"a numpy dtype {spec!r}") from None
        if dtype.kind not in "biufc" or dtype.names is not None or dtype.subdtype is not None or dtype.hasobject:
            raise Refused(f"a numpy dtype {spec!r} that is not a plain number")
        self.dtype, self._built = dtype, False

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if self._built:
            raise Refused("a numpy dtype built twice (a real pickle builds each dtype once)")
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[2:5] != (None, None, None) \
                or state[1] not in ("<", ">", "|", "=") or state[-1] != 0:
            raise Refused("a numpy dtype state that is not a plain number's")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])
        self._built = True

    def fresh(self) -> np.dtype:
        """A new dtype equal to the checked one, for an array to own."""
        return np.dtype(self.dtype.str)


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """Stand-in for numpy's `multiarray.scalar`: plain numbers (bool/int/float/complex) from raw bytes only."""
    if not isinstance(dtype, PlainDtype) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise Refused("a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype.fresh(), count=1)[0]


class _NdarrayName:
    """What the global `numpy.ndarray` resolves to: a name for `_numpy_reconstruct` to check, nothing callable."""

    def __init__(self, *args, **kwargs):
        raise Refused("a direct call of numpy.ndarray")


class _CheckedArray(np.ndarray):
    """A numpy array whose pickled state is checked before numpy's own `__setstate__` copies it in.

    Pickle rebuilds an array as `_reconstruct(ndarray, (0,), b'b')` and then BUILDs it with the state
    (version, shape, dtype, fortran order, raw bytes); only plain numbers in raw bytes pass here,
    so no object can come out of an array.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise Refused("a malformed numpy array")
        version, shape, dtype, is_fortran, data = state
        if not _int_tuple(shape) or not isinstance(dtype, PlainDtype) or not isinstance(data, (bytes, bytearray)) \
                or len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize:
            raise Refused("a numpy array that is not plain numbers")
        super().__setstate__((version, shape, dtype.fresh(), is_fortran, data))


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """Stand-in for numpy's `multiarray._reconstruct`: an empty array that only checked state can fill."""
    if cls is not _NdarrayName or shape != (0,) or typecode != b"b":
        raise Refused("a numpy array of another class")
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in for numpy's `numeric._frombuffer` (arrays pickled with protocol 5): plain numbers only."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, PlainDtype) or not _int_tuple(shape) \
            or order not in ("C", "F"):
        raise Refused("a numpy array that is not plain numbers")
    if len(buffer) != int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize:
        raise Refused("a numpy array whose data does not match its shape")
    # a read-only view of the file's bytes, not a copy: one memoised bytes object made into many arrays must not
    # multiply its size in memory
    array = np.frombuffer(buffer, dtype=dtype.fresh()).reshape(tuple(shape), order=order)
    array.flags.writeable = False
    return array


def _int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)


# Exactly the globals found in real NVIDIA network pickles (checked on pickles written by
# stylegan2-ada-pytorch and stylegan3 with pickle protocols 3 and 4). `builtins.set` appears with
# protocol <= 3 (Python 3.7, which NVIDIA used) for torch's `_non_persistent_buffers_set`. StyleGAN3
# layers keep numpy arrays as attributes (`size`, `in_size`, `out_size`), hence the array globals;
# `_frombuffer` is how numpy pickles a contiguous array with protocol 5.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # written by numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # written by numpy 2.x
    ("numpy", "dtype"): PlainDtype,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,  # numpy 2.x
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows only `ALLOWED_GLOBALS`; everything else is refused, never imported."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("dnnlib.tflib"):
            raise LegacyTensorFlowPickle()
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id (this is not a pickle written by pickle.dump)")


# ----------------------------------------------------------------------------- reading


@dataclass
class NvidiaNetwork:
    """One network in NVIDIA's layout: class, constructor kwargs, state dict with NVIDIA's key names.

    `family` is 'stylegan2-ada' or 'stylegan3' (the repository whose `networks` code wrote it);
    `architecture` is the generator's: 'stylegan2' (also stylegan3 --cfg=stylegan2) or 'stylegan3'
    (alias-free); a discriminator is always StyleGAN2's.
    `w_avg` says where the generator's `mapping.w_avg` came from (None for discriminators).
    Also the target of `rosinality.py` and `tf_pickle.py`, which translate into this layout.
    """

    class_name: str  # 'Generator' | 'Discriminator'
    init_kwargs: dict
    state_dict: dict[str, torch.Tensor]
    family: str = "stylegan2-ada"
    w_avg: str | None = "source"
    architecture: str = "stylegan2"


@contextlib.contextmanager
def unpickling_errors(path: Path, advice: str) -> Iterator[None]:
    """Every failure while unpickling `path` as one UserError line (this reader's and tf_pickle.py's): a refused
    global with `advice`, an unreadable file, or a truncated or corrupt one. A UserError raised inside (a reader's
    own refusal) passes through."""
    try:
        yield
    except UserError:
        raise
    except Refused as err:
        raise UserError(f"refused to load {err} from {path.name}: {advice}") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - truncated or corrupt files fail in many ways
        raise UserError(f"{path.name} is truncated or not a network pickle ({_one_line(err)}); "
                        "download it again") from None


def load_pickle(path: str | Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; every failure is a one-line UserError."""
    path = Path(path)
    with unpickling_errors(path, _ADVICE):
        try:
            with open(path, "rb") as f:
                return RestrictedUnpickler(f).load()
        except LegacyTensorFlowPickle:
            # open_generator sends TensorFlow pickles to formats/tf_pickle.py first; only a direct call lands here
            raise UserError(f"{path.name} is a TensorFlow StyleGAN2 pickle, which this PyTorch-pickle reader does "
                            "not read: open it with open_generator / `genbackbones generator convert` "
                            "(formats/tf_pickle.py)") from None


def read_network_pickle(path: str | Path) -> dict[str, NvidiaNetwork]:
    """The networks (`G_ema`, `G`, `D`, whichever are present) of an NVIDIA network pickle."""
    path = Path(path)
    data = load_pickle(path)
    if not isinstance(data, dict) or not any(isinstance(data.get(k), PersistentRecord) for k in NETWORK_KEYS):
        raise UserError(f"{path.name} is not an NVIDIA network pickle (expected a dict with G, D and G_ema "
                        "networks saved by stylegan2-ada-pytorch or stylegan3)")
    networks = {}
    for key in NETWORK_KEYS:
        record = data.get(key)
        if record is None:
            continue
        if not isinstance(record, PersistentRecord):
            raise UserError(f"{path.name}: {key} is a {type(record).__name__}, not a saved network")
        networks[key] = network_from_record(record, f"{path.name}:{key}", _CLASS_FOR_KEY[key])
    return networks


def network_from_record(record: PersistentRecord, where: str, expected_class: str) -> NvidiaNetwork:
    """Check that `record` is a StyleGAN2 / StyleGAN3 network we implement and collect its kwargs and weights."""
    if record.class_name != expected_class:
        raise UserError(f"{where} is a {record.class_name}, expected a StyleGAN2 {expected_class} (or a StyleGAN3 "
                        "one); only NVIDIA's StyleGAN2 and StyleGAN3 networks are supported")
    architecture = _architecture(record)
    family = _family(record, architecture)
    return NvidiaNetwork(
        class_name=record.class_name,
        init_kwargs=_init_kwargs(record, family, architecture, where),
        state_dict=flatten_state(record, where),
        family=family,
        w_avg="source" if record.class_name == "Generator" else None,
        architecture=architecture,
    )


def _architecture(record: PersistentRecord) -> str:
    """'stylegan3' for an alias-free generator (networks_stylegan3: its source, or a synthesis with an input
    layer of Fourier features), else 'stylegan2'. The source is only searched, never run."""
    if record.class_name != "Generator":
        return "stylegan2"
    src = record.module_src
    synthesis = (record.state.get("_modules") or {}).get("synthesis")
    has_input = isinstance(synthesis, PersistentRecord) and "input" in (synthesis.state.get("_modules") or {})
    return "stylegan3" if "class SynthesisInput" in src or "filtered_lrelu" in src or has_input else "stylegan2"


def _family(record: PersistentRecord, architecture: str) -> str:
    """Which NVIDIA repository wrote it: decides the defaults of kwargs the file does not record."""
    if architecture == "stylegan3" or "fused_modconv_default" in record.module_src:
        return "stylegan3"
    return "stylegan2-ada"


def _init_kwargs(record: PersistentRecord, family: str, architecture: str, where: str) -> dict:
    kwargs = to_plain(record.state.get("_init_kwargs") or {})
    args = list(to_plain(record.state.get("_init_args") or ()))
    names = _POSITIONAL_ARGS[record.class_name]
    if not isinstance(kwargs, dict) or len(args) > len(names):
        raise UserError(f"{where}: unexpected constructor arguments {args!r}; the network was not built by "
                        "NVIDIA's StyleGAN2 / StyleGAN3 code")
    kwargs.update(zip(names, args))
    if record.class_name == "Generator":
        for name in _DROPPED_GENERATOR_KWARGS:
            kwargs.pop(name, None)
    if family == "stylegan3" and architecture == "stylegan2":
        kwargs = _with_stylegan3_defaults(record.class_name, kwargs)
    return kwargs


def _with_stylegan3_defaults(class_name: str, kwargs: dict) -> dict:
    """stylegan3 passes the synthesis kwargs flat; fill the ones it left at its (different) defaults."""
    kwargs = {**_STYLEGAN3_DEFAULTS[class_name], **kwargs}
    if class_name == "Generator":
        kwargs["mapping_kwargs"] = {**_STYLEGAN3_DEFAULTS["Generator.mapping_kwargs"],
                                    **(kwargs.get("mapping_kwargs") or {})}
    return kwargs


def flatten_state(record: PersistentRecord, where: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of `record` and its sub-modules, under `state_dict()` names."""
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    out: dict[str, torch.Tensor] = {}
    entries = [*(state.get("_parameters") or {}).items(),
               *((k, v) for k, v in (state.get("_buffers") or {}).items() if k not in skip)]
    for name, tensor in entries:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor")
        out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise UserError(f"{where}: sub-module {prefix}{name} is a {type(child).__name__}, not a saved "
                            "network layer")
        out.update(flatten_state(child, where, f"{prefix}{name}."))
    return out


def to_plain(value: Any) -> Any:
    """EasyDicts, tuples, numpy scalars and arrays -> plain JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= 200 else first[:197] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
