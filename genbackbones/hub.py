"""Share backbones and generators through the Hugging Face Hub: push, pull, list, info.

Everything that talks to the Hub goes through huggingface_hub, so `HF_ENDPOINT`, `HF_HOME`,
`HF_HUB_OFFLINE` and the login cache behave as users expect. What this module adds is the project's
view of a repo:

- which files make one: a backbone export (`model.safetensors`, `config.json`, a card, `recipe.yaml`,
  `run.json` provenance, `evaluation/*`), or a generator folder (`generator.json`, the safetensors, a card);
- a card re-rendered for its Hub id, so its usage lines say `hf-hub:org/name`;
- provenance without machine-local details (host names, absolute paths);
- errors a user can act on, one line each.

Tokens come only from huggingface_hub's usual sources (`HF_TOKEN`, the login cache). A token is handed
to `HfApi` and to nothing else: never printed, logged, or written into any file.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .cards import generator_load_line, load_line
from .errors import UserError, first_line
from .offline import HUB_PREFIX

EVALUATION_SUFFIXES = (".json", ".png")
# run.json keys that describe the machine a run happened on, not the weights
MACHINE_LOCAL_KEYS = frozenset({"host", "hostname", "node", "user", "username", "pid", "cwd", "run_dir", "output",
                                "env", "environment"})
NO_TOKEN = ("no Hugging Face token: run `hf auth login` (`huggingface-cli login` before huggingface_hub 1.0) "
            "or set HF_TOKEN")


# ----------------------------------------------------------------------------- what a repo holds


@dataclass(frozen=True)
class RepoFile:
    """One file of a repo: a local file uploaded as is, or generated content (card, scrubbed JSON)."""

    path: str
    source: Path | bytes

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()

    def operation(self):
        """The huggingface_hub commit operation that uploads this file (local files are streamed, not copied)."""
        from huggingface_hub import CommitOperationAdd

        content = self.source if isinstance(self.source, bytes) else str(self.source)
        return CommitOperationAdd(path_in_repo=self.path, path_or_fileobj=content)


@dataclass
class Staged:
    """Everything a push would upload, prepared locally (what `--dry-run` shows)."""

    kind: str  # "backbone" | "generator"
    repo_id: str
    files: list[RepoFile]

    @property
    def card(self) -> str:
        return next(f.read().decode() for f in self.files if f.path == "README.md")

    @property
    def load_line(self) -> str:
        if self.kind == "generator":
            return generator_load_line(self.repo_id)
        return load_line(f"{HUB_PREFIX}{self.repo_id}")


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit: str
    url: str
    staged: Staged


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """`[hf-hub:]org/name[@revision]` -> (repo_id, revision); a malformed id is a UserError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    repo_id, _, revision = text.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"{spec!r} is not a Hub model id: {first_line(err)}") from None
    if repo_id.count("/") != 1:
        raise UserError(f"{spec!r}: expected org/name (optionally @revision), e.g. me/hrnet_w18.layermatch_ffhq256")
    return repo_id, revision or None


def stage(source: str | Path, repo_id: str, tags: list[str] | None = None) -> Staged:
    """Collect the files to push from a run folder, an export folder or a generator folder (no network).

    `tags` are extra card tags (e.g. the domain, `faces`); the project's own repos get theirs from the zoo.
    """
    repo_id, _ = parse_repo_spec(repo_id)
    tags = list(tags or [])
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source} is not a folder; pass a run folder (runs/<name>), its export/ folder, or a "
                        "generator folder")
    if (source / "generator.json").exists():
        return Staged("generator", repo_id, _generator_files(source, repo_id, tags))
    if (source / "config.json").exists():
        run_dir = source.parent if (source.parent / "recipe.yaml").exists() else None
        return Staged("backbone", repo_id, _backbone_files(source, run_dir, repo_id, tags))
    if (source / "recipe.yaml").exists():
        if not (source / "export" / "config.json").exists():
            raise UserError(f"{source} has no export yet; run `genbackbones export {shlex.quote(str(source))}` first")
        return Staged("backbone", repo_id, _backbone_files(source / "export", source, repo_id, tags))
    raise UserError(f"{source} is neither a run folder (recipe.yaml), an export folder (config.json) nor a generator "
                    "folder (generator.json)")


# ----------------------------------------------------------------------------- backbones


