"""The `genbackbones` command line: one typer app, each command group a module of this package.

Every module here defines `app = typer.Typer()` with its commands and is mounted
below with `app.add_typer`: without a name its commands sit at the top level
(`genbackbones pretrain`, `genbackbones push`), with one they form a group
(`genbackbones generator sample`). Commands parse, call the library, and render
with rich; the library never imports this package.

Errors are handled once, in `OneLineErrors.main`, for every command and for typer's
own usage errors: a user error (`UserError`, a bad option value, an unknown
command) is one line `error: ...` on stderr with exit code 2 and no traceback.
Ctrl-C is exit 130 (a training run first marks its run.json `interrupted` and
prints how to resume). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

# On a shared CPU, OpenMP threads that spin while waiting slowed a step ten-fold (a fine-tuning step: 10.4 s
# spinning, 0.58 s passive, measured on 2 shared cores); they wait passively unless the user chose otherwise.
# Set here, at import, before any command imports torch: for `genbackbones`, `python -m`, and typer's CliRunner.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..version import __version__  # noqa: E402
from . import common, evaluate, generator, ghfeat, hub, semantics, train  # noqa: E402

class OneLineErrors(TyperGroup):
    """The root command group: runs a command and turns every user-facing failure into one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UserError as err:
            common.fail(str(err))
        except typer.TyperException as err:  # click's usage errors: bad option value, unknown command, ...
            if type(err).__name__ == "NoArgsIsHelpError":
                common.console.print(err.ctx.get_help(), markup=False, highlight=False, soft_wrap=True)
                raise SystemExit(0) from None
            common.fail(_one_line(err.format_message()), getattr(err, "exit_code", 2))
        except typer.Abort:  # end of input at a prompt
            raise SystemExit(1) from None
        # standalone_mode=False returns the exit code of typer.Exit(code) (typer turns Ctrl-C into
        # Exit(130); a run prints how to resume before that), else the command's return value
        code = result if isinstance(result, int) else 0
        if standalone_mode:
            raise SystemExit(code)
        return result


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _version(value: bool) -> None:
    if value:
        common.console.print(f"genbackbones {__version__}", highlight=False)
        raise typer.Exit()


app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Turn a frozen StyleGAN2 into domain-specific timm backbones.")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Turn a frozen StyleGAN2 into domain-specific timm backbones."""


app.add_typer(train.app)
app.add_typer(generator.app, name="generator", help="Convert, inspect and sample generators.")
app.add_typer(ghfeat.app)
app.add_typer(evaluate.app)
app.add_typer(hub.app)
app.add_typer(semantics.app)


def main() -> None:
    app(prog_name="genbackbones")  # also under `python -m genbackbones`, torchrun and accelerate launch


if __name__ == "__main__":
    sys.exit(main())
