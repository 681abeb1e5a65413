"""The model zoo: the backbones genbackbones publishes, under timm-native names.

`zoo.yaml` lists each published (or coming) backbone: its timm architecture and tag, its Hub repo, how
it was trained and what it scored. Each entry's Hub repo is named like timm names pretrained weights,
`genbackbones/<arch>.<tag>`, and a published entry loads with timm alone, no genbackbones import:

    timm.create_model('hf-hub:genbackbones/hrnet_w18_small.layermatch_faces64', pretrained=True,
                      features_only=True)

Nothing is added to timm's own registry: timm has no public call that adds a pretrained tag to an
existing architecture (`register_model` replaces the architecture and its ImageNet tags), and writing its
private tables breaks silently when timm changes them. So `timm.list_pretrained()` never lists an entry
whose weights do not exist, and `genbackbones zoo` prints the line to use for the ones that do.
"""

from __future__ import annotations

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
    def loadable(self) -> bool:
        """Weights exist on the Hub (only published entries)."""
        return self.status == "published"

    @property
    def load_line(self) -> str:
        """The timm call for a published entry (what `genbackbones zoo` prints), '-' otherwise."""
        if not self.loadable:
            return "-"
        from .cards import load_line
        from .offline import HUB_PREFIX

        return load_line(f"{HUB_PREFIX}{self.repo}")

    @property
    def license_label(self) -> str:
        return self.license_name if self.license == "other" and self.license_name else self.license


def load_zoo(path: Path | None = None) -> list[ZooEntry]:
    """Read and check zoo.yaml (the packaged one by default); a broken file is a UserError naming the entry and key."""
    import yaml

    path = path or ZOO_FILE
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
    if str(item["repo"]).split("/")[1] != f"{item['arch']}.{item['tag']}":
        raise UserError(f"{where}: the repo must be named like the timm name, <org>/{item['arch']}.{item['tag']}")
    if item["license"] == "other" and not item.get("license_name"):
        raise UserError(f"{where}: license 'other' needs a license_name")
    results = tuple(item.get("results") or ())
    if item["status"] != "published" and results:
        raise UserError(f"{where}: an entry that is not published has no weights, so it cannot have results")
    for result in results:
        if not isinstance(result, dict) or any(k not in result for k in RESULT_KEYS):
            raise UserError(f"{where}: each result needs {', '.join(RESULT_KEYS)}")
    return ZooEntry(**{**item, "input_size": int(item["input_size"]), "mean": tuple(item.get("mean", (0.5,) * 3)),
                       "std": tuple(item.get("std", (0.5,) * 3)), "datasets": tuple(item.get("datasets") or ()),
                       "results": results})


def find_entry(repo_id: str, entries: list[ZooEntry] | None = None) -> ZooEntry | None:
    """The zoo entry published at this Hub repo, if any (push uses it for the card's tags)."""
    return next((e for e in (entries if entries is not None else load_zoo()) if e.repo == repo_id), None)
