"""Long commands say how far they are and, on Ctrl-C, what they kept and how to continue (issue 27): annotate's
progress as plain lines when stderr is not a terminal; synthesize's interrupted line (the same form as pretrain's
and evaluate's), never wrapped, with the paths quoted."""

from __future__ import annotations

import io
import shlex

import pytest
from rich.console import Console
from typer.testing import CliRunner

import genbackbones.semantics.synthesize as synth_module
from genbackbones.cli import app
from genbackbones.generators.open import open_generator
from genbackbones.interrupt import command_line
from genbackbones.progress import PROGRESS_SECONDS_ENV
from genbackbones.semantics.synthesize import synthesize

from .test_semantics import COARSE, sample_and_draw, teacher

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    return open_generator("random:tiny32").G


def test_annotate_prints_progress_lines_when_stderr_is_not_a_terminal(tiny, tmp_path, monkeypatch):
    masks = sample_and_draw(None, tiny, tmp_path, 3, teacher(tiny, range(3)))
    args = ["annotate", "random:tiny32", "--masks", str(masks), "--steps", "4", "--layers", ",".join(COARSE)]
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")  # every update; by default at most one line per 10 s
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("annotate:")]
    assert lines == [f"annotate: linear extractor: {i}/4 steps ({25 * i}%)" for i in range(1, 5)]
    monkeypatch.delenv(PROGRESS_SECONDS_ENV)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0 and "annotate:" not in result.stderr  # 4 steps take far less than 10 s


def test_synthesize_ctrl_c_says_what_is_kept_and_the_command_that_continues(tiny, tmp_path, monkeypatch):
    ext = teacher(tiny, range(4))
    out = tmp_path / "my pairs"
    real_write, calls = synth_module.write_pair, []

    def ctrl_c_at_the_third_pair(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        calls.append(args[1])
        real_write(*args)

    monkeypatch.setattr(synth_module, "write_pair", ctrl_c_at_the_third_pair)
    command = ["synthesize", "random:tiny32", "--extractor", str(tmp_path / "an extractor"), "--n", "6",
               "--out", str(out)]
    console = Console(file=io.StringIO(), width=40)  # narrow: the line must still not wrap
    with pytest.raises(KeyboardInterrupt):
        synthesize(tiny, ext, 6, out, batch=2, progress=False, console=console, command=command)
    again = f"genbackbones synthesize random:tiny32 --extractor {shlex.quote(str(tmp_path / 'an extractor'))} " \
            f"--n 6 --out {shlex.quote(str(out))}"
    assert command_line(command) == again
    assert console.file.getvalue() == f"interrupted: 2 of 6 pairs kept in {out}; continue it with `{again}`\n"
    monkeypatch.setattr(synth_module, "write_pair", real_write)
    assert synthesize(tiny, ext, 6, out, batch=2, progress=False).written == 4  # that command finishes it
