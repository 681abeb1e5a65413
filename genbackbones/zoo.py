"""The model zoo: the backbones genbackbones publishes, as timm pretrained tags.

`zoo.yaml` lists each published (or coming) backbone: its timm architecture and tag, its Hub repo, how
it was trained and what it scored. `register_zoo()` makes every entry that is not `planned` a timm
pretrained tag, so that

    timm.create_model("hrnet_w18_small.layermatch_faces64", pretrained=True)

resolves to `hf-hub:genbackbones/hrnet_w18_small.layermatch_faces64` like any timm weight, online or from
the offline HF cache.

`import genbackbones` must stay fast (no torch), but registering needs timm's registry, and importing timm
costs seconds. So `register_zoo()` only installs a one-shot import hook when timm has not been imported
yet: the entries are registered the moment `import timm` finishes, before any `create_model` call can
ask for them.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

ZOO_FILE = Path(__file__).resolve().with_name("zoo.yaml")
STATUSES = ("published", "in-progress", "planned")
REQUIRED = ("arch", "tag", "repo", "method", "generator", "domain", "input_size", "license", "status")
RESULT_KEYS = ("task", "dataset", "metric", "labels", "value")


@dataclass(frozen=True)
class ZooEntry:
    """One backbone the project publishes (see zoo.yaml for what each field means)."""

    arch: str
    tag: str
    repo: str
    method: str
    generator: str
    domain: str
    input_size: int
    license: str
    status: str
    license_name: str | None = None
    recipe: str | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    datasets: tuple[str, ...] = ()
    results: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """The timm model name: `<arch>.<tag>`."""
        return f"{self.arch}.{self.tag}"

    @property
    def registered(self) -> bool:
        return self.status != "planned"

    @property
    def license_label(self) -> str:
        return self.license_name if self.license == "other" and self.license_name else self.license


def load_zoo(path: Path = ZOO_FILE) -> list[ZooEntry]:
    """Read and check zoo.yaml; a broken file is a UserError naming the entry and the key."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the zoo ({err}); reinstall genbackbones") from None
    entries = [_entry(item, i, path) for i, item in enumerate(data.get("entries") or [])]
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"{path}: duplicate zoo entries {', '.join(duplicates)}")
    return entries


def _entry(item: dict, index: int, path: Path) -> ZooEntry:
    where = f"{path}: entry {index} ({item.get('arch', '?')}.{item.get('tag', '?')})"
    missing = [k for k in REQUIRED if item.get(k) in (None, "")]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(item) - set(ZooEntry.__dataclass_fields__))
    if unknown:
        raise UserError(f"{where}: unknown keys {', '.join(unknown)}")
    if item["status"] not in STATUSES:
        raise UserError(f"{where}: status must be one of {', '.join(STATUSES)}, got {item['status']!r}")
    if str(item["repo"]).count("/") != 1:
        raise UserError(f"{where}: repo must be a Hub id org/name, got {item['repo']!r}")
    if item["license"] == "other" and not item.get("license_name"):
        raise UserError(f"{where}: license 'other' needs a license_name")
    results = tuple(item.get("results") or ())
    if item["status"] == "planned" and results:
        raise UserError(f"{where}: a planned entry has no weights, so it cannot have results")
    for result in results:
        if not isinstance(result, dict) or any(k not in result for k in RESULT_KEYS):
            raise UserError(f"{where}: each result needs {', '.join(RESULT_KEYS)}")
    return ZooEntry(**{**item, "input_size": int(item["input_size"]), "mean": tuple(item.get("mean", (0.5,) * 3)),
                       "std": tuple(item.get("std", (0.5,) * 3)), "datasets": tuple(item.get("datasets") or ()),
                       "results": results})


def find_entry(repo_id: str, entries: list[ZooEntry] | None = None) -> ZooEntry | None:
    """The zoo entry published at this Hub repo, if any (push uses it for the card's tags)."""
    return next((e for e in (entries if entries is not None else load_zoo()) if e.repo == repo_id), None)


# ----------------------------------------------------------------------------- timm registration


def pretrained_cfg(entry: ZooEntry):
    """The timm PretrainedCfg of an entry: the same truthful cfg `export` writes into config.json."""
    from timm.models import PretrainedCfg

    from .timm_cfg import pretrained_cfg_for

    cfg = pretrained_cfg_for(entry.arch, entry.input_size, entry.mean, entry.std, entry.license_label, entry.tag)
    for key in ("input_size", "mean", "std"):
        cfg[key] = tuple(cfg[key])
    return PretrainedCfg(**cfg, hf_hub_id=entry.repo, architecture=entry.arch,
                         description=f"{entry.method} against {entry.generator}",
                         origin_url=f"https://huggingface.co/{entry.repo}")


def register_entries(entries: list[ZooEntry] | None = None) -> list[str]:
    """Add the entries to timm's registry now (timm must be importable); returns the names added.

    timm has no public call that adds a pretrained tag to an existing architecture (`register_model`
    would replace the architecture itself), so this fills the same registry tables that `register_model`
    fills for a tag: arch.tag -> cfg, the arch's tag list and default cfg, and the has-weights set.
    """
    from timm.models import _registry as registry

    added = []
    for entry in entries if entries is not None else load_zoo():
        if not entry.registered:
            continue
        if not registry.is_model(entry.arch):
            warnings.warn(f"genbackbones zoo: this timm has no architecture {entry.arch}; {entry.name} is not "
                          "registered (upgrade timm)")
            continue
        cfg = pretrained_cfg(entry)
        registry._model_pretrained_cfgs[entry.name] = cfg
        registry._model_has_pretrained.add(entry.name)
        if entry.name not in registry._model_with_tags[entry.arch]:
            registry._model_with_tags[entry.arch].append(entry.name)
        default = registry._model_default_cfgs.get(entry.arch)
        if default is not None:
            default.cfgs[entry.tag] = cfg
            if entry.tag not in default.tags:
                default.tags.append(entry.tag)  # appended: the architecture's default weights stay the default
        added.append(entry.name)
    return added


_lock = threading.Lock()
_done = False


def register_zoo() -> None:
    """Register the zoo with timm now if timm is imported, else right after `import timm` finishes.

    Cheap and safe to call at `import genbackbones`: no torch, no network, and a broken zoo only warns.
    """
    if "timm" in sys.modules and hasattr(sys.modules["timm"], "create_model"):
        _register_once()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())


def _register_once() -> None:
    global _done
    with _lock:
        if _done:
            return
        _done = True
    try:
        register_entries()
    except Exception as err:  # never break `import timm` for users because of the zoo
        warnings.warn(f"genbackbones zoo not registered with timm: {err}")


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds `timm` like the normal finders do, and runs the registration once its import completes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one-shot; the normal finders locate timm below
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            _register_once()

        spec.loader.exec_module = exec_module  # this spec's own loader instance only
        return spec
