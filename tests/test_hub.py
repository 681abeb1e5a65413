"""push / pull / list / info, end to end against a LOCAL STAND-IN for the Hugging Face Hub.

`tests/hub_server.py` is a loopback HTTP server that speaks the part of the Hub API huggingface_hub
uses; it is not the Hub. huggingface_hub reads HF_ENDPOINT when it is imported, so every client runs in
a fresh subprocess pointed at the stand-in, with its own HF_HOME and a planted fake token that must
never show up in any file or output.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard
from PIL import Image

from genbackbones.errors import UserError
from genbackbones.generators.formats.folder import D_FILE, G_FILE, META_FILE, Provenance, load_folder, save_generator
from genbackbones.hub import hub_errors, public, stage

from .hub_server import HubServer, validate_metadata
from .test_nvidia_pickle import tiny_nets

PLANTED = "hf_planted_Zq7xK2vLw9RtY4uNc8pBd3sFa6"  # a fake token: it must never be written or printed
REPO = "org/tiny-resnet"
OUTPUTS: list[str] = []  # everything the subprocesses printed, for the token check


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub():
    with HubServer(token=PLANTED) as server:
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 2-step resnet18 run (exported), made with the planted token in the environment, plus evaluation files."""
    from genbackbones import pretrain
    from genbackbones.recipes import load_recipe

    out = tmp_path_factory.mktemp("runs") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", PLANTED)
        pretrain(load_recipe(None, ["generator.source=random:tiny32", "backbone.arch=resnet18", "train.steps=2",
                                    "train.batch_size=4"]), output=out)
    write_test_evaluation(out / "evaluation")
    return out


def write_test_evaluation(folder: Path) -> None:
    """Made-up evaluation files in the format `genbackbones evaluate` writes (test data, not a result)."""
    folder.mkdir(parents=True)
    results = [dict(task_type="image-segmentation", dataset_type="genbackbones/faces", dataset_name="faces (test)",
                    metric_type="mean_iou", metric_value=0.25, dataset_split="test", metric_name="mIoU")]
    rows = [{"task": "segmentation", "dataset": "faces (test)", "metric": "mIoU", "labels": 8, "value": 0.25}]
    (folder / "model_index.json").write_text(json.dumps({"eval_results": results, "rows": rows}, indent=2))
    Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "curve.png")


def hub_env(url: str, hf_home: Path, token: str | None = PLANTED, **extra: str) -> dict[str, str]:
    """A client environment: the stand-in as endpoint, a private HF_HOME, the planted token (or none)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_XET="1",  # the stand-in speaks the LFS upload protocol, not Xet
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", COLUMNS="200")
    if token:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    OUTPUTS.extend([proc.stdout, proc.stderr])
    return proc


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "genbackbones", *map(str, args)], env)


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", textwrap.dedent(code)], env)


def folder_digest(folder: Path) -> str:
    """Names, contents and modification times of every file: any change shows."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_mtime_ns}:".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pushed(run_dir, hub, hf_home):
    proc = cli("push", run_dir, "--repo-id", REPO, "--tag", "faces", env=hub_env(hub.url, hf_home))
    assert proc.returncode == 0, proc.stderr
    return proc


# ----------------------------------------------------------------------------- push


def test_dry_run_sends_nothing(run_dir, hub, hf_home):
    before = len(hub.state.requests)
    proc = cli("push", run_dir, "--repo-id", REPO, "--dry-run", env=hub_env(hub.url, hf_home))
    assert proc.returncode == 0, proc.stderr
    assert hub.state.requests[before:] == []
    for name in ("model.safetensors", "config.json", "README.md", "recipe.yaml", "run.json",
                 "evaluation/model_index.json", "evaluation/curve.png", " MB"):
        assert name in proc.stdout
    line = f"timm.create_model('hf-hub:{REPO}', pretrained=True, features_only=True)"
    assert f"After the push: {line}" in proc.stdout and f"model = {line}" in proc.stdout  # printed and in the card
    assert "library_name: timm" in proc.stdout


def test_push_without_token_is_a_clear_error(run_dir, hub, tmp_path):
    before = len(hub.state.requests)
    proc = cli("push", run_dir, "--repo-id", REPO, env=hub_env(hub.url, tmp_path / "hf", token=None))
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "no Hugging Face token" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert hub.state.requests[before:] == []


def test_push_uploads_export_card_recipe_provenance_and_evaluation(pushed, hub, run_dir):
    files = hub.state.files(REPO)
    assert set(files) == {".gitattributes", "model.safetensors", "config.json", "README.md", "recipe.yaml",
                          "run.json", "evaluation/model_index.json", "evaluation/curve.png"}
    for name in ("model.safetensors", "config.json", "recipe.yaml"):
        assert files[name] == (run_dir / "export" / name).read_bytes()
    assert files["evaluation/curve.png"] == (run_dir / "evaluation" / "curve.png").read_bytes()
    assert json.loads(files["run.json"])["method"] == "layermatch"
    routes = hub.state.routes()
    for route in ("create", "validate-yaml", "preupload", "lfs-batch", "lfs-upload", "commit"):
        assert route in routes
    assert f"hf-hub:{REPO}" in pushed.stdout and "pushed 7 files" in pushed.stdout


