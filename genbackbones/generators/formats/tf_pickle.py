"""Read NVIDIA's TensorFlow StyleGAN2 / StyleGAN2-ADA network pickles as data, without TensorFlow.

NVIDIA's TensorFlow releases (NVlabs/stylegan2: `stylegan2-ffhq-config-f.pkl`, `-church-`, `-car-`,
`-cat-`, `-horse-`; NVlabs/stylegan2-ada) pickle a tuple `(G, D, Gs)` of
`dnnlib.tflib.network.Network` objects. Each one's state is plain data (static kwargs,
sub-networks, TF-named variables as numpy arrays) plus `build_module_src`: the Python
source of the network code, which TensorFlow's loader *executes* on unpickling. Here:

* `TFUnpickler` resolves only the globals such a file needs: the Network class (to
  `TFNetwork`, an inert state holder), numpy's `_reconstruct` / `ndarray` / `dtype`
  (under numpy 1.x `numpy.core` and numpy 2.x `numpy._core` names, to stand-ins that
  accept only plain numeric arrays) and numpy scalars. Anything else is refused,
  naming the global, before it is called. `build_module_src` stays text; nothing
  from the file runs.
* `read_tf_pickle` converts the variables into this project's StyleGAN2 layout
  (stylegan2-ada-pytorch's names; Gs -> `G_ema`, G -> `G`, D -> `D`), as NVIDIA's own
  `legacy.py` does; differences in how TF stores the same numbers:
  dense weights are [in, out] (transposed); conv kernels are [kh, kw, in, out]
  (-> [out, in, kh, kw]), and those of the *upsampling* convs (`Conv0_up`, the
  resnet `Skip`) are spatially flipped, because TF runs them as a transposed
  convolution of the flipped kernel; `mod_bias` is stored without the +1 the PyTorch
  affine bias includes; noise inputs are [1, 1, H, W] and `dlatent_avg` is `w_avg`.
* Channel counts: TF's `nf(stage) = fmap_base / 2**stage` gives a block at
  resolution r `2 * fmap_base / r` channels, so `channel_base = 2 * fmap_base`.
* Only what the PyTorch architecture computes identically is accepted: StyleGAN2
  config-e/f (`G_synthesis_stylegan2`) and StyleGAN2-ADA (`G_synthesis`) networks;
  StyleGAN (v1), progressive GAN, configs A-D and unknown static kwargs are refused
  with one line naming what was found. The original StyleGAN2 release's conditional
  mapping (`LabelConcat`: labels concatenated to z and normalised *together*) has no
  PyTorch counterpart and is refused; ADA's `LabelEmbed` converts exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import UserError
from ..ops import setup_filter
from .nvidia_pickle import NvidiaNetwork, PlainDtype, Refused, _one_line, to_plain, unpickling_errors
from .rosinality import channel_layout

_SNIFF_BYTES = 4096
# progressive GAN's own releases (karras2018iclr-*.pkl) pickle the class of its `tfutil` module
_PROGAN_GLOBAL = b"ctfutil\nNetwork\n"
_ADVICE = ("only NVIDIA StyleGAN2 TensorFlow network pickles (NVlabs/stylegan2 config-e/f, NVlabs/stylegan2-ada) "
           "are supported, and nothing from this file was run")


def is_tf_pickle(path: str | Path) -> bool:
    """Whether `path` starts like a TensorFlow network pickle: its first global is NVIDIA's Network class.

    A tuple or a Network is built from that class before anything else, so the name sits in the
    first few bytes; reading the head only keeps a 360 MB config-f file from being read twice."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    return b"dnnlib.tflib" in head or _PROGAN_GLOBAL in head


# ----------------------------------------------------------------------------- stand-ins


class TFNetwork:
    """Stand-in for `dnnlib.tflib.network.Network`: keeps the pickled state dict, runs nothing.

    The real class's `__setstate__` executes `build_module_src`; this one stores it as text."""

    def __new__(cls, *args: Any, **kwargs: Any) -> TFNetwork:
        if args or kwargs:
            raise Refused("a Network constructed with arguments")  # a TF pickle restores it from its state only
        network = super().__new__(cls)
        network.state = {}  # NEWOBJ runs __new__ only; a file without the BUILD leaves an empty network
        return network

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise Refused(f"a Network whose state is a {type(state).__name__}, not a dict")
        self.state = state

    @property
    def build_func_name(self) -> str:
        return str(self.state.get("build_func_name", "")).rsplit(".", 1)[-1]


