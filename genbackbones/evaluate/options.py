"""Where the evaluator's labelled data comes from and how to read it: `DataOptions` and its flags.

One table (`DATA_FLAGS`) lists every data flag with how its text is parsed, so each entry
point (`genbackbones evaluate`, `benchmarks/real_faces.py evaluate`) reads the same options
the same way, and a value that cannot be right (zero or negative sizes, an eye index below
0, a split fraction outside (0, 1)) is refused before anything is loaded or written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

from ..errors import UserError, kind_words


@dataclass
class DataOptions:
    """Where the labelled data comes from and how to read it (recorded in the results)."""

    source: str = "faces"
    resolution: int | None = None  # None: the first backbone's pretrained_cfg input size
    target: str | None = None  # classification attribute / label column (faces default: hair_colour)
    image_column: str = "image"
    mask_column: str = "mask"
    landmark_columns: tuple[str, ...] | None = None  # one [K,2] column, or x,y column pairs
    eye_indices: tuple[int, int] | None = None  # None: from the layout (see landmarks.py)
    classes: tuple[str, ...] | None = None  # segmentation class names for index masks (else classes.txt/.json)
    class_colors: str | None = None  # colour map file (JSON/YAML) or "name=#rrggbb,..."
    label_pattern: str | None = None  # regex with named groups applied to file names
    data_config: str | None = None  # `datasets`: configuration name (load_dataset's `name`)
    data_split: tuple[str, ...] | None = None  # `datasets`: (train split,) or (train split, test split)
    data_revision: str | None = None  # `datasets`: Hub revision (a commit id is checked against the cache)
    data_dir: str | None = None  # `datasets`: data_dir (a builder such as imagefolder needs it)
    pool: int = 2000  # faces: size of the labelled train pool
    test_size: int = 500  # faces: number of test images
    test_fraction: float = 0.2  # folders/datasets without a test split
    split_seed: int = 0  # folders/datasets without a test split
    faces_seed: int = 0  # faces: the domain seed
    max_outside: float = 0.02  # landmarks: largest fraction of points allowed outside the square crop
    validation: int = 0  # > 0: score on this many images held out of the train pool, never the test set


def _names(value: str) -> tuple[str, ...] | None:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


def _eye_indices(value: str) -> tuple[int, int]:
    try:
        eyes = tuple(int(i) for i in value.split(","))
    except ValueError:
        eyes = ()
    if len(eyes) != 2 or min(eyes) < 0 or eyes[0] == eyes[1]:
        raise UserError(f"--eye-indices {value!r}: give two different landmark indices (from 0), e.g. 36,45")
    return eyes


def _split_names(value: str) -> tuple[str, ...]:
    names = _names(value) or ()
    if not 1 <= len(names) <= 2:
        raise UserError(f"--data-split {value!r}: give the train split, or train,test (e.g. train,validation)")
    return names


def _text(value: str) -> str:
    return value


@dataclass(frozen=True)
class DataFlag:
    """A command-line data option: its flag, the DataOptions field it sets, and how its text is read."""

    flag: str
    field: str
    help: str
    parse: Callable[[str], object] = _text
    aliases: tuple[str, ...] = ()


DATA_FLAGS: tuple[DataFlag, ...] = (
    DataFlag("--target", "target", "Classification label (faces: an attribute; datasets: a column; labels.csv: a "
             "column; --label-pattern: a group name).", aliases=("--label-column",)),
    DataFlag("--image-column", "image_column", "Dataset image column (default image)."),
    DataFlag("--mask-column", "mask_column", "Dataset mask column (default mask)."),
    DataFlag("--landmark-columns", "landmark_columns", "One [K,2] column or x,y column pairs (datasets, "
             "landmarks.csv).", _names),
    DataFlag("--eye-indices", "eye_indices", "The two landmarks whose distance normalises NME (default: from the "
             "layout: 68 points 36,45; 98 points 60,72; 5 points 0,1; 29 points 8,9; or named eye columns).",
             _eye_indices),
    DataFlag("--classes", "classes", "Segmentation class names for index/palette masks, comma-separated (default: "
             "classes.txt / classes.json / id2label.json beside the data).", _names),
    DataFlag("--class-colors", "class_colors", "Colour-coded masks: a JSON/YAML file or name=#rrggbb,..."),
    DataFlag("--label-pattern", "label_pattern", "Regex with named groups on file names, e.g. "
             "'(?P<age>\\d+)_(?P<gender>\\d)_'."),
    DataFlag("--data-config", "data_config", "`datasets`: the configuration name."),
    DataFlag("--data-split", "data_split", "`datasets`: the train split, or train,test (default: train + "
             "test/validation when present).", _split_names),
    DataFlag("--data-revision", "data_revision", "`datasets`: the Hub revision (a commit id is checked against "
             "the cache)."),
    DataFlag("--data-dir", "data_dir", "`datasets`: data_dir; needed with a builder name such as imagefolder."),
)


def data_options(source: str = "faces", resolution: int | None = None, **raw: str | None) -> DataOptions:
    """DataOptions from the text of the flags (keys = DataFlag.field; None or '' = not given)."""
    known = {f.field: f for f in DATA_FLAGS}
    unknown = set(raw) - set(known)
    if unknown:
        raise TypeError(f"unknown data option(s): {', '.join(sorted(unknown))}")
    if resolution is not None and resolution < 16:
        raise UserError(f"--resolution must be at least 16 px, got {resolution}")
    values = {name: known[name].parse(text) for name, text in raw.items() if text not in (None, "")}
    return DataOptions(source=source or "faces", resolution=resolution, **values)


def add_argparse_flags(parser) -> None:
    """The same data flags on an argparse parser (benchmarks), all as text parsed by `data_options`."""
    for flag in DATA_FLAGS:
        parser.add_argument(flag.flag, *flag.aliases, dest=flag.field, default=None, help=flag.help)


def flag_values(namespace) -> dict[str, str | None]:
    """The data flags' raw text from an argparse namespace (see `add_argparse_flags`)."""
    return {flag.field: getattr(namespace, flag.field) for flag in DATA_FLAGS}