def _backbone_files(export: Path, run_dir: Path | None, repo_id: str, tags: list[str]) -> list[RepoFile]:
    cfg = _read_json(export / "config.json")
    if "genbackbones" not in cfg or "architecture" not in cfg:
        raise UserError(f"{export / 'config.json'} was not written by `genbackbones export`; re-export the run")
    if not (export / "model.safetensors").is_file():
        raise UserError(f"{export / 'model.safetensors'} is missing; re-export the run (genbackbones export RUN)")
    public_cfg = public(cfg)
    files = [RepoFile("model.safetensors", export / "model.safetensors"),
             _json_file("config.json", export / "config.json"),
             RepoFile("README.md", _backbone_card(public_cfg, export, run_dir, repo_id, tags).encode())]
    recipes = [export / "recipe.yaml"] + ([run_dir / "recipe.yaml"] if run_dir else [])
    recipe = next((p for p in recipes if p.exists()), None)
    if recipe is not None:
        files.append(_yaml_file("recipe.yaml", recipe))
    if run_dir is not None and (run_dir / "run.json").exists():
        files.append(_json_file("run.json", run_dir / "run.json"))
    evaluated = _evaluated(run_dir, export)
    if evaluated is not None:
        for path in sorted((evaluated / "evaluation").iterdir()):
            if path.is_file() and path.suffix in EVALUATION_SUFFIXES:
                name = f"evaluation/{path.name}"
                files.append(_json_file(name, path) if path.suffix == ".json" else RepoFile(name, path))
    return files


def _backbone_card(cfg: dict, export: Path, run_dir: Path | None, repo_id: str, tags: list[str]) -> str:
    """The export's card, rendered again for this Hub id, with the run's evaluation and zoo metadata."""
    from .cards import backbone_card
    from .zoo import find_entry

    entry = find_entry(repo_id)
    eval_results, rows = _evaluation(run_dir, export)
    card = {
        "tags": list(dict.fromkeys(([entry.domain] if entry else []) + tags)),
        "datasets": list(entry.datasets) if entry and entry.datasets else None,
        "base_model": _base_model(cfg["genbackbones"].get("backbone", {})),
        "eval_results": eval_results or None,
        "eval_rows": rows,
        "model_name": repo_id.split("/")[1] if eval_results else None,  # model-index needs a name
    }
    return backbone_card(cfg, load_line(f"{HUB_PREFIX}{repo_id}"), {k: v for k, v in card.items() if v})


def _evaluated(run_dir: Path | None, export: Path) -> Path | None:
    """The folder whose `evaluation/` a push publishes: the run's (newest: it may be evaluated after the export),
    else the copy an export carries of it (an export written outside its run, `export RUN --out DIR`)."""
    return next((d for d in (run_dir, export) if d is not None and (d / "evaluation").is_dir()), None)


def _evaluation(run_dir: Path | None, export: Path) -> tuple[list, list[dict]]:
    """EvalResults + table rows from the run's or the export's `evaluation/model_index.json`, else the export
    card's model-index (exports written before exports carried the file: their table rows are not recoverable)."""
    from huggingface_hub import ModelCard

    from .evaluate.report import read_model_index

    evaluated = _evaluated(run_dir, export)
    found = read_model_index(evaluated) if evaluated is not None else None
    if found is not None:
        return found
    if (export / "README.md").exists():
        card = ModelCard.load(export / "README.md", ignore_metadata_errors=True)
        return list(card.data.eval_results or []), []
    return [], []


def _base_model(backbone: dict) -> str | None:
    """The Hub id of the ImageNet weights a backbone started from (timm's own repo), if any."""
    if backbone.get("init") != "imagenet" or not backbone.get("arch"):
        return None
    import timm

    arch = backbone["arch"]
    tag = backbone.get("pretrained_tag")
    try:
        cfg = timm.models.get_pretrained_cfg(arch if tag is None else f"{arch.split('.')[0]}.{tag}")
    except RuntimeError:  # unknown tag: the run could not have used it either
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    return hub_id if hub_id and hub_id.count("/") == 1 else None


# ----------------------------------------------------------------------------- generators