class _Token:
    """What a type that must never be called resolves to (`numpy.ndarray` is only ever an argument)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise Refused(f"a call of {self.name}")


_NDARRAY = _Token("numpy.ndarray")


class _Array:
    """numpy's `_reconstruct(ndarray, (0,), b'b')` then BUILD(state): a numeric array from raw bytes."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, shape, dtype, is_fortran, raw bytes); object arrays carry a list instead
        if not isinstance(state, tuple) or len(state) != 5:
            raise Refused("a numpy array state of an unknown form")
        _, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, PlainDtype) or not isinstance(raw, (bytes, bytearray)):
            raise Refused("a numpy array that is not plain numbers")
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise Refused("a numpy array with a malformed shape")
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.dtype.itemsize != len(raw):
            raise Refused("a numpy array whose data does not match its shape")
        # a read-only view of the file's bytes (copied only to swap a foreign byte order): a file that BUILDs
        # one memoised bytes object into many arrays must not multiply its size in memory
        flat = np.frombuffer(raw, dtype=dtype.fresh(), count=count)
        native = dtype.fresh().newbyteorder("=")
        self.array = flat.reshape(shape, order="F" if is_fortran else "C").astype(native, copy=False)


def _reconstruct(subtype: Any, shape: Any, code: Any) -> _Array:
    if subtype is not _NDARRAY or shape != (0,) or code not in (b"b", "b"):
        raise Refused("numpy's _reconstruct called with something other than a plain ndarray")
    return _Array()


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    """A numpy scalar, kept one: TF1's `session.run` returns 0-d variables (every `noise_strength` of NVIDIA's
    releases) as numpy scalars, which `_Variables` takes as 0-d arrays; static kwargs turn them into numbers."""
    if not isinstance(dtype, PlainDtype) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise Refused("a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype.fresh(), count=1)[0]


# Everything a TF network pickle contains (checked on the layout NVIDIA's tflib writes: protocol 3,
# numpy 1.x names; numpy 2.x renamed numpy.core to numpy._core).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): PlainDtype,
    **{(f"{core}.multiarray", name): fn for core in ("numpy.core", "numpy._core")
       for name, fn in (("_reconstruct", _reconstruct), ("scalar", _scalar))},
}


class _OtherFamily(Exception):
    """A network pickle of an older NVIDIA family, recognised by its class; says which."""