OVERRIDES: Mapping[str, type] = {"pool": int, "test_size": int, "test_fraction": float, "split_seed": int,
                                 "faces_seed": int, "resolution": int, "max_outside": float,
                                 "validation": int}


def apply_data_overrides(options: DataOptions, items: Sequence[str]) -> DataOptions:
    """`data.key=value` settings (see OVERRIDES), then every size and fraction checked."""
    for item in items:
        key, sep, value = item.strip()[len("data."):].partition("=")
        if not sep or key not in OVERRIDES:
            raise UserError(f"--set {item!r}: unknown data setting; valid: {', '.join('data.' + k for k in OVERRIDES)}")
        try:
            options = replace(options, **{key: OVERRIDES[key](value)})
        except ValueError:
            raise UserError(f"--set {item!r}: expected {kind_words(OVERRIDES[key])}") from None
    check(options)
    return options


def check(options: DataOptions) -> None:
    """Refuse values that cannot be right, before any data is read."""
    if options.pool < 1 or options.test_size < 1:
        raise UserError("data.pool and data.test_size must be at least 1")
    if options.validation < 0:
        raise UserError(f"data.validation must be 0 (score on the test set) or a number of images, got "
                        f"{options.validation}")
    if not 0 < options.test_fraction < 1:
        raise UserError(f"data.test_fraction must be between 0 and 1, got {options.test_fraction}")
    if not 0 <= options.max_outside < 1:
        raise UserError(f"data.max_outside must be in [0, 1), got {options.max_outside}")
    if options.resolution is not None and options.resolution < 16:
        raise UserError(f"evaluation resolution must be at least 16 px, got {options.resolution}")
    if options.eye_indices is not None and (len(options.eye_indices) != 2 or min(options.eye_indices) < 0):
        raise UserError(f"--eye-indices {options.eye_indices}: give two landmark indices from 0")


def recorded(options: DataOptions) -> dict:
    """The options as results.json stores them."""
    return {f.name: getattr(options, f.name) for f in fields(options)}


def choose_protocol(protocol: str | None, finetune: bool | None) -> str | None:
    """--protocol, or the older --finetune/--linear switch; both given and different is an error."""
    legacy = None if finetune is None else ("finetune" if finetune else "linear")
    if protocol is not None and legacy is not None and protocol != legacy:
        raise UserError(f"--protocol {protocol} and --{legacy} disagree; give one of them")
    return protocol or legacy