def test_timm_loads_the_pushed_weights_bit_identical(pushed, hub, hf_home, run_dir):
    """The line `push` printed, run as typed against the Hub, gives the trained backbone's weights."""
    line = f"timm.create_model('hf-hub:{REPO}', pretrained=True, features_only=True)"
    assert line in pushed.stdout.splitlines()
    proc = python(f"""
        import timm, torch
        from safetensors.torch import load_file
        ref = load_file({str(run_dir / 'export' / 'model.safetensors')!r})
        printed = {line}
        assert all(torch.equal(v, ref[k]) for k, v in printed.state_dict().items()) and len(printed.state_dict())
        model = timm.create_model("hf-hub:{REPO}", pretrained=True)
        state = model.state_dict()
        assert set(state) == set(ref), set(state) ^ set(ref)
        assert all(torch.equal(state[k], ref[k]) for k in ref)
        feats = timm.create_model("hf-hub:{REPO}", pretrained=True, features_only=True)
        fstate = feats.state_dict()
        assert len(fstate) > 0 and all(torch.equal(v, ref[k]) for k, v in fstate.items())
        assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) or list(model.pretrained_cfg["mean"]) == [0.5] * 3
        print("loaded", len(state), len(fstate))
    """, env=hub_env(hub.url, hf_home))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("loaded")


def test_card_metadata_is_valid_and_model_index_round_trips(pushed, hub, run_dir, tmp_path):
    content = hub.state.files(REPO)["README.md"].decode()
    assert validate_metadata(content) == ([], [])
    card = ModelCard(content)  # raises on invalid metadata or model-index
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-feature-extraction"
    assert {"genbackbones", "layermatch", "faces"} <= set(data.tags) and data.license == "apache-2.0"
    assert f'"hf-hub:{REPO}"' in card.text and "local-dir:" not in card.text
    expected = [EvalResult(**r) for r in json.loads((run_dir / "evaluation" / "model_index.json").read_text())
                ["eval_results"]]
    assert data.eval_results == expected
    path = tmp_path / "README.md"
    path.write_text(content)
    assert ModelCard.load(path).data.eval_results == expected


def test_pull_round_trips_every_file(pushed, hub, hf_home, tmp_path):
    env = hub_env(hub.url, hf_home)
    out = tmp_path / "pulled"
    proc = cli("pull", REPO, "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == out.resolve()
    for name, data in hub.state.files(REPO).items():
        assert (out / name).read_bytes() == data, name

    proc = cli("pull", f"hf-hub:{REPO}@main", env=env)  # into the HF cache
    assert proc.returncode == 0, proc.stderr
    cached = Path(proc.stdout.strip())
    assert cached.is_relative_to(hf_home / "hub" / "models--org--tiny-resnet" / "snapshots")
    for name, data in hub.state.files(REPO).items():
        assert (cached / name).read_bytes() == data, name


def test_list_and_info_read_the_card(pushed, hub, hf_home):
    env = hub_env(hub.url, hf_home)
    proc = cli("list", "org", env=env)
    assert proc.returncode == 0, proc.stderr
    assert REPO in proc.stdout and "layermatch" in proc.stdout and "mIoU 0.25 (faces (test))" in proc.stdout

    proc = cli("info", f"hf-hub:{REPO}", env=env)
    assert proc.returncode == 0, proc.stderr
    for text in ("layermatch", "apache-2.0", "random:tiny32", "mIoU", "0.25", "model.safetensors", "backbone"):
        assert text in proc.stdout, text
    load = [line.removeprefix("load: ") for line in proc.stdout.splitlines() if line.startswith("load: ")]
    assert load == [f"timm.create_model('hf-hub:{REPO}', pretrained=True, features_only=True)"]
    assert load[0] in pushed.stdout.splitlines()  # the line `push` printed, the one the card shows

    proc = cli("info", f"hf-hub:{REPO}", env=hub_env(hub.url, hf_home, HF_HUB_OFFLINE="1"))  # from the cache
    assert proc.returncode == 0, proc.stderr
    assert "layermatch" in proc.stdout and "mIoU" in proc.stdout

    proc = cli("info", "hf-hub:org/missing", env=env)
    assert proc.returncode == 2 and "repository not found" in proc.stderr


# ----------------------------------------------------------------------------- failures


def test_network_failure_mid_push_is_one_line_and_a_retry_succeeds(run_dir, hub, hf_home):
    env = hub_env(hub.url, hf_home)
    before = folder_digest(run_dir)
    hub.state.drop_next("commit")  # the connection dies while the commit is being sent
    proc = cli("push", run_dir, "--repo-id", "org/flaky", env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(error_lines(proc)) == 1, proc.stderr
    assert "lost the connection to the Hub" in proc.stderr and "run the same command again" in proc.stderr
    assert folder_digest(run_dir) == before
    assert set(hub.state.files("org/flaky")) == {".gitattributes"}  # nothing was committed

    start = len(hub.state.requests)
    proc = cli("push", run_dir, "--repo-id", "org/flaky", env=env)
    assert proc.returncode == 0, proc.stderr
    assert hub.state.files("org/flaky")["model.safetensors"] == (run_dir / "export" / "model.safetensors").read_bytes()
    assert "lfs-upload" not in [r.route for r in hub.state.requests[start:]]  # already uploaded the first time
    assert folder_digest(run_dir) == before


def test_unreachable_hub_is_one_line(run_dir, hf_home):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli("push", run_dir, "--repo-id", REPO, env=hub_env(f"http://127.0.0.1:{port}", hf_home))
    assert proc.returncode == 2
    assert len(error_lines(proc)) == 1 and "cannot reach the Hub" in proc.stderr


def test_bad_repo_id_and_bad_folder(run_dir, tmp_path):
    with pytest.raises(UserError, match="not a Hub model id"):
        stage(run_dir, "not a repo")
    with pytest.raises(UserError, match="expected org/name"):
        stage(run_dir, "just-a-name")
    with pytest.raises(UserError, match="neither a run folder"):
        stage(tmp_path, REPO)
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="has no export yet"):
        stage(tmp_path, REPO)


def test_hub_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match=r"rejected the model card: \"license\" must be"):
        with hub_errors("push to a/b", upload=True):
            raise ValueError('Invalid metadata in README.md.\n- "license" must be a license identifier')
    with pytest.raises(UserError, match="lost the connection.*run the same command again"):
        with hub_errors("push to a/b", upload=True):
            try:
                raise ConnectionResetError("reset by peer")
            except ConnectionResetError as err:
                raise RuntimeError("Error while uploading 'model.safetensors' to the Hub.") from err
    with pytest.raises(KeyError):  # a bug stays a bug, with its traceback
        with hub_errors("push to a/b"):
            raise KeyError("x")