class TFUnpickler(pickle.Unpickler):
    """An unpickler that knows only `ALLOWED_GLOBALS`; any other global is refused, never imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("tfutil", "Network"):
            raise _OtherFamily("a progressive GAN TensorFlow pickle (tfutil.Network)")
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id (this is not a pickle written by pickle.dump)")


def load_tf_pickle(path: str | Path) -> Any:
    """Unpickle `path` with `TFUnpickler`; every failure is a one-line UserError."""
    path = Path(path)
    with unpickling_errors(path, _ADVICE):
        try:
            with open(path, "rb") as f:
                return TFUnpickler(f).load()
        except _OtherFamily as err:
            raise _refuse_family(path.name, str(err)) from None


# ----------------------------------------------------------------------------- what a file holds

# build function -> what it is; the synthesis function decides the StyleGAN2 config
_SUPPORTED_G = {"G_main"}
_SUPPORTED_SYNTHESIS = {"G_synthesis_stylegan2": "stylegan2", "G_synthesis": "stylegan2-ada"}
_SUPPORTED_D = {"D_stylegan2": "stylegan2", "D_main": "stylegan2-ada"}
_KNOWN_OTHERS = {
    "G_style": "a StyleGAN (v1) or StyleGAN2 config-a TensorFlow pickle (G_style)",
    "G_synthesis_stylegan_revised": "a StyleGAN2 config-b..d TensorFlow pickle (G_synthesis_stylegan_revised)",
    "G_paper": "a progressive GAN TensorFlow pickle (G_paper)",
    "D_paper": "a progressive GAN TensorFlow pickle (D_paper)",
    "D_basic": "a StyleGAN (v1) TensorFlow pickle (D_basic)",
    "D_stylegan": "a StyleGAN (v1) or StyleGAN2 config-a..d TensorFlow pickle (D_stylegan)",
}
_REFUSED_ADVICE = ("only StyleGAN2 config-e/f (NVlabs/stylegan2) and StyleGAN2-ADA (NVlabs/stylegan2-ada) "
                   "TensorFlow networks are supported")


def _refuse_family(where: str, found: str) -> UserError:
    return UserError(f"{where} is {found}; {_REFUSED_ADVICE}")


def read_tf_pickle(path: str | Path) -> dict[str, NvidiaNetwork]:
    """The networks of a TF pickle as `G_ema` (TF's Gs), `G` and `D`, in this project's layout."""
    path = Path(path)
    data = load_tf_pickle(path)
    if isinstance(data, TFNetwork):  # a bare Gs, as some re-saved files are
        data = (None, None, data)
    if not (isinstance(data, tuple) and len(data) == 3 and all(n is None or isinstance(n, TFNetwork) for n in data)
            and data[2] is not None):
        raise UserError(f"{path.name} is not a TensorFlow StyleGAN2 network pickle (expected a tuple (G, D, Gs) of "
                        "networks)")
    tf_G, tf_D, tf_Gs = data
    networks = {"G_ema": _convert(generator_from_tf, tf_Gs, f"{path.name}:Gs")}
    if tf_G is not None:
        networks["G"] = _convert(generator_from_tf, tf_G, f"{path.name}:G")
    if tf_D is not None:
        networks["D"] = _convert(discriminator_from_tf, tf_D, f"{path.name}:D")
    return networks


def _convert(convert: Any, net: TFNetwork, where: str) -> NvidiaNetwork:
    """`convert(net, where)`; a variable or kwarg of an impossible shape or type is a one-line error too."""
    try:
        return convert(net, where)
    except (IndexError, ValueError, TypeError, KeyError, AttributeError, OverflowError, ZeroDivisionError) as err:
        raise UserError(f"{where}: a variable or static kwarg has an unexpected shape or type ({_one_line(err)}); "
                        "the file is damaged or not a StyleGAN2 network") from None


class _Variables:
    """A network's TF variables by full name ('synthesis/8x8/Conv1/weight'), remembering which were used."""

    def __init__(self, net: TFNetwork, where: str):
        self.where, self.values, self.used = where, {}, set()
        self._collect(net, "")

    def _collect(self, net: TFNetwork, prefix: str) -> None:
        variables = net.state.get("variables")
        if not isinstance(variables, list):
            raise UserError(f"{self.where}: the network state has no variable list; the file is damaged")
        for item in variables:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], np.generic):
                item = (item[0], np.asarray(item[1]))  # a 0-d variable, as TF1's session.run returns it
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], _Array):
                item = (item[0], item[1].array)
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], np.ndarray)):
                raise UserError(f"{self.where}: a variable entry is not (name, numpy array); the file is damaged")
            self.values[prefix + item[0]] = item[1]
        components = net.state.get("components") or {}
        if not isinstance(components, dict):
            raise UserError(f"{self.where}: the network's components are not a dict; the file is damaged")
        for name, comp in components.items():
            if not isinstance(comp, TFNetwork):
                raise UserError(f"{self.where}: component {name} is a {type(comp).__name__}, not a network")
            self._collect(comp, f"{prefix}{name}/")

    def has(self, name: str) -> bool:
        return name in self.values

    def take(self, name: str) -> np.ndarray:
        if name not in self.values:
            raise UserError(f"{self.where}: missing variable {name}; the file is not a complete StyleGAN2 "
                            "TensorFlow network")
        self.used.add(name)
        return self.values[name]

    def dense(self, name: str) -> np.ndarray:
        """TF dense weight [in, out] -> PyTorch [out, in]."""
        return self.take(name).T

    def conv(self, name: str, flip: bool = False) -> np.ndarray:
        """TF conv kernel [kh, kw, in, out] -> PyTorch [out, in, kh, kw]; `flip` for TF's upsampling convs."""
        w = self.take(name)
        if w.ndim != 4:
            raise UserError(f"{self.where}: {name} has shape {list(w.shape)}, expected a 4-d conv kernel")
        return (w[::-1, ::-1] if flip else w).transpose(3, 2, 0, 1)

    def check_all_used(self) -> None:
        unused = sorted(set(self.values) - self.used)
        if unused:
            shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
            raise UserError(f"{self.where}: {len(unused)} variables have no place in StyleGAN2 ({shown}); the "
                            "network comes from a modified architecture, which is not supported")