def _generator_files(folder: Path, repo_id: str, tags: list[str]) -> list[RepoFile]:
    from .cards import generator_card
    from .generators.formats.folder import D_FILE, G_FILE, META_FILE, read_meta

    meta = read_meta(folder)
    if not (folder / G_FILE).is_file():
        raise UserError(f"{folder / G_FILE} is missing; re-create the folder with `genbackbones generator convert`")
    if not meta.get("license"):
        raise UserError(f"{folder / META_FILE} records no licence; re-convert with --license (NVIDIA's FFHQ models: "
                        "--license 'Nvidia Source Code License-NC') before publishing the weights")
    files = [RepoFile(G_FILE, folder / G_FILE), _json_file(META_FILE, folder / META_FILE)]
    if (folder / D_FILE).is_file():
        files.append(RepoFile(D_FILE, folder / D_FILE))
    files.append(RepoFile("README.md", generator_card(public(meta), folder, repo_id, tags).encode()))
    return files


# ----------------------------------------------------------------------------- provenance without machine details


def public(value):
    """A copy without machine-local details: host/user keys dropped, absolute paths reduced to their name."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if k not in MACHINE_LOCAL_KEYS}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str) and _is_absolute_path(value):
        return Path(value.replace("\\", "/")).name
    return value


def _is_absolute_path(text: str) -> bool:
    """'/home/a/x', '~/x', 'C:\\x': a path on someone's machine (relative paths and ids like 'random:x' are kept)."""
    return len(text) > 1 and bool(re.match(r"^(/|~[/\\]|[A-Za-z]:[/\\])[^\n:]*$", text))


def _json_file(path_in_repo: str, path: Path) -> RepoFile:
    """The file as is, or a scrubbed copy when it holds machine-local details."""
    data = _read_json(path)
    cleaned = public(data)
    return RepoFile(path_in_repo, path if cleaned == data else (json.dumps(cleaned, indent=2) + "\n").encode())


def _yaml_file(path_in_repo: str, path: Path) -> RepoFile:
    import yaml

    data = yaml.safe_load(path.read_text())
    cleaned = public(data)
    return RepoFile(path_in_repo, path if cleaned == data else yaml.safe_dump(cleaned, sort_keys=False).encode())


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); re-create it") from None


# ----------------------------------------------------------------------------- talking to the Hub

def require_hub(action: str) -> None:
    """For commands that need the Hub itself (push, list): fail at once without it."""
    from huggingface_hub import constants

    from .offline import hub_reachable

    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{action}: HF_HUB_OFFLINE is set; unset it to reach the Hub")
    if not hub_reachable():
        raise UserError(f"{action}: cannot reach the Hub at {constants.ENDPOINT} (no network?); try again with "
                        "network access")


def require_token() -> str:
    """The user's token from HF_TOKEN or the login cache; a UserError when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError(NO_TOKEN)
    return token


def push(source: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, tags: list[str] | None = None) -> PushResult:
    """Create the repo if needed (and the branch `revision`) and upload everything in one commit."""
    from huggingface_hub import HfApi

    from .version import __version__

    token = require_token()  # before anything slow: no token, nothing to do
    staged = stage(source, repo_id, tags)
    require_hub(f"push to {staged.repo_id}")
    branch = revision or "main"
    api = HfApi(token=token)
    message = commit_message or f"Upload {staged.kind} with genbackbones {__version__}"
    with hub_errors(f"push to {staged.repo_id}", upload=True):
        # private=None, not False: without --private the organisation's default visibility applies
        api.create_repo(staged.repo_id, private=private or None, exist_ok=True, repo_type="model")
        if branch != "main":
            api.create_branch(staged.repo_id, branch=branch, exist_ok=True)
        operations = [f.operation() for f in staged.files]
        commit = api.create_commit(staged.repo_id, operations, commit_message=message, revision=branch)
    return PushResult(staged.repo_id, branch, commit.oid, commit.commit_url, staged)


def pull(spec: str, out: str | Path | None = None) -> Path:
    """Download a repo: into the HF cache (timm and open_generator find it there), or into `out`."""
    from huggingface_hub import snapshot_download

    repo_id, revision = parse_repo_spec(spec)
    from .offline import cache_only_when_offline

    with hub_errors(f"pull {repo_id}"), cache_only_when_offline():
        folder = snapshot_download(repo_id, revision=revision, local_dir=str(out) if out else None)
    return Path(folder)


@dataclass
class RepoSummary:
    """One line of `genbackbones list`: what the card metadata says, without downloading anything."""

    repo_id: str
    kind: str
    method: str
    license: str
    metrics: list[str]
    private: bool | None
    last_modified: str


def list_repos(org: str) -> list[RepoSummary]:
    """The model repos of an organisation (or user), summarised from their cards' metadata."""
    from huggingface_hub import HfApi

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", org):
        raise UserError(f"{org!r} is not a Hub organisation or user name")
    require_hub(f"list {org}")  # listing needs the Hub: the cache holds no organisation's repo list
    with hub_errors(f"list {org}"):
        models = list(HfApi().list_models(author=org, cardData=True))
    return [_summary(m) for m in sorted(models, key=lambda m: m.id)]


