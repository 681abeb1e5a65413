"""genbackbones: turn a frozen GAN generator into domain-specific timm backbones.

The Python API, smallest first:

    from genbackbones import load_recipe, pretrain
    run_dir = pretrain(load_recipe("quickstart", ["train.steps=100"]))

    from genbackbones import export_run
    export_run(run_dir)          # -> run_dir/export, loads with timm 'local-dir:'
"""

from __future__ import annotations

__version__ = "0.1.0"

from .zoo import register_zoo as _register_zoo

_register_zoo()  # zoo entries become timm pretrained tags once timm is imported (imports neither timm nor torch)

__all__ = ["__version__", "load_recipe", "pretrain", "export_run", "open_generator", "load_generator", "push", "pull"]


def __getattr__(name: str):
    # Lazy: `import genbackbones` stays fast and does not import torch until needed.
    if name == "load_recipe":
        from .recipes import load_recipe

        return load_recipe
    if name == "pretrain":
        from .pretrain import pretrain

        return pretrain
    if name == "export_run":
        from .export import export_run

        return export_run
    if name == "open_generator":
        from .generators.sources import open_generator

        return open_generator
    if name == "load_generator":
        from .generators.checkpoints import load_generator

        return load_generator
    if name in ("push", "pull"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'genbackbones' has no attribute {name!r}")