class _StaticKwargs:
    """A network's static kwargs: each read once with its TF default; any left unread is an error."""

    def __init__(self, net: TFNetwork, where: str):
        kwargs = net.state.get("static_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise UserError(f"{where}: static_kwargs is a {type(kwargs).__name__}, not a dict; the file is damaged")
        self.kwargs, self.where, self.known = to_plain(kwargs), where, set()

    def get(self, name: str, default: Any = None) -> Any:
        self.known.add(name)
        value = self.kwargs.get(name, default)
        return default if value is None else value

    def require(self, name: str, allowed: tuple, default: Any) -> Any:
        """A kwarg whose other values the PyTorch architecture does not compute."""
        value = self.get(name, default)
        if value not in allowed:
            raise UserError(f"{self.where}: static kwarg {name}={value!r} is not supported (only "
                            f"{', '.join(map(repr, allowed))}); the network differs from StyleGAN2")
        return value

    def resolution(self) -> int:
        """`resolution`, checked before anything is sized from it: StyleGAN2 has a block per power of two."""
        value = self.get("resolution", 1024)
        if isinstance(value, bool) or not isinstance(value, int) or value < 4 or value & (value - 1):
            raise UserError(f"{self.where}: static kwarg resolution={value!r} is not a power of two >= 4; the file "
                            "is damaged or not a StyleGAN2 network")
        return value

    def resample_kernel(self) -> list:
        """TF's `resample_kernel=None` is a box filter, which PyTorch's `resample_filter=None` is not."""
        self.known.add("resample_kernel")
        kernel = self.kwargs.get("resample_kernel", [1, 3, 3, 1])
        if kernel is None:
            raise UserError(f"{self.where}: static kwarg resample_kernel=None (a box filter) is not supported; the "
                            "network differs from StyleGAN2")
        return list(kernel)

    def ignore(self, *names: str) -> None:
        """Kwargs that only steer training or TF execution, not the function the network computes."""
        self.known.update(names)

    def check_all_known(self) -> None:
        unknown = sorted(set(self.kwargs) - self.known)
        if unknown:
            raise UserError(f"{self.where}: unknown static kwargs {', '.join(unknown)}; the network was not built by "
                            f"NVIDIA's StyleGAN2 code, and {_REFUSED_ADVICE}")


def _check_network(net: TFNetwork, where: str, supported: set | dict) -> None:
    version = net.state.get("version")
    name = net.build_func_name
    if name in _KNOWN_OTHERS and name not in supported:
        raise _refuse_family(where, _KNOWN_OTHERS[name])
    if name not in supported:
        raise _refuse_family(where, f"a TensorFlow network built by {name or 'an unnamed function'!r}")
    if not isinstance(version, int) or version < 4:
        raise UserError(f"{where}: TensorFlow network pickle version {version!r} is older than StyleGAN2's (4); "
                        f"{_REFUSED_ADVICE}")


def _out_channels(variables: _Variables, name: str) -> int:
    if not variables.has(name):
        raise UserError(f"{variables.where}: missing variable {name}; the file is not a complete StyleGAN2 "
                        "TensorFlow network")
    return int(variables.values[name].shape[-1])


def _channel_layout(static: _StaticKwargs, channels: dict[int, int]) -> tuple[int, int]:
    """(channel_base, channel_max): TF's (2 * fmap_base, fmap_max) when they give the weights' channel counts
    (what NVIDIA's conversion records), else the smallest pair that does (a file whose fmap_base is its code's
    default, which differs between releases, records none)."""
    base, cmax = 2 * static.get("fmap_base", 16384), static.get("fmap_max", 512)
    if all(min(base // r, cmax) == c for r, c in channels.items()):
        return base, cmax
    return channel_layout(channels, static.where)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in arrays.items()}


# ----------------------------------------------------------------------------- generator


def generator_from_tf(net: TFNetwork, where: str) -> NvidiaNetwork:
    """A TF `G_main` network (G or Gs) as a generator in this project's (stylegan2-ada-pytorch's) layout."""
    _check_network(net, where, _SUPPORTED_G)
    components = net.state.get("components") or {}
    synthesis, mapping = components.get("synthesis"), components.get("mapping")
    if not isinstance(synthesis, TFNetwork) or not isinstance(mapping, TFNetwork):
        raise UserError(f"{where}: a G_main network without mapping and synthesis components; the file is damaged")
    _check_network(synthesis, f"{where}/synthesis", _SUPPORTED_SYNTHESIS)
    _check_network(mapping, f"{where}/mapping", {"G_mapping"})
    family = _SUPPORTED_SYNTHESIS[synthesis.build_func_name]
    variables = _Variables(net, where)
    kwargs = generator_kwargs(_StaticKwargs(net, where), variables, family)
    return NvidiaNetwork("Generator", kwargs, _tensors(generator_state(variables, kwargs)), family=f"tf-{family}",
                         w_avg="source")


def generator_kwargs(static: _StaticKwargs, variables: _Variables, family: str) -> dict:
    """stylegan2-ada-pytorch Generator kwargs from TF static kwargs (legacy.py's mapping, same defaults)."""
    static.ignore("truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
                  "style_mixing_prob", "dlatent_avg_beta", "w_avg_beta", "randomize_noise", "dtype", "fused_modconv",
                  "is_template_graph", "structure")
    static.require("mapping_func", ("G_mapping",), "G_mapping")
    static.require("synthesis_func", ("G_synthesis_stylegan2", "G_synthesis"), "G_synthesis")
    static.require("normalize_latents", (True,), True)
    static.require("fmap_decay", (1, 1.0), 1)
    static.require("fmap_min", (1,), 1)
    static.require("fmap_const", (None,), None)
    static.require("dlatent_broadcast", (None,), None)
    z_dim, c_dim, w_dim = static.get("latent_size", 512), static.get("label_size", 0), static.get("dlatent_size", 512)
    num_layers = static.get("mapping_layers", 8)
    static.get("mapping_fmaps")  # read from the weights' shapes below: its default differs between releases
    static.get("label_fmaps")
    if variables.has("mapping/LabelConcat/weight"):
        raise UserError(f"{static.where}: a conditional network of the original StyleGAN2 release (LabelConcat: "
                        "labels concatenated to z and normalised together), which stylegan2-ada-pytorch's mapping "
                        "does not compute; only unconditional StyleGAN2 and conditional StyleGAN2-ADA networks "
                        "(LabelEmbed) are supported")
    mapping_kwargs = dict(num_layers=num_layers, embed_features=None, layer_features=None,
                          activation=static.get("mapping_nonlinearity", "lrelu"),
                          lr_multiplier=static.get("mapping_lrmul", 0.01), w_avg_beta=0.995)
    if num_layers > 1 and variables.has("mapping/Dense0/weight"):
        hidden = int(variables.values["mapping/Dense0/weight"].shape[1])
        mapping_kwargs["layer_features"] = None if hidden == w_dim else hidden
    if c_dim > 0 and variables.has("mapping/LabelEmbed/weight"):
        embed = int(variables.values["mapping/LabelEmbed/weight"].shape[1])
        mapping_kwargs["embed_features"] = None if embed == w_dim else embed
    res = static.resolution()
    channels = {2**k: _out_channels(variables, f"synthesis/{2**k}x{2**k}/{'Conv' if k == 2 else 'Conv1'}/weight")
                for k in range(2, int(np.log2(res)) + 1)}
    base, cmax = _channel_layout(static, channels)
    synthesis_kwargs = dict(
        channel_base=base, channel_max=cmax,
        num_fp16_res=static.get("num_fp16_res", 0), conv_clamp=static.get("conv_clamp"),
        architecture=static.require("architecture", ("orig", "skip", "resnet"), "skip"),
        resample_filter=static.resample_kernel(),
        use_noise=static.require("use_noise", (True, False), True),
        activation=static.get("nonlinearity", "lrelu"))
    kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=res,
                  img_channels=static.get("num_channels", 3), mapping_kwargs=mapping_kwargs,
                  synthesis_kwargs=synthesis_kwargs)
    static.check_all_known()
    return kwargs


def generator_state(v: _Variables, kwargs: dict) -> dict[str, np.ndarray]:
    """Every TF generator variable under its PyTorch name, in PyTorch's layout; unused variables are an error."""
    syn = kwargs["synthesis_kwargs"]
    arch, use_noise = syn["architecture"], syn["use_noise"]
    out: dict[str, np.ndarray] = {"mapping.w_avg": v.take("dlatent_avg")}
    if v.has("lod"):  # progressive-growing level of detail, always 0 for StyleGAN2
        if np.any(v.take("lod") != 0):
            raise UserError(f"{v.where}: lod is not 0 (a progressive-growing network); {_REFUSED_ADVICE}")
    if kwargs["c_dim"] > 0:
        out["mapping.embed.weight"] = v.dense("mapping/LabelEmbed/weight")
        out["mapping.embed.bias"] = v.take("mapping/LabelEmbed/bias")
    for i in range(kwargs["mapping_kwargs"]["num_layers"]):
        out[f"mapping.fc{i}.weight"] = v.dense(f"mapping/Dense{i}/weight")
        out[f"mapping.fc{i}.bias"] = v.take(f"mapping/Dense{i}/bias")
    filt = setup_filter(list(syn["resample_filter"])).numpy()
    res_log2 = int(np.log2(kwargs["img_resolution"]))
    for log2 in range(2, res_log2 + 1):
        r = 2**log2
        tf, pt = f"synthesis/{r}x{r}", f"synthesis.b{r}"
        out[f"{pt}.resample_filter"] = filt
        if r == 4:
            out[f"{pt}.const"] = v.take(f"{tf}/Const/const")[0]
            layers = {"conv1": (f"{tf}/Conv", 0)}
        else:
            layers = {"conv0": (f"{tf}/Conv0_up", 2 * log2 - 5), "conv1": (f"{tf}/Conv1", 2 * log2 - 4)}
        for layer, (scope, noise_idx) in layers.items():
            dst = f"{pt}.{layer}"
            out[f"{dst}.weight"] = v.conv(f"{scope}/weight", flip=(layer == "conv0"))
            out[f"{dst}.bias"] = v.take(f"{scope}/bias")
            out[f"{dst}.affine.weight"] = v.dense(f"{scope}/mod_weight")
            out[f"{dst}.affine.bias"] = v.take(f"{scope}/mod_bias") + 1
            out[f"{dst}.resample_filter"] = filt
            if use_noise:
                out[f"{dst}.noise_strength"] = v.take(f"{scope}/noise_strength").reshape([])
                out[f"{dst}.noise_const"] = v.take(f"synthesis/noise{noise_idx}")[0, 0]
        if arch == "skip" or r == kwargs["img_resolution"]:
            out[f"{pt}.torgb.weight"] = v.conv(f"{tf}/ToRGB/weight")
            out[f"{pt}.torgb.bias"] = v.take(f"{tf}/ToRGB/bias")
            out[f"{pt}.torgb.affine.weight"] = v.dense(f"{tf}/ToRGB/mod_weight")
            out[f"{pt}.torgb.affine.bias"] = v.take(f"{tf}/ToRGB/mod_bias") + 1
        if arch == "resnet" and r > 4:
            out[f"{pt}.skip.weight"] = v.conv(f"{tf}/Skip/weight", flip=True)
            out[f"{pt}.skip.resample_filter"] = filt
    v.check_all_used()
    return out


# ----------------------------------------------------------------------------- discriminator


def discriminator_from_tf(net: TFNetwork, where: str) -> NvidiaNetwork:
    """A TF `D_stylegan2` / `D_main` network as a discriminator in this project's layout."""
    _check_network(net, where, _SUPPORTED_D)
    family = _SUPPORTED_D[net.build_func_name]
    variables = _Variables(net, where)
    kwargs = discriminator_kwargs(_StaticKwargs(net, where), variables, family)
    return NvidiaNetwork("Discriminator", kwargs, _tensors(discriminator_state(variables, kwargs)),
                         family=f"tf-{family}", w_avg=None)


def discriminator_kwargs(static: _StaticKwargs, variables: _Variables, family: str) -> dict:
    static.ignore("dtype", "structure", "augment_strength", "pagan_num", "pagan_fade", "is_template_graph")
    static.require("fmap_decay", (1, 1.0), 1)
    static.require("fmap_min", (1,), 1)
    for name, default in (("use_pagan", False), ("use_spectral_norm", False), ("adaptive_dropout", 0),
                          ("score_size", 1), ("score_max", 1)):
        static.require(name, (default,), default)  # StyleGAN2-ADA's comparison methods
    c_dim = static.get("label_size", 0)
    if c_dim > 0 and family == "stylegan2":
        raise UserError(f"{static.where}: a conditional discriminator of the original StyleGAN2 release "
                        "(LabelSwitch); only conditional StyleGAN2-ADA networks (LabelEmbed) are supported")
    # the original release splits the minibatch-stddev into groups of 4 by default, ADA over the whole batch
    mbstd_group = static.get("mbstd_group_size", 4 if family == "stylegan2" else None)
    activation = static.get("nonlinearity", "lrelu")
    mapping_fmaps = static.get("mapping_fmaps")
    res = static.resolution()
    channels = {2**k: _out_channels(variables, f"{2**k}x{2**k}/Conv0/weight") for k in range(3, int(np.log2(res)) + 1)}
    channels[4] = _out_channels(variables, "4x4/Conv/weight")
    base, cmax = _channel_layout(static, channels)
    kwargs = dict(
        c_dim=c_dim, img_resolution=res, img_channels=static.get("num_channels", 3),
        architecture=static.require("architecture", ("orig", "skip", "resnet"), "resnet"),
        channel_base=base, channel_max=cmax,
        num_fp16_res=static.get("num_fp16_res", 0), conv_clamp=static.get("conv_clamp"), cmap_dim=mapping_fmaps,
        block_kwargs=dict(activation=activation, resample_filter=static.resample_kernel(),
                          freeze_layers=static.get("freeze_layers", 0)),
        mapping_kwargs=dict(num_layers=static.get("mapping_layers", 0), embed_features=mapping_fmaps,
                            layer_features=mapping_fmaps, activation=activation,
                            lr_multiplier=static.get("mapping_lrmul", 0.1)),
        epilogue_kwargs=dict(mbstd_group_size=mbstd_group, mbstd_num_channels=static.get("mbstd_num_features", 1),
                             activation=activation))
    static.check_all_known()
    return kwargs


def discriminator_state(v: _Variables, kwargs: dict) -> dict[str, np.ndarray]:
    """Every TF discriminator variable under its PyTorch name; unused variables are an error."""
    arch = kwargs["architecture"]
    filt = setup_filter(list(kwargs["block_kwargs"]["resample_filter"])).numpy()
    res_log2 = int(np.log2(kwargs["img_resolution"]))
    out: dict[str, np.ndarray] = {}

    def conv(dst: str, scope: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = v.conv(f"{scope}/weight")  # downsampling convs are not flipped
        if bias:
            out[f"{dst}.bias"] = v.take(f"{scope}/bias")
        out[f"{dst}.resample_filter"] = filt

    for log2 in range(res_log2, 2, -1):
        r = 2**log2
        tf, pt = f"{r}x{r}", f"b{r}"
        out[f"{pt}.resample_filter"] = filt
        if arch == "skip" or log2 == res_log2:
            conv(f"{pt}.fromrgb", f"{tf}/FromRGB")
        conv(f"{pt}.conv0", f"{tf}/Conv0")
        conv(f"{pt}.conv1", f"{tf}/Conv1_down")
        if arch == "resnet":
            conv(f"{pt}.skip", f"{tf}/Skip", bias=False)
    if kwargs["c_dim"] > 0:
        out["mapping.embed.weight"] = v.dense("LabelEmbed/weight")
        out["mapping.embed.bias"] = v.take("LabelEmbed/bias")
        for i in range(kwargs["mapping_kwargs"]["num_layers"]):
            out[f"mapping.fc{i}.weight"] = v.dense(f"Mapping{i}/weight")
            out[f"mapping.fc{i}.bias"] = v.take(f"Mapping{i}/bias")
    if arch == "skip":
        conv("b4.fromrgb", "4x4/FromRGB")
    conv("b4.conv", "4x4/Conv")
    out["b4.fc.weight"] = v.dense("4x4/Dense0/weight")
    out["b4.fc.bias"] = v.take("4x4/Dense0/bias")
    out["b4.out.weight"] = v.dense("Output/weight")
    out["b4.out.bias"] = v.take("Output/bias")
    v.check_all_used()
    return out
