"""README.md and docs/*.md are a tested contract: every ```bash and ```python block runs as written.

Blocks of one page run in order in one fresh, empty working folder (so a command can use the run
folder an earlier one made), with the `genbackbones` command of this environment, a private Hugging
Face cache and a Hub endpoint nothing listens on (no network: commands that need it must fail in one
line). A block can be preceded by one directive, an HTML comment that renders as nothing:

    <!-- test: skip (reason) -->       not run: installs, hours-long benchmarks, a GPU, your own data
    <!-- test: error -->               every command must fail with one `error: ...` line and exit 2
    <!-- test: tiny --set k=v ... -->  run with these options appended to every `pretrain` and
                                       `train-generator` command, `torchrun ... -m genbackbones` included
                                       (the page says the real run is longer)

Python blocks run each in a fresh interpreter; bash blocks line by line (`\\` continues a line, `#`
starts a comment).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!--\s*test:\s*(?P<directive>.*?)\s*-->\s*\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```",
                   re.S)
TRAINING_COMMAND = re.compile(r"(^|\s)(genbackbones|-m genbackbones) (pretrain|train-generator)\b")


@dataclass
class Block:
    page: Path
    index: int
    lang: str
    body: str
    directive: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}#{self.index}-{self.lang}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        for i, m in enumerate(FENCE.finditer(page.read_text())):
            found.append(Block(page, i, m["lang"], m["body"], (m["directive"] or "").strip()))
    return found


def commands(body: str) -> list[str]:
    """Shell lines of a bash block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    bin_dir = Path(sys.executable).parent
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    environment.update(PATH=f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}",
                       HF_HOME=str(tmp_path_factory.mktemp("hf_home")), HF_ENDPOINT="http://127.0.0.1:9",
                       COLUMNS="200", PYTHONUNBUFFERED="1")
    if shutil.which("genbackbones", path=environment["PATH"]) is None:
        pytest.skip("the `genbackbones` command is not installed in this environment (pip install -e .)")
    return environment


ALL = blocks()


def test_the_pages_have_blocks():
    assert len([b for b in ALL if b.page.name == "README.md"]) >= 3


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block_runs_as_written(block, workdirs, env, tmp_path_factory):
    if block.directive.startswith("skip"):
        assert len(block.directive) > len("skip") + 3, f"{block.id}: say why it is skipped"
        pytest.skip(block.directive)
    cwd = workdirs.setdefault(block.page, tmp_path_factory.mktemp(block.page.stem))
    if block.lang == "python":
        proc = subprocess.run([sys.executable, "-c", block.body], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{block.id}\n{block.body}\n{proc.stderr[-3000:]}"
        return
    extra = block.directive.removeprefix("tiny").strip() if block.directive.startswith("tiny") else ""
    for command in commands(block.body):
        if extra and TRAINING_COMMAND.search(command):
            command = f"{shlex.join(shlex.split(command, comments=True))} {extra}"  # a trailing comment would eat it
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=1200)
        where = f"{block.id}: {command}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
        if block.directive == "error":
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), where
        else:
            assert proc.returncode == 0, where


def test_commands_parse():
    """Every bash line is valid shell (quotes balanced), skipped blocks included."""
    for block in ALL:
        if block.lang == "bash":
            for command in commands(block.body):
                shlex.split(command)
