"""genbackbones: turn a frozen GAN generator into domain-specific timm backbones.

The Python API, smallest first:

    from genbackbones import load_recipe, pretrain
    run_dir = pretrain(load_recipe("quickstart", ["train.steps=20"]))

    from genbackbones import export_run
    export_run(run_dir)          # -> run_dir/export, loads with timm 'local-dir:'

    from genbackbones import open_generator
    gen = open_generator("bundled")   # or random:<preset>, a folder, a .pkl, a .pt, hf-hub:org/name

Names are resolved lazily, so `import genbackbones` stays fast and imports neither
torch nor timm; no module of the package is named like these functions, so
`from genbackbones import pretrain` always gives the function.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["__version__", "load_recipe", "pretrain", "export_run", "open_generator", "push", "pull"]


def pretrain(recipe=None, output=None, resume=None, console=None, export: bool = True, steps: int | None = None):
    """Run (or resume) a pretraining recipe (any method `genbackbones pretrain` runs); returns the run folder.

    `recipe` is a `Recipe` (`load_recipe(...)`), None for the quickstart, or ignored with `resume=<run folder>`.
    """
    from .engine.runs import train
    from .recipes import load_recipe as _load

    if recipe is None and resume is None:
        recipe = _load("quickstart")
    return train(recipe, output=output, resume=resume, console=console, export=export, steps=steps,
                 command="pretrain")


def __getattr__(name: str):
    if name == "load_recipe":
        from .recipes import load_recipe

        return load_recipe
    if name == "export_run":
        from .export import export_run

        return export_run
    if name == "open_generator":
        from .generators.open import open_generator

        return open_generator
    if name in ("push", "pull"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'genbackbones' has no attribute {name!r}")