def _summary(model) -> RepoSummary:
    data = model.card_data
    tags = list(model.tags or []) or list(getattr(data, "tags", None) or [])
    return RepoSummary(
        repo_id=model.id, kind=_kind(tags, getattr(data, "library_name", None) or model.library_name),
        method=_method(tags), license=_license_label(data), metrics=[_metric(r) for r in _eval_results(data)],
        private=model.private, last_modified=model.last_modified.date().isoformat() if model.last_modified else "")


def _kind(tags: list[str], library: str | None) -> str:
    if "stylegan2" in tags and "genbackbones" in tags:
        return "generator"
    return "backbone" if library == "timm" else "other"


def _method(tags: list[str]) -> str:
    from .methods import method_names  # names only: `list` imports no torch

    return next((t for t in tags if t in method_names()), "-")


def _license_label(data) -> str:
    if data is None:
        return "-"
    license = data.get("license") or "-"
    return data.get("license_name") or license if license == "other" else license


def _eval_results(data) -> list:
    return list(getattr(data, "eval_results", None) or []) if data is not None else []


def _metric(result) -> str:
    return f"{result.metric_name or result.metric_type} {result.metric_value} ({result.dataset_name})"


@dataclass
class RepoInfo:
    """What `genbackbones info` shows about a repo."""

    repo_id: str
    revision: str
    kind: str
    method: str
    generator: str
    generator_sha256: str
    license: str
    base_model: str | None
    tags: list[str]
    eval_results: list[dict]
    files: list[tuple[str, int | None]] = field(default_factory=list)
    load_line: str = ""
    local: bool = False  # a folder on this machine, not a Hub repo


def info(spec: str) -> RepoInfo:
    """Card data, provenance and files of a repo (from the HF cache when offline), or of a local folder."""
    from huggingface_hub import HfApi, ModelCard, hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    if not spec.startswith(HUB_PREFIX) and Path(spec).exists():  # `exports/q` is a valid Hub id too: local wins
        return local_info(Path(spec))
    repo_id, revision = parse_repo_spec(spec)
    from .offline import cache_only_when_offline

    files, sha = [], revision or "main"
    with hub_errors(f"info {repo_id}"), cache_only_when_offline():
        try:
            model = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
            files, sha = [(s.rfilename, s.size) for s in model.siblings or []], model.sha
        except OfflineModeIsEnabled:
            pass  # the files below come from the cache
        # by the user's revision, not the sha: the cache then records the ref and `info` works offline later
        card = ModelCard.load(hf_hub_download(repo_id, "README.md", revision=revision), ignore_metadata_errors=True)
        names = {name for name, _ in files}
        kind = "generator" if "generator.json" in names or "stylegan2" in (card.data.tags or []) else "backbone"
        config = _read_json(Path(hf_hub_download(repo_id, "generator.json" if kind == "generator" else "config.json",
                                                 revision=revision)))
    return _repo_info(repo_id, sha, kind, card.data, config, files)