def test_provenance_drops_machine_local_details():
    run_info = {"generator": {"source": "/home/alice/generators/ffhq256", "sha256": "ab"}, "hostname": "gpu-7",
                "compute": "8 x cuda", "taps": ["synthesis.b8.x"], "cwd": "/home/alice"}
    assert public(run_info) == {"generator": {"source": "ffhq256", "sha256": "ab"}, "compute": "8 x cuda",
                                "taps": ["synthesis.b8.x"]}
    assert public("random:tiny32") == "random:tiny32" and public("C:\\runs\\ffhq.pkl") == "ffhq.pkl"


# ----------------------------------------------------------------------------- generators


def test_generator_push_to_a_branch_carries_its_licence(hub, hf_home, tmp_path):
    G, _, D = tiny_nets()
    folder = save_generator(tmp_path / "gen", G, D, Provenance(source="network-snapshot.pkl", source_sha256="ab" * 32,
                                                               license="Nvidia Source Code License-NC"))
    env = hub_env(hub.url, hf_home)
    proc = cli("push", folder, "--repo-id", "org/tiny-gen", "--revision", "v1", "--private", env=env)
    assert proc.returncode == 0, proc.stderr
    assert hub.state.repos["org/tiny-gen"].private
    files = hub.state.files("org/tiny-gen", "v1")
    assert set(hub.state.files("org/tiny-gen")) == {".gitattributes"}  # main untouched
    for name in (G_FILE, D_FILE, META_FILE):
        assert files[name] == (folder / name).read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "other" and card.data.license_name == "nvidia-source-code-license-nc"
    assert "non-commercial" in card.text and 'open_generator("hf-hub:org/tiny-gen")' in card.text
    assert validate_metadata(str(card)) == ([], [])

    proc = cli("info", "org/tiny-gen@v1", env=env)
    assert proc.returncode == 0, proc.stderr
    for text in ("generator", "network-snapshot.pkl", "nvidia-source-code-license-nc", "open_generator"):
        assert text in proc.stdout, text

    out = tmp_path / "pulled"
    proc = cli("pull", "org/tiny-gen@v1", "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    loaded = load_folder(out)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in loaded.G.state_dict().items())


def test_generator_without_licence_is_refused(tmp_path):
    G, _, _ = tiny_nets()
    folder = save_generator(tmp_path / "gen", G, None, Provenance(source="x.pkl"))
    with pytest.raises(UserError, match="records no licence"):
        stage(folder, "org/nolicence")


# ----------------------------------------------------------------------------- the token never leaks


def test_planted_token_is_written_and_printed_nowhere(pushed, hub, hf_home, run_dir, tmp_path_factory):
    needle = PLANTED.encode()
    roots = [run_dir, hf_home, tmp_path_factory.getbasetemp()]
    leaks = [str(p) for root in roots for p in Path(root).rglob("*") if p.is_file() and needle in p.read_bytes()]
    leaks += [f"hub:{repo}:{name}" for repo in hub.state.repos for name, data in hub.state.files(repo).items()
              if needle in data]
    leaks += [f"output {i}" for i, text in enumerate(OUTPUTS) if PLANTED in text]
    assert OUTPUTS and not leaks
    assert all(r.authorized for r in hub.state.requests if r.route in ("create", "commit", "preupload"))