def local_info(folder: Path) -> RepoInfo:
    """What `info` shows for a run, export or generator folder on this machine: the same facts, read from its
    files (the card as the folder holds it, not as a push would render it)."""
    from huggingface_hub import ModelCard, ModelCardData

    if not folder.is_dir():
        raise UserError(f"{folder} is a local file, not a folder or a Hub repo; give an export, run or generator "
                        "folder, or ORG/NAME")
    if (folder / "recipe.yaml").exists() and not (folder / "config.json").exists():
        if not (folder / "export" / "config.json").exists():
            raise UserError(f"{folder} is a local run folder with no export yet; run `genbackbones export "
                            f"{shlex.quote(str(folder))}` first")
        folder = folder / "export"
    kind = "generator" if (folder / "generator.json").exists() else "backbone" if (folder / "config.json").exists() \
        else None
    if kind is None:
        raise UserError(f"{folder} is a local folder but neither a run, an export (config.json) nor a generator "
                        "folder (generator.json)")
    config = _read_json(folder / ("generator.json" if kind == "generator" else "config.json"))
    readme = folder / "README.md"
    if readme.is_file():
        data = ModelCard.load(readme, ignore_metadata_errors=True).data
    else:  # a generator folder has no card until it is pushed: its licence is in generator.json
        from .cards import license_fields

        data = ModelCardData(**(license_fields(config["license"]) if config.get("license") else {}))
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    found = _repo_info(str(folder), "local", kind, data, config, files)
    found.load_line = (f"genbackbones.open_generator('{folder.resolve()}')" if kind == "generator"
                       else load_line(folder))
    found.local = True
    return found


def _repo_info(repo_id: str, sha: str, kind: str, data, config: dict, files) -> RepoInfo:
    if kind == "generator":
        generator, digest, method = config.get("source") or "-", config.get("source_sha256") or "-", "stylegan2"
        load = generator_load_line(repo_id)
    else:
        prov = config.get("genbackbones", {})
        gen = prov.get("generator", {})
        generator, digest = gen.get("description") or gen.get("source") or "-", gen.get("sha256") or "-"
        method = prov.get("method") or _method(list(data.tags or []))
        load = load_line(f"{HUB_PREFIX}{repo_id}")
    results = [{"task": r.task_type, "dataset": r.dataset_name, "metric": r.metric_name or r.metric_type,
                "value": r.metric_value} for r in _eval_results(data)]
    return RepoInfo(repo_id, sha, kind, method, generator, digest, _license_label(data), data.get("base_model"),
                    list(data.tags or []), results, files, load)


@contextlib.contextmanager
def hub_errors(action: str, upload: bool = False) -> Iterator[None]:
    """Turn huggingface_hub and network failures into one-line UserErrors that say what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        yield
    except UserError:
        raise
    except OfflineModeIsEnabled:
        raise UserError(f"{action}: HF_HUB_OFFLINE is set; unset it to reach the Hub") from None
    except RepositoryNotFoundError:
        raise UserError(f"{action}: repository not found (or private and your token cannot read it)") from None
    except RevisionNotFoundError:
        raise UserError(f"{action}: no such revision (branch, tag or commit)") from None
    except LocalEntryNotFoundError:
        raise UserError(f"{action}: not in the local Hugging Face cache and the Hub cannot be reached (offline?); "
                        "try again with network access") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if status in (401, 403):
            raise UserError(f"{action}: the Hub refused the token (HTTP {status}); it may lack write access to this "
                            "organisation or have expired: check `hf auth whoami`") from None
        raise UserError(f"{action} failed: HTTP {status}: {_first_line(err)}") from None
    except ValueError as err:
        if "metadata" in str(err).lower():  # the Hub's README check, raised before anything is uploaded
            raise UserError(f"{action}: the Hub rejected the model card: {_first_line(err, skip_title=True)}") from None
        raise
    except Exception as err:
        cause = _network_cause(err)
        if cause is None:
            raise
        advice = ("local files are untouched; run the same command again (files already on the Hub are not "
                  "uploaded twice)") if upload else "check the connection, or set HF_HUB_OFFLINE=1 to use the HF cache"
        raise UserError(f"{action} failed: lost the connection to the Hub at {constants.ENDPOINT} "
                        f"({type(cause).__name__}); {advice}") from None


def _network_cause(err: BaseException) -> BaseException | None:
    """The network failure behind `err`, if any (huggingface_hub wraps them; its HTTP client varies by version)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        root = type(err).__module__.split(".")[0]
        is_status = "Status" in type(err).__name__ or type(err).__name__ == "HTTPError"
        if isinstance(err, (ConnectionError, TimeoutError)) or (
                root in {"httpx", "httpx2", "httpcore", "requests", "urllib3"} and not is_status):
            return err
        err = err.__cause__ or err.__context__
    return None


def _first_line(err: BaseException, skip_title: bool = False) -> str:
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip()]
    if skip_title and len(lines) > 1:
        lines = lines[1:]
    return "; ".join(lines[:2]) if skip_title else (lines[0] if lines else type(err).__name__)
